//! Opening client connections.

use std::future::Future;

use rsocket_core::PeerInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::transport::WsTransport;
use crate::{header_list, http, WsConfig, WsError};

/// A client connection over plain TCP (`ws://`).
pub type WsClientTransport = WsTransport<TcpStream>;

/// Connects to a `ws://` URL (path and query included) with default
/// settings.
///
/// ```no_run
/// # async fn demo() -> Result<(), rsocket_transport_ws::WsError> {
/// let transport = rsocket_transport_ws::connect("ws://127.0.0.1:7878/rsocket").await?;
/// # let _ = transport; Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<WsClientTransport, WsError> {
    connect_with(url, &WsConfig::default()).await
}

/// Connects with a prepared request (for extra handshake headers such as
/// `Authorization`) and settings. Build the request with
/// [`IntoClientRequest::into_client_request`] on the URL, then add headers:
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use rsocket_transport_ws::{connect_with, IntoClientRequest, WsConfig};
/// let mut request = "ws://127.0.0.1:7878/rsocket".into_client_request()?;
/// request.headers_mut().insert("authorization", "Bearer secret".parse()?);
/// let transport = connect_with(request, &WsConfig::default()).await?;
/// # let _ = transport; Ok(()) }
/// ```
pub async fn connect_with(
    request: impl IntoClientRequest,
    config: &WsConfig,
) -> Result<WsClientTransport, WsError> {
    open(
        request,
        config,
        Scheme::Ws,
        |tcp, _host| async move { Ok(tcp) },
    )
    .await
}

/// The URL scheme a connect function serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Ws,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))] // only built with `tls`
    Wss,
}

/// Resolves, connects, wraps the TCP stream (TLS or not) and upgrades, all
/// within the handshake timeout.
pub(crate) async fn open<S, F, Fut>(
    request: impl IntoClientRequest,
    config: &WsConfig,
    scheme: Scheme,
    wrap: F,
) -> Result<WsTransport<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: FnOnce(TcpStream, String) -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let mut request = request.into_client_request()?;
    let (expected, default_port) = match scheme {
        Scheme::Ws => ("ws", 80),
        Scheme::Wss => ("wss", 443),
    };
    match request.uri().scheme_str() {
        Some(s) if s == expected => {}
        Some(s) if s.eq_ignore_ascii_case(expected) => {
            // Schemes are case-insensitive, but the handshake accepts only
            // the lower-case spelling.
            let mut parts = request.uri().clone().into_parts();
            parts.scheme = Some(
                expected
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| WsError::InvalidRequest(e.to_string()))?,
            );
            *request.uri_mut() =
                http::Uri::from_parts(parts).map_err(|e| WsError::InvalidRequest(e.to_string()))?;
        }
        Some("wss") => {
            return Err(WsError::InvalidRequest(
                "wss:// needs TLS: use rsocket_transport_ws::tls (feature `tls`)".into(),
            ))
        }
        other => {
            return Err(WsError::InvalidRequest(format!(
                "expected a {expected}:// URL, got scheme {other:?}"
            )))
        }
    }
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or_else(|| WsError::InvalidRequest("URL has no host".into()))?;
    // `[::1]` in a URL, `::1` for the resolver and for TLS server names.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let port = uri.port_u16().unwrap_or(default_port);
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let ws_config = config.websocket_config();
    let timeout = config.handshake_timeout;
    let fut = async move {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let addr = tcp.peer_addr().ok();
        let stream = wrap(tcp, host).await?;
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await?;
        let mut peer = PeerInfo::default();
        peer.addr = addr;
        peer.path = Some(path);
        peer.headers = header_list(response.headers());
        Ok::<_, WsError>(WsTransport::new(ws, peer))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| WsError::Timeout(timeout))?
}
