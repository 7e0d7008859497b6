//! A type-erased transport, so that one listener or connect call can hand
//! out TCP and WebSocket connections alike.

use std::pin::Pin;

use futures::{Sink, Stream};
use rsocket_core::{Frame, PeerInfo, Transport, TransportError};

type BoxReader = Pin<Box<dyn Stream<Item = Result<Frame, TransportError>> + Send>>;
type BoxWriter = Pin<Box<dyn Sink<Frame, Error = TransportError> + Send>>;

/// Any [`Transport`], boxed: one allocation per connection, one virtual
/// call per poll.
pub struct BoxedTransport {
    reader: BoxReader,
    writer: BoxWriter,
    peer: PeerInfo,
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
        let (reader, writer) = transport.split();
        Self {
            reader: Box::pin(reader),
            writer: Box::pin(writer),
            peer,
        }
    }
}

impl Transport for BoxedTransport {
    type Reader = BoxReader;
    type Writer = BoxWriter;

    fn split(self) -> (Self::Reader, Self::Writer) {
        (self.reader, self.writer)
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}
