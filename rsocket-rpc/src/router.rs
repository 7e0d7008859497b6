//! [`Router`]: services behind one [`RSocket`] responder.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use rsocket_core::{
    async_trait, ErrorCode, Interaction, Payload, PayloadStream, RSocket, RequestError,
};
use tracing::Instrument;

use crate::call::{interaction_bit, CallInfo, CallSpan};
use crate::codec::DEFAULT_MAX_DECODING_MESSAGE_SIZE;
use crate::interceptor::{Interceptor, Interceptors};
use crate::metadata::{parse_request, sole_route, Layout};
use crate::server::{Input, MethodInfo, Reply, ServerCall, ServerReply, Service, SingleReply};
use crate::Metadata;
use crate::Status;

/// Serves [`Service`]s: reads each request's route, checks it against the
/// services' methods, runs the interceptors and dispatches to the handler.
/// It implements [`RSocket`], so it is the responder a `Server` (or a
/// client, for calls from the server) is given.
///
/// ```
/// # use rsocket_rpc::Router;
/// # fn demo(greeter: impl rsocket_rpc::codegen::Service) {
/// let router = Router::new()
///     .add_service(greeter)
///     .interceptor(rsocket_rpc::interceptor_fn(|_call| Ok(())));
/// # let _ = router; }
/// ```
///
/// Cloning is cheap: clones share the service table.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    /// Keyed by the route's bytes: a request's route is looked up as it
    /// arrived, with no UTF-8 check (every key came from a `&str`).
    routes: HashMap<&'static [u8], Target, BuildHasherDefault<RouteHasher>>,
    interceptors: Interceptors,
    max_decode: usize,
}

#[derive(Clone)]
struct Target {
    service: Arc<dyn Service>,
    /// The method's index in the service's `methods()`.
    index: usize,
    method: MethodInfo,
    /// The interactions the method is called with, one bit each
    /// ([`MethodKind::accepted`](crate::MethodKind)).
    accepts: u8,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self.routes();
        f.debug_struct("Router")
            .field("routes", &routes)
            .field("interceptors", &self.inner.interceptors)
            .field("max_decoding_message_size", &self.inner.max_decode)
            .finish()
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A router with no services: a call that names a route is answered
    /// `UNIMPLEMENTED` (unknown method), one with no metadata, no route or
    /// malformed metadata `INVALID_ARGUMENT`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                routes: HashMap::default(),
                interceptors: Interceptors::default(),
                max_decode: DEFAULT_MAX_DECODING_MESSAGE_SIZE,
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Adds a service. A service with the same name replaces the earlier
    /// one's methods.
    pub fn add_service(mut self, service: impl Service) -> Self {
        let service: Arc<dyn Service> = Arc::new(service);
        let inner = self.inner_mut();
        let name = service.name();
        inner.routes.retain(|_, t| t.service.name() != name);
        for (index, method) in service.methods().iter().enumerate() {
            inner.routes.insert(
                method.route.as_bytes(),
                Target {
                    service: service.clone(),
                    index,
                    method: *method,
                    accepts: method.kind.accepted(),
                },
            );
        }
        self
    }

    /// Adds a server interceptor; interceptors run in the order added, after
    /// the route is resolved and before the handler is dispatched.
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.inner_mut().interceptors.push(interceptor);
        self
    }

    /// The largest request message decoded (default 4 MiB), checked before
    /// decoding. A larger single request message (unary, server-streaming,
    /// fire-and-forget) is answered `ERROR[INVALID]` with
    /// `RESOURCE_EXHAUSTED` and the handler does not run; a larger message
    /// of a client-streaming or bidirectional input reaches the handler as
    /// an `Err` item of its [`Streaming`](crate::Streaming) with
    /// `RESOURCE_EXHAUSTED`, after which the input ends.
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.inner_mut().max_decode = limit;
        self
    }

    /// Every route served, sorted.
    pub fn routes(&self) -> Vec<&'static str> {
        let mut routes: Vec<_> = self.inner.routes.values().map(|t| t.method.route).collect();
        routes.sort_unstable();
        routes
    }
}

impl Inner {
    /// The common case, read in place: metadata that is a routing entry
    /// alone, naming a method callable with `interaction`. Anything else
    /// is left to [`Inner::resolve`].
    #[inline(always)]
    fn resolve_sole(&self, interaction: Interaction, metadata: Option<&Bytes>) -> Option<&Target> {
        let target = self.routes.get(sole_route(metadata?)?)?;
        (target.accepts & interaction_bit(interaction) != 0).then_some(target)
    }

