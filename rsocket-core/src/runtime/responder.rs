//! Running the responder: each handler is polled once on the connection's
//! task and gets a task of its own only if it is not done at once; each
//! stream's output runs in a spawned pump (`stream.rs`) that polls the user
//! stream only while the peer has granted credit.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tracing::{debug_span, warn, Instrument};

use super::shared::Shared;
use super::stream::{handler_panicked, ChannelInbound, Pump};
use crate::error::RequestError;
use crate::frame::StreamId;
use crate::proto::{Event, Interaction, SendReady};
use crate::rsocket::{error_stream, RSocket};
use crate::Payload;

/// What [`dispatch`] left for the caller to do once it holds the
/// connection's state again.
pub(crate) enum Dispatched {
    /// Nothing (the work runs on, or needed nothing more).
    Started,
    /// A fire-and-forget or metadata-push handler finished right here: the
    /// caller counts it as done (`Connection::oneways_done`).
    OnewayDone,
    /// A request/response handler answered right here: the caller sends
    /// the answer with [`answer_now`], in its next lock of the state (one
    /// lock fewer per request than taking one here).
    Answered(StreamId, Result<Option<Payload>, RequestError>),
}

/// Starts the work for one event from the state machine; see
/// [`Dispatched`] for what is left to the caller.
///
/// Every handler is polled once right here, on the connection's task: one
/// that is ready at once (the common case for cheap handlers) finishes
/// without spawning a task. One that is not gets its own task. Handlers
/// must therefore not block in `poll` (the usual async rule).
///
/// Handlers are called on the `dyn RSocket` itself (`(*responder)`), not
/// through `impl RSocket for Arc<T>`, which would box every call twice.
pub(crate) fn dispatch(
    shared: &Arc<Shared>,
    responder: &Arc<dyn RSocket>,
    runners: &mut Runners,
    ev: Event,
    cx: &mut Context<'_>,
) -> Dispatched {
    match ev {
        Event::FireAndForget(payload) => {
            if runners.fire_and_forget(shared, responder, payload, cx) {
                Dispatched::OnewayDone
            } else {
                Dispatched::Started
            }
        }
        Event::MetadataPush(metadata) => {
            let responder = responder.clone();
            oneway_dispatched(
                shared,
                Box::pin(async move {
                    let _ = (*responder).metadata_push(metadata).await;
                }),
                debug_span!("metadata_push"),
                cx,
            )
        }
        Event::Request {
            stream_id,
            interaction,
            payload,
        } => {
            let span =
                debug_span!(parent: &shared.span, "stream", id = stream_id.get(), ?interaction);
            match interaction {
                Interaction::RequestResponse => {
                    // The handler borrows the responder: the future owns
                    // an `Arc` of it so that it can outlive this call.
                    match runners.rr.run(responder, payload, &span, cx) {
                        Ok(out) => return Dispatched::Answered(stream_id, out),
                        Err(fut) => {
                            tokio::spawn(
                                Respond {
                                    shared: shared.clone(),
                                    id: stream_id,
                                    fut,
                                    out: None,
                                    released: false,
                                }
                                .instrument(span),
                            );
                        }
                    }
                }
                Interaction::RequestStream => {
                    let stream =
                        catch_unwind(AssertUnwindSafe(|| (**responder).request_stream(payload)))
                            .unwrap_or_else(|_| error_stream(handler_panicked()));
                    let _g = span.enter();
                    Pump::spawn(shared.clone(), stream_id, stream, interaction, false);
                }
                Interaction::RequestChannel => {
                    let inbound = ChannelInbound::new(shared.clone(), stream_id);
                    let stream = catch_unwind(AssertUnwindSafe(|| {
                        (**responder).request_channel(payload, inbound.boxed())
                    }))
                    .unwrap_or_else(|_| error_stream(handler_panicked()));
                    let _g = span.enter();
                    // Look ahead like a requester's channel: a channel's
                    // output usually ends when its inbound does, which no
                    // size hint tells, and a requester that grants exactly
                    // as many credits as it expects items (as rsocket-py
                    // clients may) must still get COMPLETE.
                    Pump::spawn(shared.clone(), stream_id, stream, interaction, true);
                }
                Interaction::FireAndForget => {}
            }
            Dispatched::Started
        }
    }
}

/// Runs fire-and-forget and request/response handlers with one allocation
/// fewer per request: the future that owns a clone of the responder and
/// awaits the handler is written into the box the previous request's
/// future used, once that one has finished at once (the common case). A
/// handler that is not done at once takes its box into its task, and the
/// next request allocates a new one.
///
/// The futures' types have no names (`async` blocks), hence the trait
/// objects; one of each per connection driver.
pub(crate) struct Runners {
    fnf: Box<dyn RunOneway>,
    rr: Box<dyn RunRequest>,
}

