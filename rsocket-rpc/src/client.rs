//! [`Client`]: what generated clients call. It works over anything that
//! implements [`RSocket`]: a connection's `Requester`, an in-memory
//! responder, a load balancer.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use pin_project_lite::pin_project;
use prost::Message;
use rsocket_core::{
    CallHints, Payload, PayloadStream, RSocket, RequestError, Requester, ResponseFuture,
};
use tokio::time::Instant;
use tracing::Instrument;

use crate::call::{CallInfo, CallSpan, MethodKind};
use crate::codec::{self, Side, DEFAULT_MAX_DECODING_MESSAGE_SIZE};
use crate::interceptor::{Interceptor, Interceptors};
use crate::{Metadata, Request, Response, Status, Streaming};

/// The untyped core of every generated client: routes, metadata,
/// interceptors, deadlines and the protobuf codec over an [`RSocket`].
///
/// Generated clients wrap one (`GreeterClient::from_client`); build it to
/// set options for all calls:
///
/// ```
/// # fn demo(requester: rsocket_core::Requester) {
/// use std::time::Duration;
/// use rsocket_rpc::Client;
/// let client = Client::new(requester)
///     .timeout(Duration::from_secs(5))
///     .max_decoding_message_size(1 << 20);
/// # let _ = client; }
/// ```
#[derive(Clone)]
pub struct Client<R> {
    rsocket: R,
    interceptors: Interceptors,
    timeout: Option<Duration>,
    max_decode: usize,
}

impl<R> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("interceptors", &self.interceptors)
            .field("timeout", &self.timeout)
            .field("max_decoding_message_size", &self.max_decode)
            .finish_non_exhaustive()
    }
}

/// What every call starts with once the interceptors have run.
struct Prepared<M> {
    metadata: Bytes,
    message: M,
}

impl<R: RSocket> Client<R> {
    /// A client with no interceptors, no default timeout and a 4 MiB limit
    /// on decoded messages.
    pub fn new(rsocket: R) -> Self {
        Self {
            rsocket,
            interceptors: Interceptors::default(),
            timeout: None,
            max_decode: DEFAULT_MAX_DECODING_MESSAGE_SIZE,
        }
    }