    /// Reads the route and checks that it names a method callable with
    /// `interaction`. Failures are refusals: `ERROR[REJECTED]`.
    #[inline]
    fn resolve(
        &self,
        interaction: Interaction,
        metadata: Option<&Bytes>,
    ) -> Result<(&Target, Metadata, Layout), Status> {
        match self.resolve_sole(interaction, metadata) {
            Some(target) => Ok((target, Metadata::default(), Layout::Composite)),
            None => self.resolve_parsed(interaction, metadata),
        }
    }

    /// [`resolve`](Self::resolve) for every other case: the metadata
    /// parsed whole (composite with other entries, or rsocket-rpc-java's
    /// layout), and the refusals.
    fn resolve_parsed(
        &self,
        interaction: Interaction,
        metadata: Option<&Bytes>,
    ) -> Result<(&Target, Metadata, Layout), Status> {
        let inbound = parse_request(metadata)
            .map_err(|e| Status::invalid_argument(e.to_string()).rejected())?;
        let route = inbound.route.as_str();
        let target = self
            .routes
            .get(route.as_bytes())
            .ok_or_else(|| Status::unimplemented(format!("unknown method {route:?}")).rejected())?;
        let (metadata, layout) = (inbound.metadata, inbound.layout);
        if !target.method.kind.accepts(interaction) {
            let kind = target.method.kind;
            return Err(Status::unimplemented(format!(
                "{} is a {} method; call it with {:?}, not {interaction:?}",
                target.method.route,
                kind.as_str(),
                kind.interaction(),
            ))
            .rejected());
        }
        Ok((target, metadata, layout))
    }

