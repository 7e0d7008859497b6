//! RSocket over TCP: frames carry the 24-bit length prefix
//! (`rsocket_core::codec::FrameCodec`), `TCP_NODELAY` is on, and the peer
//! address reaches the server's acceptor through
//! [`PeerInfo`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rsocket_transport_tcp::{connect, TcpListener};
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let transport = connect(addr).await?;
//! # let _ = transport; Ok(()) }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "tls")]
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use rsocket_core::frame::MAX_FRAME_LEN;
use rsocket_core::{PeerInfo, StreamTransport};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

/// A TCP connection framed for RSocket.
pub type TcpTransport = StreamTransport<OwnedReadHalf, OwnedWriteHalf>;

/// Wraps a connected socket: sets `TCP_NODELAY` and records the peer address.
pub fn from_stream(stream: TcpStream) -> io::Result<TcpTransport> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr().ok();
    let (r, w) = stream.into_split();
    let mut info = PeerInfo::default();
    info.addr = peer;
    Ok(StreamTransport::new(r, w).with_peer_info(info))
}

/// Connects to `addr`.
pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpTransport> {
    from_stream(TcpStream::connect(addr).await?)
}

/// A listening socket whose accepted connections are RSocket transports.
/// It is a [`Stream`] of transports, ready for
/// [`Server::serve`](rsocket_core::Server::serve).
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    max_frame_len: usize,
}

impl TcpListener {
    /// Binds to `addr` (use port 0 for a free port).
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Ok(Self::from_listener(
            tokio::net::TcpListener::bind(addr).await?,
        ))
    }

    /// Wraps a bound tokio listener.
    pub fn from_listener(inner: tokio::net::TcpListener) -> Self {
        Self {
            inner,
            max_frame_len: MAX_FRAME_LEN,
        }
    }

    /// Largest inbound frame (bytes, length prefix excluded) that accepted
    /// connections take; a longer one is refused from its length prefix,
    /// before it is buffered, and ends the connection with
    /// `ERROR[CONNECTION_ERROR]`. Default and cap: 16,777,215. The server's
    /// `Config::max_frame_len` applies as well: the lower of the two wins.
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max.min(MAX_FRAME_LEN);
        self
    }

    fn wrap(&self, stream: TcpStream) -> io::Result<TcpTransport> {
        Ok(from_stream(stream)?.with_max_frame_len(self.max_frame_len))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<TcpTransport> {
        let (stream, _) = self.inner.accept().await?;
        self.wrap(stream)
    }
}

impl Stream for TcpListener {
    type Item = io::Result<TcpTransport>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.poll_accept(cx) {
            Poll::Ready(Ok((stream, _))) => Poll::Ready(Some(self.wrap(stream))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}
