//! [`Router`]: services behind one [`RSocket`] responder.

use std::collections::HashMap;
use std::fmt;
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

use crate::call::{CallInfo, CallSpan};
use crate::codec::DEFAULT_MAX_DECODING_MESSAGE_SIZE;
use crate::interceptor::{Interceptor, Interceptors};
use crate::metadata::{parse_request, sole_route, Layout};
use crate::server::{Input, MethodInfo, Payloads, Reply, ServerCall, Service};
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
    routes: HashMap<&'static [u8], Target, BuildHasherDefault<Fnv>>,
    interceptors: Interceptors,
    max_decode: usize,
}

#[derive(Clone)]
struct Target {
    service: Arc<dyn Service>,
    method: MethodInfo,
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
    /// A router with no services: every call is answered `UNIMPLEMENTED`.
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
        for method in service.methods() {
            inner.routes.insert(
                method.route.as_bytes(),
                Target {
                    service: service.clone(),
                    method: *method,
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

    /// The largest request message decoded (default 4 MiB); a larger one is
    /// answered `ERROR[INVALID]` with `RESOURCE_EXHAUSTED` before decoding.
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
    /// Reads the route and checks that it names a method callable with
    /// `interaction`. Failures are refusals: `ERROR[REJECTED]`.
    fn resolve(
        &self,
        interaction: Interaction,
        metadata: Option<&Bytes>,
    ) -> Result<(&Target, Metadata, Layout), Status> {
        // The common shape first, read in place: a routing entry alone.
        let sole = metadata
            .and_then(|m| sole_route(m))
            .and_then(|route| self.routes.get(route));
        let (target, metadata, layout) = match sole {
            Some(target) => (target, Metadata::default(), Layout::Composite),
            None => {
                let inbound = parse_request(metadata)
                    .map_err(|e| Status::invalid_argument(e.to_string()).rejected())?;
                let route = inbound.route.as_str();
                let target = self.routes.get(route.as_bytes()).ok_or_else(|| {
                    Status::unimplemented(format!("unknown method {route:?}")).rejected()
                })?;
                (target, inbound.metadata, inbound.layout)
            }
        };
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

    async fn begin(
        &self,
        target: &Target,
        metadata: Metadata,
        layout: Layout,
        interaction: Interaction,
        data: Bytes,
        rest: Option<PayloadStream>,
    ) -> Result<Reply, Status> {
        let metadata = if self.interceptors.is_empty() {
            metadata
        } else {
            let mut info = CallInfo::new(target.method.route, target.method.kind, metadata);
            self.interceptors
                .run(&mut info)
                .await
                .map_err(Status::rejected)?;
            info.into_metadata()
        };
        self.dispatch(target, metadata, layout, interaction, data, rest)
    }

    /// Hands the call to the service, once the interceptors (if any) have
    /// let it through.
    fn dispatch(
        &self,
        target: &Target,
        metadata: Metadata,
        layout: Layout,
        interaction: Interaction,
        data: Bytes,
        rest: Option<PayloadStream>,
    ) -> Result<Reply, Status> {
        let input = match (interaction, layout) {
            (Interaction::RequestChannel, Layout::Composite) => {
                if !data.is_empty() {
                    return Err(Status::invalid_argument(
                        "the first payload of a channel carries only metadata; its data must be empty",
                    )
                    .with_wire(ErrorCode::INVALID));
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
        let call = ServerCall::new(metadata, input, self.max_decode);
        let method = target.method.name;
        match catch_unwind(AssertUnwindSafe(|| target.service.call(method, call))) {
            Ok(reply) => Ok(reply.0),
            Err(_) => Err(panicked()),
        }
    }

    /// A call answered with one payload: REQUEST_RESPONSE or REQUEST_FNF.
    async fn single(&self, interaction: Interaction, request: Payload) -> Result<Payload, Status> {
        let (target, metadata, layout) = self
            .resolve(interaction, request.metadata.as_ref())
            .map_err(log_refusal)?;
        let mut span = CallSpan::new("server", target.method.route, target.method.kind);
        // Without interceptors everything up to the handler's (boxed)
        // future is synchronous, so this future stays small: it is
        // allocated and moved on every call.
        let reply = if self.interceptors.is_empty() {
            self.dispatch(target, metadata, layout, interaction, request.data, None)
        } else {
            Box::pin(
                self.begin(target, metadata, layout, interaction, request.data, None)
                    .instrument(span.span().clone()),
            )
            .await
        };
        let result = match reply {
            Ok(Reply::Single(fut)) => {
                let fut = if span.enabled() {
                    fut.instrument(span.span().clone()).boxed()
                } else {
                    fut
                };
                AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(panicked()))
            }
            Ok(Reply::Stream(_)) => Err(Status::internal(
                "the generated service returned a stream for a single-response method",
            )),
            Err(status) => Err(status),
        };
        span.finish(&result);
        result
    }

    fn stream(
        self: Arc<Self>,
        interaction: Interaction,
        first: Payload,
        rest: Option<PayloadStream>,
    ) -> PayloadStream {
        let start = async move {
            let (target, metadata, layout) = self
                .resolve(interaction, first.metadata.as_ref())
                .map_err(log_refusal)?;
            let mut span = CallSpan::new("server", target.method.route, target.method.kind);
            let begun = self
                .begin(target, metadata, layout, interaction, first.data, rest)
                .instrument(span.span().clone())
                .await;
            let state = match begun {
                Ok(Reply::Single(fut)) => State::Single(fut),
                Ok(Reply::Stream(fut)) => State::Start(fut),
                Err(status) => {
                    span.fail(&status);
                    return Err(status);
                }
            };
            Ok(ReplyStream { state, span })
        };
        Box::pin(Starting::Future(start.boxed()))
    }
}

/// Logs a request refused before any handler ran.
fn log_refusal(status: Status) -> Status {
    tracing::debug!(code = %status.code(), message = status.message(), "refused a call");
    status
}

fn panicked() -> Status {
    Status::internal("the handler panicked")
}

/// The response stream of a streaming call: resolves the router's setup
/// (route, interceptors), then runs the [`ReplyStream`].
enum Starting {
    Future(BoxFuture<'static, Result<ReplyStream, Status>>),
    Running(ReplyStream),
    Done,
}

impl Stream for Starting {
    type Item = Result<Payload, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut *self {
                Self::Future(fut) => match fut.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(reply)) => *self = Self::Running(reply),
                    Poll::Ready(Err(status)) => {
                        *self = Self::Done;
                        return Poll::Ready(Some(Err(status.into())));
                    }
                },
                Self::Running(reply) => {
                    return match reply.poll_next_unpin(cx) {
                        Poll::Ready(Some(Err(status))) => {
                            *self = Self::Done;
                            Poll::Ready(Some(Err(status.into())))
                        }
                        Poll::Ready(None) => {
                            *self = Self::Done;
                            Poll::Ready(None)
                        }
                        other => other.map(|item| item.map(|r| r.map_err(RequestError::from))),
                    }
                }
                Self::Done => return Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Self::Future(_) => (0, None),
            Self::Running(reply) => reply.size_hint(),
            Self::Done => (0, Some(0)),
        }
    }
}

/// A handler's reply as a stream of payloads, inside the call's span,
/// with panics turned into `INTERNAL` and the outcome recorded.
struct ReplyStream {
    state: State,
    span: CallSpan,
}

enum State {
    /// Client streaming: one payload to come.
    Single(BoxFuture<'static, Result<Payload, Status>>),
    /// Server streaming or bidi: the handler's future, then its stream.
    Start(BoxFuture<'static, Result<Payloads, Status>>),
    Run(Payloads),
    Done,
}

impl Stream for ReplyStream {
    type Item = Result<Payload, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _enter = this.span.span().clone().entered();
        let polled = catch_unwind(AssertUnwindSafe(|| poll_state(&mut this.state, cx)));
        let item = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(item)) => item,
            Err(_) => Some(Err(panicked())),
        };
        match &item {
            Some(Ok(_)) => {}
            Some(Err(status)) => {
                this.state = State::Done;
                this.span.fail(status);
            }
            None => {
                this.state = State::Done;
                this.span.finish::<()>(&Ok(()));
            }
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.state {
            State::Single(_) => (1, Some(1)),
            State::Start(_) => (0, None),
            State::Run(s) => s.size_hint(),
            State::Done => (0, Some(0)),
        }
    }
}

fn poll_state(state: &mut State, cx: &mut Context<'_>) -> Poll<Option<Result<Payload, Status>>> {
    loop {
        match state {
            State::Single(fut) => {
                let out = futures::ready!(fut.poll_unpin(cx));
                *state = State::Done;
                return Poll::Ready(Some(out));
            }
            State::Start(fut) => match futures::ready!(fut.poll_unpin(cx)) {
                Ok(stream) => *state = State::Run(stream),
                Err(status) => return Poll::Ready(Some(Err(status))),
            },
            State::Run(stream) => return stream.poll_next_unpin(cx),
            State::Done => return Poll::Ready(None),
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
            .map_err(RequestError::from)
    }

    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        self.inner
            .single(Interaction::RequestResponse, request)
            .await
            .map(Some)
            .map_err(RequestError::from)
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        self.inner
            .clone()
            .stream(Interaction::RequestStream, request, None)
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        self.inner
            .clone()
            .stream(Interaction::RequestChannel, first, Some(rest))
    }
}

/// FNV-1a: routes are short and chosen by the application, and hashing
/// them is on every call's path, where SipHash costs several times more.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}
