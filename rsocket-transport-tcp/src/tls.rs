//! TLS on TCP with rustls (feature `tls`): the same length-prefixed framing
//! inside a TLS session.
//!
//! rustls is built with the `ring` provider only, so neither OpenSSL nor
//! cmake is needed. You bring the rustls configurations; [`rustls`] and
//! [`tokio_rustls`] are re-exported so that the versions match.
//!
//! ```no_run
//! # async fn demo(
//! #     server_config: std::sync::Arc<rsocket_transport_tcp::tls::rustls::ServerConfig>,
//! #     client_config: std::sync::Arc<rsocket_transport_tcp::tls::rustls::ClientConfig>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use rsocket_transport_tcp::tls::{connect_tls, TlsListener};
//! let listener = TlsListener::bind("127.0.0.1:0", server_config).await?;
//! let addr = listener.local_addr()?;
//! let transport = connect_tls(addr, "localhost", client_config).await?;
//! # let _ = transport; Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rsocket_core::runtime::Handshakes;
use rsocket_core::{PeerInfo, StreamTransport};
use rustls::pki_types::ServerName;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use rustls;
pub use tokio_rustls;

/// The client end of an RSocket connection over TLS.
pub type TlsClientTransport = StreamTransport<
    ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
>;

/// The server end of an RSocket connection over TLS.
pub type TlsServerTransport = StreamTransport<
    ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>,
    WriteHalf<tokio_rustls::server::TlsStream<TcpStream>>,
>;

/// Connects to `addr` and runs the TLS handshake, checking the server's
/// certificate for `server_name` (a DNS name or an IP address) against
/// `config`'s root store.
pub async fn connect_tls(
    addr: impl ToSocketAddrs,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<TlsClientTransport> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let peer = tcp.peer_addr().ok();
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (r, w) = tokio::io::split(tls);
    let mut info = PeerInfo::default();
    info.addr = peer;
    Ok(StreamTransport::new(r, w).with_peer_info(info))
}

/// Default time allowed for one TLS handshake.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of TLS handshakes in progress at once.
const DEFAULT_MAX_PENDING: usize = 256;

/// A listening socket whose accepted connections are TLS sessions framed for
/// RSocket. It is a [`Stream`] of transports, ready for
/// [`Server::serve`](rsocket_core::Server::serve).
///
/// TLS handshakes run concurrently inside the stream, at most
/// [`with_max_pending_handshakes`](Self::with_max_pending_handshakes) at a
/// time (default 256; at the limit the listener stops accepting until one
/// finishes), each within
/// [`with_handshake_timeout`](Self::with_handshake_timeout) (default 10 s).
/// A failed handshake is logged at debug level and skipped; only errors of
/// the listening socket itself are yielded.
pub struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    max_pending: usize,
    max_frame_len: usize,
    handshakes: Handshakes<TlsServerTransport>,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("local_addr", &self.inner.local_addr().ok())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending", &self.max_pending)
            .field("pending_handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Binds to `addr` (use port 0 for a free port). `tls` is an
    /// `Arc<rustls::ServerConfig>` or a [`TlsAcceptor`].
    pub async fn bind(addr: impl ToSocketAddrs, tls: impl Into<TlsAcceptor>) -> io::Result<Self> {
        Ok(Self::from_listener(
            tokio::net::TcpListener::bind(addr).await?,
            tls,
        ))
    }

    /// Wraps a bound tokio listener.
    pub fn from_listener(inner: tokio::net::TcpListener, tls: impl Into<TlsAcceptor>) -> Self {
        Self {
            inner,
            acceptor: tls.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            max_frame_len: rsocket_core::frame::MAX_FRAME_LEN,
            handshakes: Handshakes::new("TLS", DEFAULT_MAX_PENDING, DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// Time allowed for one TLS handshake; slower connections are dropped.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self.handshakes.set_limits(self.max_pending, timeout);
        self
    }

    /// Handshakes in progress at once (at least 1).
    pub fn with_max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self.handshakes
            .set_limits(self.max_pending, self.handshake_timeout);
        self
    }

    /// Largest inbound frame accepted connections take, as
    /// [`TcpListener::with_max_frame_len`](crate::TcpListener::with_max_frame_len).
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max.min(rsocket_core::frame::MAX_FRAME_LEN);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Waits for the next connection whose TLS handshake succeeded.
    pub async fn accept(&mut self) -> io::Result<TlsServerTransport> {
        match self.next().await {
            Some(r) => r,
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "listener closed",
            )),
        }
    }
}

impl Stream for TlsListener {
    type Item = io::Result<TlsServerTransport>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let inner = &this.inner;
        let acceptor = &this.acceptor;
        let max_frame_len = this.max_frame_len;
        this.handshakes.poll_next(
            cx,
            |cx| inner.poll_accept(cx),
            |tcp: TcpStream, addr| {
                let acceptor = acceptor.clone();
                async move {
                    tcp.set_nodelay(true)?;
                    let tls = acceptor.accept(tcp).await?;
                    let (r, w) = tokio::io::split(tls);
                    Ok(StreamTransport::new(r, w)
                        .with_peer_info(PeerInfo::from_addr(addr))
                        .with_max_frame_len(max_frame_len))
                }
            },
        )
    }
}
