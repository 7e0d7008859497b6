//! The transport abstraction and the length-prefixed byte-stream transport
//! shared by TCP, Unix sockets and the in-memory pair.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, SinkExt, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::codec::{CodecError, FrameCodec};
use crate::config::PeerInfo;
use crate::frame::{DecodeError, Frame};

/// Errors a transport reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// I/O failed; the transport is unusable.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// One frame did not decode. The transport itself is still usable; the
    /// connection decides what the frame error means.
    #[error("invalid frame: {0}")]
    Decode(#[from] DecodeError),
    /// A frame exceeds the maximum frame length.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The peer broke the transport's own framing (for example a WebSocket
    /// text message, or a length prefix below the header size).
    #[error("transport framing violated: {0}")]
    Framing(String),
}

impl From<CodecError> for TransportError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => Self::Io(e),
            CodecError::FrameTooLarge { len, max } => Self::FrameTooLarge { len, max },
            CodecError::FrameTooShort(n) => {
                Self::Framing(format!("frame length {n} is shorter than a header"))
            }
        }
    }
}

/// A duplex of frames that a connection runs on.
///
/// Decoding happens once, in the transport's reader; the connection sees
/// typed frames. Reader and writer are separate so that reading never waits
/// for writing.
pub trait Transport: Send + 'static {
    /// The inbound half.
    type Reader: Stream<Item = Result<Frame, TransportError>> + Send + Unpin + 'static;
    /// The outbound half. It may buffer frames until `poll_flush`.
    type Writer: Sink<Frame, Error = TransportError> + Send + Unpin + 'static;

    /// Splits into reader and writer.
    fn split(self) -> (Self::Reader, Self::Writer);

    /// What the transport knows about the peer (shown to a server's
    /// acceptor).
    fn peer_info(&self) -> PeerInfo {
        PeerInfo::default()
    }

    /// Lowers the largest inbound frame this transport accepts to `max`
    /// bytes; a limit the transport was built with that is already lower
    /// stays. The engine calls it with `Config::max_frame_len` before
    /// splitting the transport, so that a transport with a length prefix
    /// refuses an oversized frame from its length, before buffering it.
    /// The default does nothing: the engine then refuses such a frame once
    /// it is decoded.
    fn limit_frame_len(&mut self, max: usize) {
        let _ = max;
    }
}

/// Reads length-prefixed frames from any [`AsyncRead`].
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: FramedRead<R, FrameCodec>,
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Frame, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                Poll::Ready(Some(Frame::decode(bytes).map_err(TransportError::Decode)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Writes length-prefixed frames to any [`AsyncWrite`], batching them in a
/// buffer that is written out on flush (or when it passes 64 KiB).
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: FramedWrite<W, FrameCodec>,
}

impl<W: AsyncWrite + Unpin> Sink<Frame> for FrameWriter<W> {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Sink::<Frame>::poll_ready(Pin::new(&mut self.inner), cx).map_err(Into::into)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), Self::Error> {
        Sink::<&Frame>::start_send(Pin::new(&mut self.inner), &item).map_err(Into::into)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Sink::<Frame>::poll_flush(Pin::new(&mut self.inner), cx).map_err(Into::into)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Sink::<Frame>::poll_close(Pin::new(&mut self.inner), cx).map_err(Into::into)
    }
}

/// Write buffer size at which the writer flushes early.
const WRITE_HIGH_WATER: usize = 64 << 10;

/// A transport over a byte stream split into read and write halves, framed
/// with the 24-bit length prefix.
#[derive(Debug)]
pub struct StreamTransport<R, W> {
    reader: R,
    writer: W,
    codec: FrameCodec,
    peer: PeerInfo,
}

impl<R, W> StreamTransport<R, W>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    /// Frames `reader` and `writer` with the default maximum frame length.
    pub fn new(reader: R, writer: W) -> Self {
        Self {
            reader,
            writer,
            codec: FrameCodec::new(),
            peer: PeerInfo::default(),
        }
    }

    /// Sets the maximum frame length (capped at 16,777,215).
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.codec = FrameCodec::with_max_frame_len(max);
        self
    }

    /// Sets what the acceptor sees about the peer.
    pub fn with_peer_info(mut self, peer: PeerInfo) -> Self {
        self.peer = peer;
        self
    }
}

impl<R, W> Transport for StreamTransport<R, W>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Reader = FrameReader<R>;
    type Writer = FrameWriter<W>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let reader = FrameReader {
            inner: FramedRead::with_capacity(self.reader, self.codec.clone(), 64 << 10),
        };
        let mut inner = FramedWrite::new(self.writer, self.codec);
        inner.set_backpressure_boundary(WRITE_HIGH_WATER);
        (reader, FrameWriter { inner })
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }

    fn limit_frame_len(&mut self, max: usize) {
        if max < self.codec.max_frame_len() {
            self.codec = FrameCodec::with_max_frame_len(max);
        }
    }
}

/// The in-memory transport: a `tokio::io::duplex` pipe.
pub type MemoryTransport = StreamTransport<
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
>;

/// Two connected in-memory transports (client end, server end), each with a
/// bounded pipe buffer of `buffer` bytes per direction. Frames go through the
/// same length-prefix codec as TCP.
pub fn memory_pair(buffer: usize) -> (MemoryTransport, MemoryTransport) {
    let (a, b) = tokio::io::duplex(buffer);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    (StreamTransport::new(ar, aw), StreamTransport::new(br, bw))
}

/// Closes the writer half after the final flush (used on setup rejection).
pub(crate) async fn flush_and_close<W>(writer: &mut W, frame: Frame) -> Result<(), TransportError>
where
    W: Sink<Frame, Error = TransportError> + Unpin,
{
    writer.send(frame).await?;
    writer.close().await
}
