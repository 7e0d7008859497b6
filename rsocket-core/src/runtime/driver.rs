//! The connection driver: the one task that reads the transport, feeds the
//! state machine, dispatches requests to the responder, arms the keepalive
//! timer and is the only writer to the transport.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Sink, SinkExt, StreamExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, Instrument, Span};

use super::responder;
use super::transport::{Transport, TransportError};
use crate::error::ConnectionError;
use crate::frame::Frame;
use crate::lease::Lease;
use crate::proto::{Connection, Event};
use crate::rsocket::RSocket;

/// Frames read ahead of handling, at most, per round.
const READ_BUDGET: usize = 256;
/// Bytes of frames read ahead of handling, at most (one frame may pass it).
/// Frames read ahead wait in the driver while reading is paused, so this
/// bounds what a paused connection holds beyond its queues.
const READ_AHEAD_BYTES: usize = 64 << 10;
/// Frames handed to the writer per lock.
const WRITE_BUDGET: usize = 512;
/// Bytes handed to the writer per lock (one frame may pass it): frames the
/// writer holds are no longer counted in the outbound queue, so this bounds
/// them.
const WRITE_BUDGET_BYTES: usize = 64 << 10;

/// State shared by the driver and every handle of one connection.
#[derive(Debug)]
pub(crate) struct Shared {
    conn: Mutex<Connection>,
    pub(crate) span: Span,
    /// `Config::default_prefetch`, readable without the lock.
    pub(crate) default_prefetch: u32,
    /// `Config::close_timeout`.
    pub(crate) close_timeout: std::time::Duration,
    /// `LeaseConfig::wait` (zero without leasing).
    pub(crate) lease_wait: std::time::Duration,
    /// Notified when the driver has finished (see `Requester::closed`).
    pub(crate) closed: tokio::sync::Notify,
    /// The driver has finished: the connection ended and what was queued
    /// has been written (or the driver was dropped).
    pub(crate) driver_done: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn new(conn: Connection, span: Span) -> Arc<Self> {
        Arc::new(Self {
            default_prefetch: conn.config().default_prefetch,
            close_timeout: conn.config().close_timeout,
            lease_wait: conn
                .config()
                .lease
                .as_ref()
                .map_or(std::time::Duration::ZERO, |l| l.wait),
            closed: tokio::sync::Notify::new(),
            driver_done: std::sync::atomic::AtomicBool::new(false),
            conn: Mutex::new(conn),
            span,
        })
    }

    /// Locks the state. A panic in another thread while holding the lock
    /// cannot leave the state half-updated in a way that matters more than
    /// refusing all further work, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the driver finished and wakes every `Requester::closed`
    /// waiter.
    pub(crate) fn driver_finished(&self) {
        self.driver_done
            .store(true, std::sync::atomic::Ordering::Release);
        self.closed.notify_waiters();
    }
}

/// Drives one connection. It must be polled (spawned, or awaited) for the
/// connection to make progress; it resolves when the connection has ended,
/// with the reason.
#[must_use = "the connection does nothing unless the driver is polled"]
pub struct ConnectionDriver<T: Transport> {
    shared: Arc<Shared>,
    reader: T::Reader,
    writer: T::Writer,
    responder: Arc<dyn RSocket>,
    /// Frames read and not yet handled (reading may pause in between).
    inbox: VecDeque<Result<Frame, TransportError>>,
    outbox: VecDeque<Frame>,
    events: Vec<Event>,
    sleep: Pin<Box<Sleep>>,
    read_done: bool,
    /// The transport ended cleanly; handled once the inbox is empty.
    eof: bool,
    /// Reading is paused while too many handlers run (see
    /// `Connection::read_paused`).
    read_paused: bool,
    needs_flush: bool,
    /// Grants from a stream lease policy, sent as they come.
    lease_source: Option<BoxStream<'static, Lease>>,
    /// Once the connection has closed: when to stop waiting for the writer
    /// to flush the last frames (a peer that reads nothing must not keep
    /// the driver alive).
    close_deadline: Option<Instant>,
}

