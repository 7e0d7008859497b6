//! The WebSocket transport: frames in binary messages.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, Stream, StreamExt};
use rsocket_core::frame::MAX_FRAME_LEN;
use rsocket_core::{Frame, PeerInfo, Transport, TransportError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
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
    max_frame_len: usize,
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
        let max_frame_len = ws
            .get_config()
            .max_message_size
            .unwrap_or(MAX_FRAME_LEN)
            .min(MAX_FRAME_LEN);
        Self {
            ws,
            peer,
            max_frame_len,
        }
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
        let close_code = Arc::new(AtomicU16::new(0));
        (
            WsReader {
                inner: stream,
                done: false,
                max_frame_len: self.max_frame_len,
                close_code: close_code.clone(),
            },
            WsWriter {
                inner: sink,
                close_code,
                close_sent: false,
            },
        )
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }

    /// Messages are still read whole (up to the `WsConfig::max_frame_len`
    /// the stream was built with) before a longer one is refused; set that
    /// too to refuse from the message header.
    fn limit_frame_len(&mut self, max: usize) {
        self.max_frame_len = self.max_frame_len.min(max);
    }
}

/// WebSocket close codes (RFC 6455 §7.4.1) the writer sends when the
/// connection ends: normal unless the reader saw the peer break the rules.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_TOO_BIG: u16 = 1009;

fn close_frame(code: u16) -> CloseFrame {
    let (code, reason) = match code {
        CLOSE_UNSUPPORTED => (CloseCode::Unsupported, "binary messages only"),
        CLOSE_TOO_BIG => (CloseCode::Size, "frame too large"),
        CLOSE_PROTOCOL => (CloseCode::Protocol, "protocol error"),
        _ => (CloseCode::Normal, ""),
    };
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The inbound half: each binary message decoded as one frame.
#[derive(Debug)]
pub struct WsReader<S> {
    inner: SplitStream<WebSocketStream<S>>,
    done: bool,
    max_frame_len: usize,
    /// Shared with the writer: the close code to send (0: normal).
    close_code: Arc<AtomicU16>,
}

impl<S> WsReader<S> {
    fn fail(
        &mut self,
        code: u16,
        err: TransportError,
    ) -> Poll<Option<Result<Frame, TransportError>>> {
        self.done = true;
        self.close_code.store(code, Ordering::Relaxed);
        Poll::Ready(Some(Err(err)))
    }
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
                    return match read_error(e) {
                        None => Poll::Ready(None),
                        Some(err) => {
                            let code = match err {
                                TransportError::FrameTooLarge { .. } => CLOSE_TOO_BIG,
                                TransportError::Io(_) => CLOSE_NORMAL,
                                _ => CLOSE_PROTOCOL,
                            };
                            self.fail(code, err)
                        }
                    };
                }
            };
            match msg {
                Message::Binary(bytes) => {
                    if bytes.len() > self.max_frame_len {
                        debug!(
                            len = bytes.len(),
                            max = self.max_frame_len,
                            "message over max_frame_len"
                        );
                        let err = TransportError::FrameTooLarge {
                            len: bytes.len(),
                            max: self.max_frame_len,
                        };
                        return self.fail(CLOSE_TOO_BIG, err);
                    }
                    let frame = Frame::decode(bytes);
                    trace!(?frame, "recv");
                    return Poll::Ready(Some(frame.map_err(TransportError::Decode)));
                }
                Message::Text(text) => {
                    debug!(len = text.len(), "text message received; closing");
                    let err = TransportError::Framing(
                        "received a text WebSocket message; RSocket frames travel in binary \
                         messages only"
                            .into(),
                    );
                    return self.fail(CLOSE_UNSUPPORTED, err);
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
    close_code: Arc<AtomicU16>,
    close_sent: bool,
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

    /// Sends a close frame with a status code (1000, or 1003 / 1009 / 1002
    /// when the peer broke the framing rules), then closes.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.close_sent {
            match Pin::new(&mut self.inner).poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    let code = match self.close_code.load(Ordering::Relaxed) {
                        0 => CLOSE_NORMAL,
                        c => c,
                    };
                    self.close_sent = true;
                    let frame = close_frame(code);
                    debug!(code = u16::from(frame.code), "sending WebSocket close");
                    if let Err(e) =
                        Pin::new(&mut self.inner).start_send(Message::Close(Some(frame)))
                    {
                        return Poll::Ready(Err(write_error(e)));
                    }
                }
                // Already closed or broken: nothing left to say.
                Poll::Ready(Err(_)) => self.close_sent = true,
            }
        }
        Pin::new(&mut self.inner)
            .poll_close(cx)
            .map_err(write_error)
    }
}
