//! Accepting WebSocket connections.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use rsocket_core::runtime::Handshakes;
use rsocket_core::PeerInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use crate::transport::WsTransport;
use crate::{header_list, WsConfig};

/// Turns an accepted TCP stream into the stream the WebSocket runs on
/// (itself, or a TLS session).
pub(crate) type Upgrade<S> =
    Arc<dyn Fn(TcpStream) -> BoxFuture<'static, io::Result<S>> + Send + Sync>;

/// A listening socket that accepts WebSocket upgrades and yields RSocket
/// transports. It is a [`Stream`] of transports, ready for
/// [`Server::serve`](rsocket_core::Server::serve).
///
/// Handshakes (TLS, then the HTTP upgrade) run concurrently inside the
/// stream, at most [`WsConfig::max_pending_handshakes`] at a time and each
/// within [`WsConfig::handshake_timeout`], so a slow client never holds up
/// other accepts. A failed handshake (wrong path, not a WebSocket request,
/// timeout, TLS failure) is logged at debug level and skipped; only errors of
/// the listening socket itself are yielded.
///
/// The transport's [`PeerInfo`] holds the peer address, the request path
/// (with its query, as requested) and the request headers with lower-case
/// names.
pub struct WsListener<S = TcpStream> {
    inner: tokio::net::TcpListener,
    path: Option<Arc<str>>,
    config: WsConfig,
    upgrade: Upgrade<S>,
    handshakes: Handshakes<WsTransport<S>>,
}

impl<S> fmt::Debug for WsListener<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsListener")
            .field("local_addr", &self.inner.local_addr().ok())
            .field("path", &self.path)
            .field("config", &self.config)
            .field("pending_handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl WsListener<TcpStream> {
    /// Binds to `addr` (use port 0 for a free port). Upgrades are accepted on
    /// any path until [`with_path`](Self::with_path) restricts them.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Ok(Self::from_listener(
            tokio::net::TcpListener::bind(addr).await?,
        ))
    }

    /// Wraps a bound tokio listener.
    pub fn from_listener(inner: tokio::net::TcpListener) -> Self {
        Self {
            inner,
            path: None,
            config: WsConfig::default(),
            upgrade: Arc::new(|tcp| futures::future::ready(Ok(tcp)).boxed()),
            handshakes: handshakes(&WsConfig::default()),
        }
    }
}

impl<S> WsListener<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    #[cfg_attr(not(feature = "tls"), allow(dead_code))] // only TLS swaps the upgrade
    pub(crate) fn with_upgrade<S2>(self, upgrade: Upgrade<S2>) -> WsListener<S2> {
        WsListener {
            inner: self.inner,
            path: self.path,
            handshakes: handshakes(&self.config),
            config: self.config,
            upgrade,
        }
    }

    /// Accepts upgrades only for this path (compared with the request path
    /// without its query); others are answered with HTTP 404.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into().into());
        self
    }

    /// Frame limit, handshake timeout and concurrency.
    pub fn with_config(mut self, config: WsConfig) -> Self {
        self.handshakes
            .set_limits(config.max_pending_handshakes, config.handshake_timeout);
        self.config = config;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Waits for the next upgraded connection.
    pub async fn accept(&mut self) -> io::Result<WsTransport<S>> {
        match self.next().await {
            Some(r) => r,
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "listener closed",
            )),
        }
    }
}

fn handshakes<S>(config: &WsConfig) -> Handshakes<WsTransport<S>> {
    Handshakes::new(
        "WebSocket",
        config.max_pending_handshakes,
        config.handshake_timeout,
    )
}

/// The server side of the upgrade: checks the path, records what the
/// acceptor will see.
async fn server_handshake<S>(
    stream: S,
    addr: SocketAddr,
    path: Option<Arc<str>>,
    config: &WsConfig,
) -> io::Result<WsTransport<S>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut seen: Option<(String, Vec<(String, String)>)> = None;
    // The Err type is fixed by tungstenite's `Callback`.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        if let Some(want) = path.as_deref() {
            if request.uri().path() != want {
                let mut refusal = ErrorResponse::new(Some("no RSocket endpoint here".into()));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                return Err(refusal);
            }
        }
        let requested = request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        seen = Some((requested, header_list(request.headers())));
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(config.websocket_config()),
    )
    .await
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    })?;
    let mut peer = PeerInfo::default();
    peer.addr = Some(addr);
    if let Some((path, headers)) = seen {
        peer.path = Some(path);
        peer.headers = headers;
    }
    Ok(WsTransport::new(ws, peer))
}

impl<S> Stream for WsListener<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Item = io::Result<WsTransport<S>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let inner = &this.inner;
        let (upgrade, path, config) = (&this.upgrade, &this.path, &this.config);
        this.handshakes.poll_next(
            cx,
            |cx| inner.poll_accept(cx),
            |tcp: TcpStream, addr| {
                let upgrade = upgrade.clone();
                let path = path.clone();
                let config = config.clone();
                async move {
                    tcp.set_nodelay(true)?;
                    let stream = upgrade(tcp).await?;
                    server_handshake(stream, addr, path, &config).await
                }
            },
        )
    }
}
