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

use crate::{ClientBuilder, ConnectExt, Requester, ResumeOptions, TransportOptions};

/// Dials a URI (`tcp://`, `ws://`, `wss://`) with a client configuration
/// and transport options: a [`Connect`] for any transport.
#[derive(Debug, Clone)]
pub struct UriConnector {
    uri: String,
    builder: ClientBuilder,
    options: TransportOptions,
    resume: Option<ResumeOptions>,
}

impl UriConnector {
    /// Dials `uri` with default settings.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            builder: ClientBuilder::new(),
            options: TransportOptions::default(),
            resume: None,
        }
    }

    /// Uses `builder` (SETUP, keepalive, limits, responder).
    #[must_use]
    pub fn with_builder(mut self, builder: ClientBuilder) -> Self {
        self.builder = builder;
        self
    }

    /// Makes every connection a resumable session (the server must enable
    /// resumption): a member whose transport breaks redials the URI and
    /// resumes, its requests and streams continue and it stays ready (see
    /// `rsocket_balance::TcpConnector::resumable`).
    #[must_use]
    pub fn resumable(mut self, options: ResumeOptions) -> Self {
        self.resume = Some(options);
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
            match this.resume {
                Some(resume) => this
                    .builder
                    .resume(resume)
                    .connect_resumable_to_with(&this.uri, &this.options)
                    .await
                    .map_err(BoxError::from),
                None => this
                    .builder
                    .connect_to_with(&this.uri, &this.options)
                    .await
                    .map_err(BoxError::from),
            }
        }
        .boxed()
    }
}