    /// Runs the interceptors (in the call's span); a rejection goes out
    /// as `ERROR[REJECTED]`, a panic as `INTERNAL`, like a handler's.
    async fn intercept(
        &self,
        target: &Target,
        metadata: Metadata,
        span: &CallSpan,
    ) -> Result<Metadata, Status> {
        let mut info = CallInfo::new(target.method.route, target.method.kind, metadata);
        let run = self
            .interceptors
            .run(&mut info)
            .instrument(span.span().clone());
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(verdict) => verdict.map_err(Status::rejected)?,
            Err(_) => return Err(Status::internal("an interceptor panicked")),
        }
        Ok(info.into_metadata())
    }

    /// Hands the call to the service, once the interceptors (if any) have
    /// let it through. A failure here is recorded in the span.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        target: &Target,
        metadata: Metadata,
        layout: Layout,
        interaction: Interaction,
        data: Bytes,
        rest: Option<PayloadStream>,
        mut span: CallSpan,
    ) -> Result<Reply, Status> {
        let input = match (interaction, layout) {
            (Interaction::RequestChannel, Layout::Composite) => {
                if !data.is_empty() {
                    let status = Status::invalid_argument(
                        "the first payload of a channel carries only metadata; its data must be empty",
                    )
                    .with_wire(ErrorCode::INVALID);
                    span.fail(&status);
                    return Err(status);
                }
                Input::Stream(rest.unwrap_or_else(|| futures::stream::empty().boxed()))
            }
            // rsocket-rpc-java sends the first message in REQUEST_CHANNEL.
            (Interaction::RequestChannel, Layout::RpcV1) => {
                let first = futures::stream::once(futures::future::ready(Ok(Payload::new(data))));
                Input::Stream(match rest {
                    Some(rest) => first.chain(rest).boxed(),
                    None => first.boxed(),
                })
            }
            _ => Input::Message(data),
        };
        let call = ServerCall::new(metadata, input, self.max_decode, span);
        let method = target.index;
        // A panic here drops the span, which records it as `INTERNAL`.
        match catch_unwind(AssertUnwindSafe(|| target.service.call(method, call))) {
            Ok(reply) => Ok(reply.0),
            Err(_) => Err(panicked()),
        }
    }

    /// A call answered with one payload: REQUEST_RESPONSE or REQUEST_FNF.
    /// Without interceptors, the service's future is returned as it is:
    /// one allocation per call, the handler's.
    fn single(self: &Arc<Self>, interaction: Interaction, request: Payload) -> SingleReply {
        let resolved = match self.resolve_sole(interaction, request.metadata.as_ref()) {
            Some(target) if self.interceptors.is_empty() => {
                return self.single_direct(target, request.data);
            }
            Some(target) => Ok((target, Metadata::default(), Layout::Composite)),
            None => self.resolve_parsed(interaction, request.metadata.as_ref()),
        };
        let (target, metadata, layout) = match resolved {
            Ok(resolved) => resolved,
            Err(status) => return refused_single(log_refusal(status)),
        };
        let span = CallSpan::new("server", target.method.route, target.method.kind);
        if self.interceptors.is_empty() {
            return match self.dispatch(
                target,
                metadata,
                layout,
                interaction,
                request.data,
                None,
                span,
            ) {
                Ok(reply) => single_reply(reply),
                Err(status) => refused_single(status),
            };
        }
        let inner = Arc::clone(self);
        let target = target.clone();
        Box::pin(async move {
            let mut span = span;
            let metadata = match inner.intercept(&target, metadata, &span).await {
                Ok(metadata) => metadata,
                Err(status) => {
                    span.fail(&status);
                    return Err(status.into());
                }
            };
            match inner.dispatch(
                &target,
                metadata,
                layout,
                interaction,
                request.data,
                None,
                span,
            ) {
                Ok(reply) => single_reply(reply).await,
                Err(status) => Err(status.into()),
            }
        })
    }

    /// The common single-response call, straight to the service: a
    /// routing entry alone (no call metadata, the composite layout, so the
    /// input is the request's data as it is) and no interceptors. What
    /// [`dispatch`](Self::dispatch) and [`single_reply`] do for it,
    /// without their general cases.
    #[inline]
    fn single_direct(&self, target: &Target, data: Bytes) -> SingleReply {
        let span = CallSpan::new("server", target.method.route, target.method.kind);
        let call = ServerCall::new(
            Metadata::default(),
            Input::Message(data),
            self.max_decode,
            span,
        );
        // A panic here drops the span, which records it as `INTERNAL`.
        match catch_unwind(AssertUnwindSafe(|| target.service.call(target.index, call))) {
            Ok(ServerReply(Reply::Single(fut))) => fut,
            Ok(ServerReply(reply)) => single_reply(reply),
            Err(_) => refused_single(panicked()),
        }
    }

    /// A call answered with a stream: REQUEST_STREAM or REQUEST_CHANNEL.
    /// Without interceptors, the service's stream is returned as it is.
    fn stream(
        self: &Arc<Self>,
        interaction: Interaction,
        first: Payload,
        rest: Option<PayloadStream>,
    ) -> PayloadStream {
        let (target, metadata, layout) = match self.resolve(interaction, first.metadata.as_ref()) {
            Ok(resolved) => resolved,
            Err(status) => return error_stream(log_refusal(status)),
        };
        let span = CallSpan::new("server", target.method.route, target.method.kind);
        if self.interceptors.is_empty() {
            return match self.dispatch(
                target,
                metadata,
                layout,
                interaction,
                first.data,
                rest,
                span,
            ) {
                Ok(reply) => stream_reply(reply),
                Err(status) => error_stream(status),
            };
        }
        let inner = Arc::clone(self);
        let target = target.clone();
        let start = async move {
            let mut span = span;
            let metadata = match inner.intercept(&target, metadata, &span).await {
                Ok(metadata) => metadata,
                Err(status) => {
                    span.fail(&status);
                    return Err(status);
                }
            };
            inner
                .dispatch(
                    &target,
                    metadata,
                    layout,
                    interaction,
                    first.data,
                    rest,
                    span,
                )
                .map(stream_reply)
        };
        Box::pin(Starting::Future(start.boxed()))
    }
}

/// The reply of a single-response call.
#[inline]
fn single_reply(reply: Reply) -> SingleReply {
    match reply {
        Reply::Single(fut) => fut,
        Reply::Stream(_) => refused_single(Status::internal(
            "the generated service returned a stream for a single-response method",
        )),
    }
}

/// The reply of a streaming call.
fn stream_reply(reply: Reply) -> PayloadStream {
    match reply {
        Reply::Stream(stream) => stream,
        Reply::Single(fut) => futures::stream::once(fut)
            .filter_map(|r| futures::future::ready(r.transpose()))
            .boxed(),
    }
}

fn refused_single(status: Status) -> SingleReply {
    Box::pin(futures::future::ready(Err(status.into())))
}

fn error_stream(status: Status) -> PayloadStream {
    rsocket_core::error_stream(status)
}

/// Logs a request refused before any handler ran.
fn log_refusal(status: Status) -> Status {
    tracing::debug!(code = %status.code(), message = status.message(), "refused a call");
    status
}

fn panicked() -> Status {
    Status::internal("the handler panicked")
}

