//! RSocket for Rust on tokio, in one dependency.
//!
//! This crate re-exports the engine ([`rsocket_core`]: frames, the
//! connection, [`Requester`], [`Server`], the [`RSocket`] trait) and adds
//! what an application needs around it: connecting and listening by URI
//! over the transports enabled as features.
//!
//! | feature | default | what |
//! |---|---|---|
//! | `tcp` | yes | `tcp://host:port` ([`rsocket_transport_tcp`]) |
//! | `ws` | yes | `ws://host:port/path` ([`rsocket_transport_ws`]) |
//! | `tls` | no | `wss://` with rustls (`TransportOptions::tls`) |
//! | `rpc` | no | protobuf RPC runtime: `rpc` (rsocket-rpc; code generation with rsocket-rpc-build) |
//! | `balance` | no | client-side load balancing: `balance` (rsocket-balance, with DNS discovery) |
//!
//! # Getting started
//!
//! ```
//! use rsocket::{async_trait, Listener, Payload, RSocket, RequestError, Server};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl RSocket for Echo {
//!     async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
//!         Ok(Some(req))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = Listener::bind("tcp://127.0.0.1:0").await?;
//! let uri = listener.local_uri();
//! tokio::spawn(Server::new(|_setup, _requester| async { Ok(Echo) }).serve(listener));
//!
//! let client = rsocket::connect(&uri).await?;
//! let reply = client.request_response(Payload::from("hi")).await?;
//! assert_eq!(reply.unwrap().data, "hi");
//! client.close();
//! client.closed().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "balance")]
pub mod balance;
/// The protobuf RPC runtime (crate `rsocket-rpc`).
#[cfg(feature = "rpc")]
pub use rsocket_rpc as rpc;
mod boxed;
mod listener;
mod uri;

#[cfg(feature = "tls")]
use std::sync::Arc;

pub use rsocket_core::*;
#[cfg(feature = "tcp")]
pub use rsocket_transport_tcp;
#[cfg(feature = "ws")]
pub use rsocket_transport_ws;

pub use boxed::{BoxedReader, BoxedTransport, BoxedWriter};
pub use listener::Listener;
pub use uri::{TransportUri, UriError};

