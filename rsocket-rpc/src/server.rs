//! The server half that generated code plugs into: the [`Service`] trait a
//! generated `XxxServer<T>` implements, and the helpers that turn a typed
//! handler into a [`ServerReply`] of payloads.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;
use pin_project_lite::pin_project;
use prost::Message;
use rsocket_core::{Payload, PayloadStream, RequestError};

use crate::call::{CallSpan, MethodKind};
use crate::codec::{self, Side};
use crate::{Metadata, Request, Response, Status, Streaming};

/// A method of a [`Service`]: its name in the `.proto` file, its route and
/// its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The method name as written in the `.proto` file, `SayHello`.
    pub name: &'static str,
    /// The route, `package.Service/Method`.
    pub route: &'static str,
    /// How it is called.
    pub kind: MethodKind,
}

impl MethodInfo {
    /// Describes a method.
    pub const fn new(name: &'static str, route: &'static str, kind: MethodKind) -> Self {
        Self { name, route, kind }
    }
}

/// A service a [`Router`](crate::Router) can serve. Generated
/// `XxxServer<T>` types implement it; implementing it by hand is possible
/// but rarely useful.
pub trait Service: Send + Sync + 'static {
    /// The fully qualified service name, `package.Service`.
    fn name(&self) -> &'static str;

    /// Every method, with its route and kind.
    fn methods(&self) -> &'static [MethodInfo];

    /// Starts one call of the method at index `method` of
    /// [`Service::methods`]. The router has already checked the route, the
    /// interaction and the interceptors.
    fn call(&self, method: usize, call: ServerCall) -> ServerReply;
}

/// One call as the router hands it to a [`Service`]: the request metadata,
/// the undecoded input, and the call's tracing span.
pub struct ServerCall {
    metadata: Metadata,
    input: Input,
    max_decode: usize,
    span: CallSpan,
}

impl fmt::Debug for ServerCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCall")
            .field("metadata", &self.metadata)
            .field("max_decode", &self.max_decode)
            .finish_non_exhaustive()
    }
}

/// The undecoded input of a call.
pub(crate) enum Input {
    /// One message (unary, server streaming, fire-and-forget).
    Message(Bytes),
    /// A stream of messages (client streaming, bidirectional).
    Stream(PayloadStream),
}

/// What a call's handler gets before it is started: its input, and the
/// span its reply runs in.
struct Parts {
    metadata: Metadata,
    input: Input,
    max_decode: usize,
}

impl ServerCall {
    pub(crate) fn new(metadata: Metadata, input: Input, max_decode: usize, span: CallSpan) -> Self {
        Self {
            metadata,
            input,
            max_decode,
            span,
        }
    }

    fn split(self) -> (Parts, CallSpan) {
        let parts = Parts {
            metadata: self.metadata,
            input: self.input,
            max_decode: self.max_decode,
        };
        (parts, self.span)
    }
}

impl Parts {
    /// Decodes the single input message into a request.
    fn request<M: Message + Default>(self) -> Result<Request<M>, Status> {
        match self.input {
            Input::Message(data) => {
                let message = codec::decode(data, self.max_decode, Side::Server)?;
                Ok(Request::from_parts(self.metadata, message))
            }
            Input::Stream(_) => Err(mismatch()),
        }
    }

    /// The input stream as a request.
    fn streaming_request<M>(self) -> Result<Request<Streaming<M>>, Status> {
        match self.input {
            Input::Stream(s) => Ok(Request::from_parts(
                self.metadata,
                Streaming::new(s, self.max_decode, Side::Server),
            )),
            Input::Message(_) => Err(mismatch()),
        }
    }
}

fn mismatch() -> Status {
    Status::internal("the generated service and the router disagree on the method kind")
}

fn panicked() -> Status {
    Status::internal("the handler panicked")
}

/// What a [`Service`] returns for a call: the future of its one response,
/// or its stream of responses, ready for the connection (in the call's
/// span, with panics turned into `INTERNAL`). The router hands it on as it
/// is: one allocation per call.
pub struct ServerReply(pub(crate) Reply);

/// The future of a single response, as `RSocket::request_response` returns
/// it.
pub(crate) type SingleReply = BoxFuture<'static, Result<Option<Payload>, RequestError>>;

pub(crate) enum Reply {
    /// One payload to come (unary, fire-and-forget).
    Single(SingleReply),
    /// Payloads to come (server streaming, client streaming, bidi).
    Stream(PayloadStream),
}

impl fmt::Debug for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reply::Single(_) => f.write_str("ServerReply::Single"),
            Reply::Stream(_) => f.write_str("ServerReply::Stream"),
        }
    }
}

impl ServerReply {
    /// A reply that fails with `status`.
    pub fn error(status: Status) -> Self {
        Self(Reply::Single(Box::pin(futures::future::ready(Err(
            status.into()
        )))))
    }

