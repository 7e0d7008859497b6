//! The [`RSocket`] trait: anything that handles the five interactions.
//!
//! A connection's [`Requester`](crate::Requester) implements it by sending
//! frames; a user's responder implements it by answering them. Routers and
//! load balancers implement it too, so they compose.

use std::future::Future;
use std::sync::Arc;

pub use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::error::{RequestError, StreamError};
use crate::Payload;

/// A stream of payloads, as returned by request/stream and request/channel.
///
/// Streams handed out by a requester are credit-aware: polling grants the
/// peer more credit (REQUEST_N), and dropping before the end sends CANCEL.
pub type PayloadStream = BoxStream<'static, Result<Payload, RequestError>>;

/// What a caller knows about a request that something routing requests
/// (a load balancer) can use. Connections and responders ignore it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CallHints {
    /// Processing the request twice does no harm, so it may be sent again
    /// (to another server) after its connection died with the request in
    /// flight, when nobody can know whether it was processed.
    pub idempotent: bool,
}

impl CallHints {
    /// No hints: the request is not idempotent.
    pub const NONE: Self = Self { idempotent: false };
    /// An idempotent request.
    pub const IDEMPOTENT: Self = Self { idempotent: true };
}

/// Something that handles RSocket requests.
///
/// Every method has a default, so a responder implements only what it
/// serves: a request/response, stream or channel it does not serve is
/// answered `ERROR[REJECTED]` ("not processed"); a fire-and-forget or
/// metadata push it does not serve is dropped (neither has an answer to
/// carry an error).
///
/// # Why `async-trait`
///
/// A server holds each connection's responder as `Arc<dyn RSocket>`, so the
/// trait must be object-safe. Native `async fn` in traits is not (its
/// futures are unnamed types), so the trait uses the [`async_trait`](macro@async_trait)
/// attribute, re-exported by this crate: responders are written with plain
/// `async fn` that borrow `&self`, and the engine boxes each future once,
/// which it had to do anyway to spawn it. Streams are returned directly
/// (boxed, `'static`) because the engine polls them only while the peer
/// has granted credit. `Arc<dyn RSocket>` and `Box<dyn RSocket>` implement
/// the trait too.
///
/// ```
/// use rsocket_core::{async_trait, Payload, RSocket, RequestError};
///
/// struct Greeter {
///     greeting: String,
/// }
///
/// #[async_trait]
/// impl RSocket for Greeter {
///     async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
///         let name = req.data_utf8().unwrap_or("stranger");
///         Ok(Some(Payload::new(format!("{} {name}", self.greeting))))
///     }
/// }
/// ```
#[async_trait]
pub trait RSocket: Send + Sync + 'static {
    /// Fire-and-forget. A requester resolves once the frame is queued, not
    /// when it is delivered.
    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        let _ = request;
        Err(unsupported("fire-and-forget"))
    }

    /// Request/response. `Ok(None)` is a completion without a payload
    /// (PAYLOAD with C and no N).
    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        let _ = request;
        Err(unsupported("request-response"))
    }

    /// Request/stream. The engine polls the returned stream only while the
    /// requester has granted credit.
    fn request_stream(&self, request: Payload) -> PayloadStream {
        let _ = request;
        error_stream(unsupported("request-stream"))
    }

    /// Request/response with [`CallHints`]. The default ignores the hints
    /// and calls [`request_response`](Self::request_response); the load
    /// balancer uses them to decide whether a request may be sent again.
    async fn request_response_hinted(
        &self,
        request: Payload,
        hints: CallHints,
    ) -> Result<Option<Payload>, RequestError> {
        let _ = hints;
        self.request_response(request).await
    }

    /// Request/stream with [`CallHints`]; the default ignores them, like
    /// [`request_response_hinted`](Self::request_response_hinted).
    fn request_stream_hinted(&self, request: Payload, hints: CallHints) -> PayloadStream {
        let _ = hints;
        self.request_stream(request)
    }

    /// Request/channel: `first` is the payload of REQUEST_CHANNEL (so a
    /// router can read its metadata without polling), `rest` the
    /// requester's remaining items; an ERROR from the requester arrives as
    /// an `Err` item of `rest`.
    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        let _ = (first, rest);
        error_stream(unsupported("request-channel"))
    }

    /// Metadata push (stream 0).
    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        let _ = metadata;
        Err(unsupported("metadata-push"))
    }
}

fn unsupported(what: &str) -> RequestError {
    StreamError::rejected(format!("{what} is not supported")).into()
}

/// A stream that yields one error and ends.
pub fn error_stream(err: impl Into<RequestError>) -> PayloadStream {
    futures::stream::once(futures::future::ready(Err(err.into()))).boxed()
}

