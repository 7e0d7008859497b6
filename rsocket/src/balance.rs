//! Client-side load balancing (feature `balance`): everything from
//! [`rsocket_balance`], plus [`UriConnector`] to dial members by URI over
//! any transport this crate has.
//!
//! ```no_run
//! use rsocket::balance::{Balancer, UriConnector};
//! use rsocket::{Payload, RSocket};
//! # async fn demo() -> Result<(), rsocket::RequestError> {
//! let balancer = Balancer::from_list(
//!     ["tcp://10.0.0.1:7878", "tcp://10.0.0.2:7878"]
//!         .map(|uri| (uri.to_owned(), UriConnector::new(uri))),
//! );
//! let reply = balancer.request_response(Payload::from("hi")).await?;
//! # let _ = reply; Ok(()) }
//! ```

use futures::future::BoxFuture;
use futures::FutureExt;
pub use rsocket_balance::*;

use crate::{ClientBuilder, ConnectExt, Requester, TransportOptions};

/// Dials a URI (`tcp://`, `ws://`, `wss://`) with a client configuration
/// and transport options: a [`Connect`] for any transport.
#[derive(Debug, Clone)]
pub struct UriConnector {
    uri: String,
    builder: ClientBuilder,
    options: TransportOptions,
}

impl UriConnector {
    /// Dials `uri` with default settings.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            builder: ClientBuilder::new(),
            options: TransportOptions::default(),
        }
    }

    /// Uses `builder` (SETUP, keepalive, limits, responder).
    #[must_use]
    pub fn with_builder(mut self, builder: ClientBuilder) -> Self {
        self.builder = builder;
        self
    }

    /// Uses `options` (WebSocket headers, TLS).
    #[must_use]
    pub fn with_options(mut self, options: TransportOptions) -> Self {
        self.options = options;
        self
    }

    /// The URI dialled.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl Connect for UriConnector {
    fn connect(&self) -> BoxFuture<'static, Result<Requester, BoxError>> {
        let this = self.clone();
        async move {
            this.builder
                .connect_to_with(&this.uri, &this.options)
                .await
                .map_err(BoxError::from)
        }
        .boxed()
    }
}
