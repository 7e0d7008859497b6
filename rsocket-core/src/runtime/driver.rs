//! The connection driver: the one task that reads the transport, feeds the
//! state machine, dispatches requests to the responder, arms the keepalive
//! timer and is the only writer to the transport.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::{Sink, SinkExt, StreamExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, Instrument, Span};

use super::responder;
use super::transport::{Transport, TransportError};
use crate::error::ConnectionError;
use crate::frame::Frame;
use crate::proto::{Connection, Event};
use crate::rsocket::RSocket;

/// Frames read per poll before the driver yields to other tasks.
const READ_BUDGET: usize = 256;
/// Frames handed to the writer per lock.
const WRITE_BUDGET: usize = 512;

/// State shared by the driver and every handle of one connection.
#[derive(Debug)]
pub(crate) struct Shared {
    conn: Mutex<Connection>,
    pub(crate) span: Span,
    /// `Config::default_prefetch`, readable without the lock.
    pub(crate) default_prefetch: u32,
    /// `Config::close_timeout`.
    pub(crate) close_timeout: std::time::Duration,
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
    inbox: Vec<Result<Frame, TransportError>>,
    outbox: VecDeque<Frame>,
    events: Vec<Event>,
    sleep: Pin<Box<Sleep>>,
    read_done: bool,
    /// Reading is paused while too many handlers run (see
    /// `Connection::read_paused`).
    read_paused: bool,
    needs_flush: bool,
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
            inbox: Vec::new(),
            outbox: VecDeque::new(),
            events: Vec::new(),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            read_done: false,
            read_paused: false,
            needs_flush: false,
        }
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

    fn dispatch(&mut self, cx: &mut Context<'_>) {
        for ev in self.events.drain(..) {
            responder::dispatch(&self.shared, &self.responder, ev, cx);
        }
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
            // 1. Read what is available, up to a budget.
            let mut eof = false;
            let mut more_to_read = false;
            if this.read_paused {
                this.read_paused = this.shared.lock().read_paused();
            }
            if !this.read_done && !this.read_paused {
                loop {
                    match this.reader.poll_next_unpin(cx) {
                        Poll::Ready(Some(item)) => {
                            let fatal = !matches!(item, Ok(_) | Err(TransportError::Decode(_)));
                            this.inbox.push(item);
                            if fatal {
                                this.read_done = true;
                                break;
                            }
                            if this.inbox.len() >= READ_BUDGET {
                                more_to_read = true;
                                break;
                            }
                        }
                        Poll::Ready(None) => {
                            this.read_done = true;
                            eof = true;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
            }

            // 2. Feed the state machine and collect its output under one lock.
            let now = Instant::now();
            let (deadline, finished, queued) = {
                let mut conn = this.shared.lock();
                for item in this.inbox.drain(..) {
                    match item {
                        Ok(frame) => conn.handle_frame(frame, now.into_std()),
                        Err(TransportError::Decode(e)) => conn.handle_decode_error(e),
                        Err(TransportError::Io(e)) => conn.handle_transport_closed(e.into()),
                        Err(other) => conn.handle_transport_closed(ConnectionError::Protocol {
                            code: crate::ErrorCode::CONNECTION_ERROR,
                            message: other.to_string(),
                        }),
                    }
                }
                if eof {
                    conn.handle_transport_closed(ConnectionError::ClosedByPeer);
                }
                if conn.poll_timeout().is_some_and(|d| d <= now.into_std()) {
                    conn.handle_timeout(now.into_std());
                }
                if conn.drained() {
                    conn.finish_drain();
                }
                while let Some(ev) = conn.poll_event() {
                    this.events.push(ev);
                }
                if this.outbox.is_empty() {
                    conn.poll_transmit(WRITE_BUDGET, &mut this.outbox);
                }
                conn.set_writer_waker(cx);
                this.read_paused = conn.read_paused();
                (conn.poll_timeout(), conn.is_finished(), conn.has_queued())
            };

            // 3. Hand requests to the responder. Request/response handlers
            // that answer at once queue their answer right here: take it
            // into this round's write.
            let mut queued = queued;
            if !this.events.is_empty() {
                this.dispatch(cx);
                let mut conn = this.shared.lock();
                if this.outbox.len() < WRITE_BUDGET {
                    conn.poll_transmit(WRITE_BUDGET - this.outbox.len(), &mut this.outbox);
                }
                queued = conn.has_queued();
            }

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
                let err = this.shared.lock().closed().cloned();
                this.shared.driver_finished();
                return Poll::Ready(match err {
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