    /// The reply for a method index the service does not have: an
    /// `UNIMPLEMENTED` status.
    pub fn unimplemented(method: usize) -> Self {
        Self::error(Status::unimplemented(format!("no method {method}")))
    }
}

/// Encodes a response message and its metadata as a payload.
fn response_payload<T: Message>(response: Response<T>) -> Result<Payload, Status> {
    let (metadata, message) = response.into_parts();
    let encoded = metadata.encode_response();
    metadata.discard();
    let metadata = encoded
        .map_err(|e| Status::internal(format!("cannot encode the response metadata: {e}")))?;
    Ok(Payload {
        metadata,
        data: codec::encode_small(&message),
    })
}

pin_project! {
    /// A handler's future for one response: polled in the call's span (when
    /// anyone listens), a panic caught and answered `INTERNAL`, the outcome
    /// recorded.
    struct Guarded<F> {
        #[pin]
        fut: F,
        span: CallSpan,
    }
}

impl<F> Future for Guarded<F>
where
    F: Future<Output = Result<Payload, Status>>,
{
    type Output = Result<Option<Payload>, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let polled = {
            let _enter = this.span.enter();
            catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx)))
        };
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(_) => Err(panicked()),
        };
        this.span.finish(&result);
        Poll::Ready(result.map(Some).map_err(RequestError::from))
    }
}

pin_project! {
    /// A client-streaming handler's one response as a stream: one item,
    /// then the end (the size hint says so, so the core sends the item
    /// with COMPLETE).
    struct SingleStream<F> {
        #[pin]
        fut: Option<Guarded<F>>,
    }
}

impl<F> Stream for SingleStream<F>
where
    F: Future<Output = Result<Payload, Status>>,
{
    type Item = Result<Payload, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let Some(fut) = this.fut.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let result = futures::ready!(fut.poll(cx));
        this.fut.set(None);
        Poll::Ready(result.transpose())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.fut {
            Some(_) => (1, Some(1)),
            None => (0, Some(0)),
        }
    }
}

pin_project! {
    /// A streaming handler's reply: its future, then its stream of
    /// messages encoded as payloads (the response metadata on the first),
    /// polled in the call's span, a panic ending it with `INTERNAL`, the
    /// outcome recorded.
    struct ReplyStream<Fut, S> {
        #[pin]
        state: StreamState<Fut, S>,
        metadata: Option<Bytes>,
        encoder: codec::ChunkEncoder,
        span: CallSpan,
    }
}

pin_project! {
    #[project = StateProj]
    enum StreamState<Fut, S> {
        Start { #[pin] fut: Fut },
        Run { #[pin] stream: S },
        Done,
    }
}

impl<Fut, S, T> Stream for ReplyStream<Fut, S>
where
    Fut: Future<Output = Result<Response<S>, Status>>,
    S: Stream<Item = Result<T, Status>>,
    T: Message,
{
    type Item = Result<Payload, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let polled = {
            let _enter = this.span.enter();
            let (state, metadata, encoder) =
                (&mut this.state, &mut *this.metadata, &mut *this.encoder);
            catch_unwind(AssertUnwindSafe(|| {
                poll_reply(state.as_mut(), metadata, encoder, cx)
            }))
        };
        let item = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Some(Ok(data)))) => {
                // The response metadata goes with the first message only.
                let metadata = this.metadata.take();
                return Poll::Ready(Some(Ok(Payload { metadata, data })));
            }
            Ok(Poll::Ready(item)) => item,
            Err(_) => Some(Err(panicked())),
        };
        this.state.set(StreamState::Done);
        match item {
            Some(Err(status)) => {
                this.span.fail(&status);
                Poll::Ready(Some(Err(status.into())))
            }
            _ => {
                this.span.finish::<()>(&Ok(()));
                Poll::Ready(None)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.state {
            StreamState::Start { .. } => (0, None),
            StreamState::Run { stream } => stream.size_hint(),
            StreamState::Done => (0, Some(0)),
        }
    }
}