/// The response stream of a streaming call with interceptors: runs them,
/// then the service's stream.
enum Starting {
    Future(BoxFuture<'static, Result<PayloadStream, Status>>),
    Running(PayloadStream),
    Done,
}

impl Stream for Starting {
    type Item = Result<Payload, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut *self {
                Self::Future(fut) => match fut.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => *self = Self::Running(stream),
                    Poll::Ready(Err(status)) => {
                        *self = Self::Done;
                        return Poll::Ready(Some(Err(status.into())));
                    }
                },
                Self::Running(stream) => return stream.poll_next_unpin(cx),
                Self::Done => return Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Self::Future(_) => (0, None),
            Self::Running(stream) => stream.size_hint(),
            Self::Done => (0, Some(0)),
        }
    }
}

#[async_trait]
impl RSocket for Router {
    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        self.inner
            .single(Interaction::FireAndForget, request)
            .await
            .map(drop)
    }

    // Not an `async fn`: the service's future is returned as it is, rather
    // than boxed again inside this method's.
    fn request_response<'a, 'b>(
        &'a self,
        request: Payload,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Payload>, RequestError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        self.inner.single(Interaction::RequestResponse, request)
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        self.inner.stream(Interaction::RequestStream, request, None)
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        self.inner
            .stream(Interaction::RequestChannel, first, Some(rest))
    }
}

/// A multiplicative hash (as rustc's FxHash) of a route's length and three
/// of its words: the first eight bytes, the eight in the middle and the last
/// eight (overlapping when the route is shorter than 24 bytes). Routes are
/// chosen by the application and hashing them is on every call's path:
/// this costs the same for any length, where SipHash costs several times
/// more. Routes that differ only outside those bytes share a hash, which
/// costs a comparison each, never a wrong answer.
#[derive(Default)]
struct RouteHasher(u64);

impl RouteHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::K).rotate_left(26);
    }
}

impl Hasher for RouteHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let middle = bytes.len().saturating_sub(8) / 2;
        let words = (
            bytes.first_chunk::<8>(),
            bytes.get(middle..).and_then(<[u8]>::first_chunk::<8>),
            bytes.last_chunk::<8>(),
        );
        if let (Some(first), Some(middle), Some(last)) = words {
            self.add(u64::from_le_bytes(*first));
            self.add(u64::from_le_bytes(*middle));
            self.add(u64::from_le_bytes(*last));
        } else {
            let mut word = [0; 8];
            let n = bytes.len().min(8);
            word[..n].copy_from_slice(&bytes[..n]);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Notes the name of every span made and the message of every event.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    struct Message<'a>(&'a mut Vec<String>);

    impl tracing::field::Visit for Message<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            if field.name() == "message" {
                self.0.push(format!("event {value:?}"));
            }
        }
    }

    impl tracing::Subscriber for Recorder {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            if let Ok(mut log) = self.0.lock() {
                log.push(format!("span {}", span.metadata().name()));
            }
            tracing::span::Id::from_u64(1)
        }

        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

        fn event(&self, event: &tracing::Event<'_>) {
            if let Ok(mut log) = self.0.lock() {
                event.record(&mut Message(&mut log));
            }
        }

        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Calls refused while reading the route get a debug event, no span;
    /// on a router with no services, a call with no metadata is
    /// `INVALID_ARGUMENT` and one naming a route `UNIMPLEMENTED`.
    #[tokio::test]
    async fn refusals_before_routing_are_events_not_spans() {
        let recorder = Recorder::default();
        let router = Router::new();
        let routed = Metadata::new()
            .encode_request("a.B/C")
            .expect("a valid route");
        let _guard = tracing::subscriber::set_default(recorder.clone());
        let no_metadata = router.request_response(Payload::new(Bytes::new())).await;
        let status = no_metadata.map_err(Status::from).err();
        assert_eq!(status.map(|s| s.code()), Some(crate::Code::InvalidArgument));
        let mut unknown = router.request_stream(Payload {
            metadata: Some(routed),
            data: Bytes::new(),
        });
        let status = match unknown.next().await {
            Some(Err(e)) => Some(Status::from(e).code()),
            _ => None,
        };
        assert_eq!(status, Some(crate::Code::Unimplemented));
        let log = recorder.0.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(!log.iter().any(|l| l.starts_with("span ")), "{log:?}");
        let refusals = log.iter().filter(|l| *l == "event refused a call");
        assert_eq!(refusals.count(), 2, "{log:?}");
    }
}
