//! Connectors: how a member dials its server.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use rsocket_core::Requester;

/// Any error a connector can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Yields a connected [`Requester`] for one target: a TCP, WebSocket, TLS
/// or in-memory connection, set up with the member's SETUP (the connector
/// owns its `ClientBuilder`). Called again for every re-dial.
///
/// Closures returning a future implement it:
///
/// ```
/// use rsocket_balance::Connect;
/// use rsocket_core::{memory_pair, ClientBuilder};
/// let dial = || async {
///     let (client_end, _server_end) = memory_pair(64 * 1024);
///     ClientBuilder::new().connect(client_end)
/// };
/// fn takes(_: impl Connect) {}
/// takes(dial);
/// ```
pub trait Connect: Send + Sync + 'static {
    /// Dials once.
    fn connect(&self) -> BoxFuture<'static, Result<Requester, BoxError>>;
}

impl<F, Fut, E> Connect for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Requester, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn connect(&self) -> BoxFuture<'static, Result<Requester, BoxError>> {
        self().map(|r| r.map_err(Into::into)).boxed()
    }
}

impl Connect for Arc<dyn Connect> {
    fn connect(&self) -> BoxFuture<'static, Result<Requester, BoxError>> {
        (**self).connect()
    }
}

impl fmt::Debug for dyn Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connect")
    }
}

/// Dials a socket address over TCP with a given client configuration.
///
/// ```
/// use rsocket_balance::TcpConnector;
/// use rsocket_core::ClientBuilder;
/// let c = TcpConnector::new("127.0.0.1:7878".parse().unwrap())
///     .with_builder(ClientBuilder::new().setup_payload("me".into()));
/// assert_eq!(c.addr().port(), 7878);
/// ```
#[cfg(feature = "tcp")]
#[derive(Debug, Clone)]
pub struct TcpConnector {
    addr: std::net::SocketAddr,
    builder: rsocket_core::ClientBuilder,
    resume: Option<rsocket_core::ResumeOptions>,
}

#[cfg(feature = "tcp")]
impl TcpConnector {
    /// Dials `addr` with default client settings.
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            addr,
            builder: rsocket_core::ClientBuilder::new(),
            resume: None,
        }
    }

    /// Uses `builder` (SETUP payload, MIME types, keepalive, limits, the
    /// client's responder) for every connection.
    #[must_use]
    pub fn with_builder(mut self, builder: rsocket_core::ClientBuilder) -> Self {
        self.builder = builder;
        self
    }

    /// Makes every connection a resumable session (the server must enable
    /// resumption): when a member's transport breaks, the session redials
    /// the same address and resumes, its requests and streams continue,
    /// and the member stays ready; it fails, and the member re-dials as
    /// usual, only when the session cannot be resumed.
    #[must_use]
    pub fn resumable(mut self, options: rsocket_core::ResumeOptions) -> Self {
        self.resume = Some(options);
        self
    }

    /// The address dialled.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

#[cfg(feature = "tcp")]
impl Connect for TcpConnector {
    fn connect(&self) -> BoxFuture<'static, Result<Requester, BoxError>> {
        let addr = self.addr;
        let builder = self.builder.clone();
        let resume = self.resume.clone();
        async move {
            if let Some(options) = resume {
                return Ok(builder
                    .resume(options)
                    .connect_resumable(move || rsocket_transport_tcp::connect(addr))
                    .await?);
            }
            let transport = rsocket_transport_tcp::connect(addr).await?;
            Ok(builder.connect(transport)?)
        }
        .boxed()
    }
}
