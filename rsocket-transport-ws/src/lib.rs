//! RSocket over WebSocket, on [tokio-tungstenite](tokio_tungstenite).
//!
//! ```text
//!  rsocket-core  Requester / Server / ConnectionDriver
//!       │  Frame (typed)
//!  WsTransport   one RSocket frame = one binary WebSocket message
//!       │  Message::Binary(Bytes)   (no length prefix)
//!  tungstenite   WebSocket framing, ping/pong, close handshake
//!       │
//!  TcpStream     (or a rustls TlsStream with the `tls` feature: wss://)
//! ```
//!
//! # Framing
//!
//! * Each RSocket frame travels as exactly one **binary** WebSocket message,
//!   without the 24-bit length prefix used on TCP (protocol §1.2).
//! * The 16,777,215-byte frame limit ([`MAX_FRAME_LEN`]) applies; it is
//!   configured as tungstenite's `max_message_size` and `max_frame_size`, so
//!   an oversized message is rejected from its header, before its payload is
//!   buffered. Lower it with [`WsConfig::max_frame_len`].
//! * A **text** message is a framing violation: the reader yields
//!   [`TransportError::Framing`] and the connection ends with a connection
//!   error.
//! * Ping and pong are answered by tungstenite and never reach RSocket.
//! * A **close** frame ends the reader cleanly (`None`): the connection ends
//!   with `ConnectionError::ClosedByPeer`, and pending requests fail with it,
//!   as when a TCP peer closes its socket.
//! * Extensions such as `permessage-deflate` are never negotiated: the server
//!   ignores the offer, so a client that offers it (browsers, Node's `ws`)
//!   sends uncompressed messages.
//! * Inbound messages are decoded without copying (`Frame::decode` on the
//!   message's `Bytes`); outbound frames are encoded once into a buffer sized
//!   by `Frame::encoded_len` and handed to tungstenite as `Bytes`.
//!
//! # Getting started
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rsocket_core::{ClientBuilder, Payload, Server};
//! use rsocket_transport_ws::{connect_with, IntoClientRequest, WsConfig, WsListener};
//!
//! // Server: accept upgrades on /rsocket; the acceptor sees path, headers
//! // and peer address in `setup.peer`.
//! let listener = WsListener::bind("127.0.0.1:0").await?.with_path("/rsocket");
//! let addr = listener.local_addr()?;
//! let server = Server::new(|setup: rsocket_core::SetupInfo, _requester| async move {
//!     let _token = setup.peer.header("authorization");
//!     Ok(rsocket_core::RejectAll)
//! });
//! tokio::spawn(server.serve(listener));
//!
//! // Client, with an extra handshake header.
//! let mut request = format!("ws://{addr}/rsocket").into_client_request()?;
//! request.headers_mut().insert("authorization", "Bearer token".parse()?);
//! let transport = connect_with(request, &WsConfig::default()).await?;
//! let requester = ClientBuilder::new().connect(transport)?;
//! let _ = requester.request_response(Payload::from("hi")).await;
//! # Ok(()) }
//! ```
//!
//! With the `tls` feature, the `tls` module adds `wss://` clients and TLS listeners
//! using rustls with the ring provider (no OpenSSL, no cmake).
#![forbid(unsafe_code)]

mod client;
mod listener;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

use std::io;
use std::time::Duration;

use rsocket_core::frame::MAX_FRAME_LEN;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use client::{connect, connect_with, WsClientTransport};
pub use listener::WsListener;
pub use tokio_tungstenite::tungstenite;
pub use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub use tokio_tungstenite::tungstenite::handshake::client::Request;
pub use tokio_tungstenite::tungstenite::http;
pub use transport::{WsReader, WsTransport, WsWriter};

#[doc(no_inline)]
pub use rsocket_core::TransportError;

/// Settings for WebSocket connections, both sides.
///
/// Build with [`WsConfig::default`] and assign the fields to change.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsConfig {
    /// Largest inbound frame (= WebSocket message payload) accepted, in bytes.
    /// Default and hard cap: [`MAX_FRAME_LEN`] (16,777,215). A message over it
    /// is rejected as soon as its WebSocket header is read, before its
    /// payload is buffered: the reader yields
    /// [`TransportError::FrameTooLarge`] and the connection ends. Keep it at
    /// least as large as the `rsocket_core::Config::max_frame_len` of the
    /// peer.
    pub max_frame_len: usize,
    /// Time allowed to open the connection: TCP connect (client), TLS
    /// handshake and WebSocket upgrade. Default 10 s. Past it a client gets
    /// [`WsError::Timeout`] and a listener drops the connection.
    pub handshake_timeout: Duration,
    /// Listener only: handshakes in progress at once. When reached, the
    /// listener stops accepting until one finishes (new connections wait in
    /// the kernel's backlog). Default 256.
    pub max_pending_handshakes: usize,
    /// Bytes tungstenite buffers before writing to the socket; a flush
    /// always writes everything. Default 128 KiB.
    pub write_buffer_size: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            write_buffer_size: 128 << 10,
        }
    }
}

impl WsConfig {
    /// The tungstenite configuration these settings imply: message and
    /// WebSocket frame limits at `max_frame_len` (capped at
    /// [`MAX_FRAME_LEN`]). Use it when building a `WebSocketStream` yourself
    /// for [`WsTransport::new`].
    pub fn websocket_config(&self) -> WebSocketConfig {
        let max = self.max_frame_len.min(MAX_FRAME_LEN);
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .write_buffer_size(self.write_buffer_size)
    }
}

/// Errors opening a WebSocket connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The URL or request is not a usable WebSocket request.
    #[error("invalid WebSocket request: {0}")]
    InvalidRequest(String),
    /// Connecting (or the TLS handshake) failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The WebSocket upgrade failed, for example because the server answered
    /// with an HTTP error status (see [`WsError::http_status`]).
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[source] Box<tungstenite::Error>),
    /// Connecting and the handshakes took longer than
    /// [`WsConfig::handshake_timeout`].
    #[error("WebSocket connection not established within {0:?}")]
    Timeout(Duration),
}

impl WsError {
    /// The HTTP status with which the server refused the upgrade, if that is
    /// what happened (for example 404 for a path the server does not serve).
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Handshake(e) => match &**e {
                tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }
}

impl From<tungstenite::Error> for WsError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Io(e) => Self::Io(e),
            tungstenite::Error::Url(e) => Self::InvalidRequest(e.to_string()),
            tungstenite::Error::HttpFormat(e) => Self::InvalidRequest(e.to_string()),
            other => Self::Handshake(Box::new(other)),
        }
    }
}

/// Handshake headers as [`rsocket_core::PeerInfo`] carries them: lower-case
/// names, values as (lossy) UTF-8.
fn header_list(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