    /// Adds an interceptor; they run in the order added, before anything is
    /// sent.
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(interceptor);
        self
    }

    /// The deadline of every call that does not set its own with
    /// [`Request::set_timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The largest response message this client decodes; a larger one fails
    /// the call with `RESOURCE_EXHAUSTED` before it is decoded.
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decode = limit;
        self
    }

    /// The underlying [`RSocket`].
    pub fn rsocket(&self) -> &R {
        &self.rsocket
    }

    /// Runs the interceptors (if any) and encodes the request metadata
    /// with the route.
    async fn prepare<M>(
        &self,
        route: &'static str,
        kind: MethodKind,
        metadata: Metadata,
        message: M,
    ) -> Result<Prepared<M>, Status> {
        let metadata = if self.interceptors.is_empty() {
            metadata
        } else {
            // Boxed: interceptor state stays out of every call's future.
            Box::pin(self.intercept(route, kind, metadata)).await?
        };
        let metadata = metadata
            .encode(Some(route))
            .map_err(|e| Status::internal(format!("cannot encode the request metadata: {e}")))?;
        Ok(Prepared { metadata, message })
    }

    async fn intercept(
        &self,
        route: &'static str,
        kind: MethodKind,
        metadata: Metadata,
    ) -> Result<Metadata, Status> {
        let mut info = CallInfo::new(route, kind, metadata);
        self.interceptors.run(&mut info).await?;
        Ok(info.into_metadata())
    }

    fn deadline<T>(&self, request: &Request<T>) -> Option<Instant> {
        request
            .timeout()
            .or(self.timeout)
            .map(|t| Instant::now() + t)
    }

    /// A unary call: REQUEST_RESPONSE.
    pub fn unary<'a, M, T>(
        &'a self,
        route: &'static str,
        request: Request<M>,
    ) -> impl Future<Output = Result<Response<T>, Status>> + 'a
    where
        M: Message + 'a,
        T: Message + Default + 'a,
    {
        self.unary_hinted(route, request, CallHints::NONE)
    }

    /// A unary call with [`CallHints`] for the [`RSocket`] underneath
    /// (generated clients pass [`CallHints::IDEMPOTENT`] for methods
    /// marked idempotent, which a load balancer may then send again).
    pub fn unary_hinted<'a, M, T>(
        &'a self,
        route: &'static str,
        request: Request<M>,
        hints: CallHints,
    ) -> impl Future<Output = Result<Response<T>, Status>> + 'a
    where
        M: Message + 'a,
        T: Message + Default + 'a,
    {
        UnaryCall {
            client: self,
            route,
            hints,
            state: UnaryState::Start(request),
        }
    }

    /// Where a unary call goes on its first poll: straight to the send
    /// in the common case, else into a boxed future with the interceptors,
    /// the deadline and the span.
    fn start_unary<'a, M, T>(
        &'a self,
        route: &'static str,
        request: Request<M>,
        hints: CallHints,
    ) -> UnaryState<'a, M, T>
    where
        M: Message + 'a,
        T: Message + Default + 'a,
    {
        let span = CallSpan::new("client", route, MethodKind::Unary);
        let deadline = self.deadline(&request);
        if deadline.is_none() && self.interceptors.is_empty() && !span.enabled() {
            // The common case: everything before the send is synchronous,
            // and the call holds only the sent request's future.
            let (metadata, message) = request.into_parts();
            let payload = request_payload(route, &metadata, &message);
            metadata.discard();
            return match payload {
                Ok(payload) => self.send_unary_state(payload, hints),
                Err(status) => UnaryState::Failed(status),
            };
        }
        UnaryState::Slow(Box::pin(
            self.unary_slow(route, request, hints, span, deadline),
        ))
    }

    /// A unary call with interceptors, a deadline or a span listener.
    async fn unary_slow<M, T>(
        &self,
        route: &'static str,
        request: Request<M>,
        hints: CallHints,
        mut span: CallSpan,
        deadline: Option<Instant>,
    ) -> Result<Response<T>, Status>
    where
        M: Message,
        T: Message + Default,
    {
        let call = async {
            let (metadata, message) = request.into_parts();
            let p = self
                .prepare(route, MethodKind::Unary, metadata, message)
                .await?;
            let payload = Payload {
                metadata: Some(p.metadata),
                data: codec::encode(&p.message),
            };
            let response = self.send_unary(payload, hints).await;
            self.unary_response(response)
        };
        let result = with_deadline(deadline, call)
            .instrument(span.span().clone())
            .await;
        span.finish(&result);
        result
    }

    /// Sends a unary request, through the hinted method only when there
    /// are hints (its default costs one more boxed future).
    fn send_unary(&self, payload: Payload, hints: CallHints) -> Sent<'_> {
        if hints == CallHints::NONE {
            self.rsocket.request_response(payload)
        } else {
            self.rsocket.request_response_hinted(payload, hints)
        }
    }

    /// Sends a unary request on the fast path. Over the library's own
    /// [`Requester`] (known by type, at no cost at run time), its
    /// request's future is kept as it is: the `RSocket` trait's method
    /// would box it inside another future, one allocation and one more
    /// poll per call. Its trait method does nothing else, and it ignores
    /// hints; hinted calls still go through the trait.
    fn send_unary_state<'a, M, T>(
        &'a self,
        payload: Payload,
        hints: CallHints,
    ) -> UnaryState<'a, M, T> {
        if hints == CallHints::NONE {
            if let Some(requester) = (&self.rsocket as &dyn Any).downcast_ref::<Requester>() {
                return UnaryState::Direct(requester.request_response(payload));
            }
        }
        UnaryState::Sending(self.send_unary(payload, hints))
    }

    /// A unary call's answer, decoded.
    #[inline(always)]
    fn unary_response<T: Message + Default>(
        &self,
        response: Result<Option<Payload>, RequestError>,
    ) -> Result<Response<T>, Status> {
        let payload = response?
            .ok_or_else(|| Status::internal("the server completed the call without a message"))?;
        let metadata = Metadata::decode_lenient(payload.metadata.as_ref());
        let message = codec::decode(payload.data, self.max_decode, Side::Client)?;
        Ok(Response::from_parts(metadata, message))
    }

    /// A fire-and-forget call: REQUEST_FNF. Resolves once the request is
    /// queued for sending; nothing comes back, so a server-side failure is
    /// only visible in the server's logs.
    pub async fn fire_and_forget<M>(
        &self,
        route: &'static str,
        request: Request<M>,
    ) -> Result<(), Status>
    where
        M: Message,
    {
        let mut span = CallSpan::new("client", route, MethodKind::FireAndForget);
        let deadline = self.deadline(&request);
        let call = async {
            let (metadata, message) = request.into_parts();
            let p = self
                .prepare(route, MethodKind::FireAndForget, metadata, message)
                .await?;
            let payload = Payload {
                metadata: Some(p.metadata),
                data: codec::encode(&p.message),
            };
            self.rsocket.fire_and_forget(payload).await?;
            Ok(())
        };
        let result = with_deadline(deadline, call)
            .instrument(span.span().clone())
            .await;
        span.finish(&result);
        result
    }

    /// A server-streaming call: REQUEST_STREAM. Returns once the request is
    /// prepared; the request goes out when the stream is first polled, and
    /// server errors arrive as the stream's `Err` item.
    pub async fn server_streaming<M, T>(
        &self,
        route: &'static str,
        request: Request<M>,
    ) -> Result<Streaming<T>, Status>
    where
        M: Message,
        T: Message + Default,
    {
        self.server_streaming_hinted(route, request, CallHints::NONE)
            .await
    }

    /// A server-streaming call with [`CallHints`] (see
    /// [`unary_hinted`](Self::unary_hinted)).
    pub async fn server_streaming_hinted<M, T>(
        &self,
        route: &'static str,
        request: Request<M>,
        hints: CallHints,
    ) -> Result<Streaming<T>, Status>
    where
        M: Message,
        T: Message + Default,
    {
        let kind = MethodKind::ServerStreaming;
        let mut span = CallSpan::new("client", route, kind);
        let deadline = self.deadline(&request);
        let (metadata, message) = request.into_parts();
        let prepared = self
            .prepare(route, kind, metadata, message)
            .instrument(span.span().clone())
            .await;
        let p = match prepared {
            Ok(p) => p,
            Err(status) => {
                span.fail(&status);
                return Err(status);
            }
        };
        let payload = Payload {
            metadata: Some(p.metadata),
            data: codec::encode(&p.message),
        };
        let stream = if hints == CallHints::NONE {
            self.rsocket.request_stream(payload)
        } else {
            self.rsocket.request_stream_hinted(payload, hints)
        };
        Ok(Streaming::new(stream, self.max_decode, Side::Client)
            .with_deadline(deadline)
            .with_span(span))
    }

    /// Starts a channel whose first payload is the header (route and
    /// metadata, no data) and whose other payloads are the messages. The
    /// callers apply the request's deadline.
    async fn channel<S, M, T>(
        &self,
        route: &'static str,
        kind: MethodKind,
        request: Request<S>,
        span: &tracing::Span,
    ) -> Result<Streaming<T>, Status>
    where
        S: Stream<Item = M> + Send + 'static,
        M: Message + 'static,
    {
        let (metadata, messages) = request.into_parts();
        let p = self
            .prepare(route, kind, metadata, messages)
            .instrument(span.clone())
            .await?;
        let header = Payload {
            metadata: Some(p.metadata),
            data: Bytes::new(),
        };
        let mut encoder = codec::ChunkEncoder::default();
        let rest: PayloadStream = p
            .message
            .map(move |m| Ok(Payload::new(encoder.encode(&m))))
            .boxed();
        let stream = self.rsocket.request_channel(header, rest);
        Ok(Streaming::new(stream, self.max_decode, Side::Client))
    }

    /// A client-streaming call: REQUEST_CHANNEL answered with exactly one
    /// message. Waits for the server to complete after that message; a
    /// second message fails the call with `INTERNAL`. Its deadline works
    /// as a unary call's: an answer that arrived in time is not lost to a
    /// deadline that passed before the call's task ran again.
    pub async fn client_streaming<S, M, T>(
        &self,
        route: &'static str,
        request: Request<S>,
    ) -> Result<Response<T>, Status>
    where
        S: Stream<Item = M> + Send + 'static,
        M: Message + 'static,
        T: Message + Default,
    {
        let kind = MethodKind::ClientStreaming;
        let mut span = CallSpan::new("client", route, kind);
        let deadline = self.deadline(&request);
        let call = async {
            let mut responses = self
                .channel::<S, M, T>(route, kind, request, &tracing::Span::current())
                .await?;
            let message = responses.message().await?.ok_or_else(|| {
                Status::internal("the server completed the call without a message")
            })?;
            if responses.message().await?.is_some() {
                return Err(Status::internal(
                    "the server sent more than one message for a client-streaming call",
                ));
            }
            Ok(Response::from_parts(responses.metadata().clone(), message))
        };
        let result = with_deadline(deadline, call)
            .instrument(span.span().clone())
            .await;
        span.finish(&result);
        result
    }

    /// A bidirectional call: REQUEST_CHANNEL. Returns once the request is
    /// prepared; see [`Client::server_streaming`].
    pub async fn bidi_streaming<S, M, T>(
        &self,
        route: &'static str,
        request: Request<S>,
    ) -> Result<Streaming<T>, Status>
    where
        S: Stream<Item = M> + Send + 'static,
        M: Message + 'static,
        T: Message + Default,
    {
        let kind = MethodKind::BidiStreaming;
        let mut span = CallSpan::new("client", route, kind);
        let deadline = self.deadline(&request);
        match self.channel(route, kind, request, span.span()).await {
            Ok(stream) => Ok(stream.with_deadline(deadline).with_span(span)),
            Err(status) => {
                span.fail(&status);
                Err(status)
            }
        }
    }
}