/// Why connecting (or binding) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URI did not parse.
    #[error("invalid transport URI: {0}")]
    Uri(#[from] UriError),
    /// The URI names a transport whose feature is not enabled.
    #[error("the {0} transport is not enabled (enable the crate feature)")]
    TransportDisabled(&'static str),
    /// `wss://` without TLS settings (see `TransportOptions::tls`, feature `tls`).
    #[error("wss:// needs TLS settings: enable feature `tls` and set TransportOptions::tls")]
    TlsNotConfigured,
    /// TCP connect or bind failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The WebSocket handshake failed.
    #[cfg(feature = "ws")]
    #[error(transparent)]
    WebSocket(#[from] rsocket_transport_ws::WsError),
    /// The client configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A resumable connection could not be set up (its first transport
    /// failed to open, say).
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// Transport settings beyond the URI.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    headers: Vec<(String, String)>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl TransportOptions {
    /// An extra header for the WebSocket handshake (ignored by TCP).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The rustls client configuration (root certificates) for `wss://`.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }
}

/// Connects to `uri` (`tcp://host:port`, `ws://host:port/path`,
/// `wss://…`) with default settings and returns a ready requester; the
/// connection's driver runs on a spawned task.
pub async fn connect(uri: &str) -> Result<Requester, ConnectError> {
    ClientBuilder::new().connect_to(uri).await
}

/// Connects over TCP.
#[cfg(feature = "tcp")]
pub async fn connect_tcp(addr: impl tokio::net::ToSocketAddrs) -> Result<Requester, ConnectError> {
    let transport = rsocket_transport_tcp::connect(addr).await?;
    Ok(ClientBuilder::new().connect(transport)?)
}

/// Connects over WebSocket to a `ws://` URL.
#[cfg(feature = "ws")]
pub async fn connect_ws(url: &str) -> Result<Requester, ConnectError> {
    let transport = rsocket_transport_ws::connect(url).await?;
    Ok(ClientBuilder::new().connect(transport)?)
}

/// Opens a transport to `uri` without starting a connection on it.
pub async fn open_transport(
    uri: &str,
    options: &TransportOptions,
) -> Result<BoxedTransport, ConnectError> {
    let parsed: TransportUri = uri.parse()?;
    let _ = &options; // unused when only TCP is enabled
    match parsed {
        #[cfg(feature = "tcp")]
        TransportUri::Tcp { .. } => Ok(BoxedTransport::new(
            rsocket_transport_tcp::connect(parsed.authority()).await?,
        )),
        #[cfg(feature = "ws")]
        TransportUri::Ws { url, tls, .. } => {
            use rsocket_transport_ws::{http, IntoClientRequest, WsConfig};
            let mut request = url
                .as_str()
                .into_client_request()
                .map_err(|e| rsocket_transport_ws::WsError::InvalidRequest(e.to_string()))?;
            for (name, value) in &options.headers {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| rsocket_transport_ws::WsError::InvalidRequest(e.to_string()))?;
                let value = http::HeaderValue::from_str(value)
                    .map_err(|e| rsocket_transport_ws::WsError::InvalidRequest(e.to_string()))?;
                request.headers_mut().append(name, value);
            }
            if tls {
                #[cfg(feature = "tls")]
                {
                    let config = options.tls.clone().ok_or(ConnectError::TlsNotConfigured)?;
                    let t = rsocket_transport_ws::tls::connect_with(
                        request,
                        &WsConfig::default(),
                        config,
                    )
                    .await?;
                    return Ok(BoxedTransport::new(t));
                }
                #[cfg(not(feature = "tls"))]
                return Err(ConnectError::TlsNotConfigured);
            }
            let t = rsocket_transport_ws::connect_with(request, &WsConfig::default()).await?;
            Ok(BoxedTransport::new(t))
        }
        #[allow(unreachable_patterns)] // reachable only with a transport feature off
        TransportUri::Tcp { .. } => Err(ConnectError::TransportDisabled("tcp")),
        #[allow(unreachable_patterns)] // reachable only with a transport feature off
        _ => Err(ConnectError::TransportDisabled("ws")),
    }
}

/// The errors [`open_transport`] gives for `uri` before trying the
/// network: a transport whose feature is off, `wss://` without TLS
/// settings.
fn can_open(uri: &TransportUri, options: &TransportOptions) -> Result<(), ConnectError> {
    let _ = &options; // unused without the `tls` feature
    match uri {
        TransportUri::Tcp { .. } if cfg!(not(feature = "tcp")) => {
            Err(ConnectError::TransportDisabled("tcp"))
        }
        TransportUri::Ws { .. } if cfg!(not(feature = "ws")) => {
            Err(ConnectError::TransportDisabled("ws"))
        }
        #[cfg(feature = "tls")]
        TransportUri::Ws { tls: true, .. } if options.tls.is_none() => {
            Err(ConnectError::TlsNotConfigured)
        }
        #[cfg(not(feature = "tls"))]
        TransportUri::Ws { tls: true, .. } => Err(ConnectError::TlsNotConfigured),
        _ => Ok(()),
    }
}

/// Connecting a [`ClientBuilder`] by URI (in the [`prelude`]).
pub trait ConnectExt: Sized {
    /// Opens a transport to `uri` and connects over it; the driver runs on
    /// a spawned task.
    fn connect_to(
        self,
        uri: &str,
    ) -> impl std::future::Future<Output = Result<Requester, ConnectError>> + Send;

    /// [`connect_to`](Self::connect_to) with transport options (WebSocket
    /// headers, TLS).
    fn connect_to_with(
        self,
        uri: &str,
        options: &TransportOptions,
    ) -> impl std::future::Future<Output = Result<Requester, ConnectError>> + Send;

    /// Connects with session resumption
    /// ([`ClientBuilder::connect_resumable`]): every reconnect opens a new
    /// transport to `uri`. Settings come from
    /// [`ClientBuilder::resume`]; the server must enable
    /// [`Server::resumption`].
    fn connect_resumable_to(
        self,
        uri: &str,
    ) -> impl std::future::Future<Output = Result<Requester, ConnectError>> + Send;

    /// [`connect_resumable_to`](Self::connect_resumable_to) with transport
    /// options.
    fn connect_resumable_to_with(
        self,
        uri: &str,
        options: &TransportOptions,
    ) -> impl std::future::Future<Output = Result<Requester, ConnectError>> + Send;
}

impl ConnectExt for ClientBuilder {
    async fn connect_to(self, uri: &str) -> Result<Requester, ConnectError> {
        self.connect_to_with(uri, &TransportOptions::default())
            .await
    }

    async fn connect_to_with(
        self,
        uri: &str,
        options: &TransportOptions,
    ) -> Result<Requester, ConnectError> {
        let transport = open_transport(uri, options).await?;
        Ok(self.connect(transport)?)
    }

    async fn connect_resumable_to(self, uri: &str) -> Result<Requester, ConnectError> {
        self.connect_resumable_to_with(uri, &TransportOptions::default())
            .await
    }

    async fn connect_resumable_to_with(
        self,
        uri: &str,
        options: &TransportOptions,
    ) -> Result<Requester, ConnectError> {
        // A bad URI, or one this build or these options cannot open, is
        // reported as such, not as a failed connection.
        let parsed: TransportUri = uri.parse()?;
        can_open(&parsed, options)?;
        let uri = uri.to_owned();
        let options = options.clone();
        let open = move || {
            let uri = uri.clone();
            let options = options.clone();
            async move {
                open_transport(&uri, &options).await.map_err(|e| match e {
                    ConnectError::Io(e) => e,
                    other => std::io::Error::other(other),
                })
            }
        };
        Ok(self.connect_resumable(open).await?)
    }
}

/// The traits an application uses, to import with `use rsocket::prelude::*`.
pub mod prelude {
    pub use crate::ConnectExt;
    pub use futures::{Stream, StreamExt};
    pub use rsocket_core::{async_trait, RSocket};
}
