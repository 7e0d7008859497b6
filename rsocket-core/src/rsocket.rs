//! The [`RSocket`] trait: anything that handles the five interactions.
//!
//! A connection's [`Requester`](crate::Requester) implements it by sending
//! frames; a user's responder implements it by answering them. Routers and
//! load balancers implement it too, so they compose.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use crate::error::{RequestError, StreamError};
use crate::Payload;

/// A stream of payloads, as returned by request/stream and request/channel.
///
/// Streams handed out by a requester are credit-aware: polling grants the
/// peer more credit (REQUEST_N), and dropping before the end sends CANCEL.
pub type PayloadStream = BoxStream<'static, Result<Payload, RequestError>>;

/// Something that handles RSocket requests.
///
/// Every method has a default that answers `ERROR[REJECTED]` ("not
/// processed"), so a responder implements only what it serves.
///
/// Futures and streams are boxed because responders are stored as
/// `Arc<dyn RSocket>` and their work is spawned, so everything must be
/// object-safe and `'static`.
pub trait RSocket: Send + Sync + 'static {
    /// Fire-and-forget. A requester resolves once the frame is queued, not
    /// when it is delivered.
    fn fire_and_forget(&self, request: Payload) -> BoxFuture<'static, Result<(), RequestError>> {
        let _ = request;
        rejected("fire-and-forget")
    }

    /// Request/response. `Ok(None)` is a completion without a payload
    /// (PAYLOAD with C and no N).
    fn request_response(
        &self,
        request: Payload,
    ) -> BoxFuture<'static, Result<Option<Payload>, RequestError>> {
        let _ = request;
        rejected("request-response")
    }

    /// Request/stream.
    fn request_stream(&self, request: Payload) -> PayloadStream {
        let _ = request;
        rejected_stream("request-stream")
    }

    /// Request/channel: `first` is the payload of REQUEST_CHANNEL, `rest` the
    /// requester's remaining outbound items.
    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        let _ = (first, rest);
        rejected_stream("request-channel")
    }

    /// Metadata push (stream 0).
    fn metadata_push(&self, metadata: Bytes) -> BoxFuture<'static, Result<(), RequestError>> {
        let _ = metadata;
        rejected("metadata-push")
    }
}

fn rejected<T: Send + 'static>(what: &str) -> BoxFuture<'static, Result<T, RequestError>> {
    let err = StreamError::rejected(format!("{what} is not supported"));
    futures::future::ready(Err(err.into())).boxed()
}

fn rejected_stream(what: &str) -> PayloadStream {
    let err = StreamError::rejected(format!("{what} is not supported"));
    futures::stream::once(futures::future::ready(Err(err.into()))).boxed()
}

/// Forwards every interaction through a smart pointer.
macro_rules! forward_rsocket {
    ($($ptr:ident),*) => {$(
        impl<T: RSocket + ?Sized> RSocket for $ptr<T> {
            fn fire_and_forget(&self, request: Payload) -> BoxFuture<'static, Result<(), RequestError>> {
                (**self).fire_and_forget(request)
            }
            fn request_response(
                &self,
                request: Payload,
            ) -> BoxFuture<'static, Result<Option<Payload>, RequestError>> {
                (**self).request_response(request)
            }
            fn request_stream(&self, request: Payload) -> PayloadStream {
                (**self).request_stream(request)
            }
            fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
                (**self).request_channel(first, rest)
            }
            fn metadata_push(&self, metadata: Bytes) -> BoxFuture<'static, Result<(), RequestError>> {
                (**self).metadata_push(metadata)
            }
        }
    )*};
}

forward_rsocket!(Arc, Box);

/// A responder that rejects everything: the default when none is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectAll;

impl RSocket for RejectAll {}

/// Boxes a future in the shape [`RSocket`] methods return.
pub fn boxed<F, T>(fut: F) -> BoxFuture<'static, T>
where
    F: Future<Output = T> + Send + 'static,
{
    fut.boxed()
}
