//! [`Streaming<T>`]: a stream of decoded messages over the core's
//! credit-aware payload stream.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use prost::Message;
use rsocket_core::PayloadStream;
use tokio::time::Sleep;

use crate::call::CallSpan;
use crate::codec::{self, Side};
use crate::{Metadata, Status};

/// A stream of messages: what a client gets from a server-streaming or
/// bidirectional call, and what a server handler gets as the input of a
/// client-streaming or bidirectional call.
///
/// **Backpressure.** It wraps the core's payload stream, which grants the
/// peer credit (REQUEST_N) only as items are taken from it. Nothing is
/// buffered beyond the credit window, so a consumer that polls slowly slows
/// the remote producer, and one that stops polling stops it.
///
/// **Ending.** The stream ends after the peer completes, or after the first
/// error (a status from the peer, a message that does not decode, a passed
/// deadline), which is yielded as `Err`. Dropping it early cancels the
/// call (CANCEL on the wire).
pub struct Streaming<T> {
    inner: Option<PayloadStream>,
    max_decode: usize,
    side: Side,
    deadline: Option<Pin<Box<Sleep>>>,
    metadata: Metadata,
    first: bool,
    span: Option<CallSpan>,
    _message: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("ended", &self.inner.is_none())
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

impl<T> Streaming<T> {
    pub(crate) fn new(inner: PayloadStream, max_decode: usize, side: Side) -> Self {
        Self {
            inner: Some(inner),
            max_decode,
            side,
            deadline: None,
            metadata: Metadata::new(),
            first: true,
            span: None,
            _message: PhantomData,
        }
    }

    pub(crate) fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        self
    }

    pub(crate) fn with_span(mut self, span: CallSpan) -> Self {
        self.span = Some(span);
        self
    }

    /// The metadata that came with the first message (for a client: the
    /// server's response metadata). Empty until the first message arrives.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn end(&mut self, result: Result<(), &Status>) {
        self.inner = None;
        self.deadline = None;
        if let Some(span) = &mut self.span {
            match result {
                Ok(()) => span.finish::<()>(&Ok(())),
                Err(status) => span.fail(status),
            }
        }
    }
}

impl<T: Message + Default> Streaming<T> {
    /// The next message; `Ok(None)` once the stream has ended normally.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        self.next().await.transpose()
    }
}

impl<T: Message + Default> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                let status = Status::deadline_exceeded("the call's deadline passed");
                this.end(Err(&status));
                return Poll::Ready(Some(Err(status)));
            }
        }
        let payload = match inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.end(Ok(()));
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(payload))) => payload,
            Poll::Ready(Some(Err(e))) => {
                let status = Status::from(e);
                this.end(Err(&status));
                return Poll::Ready(Some(Err(status)));
            }
        };
        if this.first {
            this.first = false;
            if payload.metadata.is_some() {
                this.metadata = Metadata::decode_lenient(payload.metadata.as_ref());
            }
        }
        match codec::decode::<T>(payload.data, this.max_decode, this.side) {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(status) => {
                this.end(Err(&status));
                Poll::Ready(Some(Err(status)))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            Some(inner) => (0, inner.size_hint().1),
            None => (0, Some(0)),
        }
    }
}
