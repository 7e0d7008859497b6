//! The WebSocket transport: frames in binary messages.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, Stream, StreamExt};
use rsocket_core::frame::MAX_FRAME_LEN;
use rsocket_core::{Frame, PeerInfo, Transport, TransportError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::{Error as WsProtoError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, trace};

/// An upgraded WebSocket connection carrying RSocket frames, one per binary
/// message. Created by [`connect`](crate::connect),
/// [`WsListener`](crate::WsListener), or [`WsTransport::new`] for a
/// `WebSocketStream` you upgraded yourself.
#[derive(Debug)]
pub struct WsTransport<S> {
    ws: WebSocketStream<S>,
    peer: PeerInfo,
}

impl<S> WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// Wraps an upgraded stream. The inbound size limit is the stream's
    /// own `WebSocketConfig` (see
    /// [`WsConfig::websocket_config`](crate::WsConfig::websocket_config));
    /// `peer` is what a server's acceptor will see.
    pub fn new(ws: WebSocketStream<S>, peer: PeerInfo) -> Self {
        Self { ws, peer }
    }

    /// What is known about the peer: address, request path (with query),
    /// handshake headers with lower-case names (request headers on the
    /// server, response headers on the client).
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The stream the WebSocket runs on (for its addresses, TLS state, …).
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// The underlying WebSocket stream.
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Reader = WsReader<S>;
    type Writer = WsWriter<S>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (sink, stream) = self.ws.split();
        (
            WsReader {
                inner: stream,
                done: false,
            },
            WsWriter { inner: sink },
        )
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// The inbound half: each binary message decoded as one frame.
#[derive(Debug)]
pub struct WsReader<S> {
    inner: SplitStream<WebSocketStream<S>>,
    done: bool,
}

impl<S> Stream for WsReader<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Frame, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let msg = match self.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(msg))) => msg,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(read_error(e).map(Err));
                }
            };
            match msg {
                Message::Binary(bytes) => {
                    let frame = Frame::decode(bytes);
                    trace!(?frame, "recv");
                    return Poll::Ready(Some(frame.map_err(TransportError::Decode)));
                }
                Message::Text(text) => {
                    debug!(len = text.len(), "text message received; closing");
                    self.done = true;
                    return Poll::Ready(Some(Err(TransportError::Framing(
                        "received a text WebSocket message; RSocket frames travel in binary \
                         messages only"
                            .into(),
                    ))));
                }
                Message::Close(close) => {
                    debug!(?close, "WebSocket close frame received");
                    self.done = true;
                    return Poll::Ready(None);
                }
                // Answered by tungstenite; nothing for RSocket.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

/// Maps a read error; `None` means the connection simply ended.
fn read_error(e: WsProtoError) -> Option<TransportError> {
    match e {
        WsProtoError::ConnectionClosed | WsProtoError::AlreadyClosed => None,
        WsProtoError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            debug!("peer closed the TCP connection without a WebSocket close frame");
            None
        }
        WsProtoError::Io(e) => Some(TransportError::Io(e)),
        WsProtoError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            debug!(size, max_size, "WebSocket message over the frame limit");
            Some(TransportError::FrameTooLarge {
                len: size,
                max: max_size,
            })
        }
        other => Some(TransportError::Framing(other.to_string())),
    }
}

/// Maps a write error: everything that stops writing is an I/O error.
fn write_error(e: WsProtoError) -> TransportError {
    match e {
        WsProtoError::Io(e) => TransportError::Io(e),
        WsProtoError::ConnectionClosed
        | WsProtoError::AlreadyClosed
        | WsProtoError::Protocol(ProtocolError::SendAfterClosing) => TransportError::Io(
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket connection closed"),
        ),
        other => TransportError::Io(io::Error::other(other.to_string())),
    }
}

/// The outbound half: each frame encoded into one binary message.
/// Messages are buffered by tungstenite and written on flush (or once its
/// write buffer passes [`WsConfig::write_buffer_size`](crate::WsConfig)).
#[derive(Debug)]
pub struct WsWriter<S> {
    inner: SplitSink<WebSocketStream<S>, Message>,
}

impl<S> Sink<Frame> for WsWriter<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner)
            .poll_ready(cx)
            .map_err(write_error)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), Self::Error> {
        let len = frame.encoded_len();
        if len > MAX_FRAME_LEN {
            return Err(TransportError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        trace!(?frame, "send");
        let mut buf = BytesMut::with_capacity(len);
        frame.encode(&mut buf);
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(buf.freeze()))
            .map_err(write_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner)
            .poll_flush(cx)
            .map_err(write_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner)
            .poll_close(cx)
            .map_err(write_error)
    }
}