impl<T: Transport> std::fmt::Debug for ConnectionDriver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionDriver").finish_non_exhaustive()
    }
}

impl<T: Transport> ConnectionDriver<T> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        reader: T::Reader,
        writer: T::Writer,
        responder: Arc<dyn RSocket>,
    ) -> Self {
        Self {
            shared,
            reader,
            writer,
            responder,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            events: Vec::new(),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            read_done: false,
            eof: false,
            read_paused: false,
            needs_flush: false,
            close_deadline: None,
            lease_source: None,
        }
    }

    /// Sends every grant of `grants` as a LEASE (stream lease policies).
    pub(crate) fn set_lease_source(&mut self, grants: BoxStream<'static, Lease>) {
        self.lease_source = Some(grants);
    }

    pub(crate) fn shared_state(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn span(&self) -> Span {
        self.shared.span.clone()
    }

    /// Spawns the driver on the current tokio runtime, inside the
    /// connection's tracing span.
    pub fn spawn(self) -> tokio::task::JoinHandle<Result<(), ConnectionError>> {
        let span = self.shared.span.clone();
        tokio::spawn(self.instrument(span))
    }

    /// Feeds staged frames to the writer; returns false if the writer failed.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Result<(), TransportError> {
        while !self.outbox.is_empty() {
            match Pin::new(&mut self.writer).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(frame) = self.outbox.pop_front() {
                        Pin::new(&mut self.writer).start_send(frame)?;
                        self.needs_flush = true;
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.writer).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }
}

/// A driver dropped before the connection ended (its task aborted, say)
/// takes the transport with it: end the connection so that handles fail
/// and responder tasks stop instead of waiting forever.
impl<T: Transport> Drop for ConnectionDriver<T> {
    fn drop(&mut self) {
        {
            let mut conn = self.shared.lock();
            if conn.closed().is_none() {
                conn.handle_transport_closed(ConnectionError::LocallyClosed);
            }
        }
        self.shared.driver_finished();
    }
}

