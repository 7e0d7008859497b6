//! `wss://`: WebSocket over TLS with rustls (feature `tls`).
//!
//! rustls is built with the `ring` provider only, so neither OpenSSL nor
//! cmake is needed. You bring the rustls configurations (certificates, root
//! store); [`rustls`] and [`tokio_rustls`] are re-exported so that the
//! versions match.
//!
//! ```no_run
//! # async fn demo(
//! #     server_config: std::sync::Arc<rsocket_transport_ws::tls::rustls::ServerConfig>,
//! #     client_config: std::sync::Arc<rsocket_transport_ws::tls::rustls::ClientConfig>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use rsocket_transport_ws::{tls, WsListener};
//! let listener = WsListener::bind("127.0.0.1:0").await?
//!     .with_path("/rsocket")
//!     .with_tls(server_config);
//! let port = listener.local_addr()?.port();
//! let transport = tls::connect(&format!("wss://localhost:{port}/rsocket"), client_config).await?;
//! # let _ = transport; Ok(()) }
//! ```

use std::sync::Arc;

use futures::FutureExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::{open, Scheme};
use crate::listener::WsListener;
use crate::transport::WsTransport;
use crate::{WsConfig, WsError};

pub use rustls;
pub use tokio_rustls;

/// A client connection over TLS (`wss://`).
pub type WssClientTransport = WsTransport<tokio_rustls::client::TlsStream<TcpStream>>;
/// A server connection over TLS.
pub type WssServerTransport = WsTransport<tokio_rustls::server::TlsStream<TcpStream>>;

/// Connects to a `wss://` URL with default settings. The server certificate
/// is checked against `tls`'s root store for the URL's host.
pub async fn connect(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<WssClientTransport, WsError> {
    connect_with(url, &WsConfig::default(), tls).await
}

/// Connects to a `wss://` request (extra headers allowed, see
/// [`connect_with`](crate::connect_with)) with the given settings.
pub async fn connect_with(
    request: impl IntoClientRequest,
    config: &WsConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<WssClientTransport, WsError> {
    let connector = TlsConnector::from(tls);
    open(request, config, Scheme::Wss, |tcp, host| async move {
        let name = ServerName::try_from(host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        connector.connect(name, tcp).await
    })
    .await
}

impl WsListener<TcpStream> {
    /// Runs a TLS handshake (within the handshake timeout) on every accepted
    /// connection before the WebSocket upgrade. Accepts an
    /// `Arc<rustls::ServerConfig>` or a [`TlsAcceptor`].
    pub fn with_tls(
        self,
        tls: impl Into<TlsAcceptor>,
    ) -> WsListener<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor: TlsAcceptor = tls.into();
        self.with_upgrade(Arc::new(move |tcp| acceptor.accept(tcp).boxed()))
    }
}