/// A sent request's answer, as [`RSocket::request_response`] returns it.
type Sent<'a> = BoxFuture<'a, Result<Option<Payload>, RequestError>>;

pin_project! {
    /// A unary call, as [`Client::unary_hinted`] returns it: small (the
    /// request, then the sent request's future), so that moving it into a
    /// task or a `FuturesUnordered` costs little.
    struct UnaryCall<'a, R, M, T> {
        client: &'a Client<R>,
        route: &'static str,
        hints: CallHints,
        state: UnaryState<'a, M, T>,
    }
}

enum UnaryState<'a, M, T> {
    /// Not polled yet.
    Start(Request<M>),
    /// The common case: sent, waiting for the answer.
    Sending(Sent<'a>),
    /// The same over a [`Requester`], its future unboxed.
    Direct(ResponseFuture),
    /// With interceptors, a deadline or a span listener.
    Slow(BoxFuture<'a, Result<Response<T>, Status>>),
    /// Failed before sending.
    Failed(Status),
    Done,
}

impl<'a, R, M, T> Future for UnaryCall<'a, R, M, T>
where
    R: RSocket,
    M: Message + 'a,
    T: Message + Default + 'a,
{
    type Output = Result<Response<T>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let UnaryState::Start(_) = this.state {
            if let UnaryState::Start(request) = std::mem::replace(this.state, UnaryState::Done) {
                let started = this.client.start_unary(this.route, request, *this.hints);
                // What is replaced is the `Done` just put there: nothing to
                // drop (an assignment would call the state's drop glue).
                std::mem::forget(std::mem::replace(this.state, started));
            }
        }
        let output = match this.state {
            UnaryState::Sending(sent) => {
                let response = futures::ready!(sent.as_mut().poll(cx));
                this.client.unary_response(response)
            }
            UnaryState::Direct(sent) => {
                let response = futures::ready!(Pin::new(sent).poll(cx));
                this.client.unary_response(response)
            }
            UnaryState::Slow(call) => futures::ready!(call.as_mut().poll(cx)),
            UnaryState::Failed(_) => match std::mem::replace(this.state, UnaryState::Done) {
                UnaryState::Failed(status) => Err(status),
                _ => Err(polled_after_completion()),
            },
            UnaryState::Start(_) | UnaryState::Done => Err(polled_after_completion()),
        };
        *this.state = UnaryState::Done;
        Poll::Ready(output)
    }
}

