//! A type-erased transport, so that one listener or connect call can hand
//! out TCP and WebSocket connections alike.

use std::pin::Pin;

use futures::{Sink, Stream};
use rsocket_core::{Frame, PeerInfo, Transport, TransportError};

type BoxReader = Pin<Box<dyn Stream<Item = Result<Frame, TransportError>> + Send>>;
type BoxWriter = Pin<Box<dyn Sink<Frame, Error = TransportError> + Send>>;

/// Any [`Transport`], boxed: the transport, then its two halves, each in
/// an allocation of its own; one virtual call per poll.
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
    fn split_boxed(self: Box<Self>) -> (BoxReader, BoxWriter);
}

impl<T: Transport> Unsplit for T {
    fn limit(&mut self, max: usize) {
        self.limit_frame_len(max);
    }

    fn split_boxed(self: Box<Self>) -> (BoxReader, BoxWriter) {
        let (reader, writer) = (*self).split();
        (Box::pin(reader), Box::pin(writer))
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
    type Reader = BoxReader;
    type Writer = BoxWriter;

    fn split(self) -> (Self::Reader, Self::Writer) {
        self.inner.split_boxed()
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }

    fn limit_frame_len(&mut self, max: usize) {
        self.inner.limit(max);
    }
}