/// The next message, encoded (its payload's data).
fn poll_reply<Fut, S, T>(
    mut state: Pin<&mut StreamState<Fut, S>>,
    metadata: &mut Option<Bytes>,
    encoder: &mut codec::ChunkEncoder,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, Status>>>
where
    Fut: Future<Output = Result<Response<S>, Status>>,
    S: Stream<Item = Result<T, Status>>,
    T: Message,
{
    loop {
        match state.as_mut().project() {
            StateProj::Run { stream } => {
                return stream
                    .poll_next(cx)
                    .map(|item| item.map(|item| item.map(|message| encoder.encode(&message))))
            }
            StateProj::Start { fut } => {
                let (md, stream) = match futures::ready!(fut.poll(cx)) {
                    Ok(response) => response.into_parts(),
                    Err(status) => return Poll::Ready(Some(Err(status))),
                };
                *metadata = md.encode_response().map_err(|e| {
                    Status::internal(format!("cannot encode the response metadata: {e}"))
                })?;
                state.set(StreamState::Run { stream });
            }
            StateProj::Done => return Poll::Ready(None),
        }
    }
}

/// A unary handler.
///
/// The request is decoded here, when the router dispatches the call, and
/// the handler's future is wrapped as it is (no `async` block around it,
/// which would keep the undecoded input and the request beside the
/// handler's own copy: a larger future to move into its allocation). A
/// request that does not decode is answered without starting the handler.
pub fn unary<M, T, F, Fut>(call: ServerCall, handler: F) -> ServerReply
where
    M: Message + Default + 'static,
    T: Message + 'static,
    F: FnOnce(Request<M>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
{
    single(call, |request: Request<M>| Encoded {
        fut: handler(request),
    })
}

/// Decodes the call's request and starts the future `start` makes of it,
/// guarded (see [`Guarded`]); a request that does not decode is answered
/// with its status, and nothing is started. Out of line, with the
/// decoding inlined in it: inlined into a service's dispatch, it left the
/// decoding out of line (24 more instructions per call, `rpc_layer both`).
#[inline(never)]
fn single<M, R>(call: ServerCall, start: impl FnOnce(Request<M>) -> R) -> ServerReply
where
    M: Message + Default + 'static,
    R: Future<Output = Result<Payload, Status>> + Send + 'static,
{
    let (parts, mut span) = call.split();
    match parts.request::<M>() {
        Ok(request) => ServerReply(Reply::Single(Box::pin(Guarded {
            fut: start(request),
            span,
        }))),
        Err(status) => {
            span.fail(&status);
            ServerReply::error(status)
        }
    }
}

pin_project! {
    /// A unary or client-streaming handler's future, its response encoded
    /// as a payload.
    struct Encoded<F> {
        #[pin]
        fut: F,
    }
}

impl<F, T> Future for Encoded<F>
where
    F: Future<Output = Result<Response<T>, Status>>,
    T: Message,
{
    type Output = Result<Payload, Status>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .fut
            .poll(cx)
            .map(|result| result.and_then(response_payload))
    }
}

/// A fire-and-forget handler. Called with REQUEST_RESPONSE instead, it is
/// answered with the empty (all-default) message. The request is decoded
/// when the call is dispatched, as for [`unary`].
pub fn fire_and_forget<M, F, Fut>(call: ServerCall, handler: F) -> ServerReply
where
    M: Message + Default + 'static,
    F: FnOnce(Request<M>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    single(call, |request: Request<M>| Emptied {
        fut: handler(request),
    })
}

pin_project! {
    /// A fire-and-forget handler's future, answered with the empty
    /// message.
    struct Emptied<F> {
        #[pin]
        fut: F,
    }
}

impl<F> Future for Emptied<F>
where
    F: Future<Output = Result<(), Status>>,
{
    type Output = Result<Payload, Status>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .fut
            .poll(cx)
            .map(|result| result.map(|()| Payload::new(Bytes::new())))
    }
}

/// A server-streaming handler. Its stream is polled only while the client
/// has granted credit.
pub fn server_streaming<M, T, S, F, Fut>(call: ServerCall, handler: F) -> ServerReply
where
    M: Message + Default + 'static,
    T: Message + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    F: FnOnce(Request<M>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<S>, Status>> + Send + 'static,
{
    let (parts, span) = call.split();
    let fut = async move {
        let request = parts.request::<M>()?;
        handler(request).await
    };
    stream_reply(fut, span)
}

/// A client-streaming handler: its input is a [`Streaming`] of messages, its
/// output exactly one message.
pub fn client_streaming<M, T, F, Fut>(call: ServerCall, handler: F) -> ServerReply
where
    M: Message + Default + 'static,
    T: Message + 'static,
    F: FnOnce(Request<Streaming<M>>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
{
    let (parts, span) = call.split();
    let fut = async move {
        let request = parts.streaming_request::<M>()?;
        response_payload(handler(request).await?)
    };
    ServerReply(Reply::Stream(Box::pin(SingleStream {
        fut: Some(Guarded { fut, span }),
    })))
}

/// The reply of a handler whose output is a stream of messages: `fut`
/// gives the stream (or the call's failure).
fn stream_reply<Fut, S, T>(fut: Fut, span: CallSpan) -> ServerReply
where
    Fut: Future<Output = Result<Response<S>, Status>> + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Message + 'static,
{
    ServerReply(Reply::Stream(Box::pin(ReplyStream {
        state: StreamState::Start { fut },
        metadata: None,
        encoder: codec::ChunkEncoder::default(),
        span,
    })))
}

/// A bidirectional handler.
pub fn bidi_streaming<M, T, S, F, Fut>(call: ServerCall, handler: F) -> ServerReply
where
    M: Message + Default + 'static,
    T: Message + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    F: FnOnce(Request<Streaming<M>>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<S>, Status>> + Send + 'static,
{
    let (parts, span) = call.split();
    let fut = async move {
        let request = parts.streaming_request::<M>()?;
        handler(request).await
    };
    stream_reply(fut, span)
}