/// What a request/response handler answers.
type Answer = Result<Option<Payload>, RequestError>;

impl Runners {
    /// Runners without boxes yet (the first request of each allocates).
    pub(crate) fn new() -> Self {
        Self {
            fnf: Box::new(Recycled::new(fnf_future)),
            rr: Box::new(Recycled::new(rr_future)),
        }
    }

    /// Polls the fire-and-forget handler for `payload` once, spawning it
    /// if it is not done (counted as running until it is). True when it
    /// finished here: the caller counts it as done
    /// (`Connection::oneways_done`).
    #[inline]
    pub(crate) fn fire_and_forget(
        &mut self,
        shared: &Arc<Shared>,
        responder: &Arc<dyn RSocket>,
        payload: Payload,
        cx: &mut Context<'_>,
    ) -> bool {
        self.fnf.run(shared, responder, payload, cx)
    }
}

impl std::fmt::Debug for Runners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runners").finish_non_exhaustive()
    }
}

/// The future that runs one request/response handler, owning what it
/// borrows.
async fn rr_future(responder: Arc<dyn RSocket>, payload: Payload) -> Answer {
    (*responder).request_response(payload).await
}

/// Runs one request/response handler (see [`Runners`]).
trait RunRequest: Send {
    /// Polls the handler for `payload` once in `span`: its answer, or its
    /// future when it is not done.
    fn run(
        &mut self,
        responder: &Arc<dyn RSocket>,
        payload: Payload,
        span: &tracing::Span,
        cx: &mut Context<'_>,
    ) -> Result<Answer, BoxFuture<'static, Answer>>;
}

impl<F, M> RunRequest for Recycled<F, M>
where
    M: Fn(Arc<dyn RSocket>, Payload) -> F + Send,
    F: Future<Output = Answer> + Send + 'static,
{
    fn run(
        &mut self,
        responder: &Arc<dyn RSocket>,
        payload: Payload,
        span: &tracing::Span,
        cx: &mut Context<'_>,
    ) -> Result<Answer, BoxFuture<'static, Answer>> {
        let mut boxed = self.fill(responder, payload);
        let ready = {
            let _g = span.enter();
            catch_unwind(AssertUnwindSafe(|| boxed.as_mut().poll(cx)))
        };
        match ready {
            Ok(Poll::Ready(out)) => {
                self.slot = Some(boxed);
                Ok(out)
            }
            Ok(Poll::Pending) => Err(boxed),
            // The future is dropped, not reused.
            Err(_) => Ok(Err(handler_panicked())),
        }
    }
}

/// The future that runs one fire-and-forget handler, owning what it
/// borrows.
async fn fnf_future(responder: Arc<dyn RSocket>, payload: Payload) {
    let _ = (*responder).fire_and_forget(payload).await;
}

/// Runs one oneway handler (see [`Runners`]).
trait RunOneway: Send {
    /// Polls the handler for `payload` once, spawning it if it is not
    /// done. True when it finished here.
    fn run(
        &mut self,
        shared: &Arc<Shared>,
        responder: &Arc<dyn RSocket>,
        payload: Payload,
        cx: &mut Context<'_>,
    ) -> bool;
}

/// The futures `make` builds, each in the box of the one before it when
/// that one finished at once.
struct Recycled<F, M> {
    /// A finished future's box (its captures already dropped).
    slot: Option<Pin<Box<F>>>,
    make: M,
}

impl<F, M> Recycled<F, M>
where
    M: Fn(Arc<dyn RSocket>, Payload) -> F,
{
    fn new(make: M) -> Self {
        Self { slot: None, make }
    }

    /// The future for `payload`, in the finished one's box when there is
    /// one.
    #[inline]
    fn fill(&mut self, responder: &Arc<dyn RSocket>, payload: Payload) -> Pin<Box<F>> {
        let fut = (self.make)(responder.clone(), payload);
        match self.slot.take() {
            Some(mut b) => {
                b.set(fut);
                b
            }
            None => Box::pin(fut),
        }
    }
}

impl<F, M> RunOneway for Recycled<F, M>
where
    M: Fn(Arc<dyn RSocket>, Payload) -> F + Send,
    F: Future<Output = ()> + Send + 'static,
{
    fn run(
        &mut self,
        shared: &Arc<Shared>,
        responder: &Arc<dyn RSocket>,
        payload: Payload,
        cx: &mut Context<'_>,
    ) -> bool {
        let mut boxed = self.fill(responder, payload);
        let span = debug_span!("fnf");
        let ready = {
            let _g = span.enter();
            match catch_unwind(AssertUnwindSafe(|| boxed.as_mut().poll(cx))) {
                Ok(poll) => poll.is_ready(),
                Err(_) => {
                    // Done, with nobody to tell; the future is not reused.
                    warn!("a fire-and-forget handler panicked");
                    return true;
                }
            }
        };
        if ready {
            self.slot = Some(boxed);
        } else {
            spawn_oneway(shared, boxed, span);
        }
        ready
    }
}

