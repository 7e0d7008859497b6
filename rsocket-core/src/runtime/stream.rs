//! Stream handles: the inbound side of a stream (a requester's response
//! stream, a responder's channel input) and the pump that feeds a user
//! stream's items to the connection as credit allows. The requester and the
//! responder both build on these; neither imports the other.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tracing::{debug_span, Instrument};

use super::shared::{Locked, Shared};
use crate::error::RequestError;
use crate::frame::StreamId;
use crate::proto::{Batch, Interaction, SendReady};
use crate::rsocket::PayloadStream;
use crate::Payload;

/// Items moved from the state machine to a consumer per lock, at most (all
/// of them at once, when the consumer holds none: the queues trade places).
const RECV_BATCH: usize = 4096;
/// Items taken from a user stream per lock of the connection state.
const PUMP_BATCH: u64 = 64;
/// Batches per task poll before yielding to other tasks: up to 4,096
/// items, the default largest credit window (`Config::max_prefetch`), so a
/// pump with a full window sends it in one poll (credit and the outbound
/// queue's cap stop it sooner). Yielding after a quarter of that (16
/// rounds) measured about 10 % slower on `stream_64` on a 2-worker runtime
/// (each yield requeues the task, where the other worker may take it).
const PUMP_ROUNDS: usize = 64;

/// The inbound side of a request this connection opened: opens lazily on
/// first poll, then pulls items from the state machine.
pub(crate) struct Inbound {
    pub(super) shared: Arc<Shared>,
    pub(super) interaction: Interaction,
    pub(super) request: Option<Payload>,
    pub(super) window: u32,
    pub(super) id: Option<StreamId>,
    pub(super) outbound: Option<PayloadStream>,
    pub(super) manual: bool,
    /// The default window, which may grow (`Config::max_prefetch`).
    pub(super) adaptive: bool,
    /// Credit requested before the stream was opened.
    pub(super) extra_credit: u32,
    /// Items taken from the state machine in one lock, not yet handed out.
    pub(super) local: Batch,
    /// Items handed out and not yet reported to the state machine.
    pub(super) unreported: u32,
    /// How many items the state machine said may be handed out after its
    /// last look before REQUEST_N is due (0: never): reaching it is
    /// reported at once. The state machine owns the rule; this only counts.
    pub(super) threshold: u32,
    pub(super) done: bool,
    pub(super) gate: LeaseGate,
}

impl Inbound {
    pub(crate) fn new(
        shared: Arc<Shared>,
        interaction: Interaction,
        request: Payload,
        window: u32,
    ) -> Self {
        let shared_lease_wait = shared.lease_wait;
        Self {
            shared,
            interaction,
            request: Some(request),
            window,
            id: None,
            outbound: None,
            manual: false,
            adaptive: false,
            extra_credit: 0,
            local: Batch::default(),
            unreported: 0,
            threshold: 0,
            done: false,
            gate: LeaseGate::new(shared_lease_wait),
        }
    }

    /// Counts an item handed to the user; reports consumption as soon as it
    /// earns the peer more credit.
    #[inline]
    fn note_consumed(&mut self) {
        self.unreported += 1;
        if self.threshold != 0 && self.unreported >= self.threshold {
            self.report_consumed();
        }
    }

    /// Reports the items handed out since the last report (see
    /// [`note_consumed`](Self::note_consumed)).
    fn report_consumed(&mut self) {
        if let Some(id) = self.id {
            let n = std::mem::take(&mut self.unreported);
            self.threshold = self.shared.lock().report_consumed(id, n);
        }
    }

    /// The inbound half of a channel this connection is responding to.
    fn responder_channel(shared: Arc<Shared>, id: StreamId) -> Self {
        let window = shared.default_prefetch;
        let mut inbound = Self::new(
            shared,
            Interaction::RequestChannel,
            Payload::default(),
            window,
        );
        inbound.request = None;
        inbound.id = Some(id);
        inbound
    }

