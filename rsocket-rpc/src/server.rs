//! The server half that generated code plugs into: the [`Service`] trait a
//! generated `XxxServer<T>` implements, and the helpers that turn a typed
//! handler into a [`ServerReply`] of payloads.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use rsocket_core::{Payload, PayloadStream};

use crate::call::MethodKind;
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

    /// Starts one call of `method` (a name from [`Service::methods`]). The
    /// router has already checked the route, the interaction and the
    /// interceptors.
    fn call(&self, method: &'static str, call: ServerCall) -> ServerReply;
}

/// One call as the router hands it to a [`Service`]: the request metadata
/// and the undecoded input.
pub struct ServerCall {
    metadata: Metadata,
    input: Input,
    max_decode: usize,
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

impl ServerCall {
    pub(crate) fn new(metadata: Metadata, input: Input, max_decode: usize) -> Self {
        Self {
            metadata,
            input,
            max_decode,
        }
    }

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

/// What a [`Service`] returns for a call: one response payload to come, or
/// a stream of them. The router sends it with the interaction the request
/// used.
pub struct ServerReply(pub(crate) Reply);

/// A stream of response payloads.
pub(crate) type Payloads = BoxStream<'static, Result<Payload, Status>>;

pub(crate) enum Reply {
    /// One payload to come (unary, client streaming, fire-and-forget).
    Single(BoxFuture<'static, Result<Payload, Status>>),
    /// The handler's future, then its stream (server streaming, bidi). Kept
    /// apart so that the stream's size hint reaches the core's pump, which
    /// sends COMPLETE with the last item when the hint says nothing is left.
    Stream(BoxFuture<'static, Result<Payloads, Status>>),
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
        Self(Reply::Single(futures::future::ready(Err(status)).boxed()))
    }

    /// The reply for a method name the service does not have: an
    /// `UNIMPLEMENTED` status.
    pub fn unimplemented(method: &str) -> Self {
        Self::error(Status::unimplemented(format!("no method {method}")))
    }
}

/// Encodes a response message and its metadata as a payload.
fn response_payload<T: Message>(response: Response<T>) -> Result<Payload, Status> {
    let (metadata, message) = response.into_parts();
    let metadata = metadata
        .encode_response()
        .map_err(|e| Status::internal(format!("cannot encode the response metadata: {e}")))?;
    Ok(Payload {
        metadata,
        data: codec::encode(&message),
    })
}

/// Turns a handler's stream of messages into payloads; the response
/// metadata goes on the first one.
fn payload_stream<S, T>(response: Response<S>) -> Result<Payloads, Status>
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Message,
{
    let (metadata, stream) = response.into_parts();
    let mut metadata = metadata
        .encode_response()
        .map_err(|e| Status::internal(format!("cannot encode the response metadata: {e}")))?;
    let mut encoder = codec::ChunkEncoder::default();
    Ok(stream
        .map(move |item| {
            item.map(|message| Payload {
                metadata: metadata.take(),
                data: encoder.encode(&message),
            })
        })
        .boxed())
}

/// A unary handler.
pub fn unary<M, T, F, Fut>(call: ServerCall, handler: F) -> ServerReply
where
    M: Message + Default + 'static,
    T: Message + 'static,
    F: FnOnce(Request<M>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
{
    ServerReply(Reply::Single(
        async move {
            let request = call.request::<M>()?;
            response_payload(handler(request).await?)
        }
        .boxed(),
    ))
}

/// A fire-and-forget handler. Called with REQUEST_RESPONSE instead, it is
/// answered with the empty (all-default) message.
pub fn fire_and_forget<M, F, Fut>(call: ServerCall, handler: F) -> ServerReply
where
    M: Message + Default + 'static,
    F: FnOnce(Request<M>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    ServerReply(Reply::Single(
        async move {
            let request = call.request::<M>()?;
            handler(request).await?;
            Ok(Payload::new(Bytes::new()))
        }
        .boxed(),
    ))
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
    let start = async move {
        let request = call.request::<M>()?;
        payload_stream(handler(request).await?)
    };
    ServerReply(Reply::Stream(start.boxed()))
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
    ServerReply(Reply::Single(
        async move {
            let request = call.streaming_request::<M>()?;
            response_payload(handler(request).await?)
        }
        .boxed(),
    ))
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
    let start = async move {
        let request = call.streaming_request::<M>()?;
        payload_stream(handler(request).await?)
    };
    ServerReply(Reply::Stream(start.boxed()))
}