fn polled_after_completion() -> Status {
    Status::internal("the call's future was polled after it completed")
}

/// Runs `call` until `deadline`; when it passes, `call` is dropped (which
/// cancels the request on the wire) and the result is `DEADLINE_EXCEEDED`.
/// Once started, `call` is polled once more when the deadline has passed,
/// so that an answer that arrived before the task ran is not thrown away;
/// a call whose deadline passed before its first poll is not started. The
/// timer is boxed and only made when there is a deadline, so that a call
/// without one carries no timer state.
async fn with_deadline<T>(
    deadline: Option<Instant>,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let mut call = std::pin::pin!(call);
    let mut timer = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
    let mut started = false;
    std::future::poll_fn(move |cx| {
        let passed = timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if started || !passed {
            started = true;
            if let Poll::Ready(result) = call.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
        }
        if passed {
            Poll::Ready(Err(Status::deadline_exceeded("the call's deadline passed")))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// A request's payload when no interceptor runs: the metadata encoded with
/// the route, the message in protobuf.
fn request_payload<M: Message>(
    route: &'static str,
    metadata: &Metadata,
    message: &M,
) -> Result<Payload, Status> {
    let (metadata, data) = codec::encode_request(metadata, route, message)
        .map_err(|e| Status::internal(format!("cannot encode the request metadata: {e}")))?;
    Ok(Payload {
        metadata: Some(metadata),
        data,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::channel::oneshot;
    use rsocket_core::async_trait;

    use super::*;
    use crate::Code;

    /// Answers its one request/response with what is sent on the channel.
    struct Answers(Mutex<Option<oneshot::Receiver<Payload>>>);

    #[async_trait]
    impl RSocket for Answers {
        async fn request_response(&self, _: Payload) -> Result<Option<Payload>, RequestError> {
            let answer = self.0.lock().ok().and_then(|mut a| a.take());
            match answer {
                Some(answer) => Ok(answer.await.ok()),
                None => Err(RequestError::Cancelled),
            }
        }
    }

    /// Answers its one request/channel with what is sent on the channel,
    /// then completes.
    struct ChannelAnswers(Mutex<Option<oneshot::Receiver<Payload>>>);

    impl RSocket for ChannelAnswers {
        fn request_channel(&self, _: Payload, _: PayloadStream) -> PayloadStream {
            match self.0.lock().ok().and_then(|mut a| a.take()) {
                Some(answer) => futures::FutureExt::into_stream(answer)
                    .filter_map(|a| async { a.ok().map(Ok) })
                    .boxed(),
                None => rsocket_core::error_stream(RequestError::Cancelled),
            }
        }
    }

    /// As [`an_answer_in_hand_beats_a_deadline_passed_since`], for a
    /// client-streaming call.
    #[tokio::test(start_paused = true)]
    async fn a_client_streaming_answer_in_hand_beats_a_deadline_passed_since() {
        let (tx, rx) = oneshot::channel();
        let client = Client::new(ChannelAnswers(Mutex::new(Some(rx))));
        let mut request = Request::new(futures::stream::iter([prost_types::Timestamp::default()]));
        request.set_timeout(Duration::from_millis(100));
        let call = client.client_streaming::<_, _, prost_types::Timestamp>("a.B/C", request);
        let mut call = std::pin::pin!(call);
        assert!(futures::poll!(call.as_mut()).is_pending(), "sent, waiting");
        let reply = prost_types::Timestamp {
            seconds: 9,
            nanos: 0,
        };
        assert!(tx.send(Payload::new(codec::encode(&reply))).is_ok());
        tokio::time::advance(Duration::from_millis(100)).await;
        let seconds = call.await.map(|r| r.into_inner().seconds);
        assert_eq!(seconds, Ok(9));

        // Without an answer, the deadline fails it.
        let (_tx, rx) = oneshot::channel();
        let client = Client::new(ChannelAnswers(Mutex::new(Some(rx))));
        let mut request = Request::new(futures::stream::iter([prost_types::Timestamp::default()]));
        request.set_timeout(Duration::from_millis(100));
        let call = client.client_streaming::<_, _, prost_types::Timestamp>("a.B/C", request);
        let code = call.await.map(drop).map_err(|s| s.code());
        assert_eq!(code, Err(Code::DeadlineExceeded));
    }

    fn answered() -> (Client<Answers>, oneshot::Sender<Payload>) {
        let (tx, rx) = oneshot::channel();
        (Client::new(Answers(Mutex::new(Some(rx)))), tx)
    }

    fn timed(timeout: Duration) -> Request<prost_types::Timestamp> {
        let mut request = Request::new(prost_types::Timestamp::default());
        request.set_timeout(timeout);
        request
    }

    /// The answer arrives before the deadline, and the call's task is
    /// polled only once the deadline has passed too (a busy runtime): the
    /// answer is the call's result, not `DEADLINE_EXCEEDED`.
    #[tokio::test(start_paused = true)]
    async fn an_answer_in_hand_beats_a_deadline_passed_since() {
        let (client, answer) = answered();
        let call =
            client.unary::<_, prost_types::Timestamp>("a.B/C", timed(Duration::from_millis(100)));
        let mut call = std::pin::pin!(call);
        assert!(futures::poll!(call.as_mut()).is_pending(), "sent, waiting");
        let reply = prost_types::Timestamp {
            seconds: 7,
            nanos: 0,
        };
        assert!(answer.send(Payload::new(codec::encode(&reply))).is_ok());
        tokio::time::advance(Duration::from_millis(100)).await;
        let seconds = call.await.map(|r| r.into_inner().seconds);
        assert_eq!(seconds, Ok(7));
    }

    /// Without an answer, the deadline still fails the call; a deadline
    /// already passed when the call starts sends nothing.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_fails_a_call_without_an_answer() {
        let (client, _answer) = answered();
        let call =
            client.unary::<_, prost_types::Timestamp>("a.B/C", timed(Duration::from_millis(100)));
        let code = call.await.map(drop).map_err(|s| s.code());
        assert_eq!(code, Err(Code::DeadlineExceeded));

        let (client, _answer) = answered();
        let call = client.unary::<_, prost_types::Timestamp>("a.B/C", timed(Duration::ZERO));
        let code = call.await.map(drop).map_err(|s| s.code());
        assert_eq!(code, Err(Code::DeadlineExceeded));
        let unsent = client.rsocket().0.lock().map(|a| a.is_some());
        assert_eq!(unsent.ok(), Some(true), "nothing was sent");
    }
}