/// Forwards every interaction through a smart pointer.
macro_rules! forward_rsocket {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: RSocket + ?Sized> RSocket for $ptr<T> {
            async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
                (**self).fire_and_forget(request).await
            }
            async fn request_response(
                &self,
                request: Payload,
            ) -> Result<Option<Payload>, RequestError> {
                (**self).request_response(request).await
            }
            fn request_stream(&self, request: Payload) -> PayloadStream {
                (**self).request_stream(request)
            }
            async fn request_response_hinted(
                &self,
                request: Payload,
                hints: CallHints,
            ) -> Result<Option<Payload>, RequestError> {
                (**self).request_response_hinted(request, hints).await
            }
            fn request_stream_hinted(&self, request: Payload, hints: CallHints) -> PayloadStream {
                (**self).request_stream_hinted(request, hints)
            }
            fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
                (**self).request_channel(first, rest)
            }
            async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
                (**self).metadata_push(metadata).await
            }
        }
    )*};
}

forward_rsocket!(Arc, Box);

/// A responder that rejects everything: the default when none is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectAll;

impl RSocket for RejectAll {}

/// A responder for one interaction, built from a closure by
/// [`request_response_fn`], [`fire_and_forget_fn`], [`request_stream_fn`]
/// or [`request_channel_fn`]. Every other interaction is rejected.
pub struct FnResponder<K, F> {
    f: F,
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K, F> std::fmt::Debug for FnResponder<K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnResponder").finish_non_exhaustive()
    }
}

impl<K, F> FnResponder<K, F> {
    fn new(f: F) -> Self {
        Self {
            f,
            _kind: std::marker::PhantomData,
        }
    }
}

/// Marker types naming the interaction an [`FnResponder`] serves.
pub mod fn_kind {
    /// Request/response.
    #[derive(Debug)]
    pub enum RequestResponse {}
    /// Fire-and-forget.
    #[derive(Debug)]
    pub enum FireAndForget {}
    /// Request/stream.
    #[derive(Debug)]
    pub enum RequestStream {}
    /// Request/channel.
    #[derive(Debug)]
    pub enum RequestChannel {}
}

/// A responder that answers request/response with a closure.
///
/// ```
/// use rsocket_core::{request_response_fn, Payload, RSocket};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let echo = request_response_fn(|req: Payload| async move { Ok(Some(req)) });
/// let reply = echo.request_response(Payload::from("hi")).await.unwrap();
/// assert_eq!(reply.unwrap().data, "hi");
/// # }
/// ```
pub fn request_response_fn<F, Fut>(f: F) -> FnResponder<fn_kind::RequestResponse, F>
where
    F: Fn(Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Payload>, RequestError>> + Send + 'static,
{
    FnResponder::new(f)
}

#[async_trait]
impl<F, Fut> RSocket for FnResponder<fn_kind::RequestResponse, F>
where
    F: Fn(Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Payload>, RequestError>> + Send + 'static,
{
    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        (self.f)(request).await
    }
}

/// A responder that handles fire-and-forget with a closure.
pub fn fire_and_forget_fn<F, Fut>(f: F) -> FnResponder<fn_kind::FireAndForget, F>
where
    F: Fn(Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    FnResponder::new(f)
}

#[async_trait]
impl<F, Fut> RSocket for FnResponder<fn_kind::FireAndForget, F>
where
    F: Fn(Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        (self.f)(request).await;
        Ok(())
    }
}

/// A responder that answers request/stream with a closure returning a
/// stream.
///
/// ```
/// use futures::StreamExt;
/// use rsocket_core::{request_stream_fn, Payload, RSocket};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let counter = request_stream_fn(|_req: Payload| {
///     futures::stream::iter((0..3).map(|i| Ok(Payload::new(i.to_string()))))
/// });
/// let items: Vec<_> = counter.request_stream(Payload::default()).collect().await;
/// assert_eq!(items.len(), 3);
/// # }
/// ```
pub fn request_stream_fn<F, S>(f: F) -> FnResponder<fn_kind::RequestStream, F>
where
    F: Fn(Payload) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Payload, RequestError>> + Send + 'static,
{
    FnResponder::new(f)
}

impl<F, S> RSocket for FnResponder<fn_kind::RequestStream, F>
where
    F: Fn(Payload) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Payload, RequestError>> + Send + 'static,
{
    fn request_stream(&self, request: Payload) -> PayloadStream {
        (self.f)(request).boxed()
    }
}

/// A responder that answers request/channel with a closure taking the
/// first payload and the requester's remaining items.
pub fn request_channel_fn<F, S>(f: F) -> FnResponder<fn_kind::RequestChannel, F>
where
    F: Fn(Payload, PayloadStream) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Payload, RequestError>> + Send + 'static,
{
    FnResponder::new(f)
}

impl<F, S> RSocket for FnResponder<fn_kind::RequestChannel, F>
where
    F: Fn(Payload, PayloadStream) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Payload, RequestError>> + Send + 'static,
{
    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        (self.f)(first, rest).boxed()
    }
}