/// [`oneway`], as a [`Dispatched`].
fn oneway_dispatched(
    shared: &Arc<Shared>,
    fut: BoxFuture<'static, ()>,
    span: tracing::Span,
    cx: &mut Context<'_>,
) -> Dispatched {
    if oneway(shared, fut, span, cx) {
        Dispatched::OnewayDone
    } else {
        Dispatched::Started
    }
}

/// Sends the answer a request/response handler gave at once (see
/// [`Dispatched::Answered`]) and releases the stream's outbound half.
pub(crate) fn answer_now(
    conn: &mut crate::proto::Connection,
    id: StreamId,
    out: Result<Option<Payload>, RequestError>,
) {
    match out {
        Ok(p) => conn.answer_and_release(id, p),
        Err(e) => {
            conn.send_error(id, &e.to_stream_error());
            conn.release_send(id);
        }
    }
}

/// Polls a fire-and-forget or metadata-push handler once; spawns it if it
/// is not done. True when it finished here.
fn oneway(
    shared: &Arc<Shared>,
    mut fut: BoxFuture<'static, ()>,
    span: tracing::Span,
    cx: &mut Context<'_>,
) -> bool {
    let ready = {
        let _g = span.enter();
        match catch_unwind(AssertUnwindSafe(|| fut.poll_unpin(cx))) {
            Ok(poll) => poll.is_ready(),
            Err(_) => {
                warn!("a metadata-push handler panicked");
                return true;
            }
        }
    };
    if !ready {
        spawn_oneway(shared, fut, span);
    }
    ready
}

/// Runs a oneway handler that was not done at once on a task of its own,
/// counted as running until it finishes (see [`OnewayDone`]).
fn spawn_oneway<F>(shared: &Arc<Shared>, fut: F, span: tracing::Span)
where
    F: Future<Output = ()> + Send + 'static,
{
    let done = OnewayDone(shared.clone());
    tokio::spawn(
        async move {
            fut.await;
            drop(done);
        }
        .instrument(span),
    );
}

/// Counts a running fire-and-forget or metadata-push handler: dropped when
/// the handler finishes (or its task is aborted), which may resume reading.
struct OnewayDone(Arc<Shared>);

impl Drop for OnewayDone {
    fn drop(&mut self) {
        self.0.lock().oneway_done();
    }
}

/// A request/response handler: its result becomes PAYLOAD(N+C), PAYLOAD(C)
/// or ERROR, queued once the outbound queue has room (a handler answered on
/// the driver's task is queued at once instead; reading pauses if such
/// answers fill the queue). A CANCEL from the peer drops the handler's
/// future.
struct Respond {
    shared: Arc<Shared>,
    id: StreamId,
    fut: BoxFuture<'static, Answer>,
    /// The handler's result, waiting for room in the outbound queue.
    out: Option<Answer>,
    released: bool,
}

impl Future for Respond {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.out.is_none() {
            let stopped = self.shared.lock().poll_stopped(self.id, cx).is_ready();
            if stopped {
                self.release();
                return Poll::Ready(());
            }
            match self.fut.poll_unpin(cx) {
                Poll::Ready(r) => self.out = Some(r),
                Poll::Pending => return Poll::Pending,
            }
        }
        let this = &mut *self;
        let mut conn = this.shared.lock();
        match conn.poll_send_ready(this.id, cx, false) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(SendReady::Credit(_)) => {
                if let Some(out) = this.out.take() {
                    answer(&mut conn, this.id, out);
                }
            }
            Poll::Ready(SendReady::Stopped) => {}
        }
        drop(conn);
        self.release();
        Poll::Ready(())
    }
}

/// Sends a request/response handler's result: PAYLOAD(N+C), PAYLOAD(C) for
/// an empty answer, or ERROR.
fn answer(
    conn: &mut crate::proto::Connection,
    id: StreamId,
    out: Result<Option<Payload>, RequestError>,
) {
    match out {
        Ok(Some(p)) => conn.send_items(id, std::iter::once(p), true),
        Ok(None) => conn.send_items(id, std::iter::empty(), true),
        Err(e) => conn.send_error(id, &e.to_stream_error()),
    }
}

impl Respond {
    fn release(&mut self) {
        if !self.released {
            self.released = true;
            let mut conn = self.shared.lock();
            if std::thread::panicking() {
                // The handler panicked on this task: the requester gets an
                // error, not a cancellation.
                answer(&mut conn, self.id, Err(handler_panicked()));
            }
            conn.release_send(self.id);
        }
    }
}

impl Drop for Respond {
    fn drop(&mut self) {
        self.release();
    }
}
