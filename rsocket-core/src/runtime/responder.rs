//! Running the responder: one spawned task per inbound request, and the
//! outbound pump that polls a stream only while the peer has granted credit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tracing::{debug_span, Instrument};

use super::driver::Shared;
use super::requester::ChannelInbound;
use crate::error::RequestError;
use crate::frame::StreamId;
use crate::proto::{Event, Interaction, SendReady};
use crate::rsocket::{PayloadStream, RSocket};
use crate::Payload;

/// Items taken from a user stream per lock of the connection state.
const PUMP_BATCH: u64 = 64;
/// Batches per task poll before yielding to other tasks.
const PUMP_ROUNDS: usize = 16;

/// Starts the work for one event from the state machine.
///
/// A request/response handler is polled once right here, on the
/// connection's task: one that is ready at once (the common case for cheap
/// handlers) is answered without spawning a task. One that is not gets its
/// own task, like every other handler. Handlers must therefore not block in
/// `poll` (the usual async rule); fire-and-forget and metadata push always
/// run on their own tasks.
pub(crate) fn dispatch(
    shared: &Arc<Shared>,
    responder: &Arc<dyn RSocket>,
    ev: Event,
    cx: &mut Context<'_>,
) {
    match ev {
        Event::FireAndForget(payload) => {
            let responder = responder.clone();
            let shared = shared.clone();
            tokio::spawn(
                async move {
                    let _ = responder.fire_and_forget(payload).await;
                    shared.lock().fnf_done();
                }
                .instrument(debug_span!("fnf")),
            );
        }
        Event::MetadataPush(metadata) => {
            let responder = responder.clone();
            tokio::spawn(
                async move {
                    let _ = responder.metadata_push(metadata).await;
                }
                .instrument(debug_span!("metadata_push")),
            );
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
                    // The handler borrows the responder: own an `Arc` of
                    // it in the future so that it can outlive this call.
                    let responder = responder.clone();
                    let mut fut: BoxFuture<'static, _> =
                        Box::pin(async move { responder.request_response(payload).await });
                    let ready = {
                        let _g = span.enter();
                        fut.poll_unpin(cx)
                    };
                    match ready {
                        Poll::Ready(out) => {
                            let mut conn = shared.lock();
                            answer(&mut conn, stream_id, out);
                            conn.release_send(stream_id);
                        }
                        Poll::Pending => {
                            tokio::spawn(
                                Respond {
                                    shared: shared.clone(),
                                    id: stream_id,
                                    fut,
                                    released: false,
                                }
                                .instrument(span),
                            );
                        }
                    }
                }
                Interaction::RequestStream => {
                    let stream = responder.request_stream(payload);
                    let _g = span.enter();
                    Pump::spawn(shared.clone(), stream_id, stream, interaction, false);
                }
                Interaction::RequestChannel => {
                    let inbound = ChannelInbound::new(shared.clone(), stream_id);
                    let stream = responder.request_channel(payload, inbound.boxed());
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
        }
    }
}

/// A request/response handler: its result becomes PAYLOAD(N+C), PAYLOAD(C)
/// or ERROR. A CANCEL from the peer drops the handler's future.
struct Respond {
    shared: Arc<Shared>,
    id: StreamId,
    fut: BoxFuture<'static, Result<Option<Payload>, RequestError>>,
    released: bool,
}

impl Future for Respond {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stopped = self.shared.lock().poll_stopped(self.id, cx).is_ready();
        if stopped {
            self.release();
            return Poll::Ready(());
        }
        let out = match self.fut.poll_unpin(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => return Poll::Pending,
        };
        answer(&mut self.shared.lock(), self.id, out);
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
            self.shared.lock().release_send(self.id);
        }
    }
}

impl Drop for Respond {
    fn drop(&mut self) {
        self.release();
    }
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
            self.shared.lock().release_send(self.id);
        }
    }

    /// Sends what was collected and, if the user stream ended, the terminal
    /// frame. Returns true when the stream is finished.
    fn flush(&mut self, end: Option<Result<(), RequestError>>) -> bool {
        {
            let mut conn = self.shared.lock();
            match &end {
                None => conn.send_items(self.id, self.batch.drain(..), false),
                Some(Ok(())) => conn.send_items(self.id, self.batch.drain(..), true),
                Some(Err(e)) => {
                    conn.send_items(self.id, self.batch.drain(..), false);
                    conn.send_error(self.id, &e.to_stream_error());
                }
            }
        }
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
