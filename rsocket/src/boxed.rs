//! A type-erased transport, so that one listener or connect call can hand
//! out TCP and WebSocket connections alike.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use rsocket_core::{Frame, PeerInfo, Transport, TransportError, WireRead, WireWrite};

/// Any [`Transport`], boxed: the transport, then its two halves, each in
/// an allocation of its own; one virtual call per poll. The halves keep the
/// boxed transport's raw-bytes paths ([`Transport::wire_reader`],
/// [`Transport::wire_writer`]), so a TCP or WebSocket connection made
/// through it reads and writes runs of frames as the unboxed one does.
///
/// The transport is kept whole until [`Transport::split`], so that
/// [`Transport::limit_frame_len`] (the engine applies `Config::max_frame_len`
/// with it) reaches the boxed transport's own frame limit: a length prefix
/// over it is refused before the frame is read.
pub struct BoxedTransport {
    inner: Box<dyn Unsplit>,
    peer: PeerInfo,
}

/// A transport not split yet, its type erased.
trait Unsplit: Send {
    fn limit(&mut self, max: usize);
    fn split_boxed(self: Box<Self>) -> (BoxedReader, BoxedWriter);
}

impl<T: Transport> Unsplit for T {
    fn limit(&mut self, max: usize) {
        self.limit_frame_len(max);
    }

    fn split_boxed(self: Box<Self>) -> (BoxedReader, BoxedWriter) {
        let (reader, writer) = (*self).split();
        (
            BoxedReader(Box::new(Half::<T, _>::new(reader))),
            BoxedWriter(Box::new(Half::<T, _>::new(writer))),
        )
    }
}

/// One half of a transport `T`, with `T`'s raw-bytes path reachable
/// through the trait objects below.
struct Half<T, H> {
    half: H,
    _transport: std::marker::PhantomData<fn() -> T>,
}

impl<T, H> Half<T, H> {
    fn new(half: H) -> Self {
        Self {
            half,
            _transport: std::marker::PhantomData,
        }
    }
}

/// A boxed reader: its frames, and its raw-bytes path if it has one.
trait ReadHalf: Stream<Item = Result<Frame, TransportError>> + Send + Unpin {
    fn wire(&mut self) -> Option<&mut dyn WireRead>;
}

impl<T: Transport> Stream for Half<T, T::Reader> {
    type Item = Result<Frame, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.half).poll_next(cx)
    }
}

impl<T: Transport> ReadHalf for Half<T, T::Reader> {
    fn wire(&mut self) -> Option<&mut dyn WireRead> {
        T::wire_reader(&mut self.half)
    }
}

/// A boxed writer: its frame sink, and its raw-bytes path if it has one.
trait WriteHalf: Sink<Frame, Error = TransportError> + Send + Unpin {
    fn wire(&mut self) -> Option<&mut dyn WireWrite>;
}

impl<T: Transport> Sink<Frame> for Half<T, T::Writer> {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.half).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), Self::Error> {
        Pin::new(&mut self.half).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.half).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.half).poll_close(cx)
    }
}

impl<T: Transport> WriteHalf for Half<T, T::Writer> {
    fn wire(&mut self) -> Option<&mut dyn WireWrite> {
        T::wire_writer(&mut self.half)
    }
}

/// The reader of a [`BoxedTransport`]: a `Stream` of frames.
pub struct BoxedReader(Box<dyn ReadHalf>);

impl std::fmt::Debug for BoxedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxedReader").finish_non_exhaustive()
    }
}

impl Stream for BoxedReader {
    type Item = Result<Frame, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *self.0).poll_next(cx)
    }
}

/// The writer of a [`BoxedTransport`]: a `Sink` of frames.
pub struct BoxedWriter(Box<dyn WriteHalf>);

impl std::fmt::Debug for BoxedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxedWriter").finish_non_exhaustive()
    }
}

impl Sink<Frame> for BoxedWriter {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), Self::Error> {
        Pin::new(&mut *self.0).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.0).poll_close(cx)
    }
}

impl std::fmt::Debug for BoxedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxedTransport")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl BoxedTransport {
    /// Boxes a transport.
    pub fn new<T: Transport>(transport: T) -> Self {
        let peer = transport.peer_info();
        Self {
            inner: Box::new(transport),
            peer,
        }
    }
}

impl Transport for BoxedTransport {
    type Reader = BoxedReader;
    type Writer = BoxedWriter;

    fn split(self) -> (Self::Reader, Self::Writer) {
        self.inner.split_boxed()
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }

    fn limit_frame_len(&mut self, max: usize) {
        self.inner.limit(max);
    }

    fn wire_reader(reader: &mut BoxedReader) -> Option<&mut dyn WireRead> {
        reader.0.wire()
    }

    fn wire_writer(writer: &mut BoxedWriter) -> Option<&mut dyn WireWrite> {
        writer.0.wire()
    }
}