    /// The next item: from the items taken in the last lock while there
    /// are any (no lock), else from the state machine.
    #[inline]
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        if self.local.has_next() {
            // Counted first, so that the item goes straight to where it is
            // returned (not through another copy). Nothing runs between
            // the count and the handing out: a REQUEST_N it earns is only
            // queued, and the item is gone from the batch before the peer
            // can see it.
            self.note_consumed();
            if let Some(p) = self.local.pop_front() {
                return Poll::Ready(Some(Ok(p)));
            }
        }
        self.poll_locked(cx)
    }

    /// [`poll_next`](Self::poll_next) once the items taken are handed out:
    /// opens the stream on first use, then takes the next batch.
    fn poll_locked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Payload, RequestError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut conn = self.shared.lock();
        let id = match self.id {
            Some(id) => id,
            None => {
                let request = &mut self.request;
                let opened = poll_open(
                    &mut conn,
                    cx,
                    &mut self.gate,
                    request,
                    None,
                    self.interaction,
                    self.window,
                    self.manual,
                    self.adaptive,
                );
                match opened {
                    Poll::Ready(Ok(id)) => {
                        self.id = Some(id);
                        if self.extra_credit > 0 {
                            conn.request_credit(id, std::mem::take(&mut self.extra_credit));
                        }
                        if let Some(rest) = self.outbound.take() {
                            drop(conn);
                            Pump::spawn(
                                self.shared.clone(),
                                id,
                                rest,
                                Interaction::RequestChannel,
                                true,
                            );
                            conn = self.shared.lock();
                        }
                        id
                    }
                    Poll::Ready(Err(e)) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        let consumed = std::mem::take(&mut self.unreported);
        match conn.poll_recv(
            id,
            cx,
            consumed,
            RECV_BATCH,
            &mut self.local,
            &mut self.threshold,
        ) {
            Poll::Ready(Some(Ok(p))) => {
                drop(conn);
                self.note_consumed();
                Poll::Ready(Some(Ok(p)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Opens a request once the connection may take it (room in the outbound
/// queue, and the lease allows it): the request is `lent`, or else taken
/// from `request`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn poll_open(
    conn: &mut Locked<'_>,
    cx: &mut Context<'_>,
    gate: &mut LeaseGate,
    request: &mut Option<Payload>,
    lent: Option<&Payload>,
    interaction: Interaction,
    window: u32,
    manual: bool,
    adaptive: bool,
) -> Poll<Result<StreamId, RequestError>> {
    let ready = match conn.poll_open_ready(cx) {
        Poll::Ready(Ok(())) => gate.poll(conn, cx),
        other => other,
    };
    match ready {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => return Poll::Pending,
    }
    let request = match lent {
        Some(lent) => Cow::Borrowed(lent),
        None => Cow::Owned(request.take().unwrap_or_default()),
    };
    let now = conn.lease_now(super::tokio_now);
    Poll::Ready(conn.open_cow(interaction, request, window, manual, adaptive, now))
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.lock().release_recv(id);
        }
    }
}

/// Holds a request back while leasing allows none: fails at once, or waits
/// up to a bound for the next LEASE. One pointer wide: the waiting state is
/// allocated only for handles that wait.
pub(crate) struct LeaseGate {
    wait: Option<Box<LeaseWait>>,
}

struct LeaseWait {
    bound: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LeaseGate {
    pub(crate) fn new(wait: Duration) -> Self {
        Self {
            wait: (!wait.is_zero()).then(|| {
                Box::new(LeaseWait {
                    bound: wait,
                    deadline: None,
                })
            }),
        }
    }

    #[inline]
    pub(crate) fn poll(
        &mut self,
        conn: &mut Locked<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), RequestError>> {
        if !conn.lease_enabled() {
            // No clock reading on connections without leasing.
            return Poll::Ready(Ok(()));
        }
        self.poll_leased(conn, cx)
    }

    fn poll_leased(
        &mut self,
        conn: &mut Locked<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), RequestError>> {
        let now = super::tokio_now();
        let Some(w) = self.wait.as_mut() else {
            return conn.poll_lease(cx, now, false);
        };
        let expired = w.deadline.as_ref().is_some_and(|d| d.is_elapsed());
        match conn.poll_lease(cx, now, !expired) {
            Poll::Pending => {
                let bound = w.bound;
                let deadline = w
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
                if deadline.as_mut().poll(cx).is_ready() {
                    conn.poll_lease(cx, now, false)
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }
}

/// The inbound half of a channel, as a responder's handler sees it:
/// credit-aware (REQUEST_N is sent as it is polled), and dropping it before
/// the end sends CANCEL, which closes only the requester's outbound half.
pub(crate) struct ChannelInbound {
    inner: Inbound,
}

impl ChannelInbound {
    pub(crate) fn new(shared: Arc<Shared>, id: StreamId) -> Self {
        Self {
            inner: Inbound::responder_channel(shared, id),
        }
    }
}

impl Stream for ChannelInbound {
    type Item = Result<Payload, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next(cx)
    }
}

/// What the peer gets from a handler (or a handler's stream) that panicked:
/// `ERROR[APPLICATION_ERROR]` "the handler panicked".
pub(crate) fn handler_panicked() -> RequestError {
    RequestError::Stream(crate::error::StreamError::application(
        "the handler panicked",
    ))
}

/// Sends a user stream's items on a stream, polling it only while the peer
/// has granted credit and the outbound queue has room. Used for a
/// responder's stream and channel output and a requester's channel output.
///
/// A channel (requester or responder side) looks one item ahead when it has
/// no credit: a Rust stream only reveals that it has ended when polled, and
/// COMPLETE needs no credit, so without the look-ahead a channel whose peer
/// grants no more credit could never complete its outbound half. At most
/// that one item is held.
pub(crate) struct Pump {
    shared: Arc<Shared>,
    id: StreamId,
    stream: PayloadStream,
    batch: Vec<Payload>,
    lookahead: bool,
    held: Option<Payload>,
    released: bool,
}

impl Pump {
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        id: StreamId,
        stream: PayloadStream,
        interaction: Interaction,
        local: bool,
    ) {
        let span = debug_span!("pump", id = id.get(), ?interaction);
        tokio::spawn(
            Self {
                shared,
                id,
                stream,
                batch: Vec::new(),
                lookahead: local,
                held: None,
                released: false,
            }
            .instrument(span),
        );
    }

    fn release(&mut self) {
        if !self.released {
            self.released = true;
            let mut conn = self.shared.lock();
            if std::thread::panicking() {
                // The user stream panicked on this task: the peer gets an
                // error, not a cancellation.
                conn.send_error(self.id, &handler_panicked().to_stream_error());
            }
            conn.release_send(self.id);
        }
    }

    /// Sends what was collected and, if the user stream ended, the terminal
    /// frame. Returns true when the stream is finished.
    fn flush(&mut self, end: Option<Result<(), RequestError>>) -> bool {
        {
            let mut conn = self.shared.lock();
            match &end {
                None => conn.send_batch(self.id, &mut self.batch, false),
                Some(Ok(())) => conn.send_batch(self.id, &mut self.batch, true),
                Some(Err(e)) => {
                    conn.send_batch(self.id, &mut self.batch, false);
                    conn.send_error(self.id, &e.to_stream_error());
                }
            }
        }
        // Sent (encoded in place): dropped outside the lock.
        self.batch.clear();
        if end.is_some() {
            self.release();
            true
        } else {
            false
        }
    }
}

impl Future for Pump {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        for _ in 0..PUMP_ROUNDS {
            let ready = this
                .shared
                .lock()
                .poll_send_ready(this.id, cx, this.lookahead);
            let credit = match ready {
                Poll::Ready(SendReady::Credit(c)) => c,
                Poll::Ready(SendReady::Stopped) => {
                    this.release();
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            };
            if credit == 0 {
                // Look-ahead (requester channel only): hold one item, or
                // complete without credit.
                if this.held.is_some() {
                    return Poll::Pending;
                }
                return match this.stream.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(p))) => {
                        this.held = Some(p);
                        Poll::Pending
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.flush(Some(Err(e)));
                        Poll::Ready(())
                    }
                    Poll::Ready(None) => {
                        this.flush(Some(Ok(())));
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            let max = credit.min(PUMP_BATCH) as usize;
            this.batch.extend(this.held.take());
            let mut end: Option<Result<(), RequestError>> = None;
            let mut pending = false;
            while this.batch.len() < max {
                match this.stream.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(p))) => this.batch.push(p),
                    Poll::Ready(Some(Err(e))) => {
                        end = Some(Err(e));
                        break;
                    }
                    Poll::Ready(None) => {
                        end = Some(Ok(()));
                        break;
                    }
                    Poll::Pending => {
                        pending = true;
                        break;
                    }
                }
            }
            // Batch full (credit may be used up): a stream whose size hint
            // says it has nothing left (e.g. one built from an iterator) is
            // polled once more, so COMPLETE, which needs no credit, goes out
            // with the last item instead of waiting for a REQUEST_N the
            // requester may never send. Other streams are not polled
            // without credit.
            if end.is_none()
                && !pending
                && this.batch.len() == max
                && this.stream.size_hint().1 == Some(0)
            {
                match this.stream.poll_next_unpin(cx) {
                    Poll::Ready(None) => end = Some(Ok(())),
                    Poll::Ready(Some(Err(e))) => end = Some(Err(e)),
                    // The hint was wrong: keep the item for the next credit.
                    Poll::Ready(Some(Ok(p))) => this.held = Some(p),
                    Poll::Pending => pending = true,
                }
            }
            if this.batch.is_empty() && end.is_none() {
                return Poll::Pending;
            }
            if this.flush(end) {
                return Poll::Ready(());
            }
            if pending {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.release();
    }
}
