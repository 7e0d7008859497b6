//! Listening by URI.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

use crate::{BoxedTransport, ConnectError, TransportUri};

/// A bound listener for `tcp://host:port` or `ws://host:port/path` (port 0
/// picks a free port): a [`Stream`] of transports for
/// [`Server::serve`](crate::Server::serve).
pub struct Listener {
    inner: Pin<Box<dyn Stream<Item = io::Result<BoxedTransport>> + Send>>,
    local_addr: SocketAddr,
    local_uri: String,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_uri", &self.local_uri)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds to `uri`. A `ws://` listener serves only the URI's path (any
    /// other path gets HTTP 404). TLS listeners are built with the
    /// transport crates (`rsocket_transport_tcp::tls`,
    /// `rsocket_transport_ws::WsListener::with_tls`).
    pub async fn bind(uri: &str) -> Result<Self, ConnectError> {
        let parsed: TransportUri = uri.parse()?;
        match parsed {
            #[cfg(feature = "tcp")]
            TransportUri::Tcp { .. } => {
                let l = rsocket_transport_tcp::TcpListener::bind(parsed.authority()).await?;
                let local_addr = l.local_addr()?;
                Ok(Self {
                    inner: Box::pin(l.map(|r| r.map(BoxedTransport::new))),
                    local_addr,
                    local_uri: format!("tcp://{local_addr}"),
                })
            }
            #[cfg(feature = "ws")]
            TransportUri::Ws {
                tls: false,
                ref path,
                ..
            } => {
                let l = rsocket_transport_ws::WsListener::bind(parsed.authority())
                    .await?
                    .with_path(path.split('?').next().unwrap_or("/"));
                let local_addr = l.local_addr()?;
                let local_uri = format!("ws://{local_addr}{path}");
                Ok(Self {
                    inner: Box::pin(l.map(|r| r.map(BoxedTransport::new))),
                    local_addr,
                    local_uri,
                })
            }
            TransportUri::Ws { tls: true, .. } => Err(ConnectError::TlsNotConfigured),
            #[allow(unreachable_patterns)] // reachable only with a transport feature off
            TransportUri::Tcp { .. } => Err(ConnectError::TransportDisabled("tcp")),
            #[allow(unreachable_patterns)] // reachable only with a transport feature off
            _ => Err(ConnectError::TransportDisabled("ws")),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URI clients connect to (with the port actually bound).
    pub fn local_uri(&self) -> String {
        self.local_uri.clone()
    }
}

impl Stream for Listener {
    type Item = io::Result<BoxedTransport>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