impl<T: Transport> Future for ConnectionDriver<T> {
    type Output = Result<(), ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // A few rounds per poll so that frames produced while handling input
        // go out in the same wake-up; then yield.
        for _round in 0..4 {
            // 1. Read ahead, unless reading is paused.
            let mut reader_pending = false;
            if this.read_paused {
                this.read_paused = this.shared.lock().read_paused();
            }
            if !this.read_done && !this.read_paused && this.inbox.is_empty() {
                let mut bytes = 0;
                loop {
                    match this.reader.poll_next_unpin(cx) {
                        Poll::Ready(Some(item)) => {
                            let fatal = !matches!(item, Ok(_) | Err(TransportError::Decode(_)));
                            if let Ok(frame) = &item {
                                bytes += frame.encoded_len();
                            }
                            this.inbox.push_back(item);
                            if fatal {
                                this.read_done = true;
                                break;
                            }
                            if this.inbox.len() >= READ_BUDGET || bytes >= READ_AHEAD_BYTES {
                                break;
                            }
                        }
                        Poll::Ready(None) => {
                            this.read_done = true;
                            this.eof = true;
                            break;
                        }
                        Poll::Pending => {
                            reader_pending = true;
                            break;
                        }
                    }
                }
            }

            // 2. Feed the state machine one frame at a time, checking the
            // pause before each: a fire-and-forget or an answer can reach a
            // limit, and no frame is handled past it. Requests are
            // dispatched at once, so that an answer a handler gives right
            // away is queued (and counted) before the next frame.
            let now = Instant::now();
            let shared = &this.shared;
            let mut conn = shared.lock();
            // Grants the application computed go out before the frames
            // read are judged against them.
            if let Some(grants) = this.lease_source.as_mut() {
                // Only the newest grant counts; a stream that is always
                // ready must not hold the driver.
                for _ in 0..16 {
                    match grants.poll_next_unpin(cx) {
                        Poll::Ready(Some(lease)) => {
                            conn.grant_lease(&lease, now.into_std());
                        }
                        Poll::Ready(None) => {
                            this.lease_source = None;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
            }
            while !conn.read_paused() {
                let Some(item) = this.inbox.pop_front() else {
                    break;
                };
                match item {
                    Ok(frame) => conn.handle_frame(frame, now.into_std()),
                    Err(TransportError::Decode(e)) => conn.handle_decode_error(e),
                    Err(TransportError::Io(e)) => conn.handle_transport_closed(e.into()),
                    Err(other) => conn.handle_transport_violation(other.to_string()),
                }
                if let Some(ev) = conn.poll_event() {
                    this.events.push(ev);
                    while let Some(ev) = conn.poll_event() {
                        this.events.push(ev);
                    }
                    drop(conn);
                    for ev in this.events.drain(..) {
                        responder::dispatch(shared, &this.responder, ev, cx);
                    }
                    conn = shared.lock();
                }
            }
            if this.eof && this.inbox.is_empty() {
                this.eof = false;
                conn.handle_transport_closed(ConnectionError::ClosedByPeer);
            }
            conn.handle_tick(now.into_std());
            if conn.drained() {
                conn.finish_drain();
            }
            if this.outbox.is_empty() {
                conn.poll_transmit(WRITE_BUDGET, WRITE_BUDGET_BYTES, &mut this.outbox);
            }
            conn.set_writer_waker(cx);
            let paused = conn.read_paused();
            if paused != this.read_paused {
                debug!(paused, stats = ?conn.stats(), "reading paused or resumed");
            }
            this.read_paused = paused;
            let (mut deadline, finished, queued) =
                (conn.poll_timeout(), conn.is_finished(), conn.has_queued());
            let ended = conn.closed().cloned();
            if let Some(err) = &ended {
                if conn.abandoned() {
                    shared.driver_finished();
                    return Poll::Ready(Err(err.clone()));
                }
                let grace = conn.config().outbound_stall_timeout;
                let close_by = *this.close_deadline.get_or_insert(now + grace);
                if now >= close_by {
                    debug!("the peer did not take the last frames in time; dropping the transport");
                    shared.driver_finished();
                    return Poll::Ready(Err(err.clone()));
                }
                deadline = Some(close_by.into_std());
            }
            drop(conn);

            // 4. Write and flush once.
            if let Err(e) = this.write_out(cx) {
                debug!(error = %e, "write failed");
                let err = match e {
                    TransportError::Io(io) => ConnectionError::from(io),
                    other => {
                        debug!(error = %other, "transport refused a frame");
                        ConnectionError::LimitExceeded(crate::error::Limit::OutboundFrame)
                    }
                };
                this.shared.lock().handle_transport_closed(err);
                this.outbox.clear();
                this.needs_flush = false;
            }

            // 5. Done once closed and everything queued has been written.
            if finished && this.outbox.is_empty() && !this.needs_flush {
                if Pin::new(&mut this.writer).poll_close(cx).is_pending() {
                    return Poll::Pending;
                }
                this.shared.driver_finished();
                return Poll::Ready(match ended {
                    Some(ConnectionError::LocallyClosed) | None => Ok(()),
                    Some(e) => Err(e),
                });
            }

            // 6. Timer.
            if let Some(d) = deadline {
                let d = Instant::from_std(d);
                if this.sleep.deadline() != d {
                    this.sleep.as_mut().reset(d);
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }

            // Frames still queued in the state machine once the staged ones
            // are all handed to the writer: take them now. Nobody else would
            // wake us for them (producers waiting for queue space are woken
            // only when we drain it).
            let more_to_write = queued && this.outbox.is_empty();
            // Unless the reader itself said it has nothing (and will wake
            // us), reading goes on in the next round: the budget was used,
            // or frames read earlier were handled instead.
            let more_to_read = !this.read_done && !this.read_paused && !reader_pending;
            if more_to_read || more_to_write {
                continue;
            }
            return Poll::Pending;
        }
        // Budget used up: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Closes the writer half after the final flush (used on setup rejection).
pub(crate) async fn flush_and_close<W>(writer: &mut W, frame: Frame) -> Result<(), TransportError>
where
    W: Sink<Frame, Error = TransportError> + Unpin,
{
    writer.send(frame).await?;
    writer.close().await
}
