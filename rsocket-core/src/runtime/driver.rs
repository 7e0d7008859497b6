//! The connection driver: the one task that reads the transport, feeds the
//! state machine, dispatches requests to the responder, arms the keepalive
//! timer and is the only writer to the transport.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{FutureExt, Sink, StreamExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, Instrument, Span};

use super::responder::{self, Dispatched, Runners};
use super::resume::{AttemptError, Resumer, SessionMsg};
use super::shared::{Locked, Shared};
use super::transport::{Transport, TransportError};
use crate::error::{ConnectionError, ResumeFailure};
use crate::frame::{ErrorCode, Frame};
use crate::lease::Lease;
use crate::proto::{is_resumable, Event, Outgoing, RECYCLE_RUN_BYTES};
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

/// Drives one connection. It must be polled (spawned, or awaited) for the
/// connection to make progress; it resolves when the connection has ended,
/// with the reason.
#[must_use = "the connection does nothing unless the driver is polled"]
pub struct ConnectionDriver<T: Transport> {
    shared: Arc<Shared>,
    /// The transport; `None` while a resumable connection is detached.
    link: Option<Link<T>>,
    /// Resumable connections: reconnecting (client) or taking RESUMEs
    /// (server).
    resumer: Option<Resumer<T>>,
    /// While detached: when the session is given up.
    session_deadline: Option<Instant>,
    responder: Arc<dyn RSocket>,
    /// Runs the responder's fire-and-forget and request/response handlers.
    runners: Runners,
    /// Events taken from the state machine, being dispatched (kept for its
    /// buffer).
    events: VecDeque<Event>,
    /// Frames read and not yet handled (reading may pause in between).
    inbox: VecDeque<Result<Frame, TransportError>>,
    /// Frames read and not yet handled, as raw length-prefixed bytes, from
    /// a transport with a [`WireRead`](super::transport::WireRead) reader
    /// (handled before `inbox`, which then holds at most the reader's
    /// error).
    wire: Bytes,
    outbox: VecDeque<Outgoing>,
    /// An empty buffer the writer gave back, for the state machine's next
    /// run of encoded frames.
    spare_run: BytesMut,
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
    /// Requests the peer sends are kept in the state machine, not
    /// dispatched (the server's acceptor has not given the responder yet).
    hold_requests: bool,
    /// Requests were held and may now be dispatched.
    release_held: bool,
    /// Once the connection has closed: when to stop waiting for the writer
    /// to flush the last frames (a peer that reads nothing must not keep
    /// the driver alive).
    close_deadline: Option<Instant>,
}

/// The two halves of the current transport.
struct Link<T: Transport> {
    reader: T::Reader,
    writer: T::Writer,
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
            link: Some(Link { reader, writer }),
            resumer: None,
            session_deadline: None,
            responder,
            runners: Runners::new(),
            events: VecDeque::new(),
            inbox: VecDeque::new(),
            wire: Bytes::new(),
            outbox: VecDeque::new(),
            spare_run: BytesMut::new(),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            read_done: false,
            eof: false,
            read_paused: false,
            needs_flush: false,
            close_deadline: None,
            lease_source: None,
            hold_requests: false,
            release_held: false,
        }
    }

    /// Runs the connection without dispatching the peer's requests (they
    /// wait in the state machine, within its limits) until
    /// [`respond_with`](Self::respond_with): a server's driver runs while
    /// its acceptor decides, so that calls the acceptor makes to the client
    /// are sent and answered.
    pub(crate) fn hold_requests(&mut self) {
        self.hold_requests = true;
    }

    /// The responder for the requests held, and all later ones.
    pub(crate) fn respond_with(&mut self, responder: Arc<dyn RSocket>) {
        self.responder = responder;
        self.hold_requests = false;
        self.release_held = true;
    }

    /// Sends every grant of `grants` as a LEASE (stream lease policies).
    pub(crate) fn set_lease_source(&mut self, grants: BoxStream<'static, Lease>) {
        self.lease_source = Some(grants);
    }

    /// Makes the driver resume lost transports (the connection must have
    /// resumption enabled).
    pub(crate) fn with_resumer(mut self, resumer: Resumer<T>) -> Self {
        self.resumer = Some(resumer);
        self
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

    /// Hands one item the reader gave to the state machine; a resumable
    /// connection's read error sets `lost` instead.
    fn handle_item(
        conn: &mut Locked<'_>,
        item: Result<Frame, TransportError>,
        now: std::time::Instant,
        lost: &mut Option<&'static str>,
    ) {
        match item {
            Ok(frame) => conn.handle_frame(frame, now),
            Err(TransportError::Decode(e)) => conn.handle_decode_error(e),
            Err(TransportError::Io(e)) => {
                if conn.resumable() {
                    debug!(error = %e, "read failed");
                    *lost = Some("read failed");
                    return;
                }
                conn.handle_transport_closed(e.into());
            }
            Err(other) => conn.handle_transport_violation(other.to_string()),
        }
    }

    /// Dispatches the requests the state machine has given (without the
    /// lock, a run of fire-and-forgets (see `handle_wire`) in one unlock);
    /// what a handler left to do (an answer given at once) is done in the
    /// next lock, before any later request is dispatched. Returns the lock.
    #[inline]
    fn dispatch_events<'a>(
        shared: &'a Arc<Shared>,
        events: &mut VecDeque<Event>,
        runners: &mut Runners,
        responder: &Arc<dyn RSocket>,
        mut conn: Locked<'a>,
        cx: &mut Context<'_>,
    ) -> Locked<'a> {
        loop {
            if events.is_empty() && !conn.take_events(events) {
                return conn;
            }
            drop(conn);
            let mut oneways_done = 0;
            let mut answered = None;
            while let Some(ev) = events.pop_front() {
                let ev = match ev {
                    // The common case, without `dispatch`.
                    Event::FireAndForget(payload) => {
                        if runners.fire_and_forget(shared, responder, payload, cx) {
                            oneways_done += 1;
                        }
                        continue;
                    }
                    ev => ev,
                };
                match responder::dispatch(shared, responder, runners, ev, cx) {
                    Dispatched::Started => {}
                    Dispatched::OnewayDone => oneways_done += 1,
                    Dispatched::Answered(id, out) => {
                        answered = Some((id, out));
                        break;
                    }
                }
            }
            conn = shared.lock();
            if oneways_done > 0 {
                conn.oneways_done(oneways_done);
            }
            if let Some((id, out)) = answered {
                responder::answer_now(&mut conn, id, out);
            }
        }
    }

    /// Feeds staged frames to the writer; returns false if the writer failed.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Result<(), TransportError> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        while !self.outbox.is_empty() {
            match Pin::new(&mut link.writer).poll_ready(cx) {
                Poll::Ready(Ok(())) => match self.outbox.pop_front() {
                    Some(Outgoing::Frame(frame)) => {
                        Pin::new(&mut link.writer).start_send(frame)?;
                        self.needs_flush = true;
                    }
                    Some(Outgoing::Wire(mut run)) => match T::wire_writer(&mut link.writer) {
                        Some(w) => {
                            w.start_send_wire(&mut run)?;
                            self.needs_flush = true;
                            if run.capacity() > self.spare_run.capacity()
                                && run.capacity() <= RECYCLE_RUN_BYTES
                            {
                                // Its room serves the next run.
                                self.spare_run = run;
                            }
                        }
                        None => {
                            // A transport that takes frames only: the
                            // run's frames go one by one.
                            let frames = crate::proto::decode_run(run.freeze());
                            for f in frames.into_iter().rev() {
                                self.outbox.push_front(Outgoing::Frame(f));
                            }
                        }
                    },
                    None => {}
                },
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        if self.needs_flush {
            match Pin::new(&mut link.writer).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }
}

/// Whether a staged entry is in the resume store (and replayed from it).
fn resumable(item: &Outgoing) -> bool {
    match item {
        Outgoing::Frame(f) => is_resumable(f),
        // Runs are made only without resumption: never detached.
        Outgoing::Wire(_) => true,
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

impl<T: Transport> ConnectionDriver<T> {
    /// Drops the transport of a resumable connection and waits for a new
    /// one. Frames read but not handled are forgotten (they were not
    /// counted, so the peer sends them again); resumable frames staged for
    /// the writer are in the resume store and are replayed from it.
    fn detach(&mut self, why: &str) {
        let now = Instant::now();
        debug!(why, "transport lost; the session waits to be resumed");
        self.link = None;
        self.inbox.clear();
        self.wire = Bytes::new();
        self.outbox.retain(|f| !resumable(f));
        self.needs_flush = false;
        self.read_done = false;
        self.eof = false;
        self.read_paused = false;
        let store_bytes = {
            let mut conn = self.shared.lock();
            conn.detach();
            conn.resume_store_bytes()
        };
        let timeout = match &mut self.resumer {
            Some(Resumer::Client(c)) => {
                c.detached(now);
                c.options.session_timeout
            }
            Some(Resumer::Server(s)) => {
                s.guard.detached(now, store_bytes);
                s.guard.timeout()
            }
            None => return,
        };
        self.session_deadline = Some(super::resume::deadline(now, timeout));
    }

    /// Installs a new transport after a successful RESUME exchange;
    /// `first` goes out before anything else (RESUME_OK and the replayed
    /// frames).
    fn attach(&mut self, reader: T::Reader, writer: T::Writer, first: Vec<Frame>) {
        debug!(replayed = first.len(), "session resumed on a new transport");
        let kept: Vec<Outgoing> = self.outbox.drain(..).filter(|f| !resumable(f)).collect();
        self.outbox.extend(first.into_iter().map(Outgoing::Frame));
        self.outbox.extend(kept);
        self.link = Some(Link { reader, writer });
        self.inbox.clear();
        self.wire = Bytes::new();
        self.needs_flush = false;
        self.read_done = false;
        self.eof = false;
        self.read_paused = false;
        self.session_deadline = None;
        self.shared.lock().attach(Instant::now().into_std());
        if let Some(Resumer::Server(s)) = &self.resumer {
            s.guard.attached();
        }
    }

    /// Ends a session that cannot be resumed.
    fn give_up(&mut self, reason: ResumeFailure) {
        debug!(%reason, "session cannot be resumed");
        self.link = None;
        self.outbox.clear();
        self.session_deadline = None;
        self.shared
            .lock()
            .handle_transport_closed(ConnectionError::ResumeFailed { reason });
    }

    /// Handles resumption work: RESUMEs handed over by the server's accept
    /// path, the client's reconnect attempts, the session deadline.
    fn poll_resumption(&mut self, cx: &mut Context<'_>) {
        let now = Instant::now();
        loop {
            match &mut self.resumer {
                Some(Resumer::Server(srv)) => match srv.mailbox.take() {
                    Some(SessionMsg::Resume {
                        reader,
                        writer,
                        frame,
                    }) => {
                        let outcome = self.shared.lock().server_resume(&frame);
                        match outcome {
                            Ok(first) => {
                                if self.link.is_some() {
                                    debug!("a new transport takes over the session");
                                }
                                self.attach(reader, writer, first);
                            }
                            Err(message) => {
                                debug!(%message, "refusing RESUME");
                                super::resume::refuse(
                                    writer,
                                    ErrorCode::REJECTED_RESUME,
                                    message.clone(),
                                );
                                drop(reader);
                                if self.link.is_none() {
                                    // The client will not try again.
                                    self.give_up(ResumeFailure::Positions(message));
                                    return;
                                }
                            }
                        }
                        continue;
                    }
                    Some(SessionMsg::Evict) => {
                        if self.link.is_none() {
                            self.give_up(ResumeFailure::Evicted);
                            return;
                        }
                        continue;
                    }
                    None => {}
                },
                Some(Resumer::Client(cl)) if self.link.is_none() => {
                    if let Some(attempt) = cl.attempt.as_mut() {
                        match attempt.poll_unpin(cx) {
                            Poll::Ready(Ok(resumed)) => {
                                cl.attempt = None;
                                let outcome = self.shared.lock().client_resumed(resumed.position);
                                match outcome {
                                    Ok(first) => self.attach(resumed.reader, resumed.writer, first),
                                    Err(message) => {
                                        super::resume::refuse(
                                            resumed.writer,
                                            ErrorCode::CONNECTION_ERROR,
                                            message.clone(),
                                        );
                                        self.give_up(ResumeFailure::Positions(message));
                                        return;
                                    }
                                }
                            }
                            Poll::Ready(Err(AttemptError::Final(reason))) => {
                                cl.attempt = None;
                                self.give_up(reason);
                                return;
                            }
                            Poll::Ready(Err(AttemptError::Retry(why))) => {
                                debug!(%why, "resume attempt failed; retrying");
                                cl.retry_later(now);
                                continue;
                            }
                            Poll::Pending => {}
                        }
                    } else if cl.next_attempt.is_some_and(|t| t <= now) {
                        let frame = self.shared.lock().resume_frame(cl.token.clone());
                        if let Some(frame) = frame {
                            cl.start(frame);
                            continue;
                        }
                    }
                }
                _ => {}
            }
            break;
        }
        if self.link.is_none() && self.session_deadline.is_some_and(|d| d <= now) {
            let timeout = match &self.resumer {
                Some(Resumer::Client(c)) => c.options.session_timeout,
                Some(Resumer::Server(s)) => s.guard.timeout(),
                None => std::time::Duration::ZERO,
            };
            self.give_up(ResumeFailure::SessionTimeout(timeout));
        }
    }

    /// One round while detached: only timers and local closes. `Some` when
    /// the driver is done; `None` with `again` true when a timer fired.
    fn poll_detached(
        &mut self,
        cx: &mut Context<'_>,
    ) -> (Option<Result<(), ConnectionError>>, bool) {
        let now = Instant::now();
        let mut conn = self.shared.lock();
        conn.handle_tick(now.into_std());
        if conn.drained() {
            conn.finish_drain();
        }
        if let Some(err) = conn.closed().cloned() {
            drop(conn);
            self.outbox.clear();
            self.shared.driver_finished();
            return (
                Some(match err {
                    ConnectionError::LocallyClosed => Ok(()),
                    e => Err(e),
                }),
                false,
            );
        }
        conn.set_writer_waker(cx);
        let mut deadline = conn.poll_timeout().map(Instant::from_std);
        drop(conn);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        };
        consider(self.session_deadline);
        if let Some(Resumer::Client(c)) = &self.resumer {
            if c.attempt.is_none() {
                consider(c.next_attempt);
            }
        }
        if let Some(d) = deadline {
            if self.sleep.deadline() != d {
                self.sleep.as_mut().reset(d);
            }
            if self.sleep.as_mut().poll(cx).is_ready() {
                return (None, true);
            }
        }
        (None, false)
    }
}

impl<T: Transport> Future for ConnectionDriver<T> {
    type Output = Result<(), ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // A few rounds per poll so that frames produced while handling input
        // go out in the same wake-up; then yield.
        if let Some(Resumer::Server(srv)) = &this.resumer {
            srv.mailbox.register(cx);
        }
        for _round in 0..4 {
            // 0. Resumption: a new transport, a reconnect attempt, the
            // session deadline.
            if this.resumer.is_some() {
                this.poll_resumption(cx);
            }
            if this.link.is_none() {
                match this.poll_detached(cx) {
                    (Some(done), _) => return Poll::Ready(done),
                    (None, true) => continue,
                    (None, false) => return Poll::Pending,
                }
            }
            // Set when a resumable connection lost its transport.
            let mut lost: Option<&'static str> = None;

            // 1. Read ahead, unless reading is paused.
            let mut reader_pending = false;
            if this.read_paused {
                this.read_paused = this.shared.lock().read_paused();
            }
            if let Some(link) = this.link.as_mut() {
                let idle = this.inbox.is_empty() && this.wire.is_empty();
                // A reader with a `WireRead` is read through it only: its
                // `Stream` would poll the transport a second time for
                // nothing when it has nothing.
                let mut wire_read = false;
                if !this.read_done && !this.read_paused && idle {
                    if let Some(raw) = T::wire_reader(&mut link.reader) {
                        wire_read = true;
                        match raw.poll_wire(cx, READ_AHEAD_BYTES) {
                            Poll::Ready(Some(Ok(chunk))) => {
                                this.wire = chunk;
                                reader_pending = raw.waiting();
                            }
                            Poll::Ready(Some(Err(e))) => {
                                this.inbox.push_back(Err(e));
                                this.read_done = true;
                            }
                            Poll::Ready(None) => {
                                this.read_done = true;
                                this.eof = true;
                            }
                            Poll::Pending => reader_pending = true,
                        }
                    }
                }
                let idle = this.inbox.is_empty() && this.wire.is_empty();
                if !wire_read && !this.read_done && !this.read_paused && idle {
                    let mut bytes = 0;
                    loop {
                        match link.reader.poll_next_unpin(cx) {
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
                // At most 16 grants per round: a stream that is always
                // ready must not hold the driver. One still ready after
                // them registered no waker, so this task asks to be
                // polled again for the rest.
                let mut budget_used = true;
                for _ in 0..16 {
                    // The application's stream: a panic in it ends the
                    // grants, not the connection.
                    let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        grants.poll_next_unpin(cx)
                    }));
                    match next {
                        Ok(Poll::Ready(Some(lease))) => {
                            conn.grant_lease(&lease, now.into_std());
                        }
                        Ok(Poll::Ready(None)) => {
                            this.lease_source = None;
                            budget_used = false;
                            break;
                        }
                        Ok(Poll::Pending) => {
                            budget_used = false;
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("the lease policy's stream panicked; no more grants");
                            this.lease_source = None;
                            budget_used = false;
                            break;
                        }
                    }
                }
                if budget_used {
                    cx.waker().wake_by_ref();
                }
            }
            let mut handled = 0;
            let hold = this.hold_requests;
            if std::mem::take(&mut this.release_held) {
                // The requests held while the acceptor decided (reading may
                // be paused by them).
                conn = Self::dispatch_events(
                    shared,
                    &mut this.events,
                    &mut this.runners,
                    &this.responder,
                    conn,
                    cx,
                );
            }
            while !conn.read_paused() {
                if !this.wire.is_empty() {
                    // Raw frames: the common ones are handled in place.
                    if handled == READ_BUDGET {
                        break;
                    }
                    let (used, n) =
                        conn.handle_wire(&this.wire, now.into_std(), READ_BUDGET - handled);
                    handled += n;
                    this.wire.advance(used);
                    if this.wire.is_empty() {
                        // An empty slice still holds the read buffer.
                        this.wire = Bytes::new();
                    }
                } else {
                    let Some(item) = this.inbox.pop_front() else {
                        break;
                    };
                    Self::handle_item(&mut conn, item, now.into_std(), &mut lost);
                    if lost.is_some() {
                        break;
                    }
                }
                // Requests are dispatched at once (see `dispatch_events`),
                // unless held while a server's acceptor decides.
                if !hold {
                    conn = Self::dispatch_events(
                        shared,
                        &mut this.events,
                        &mut this.runners,
                        &this.responder,
                        conn,
                        cx,
                    );
                }
            }
            if this.eof && this.inbox.is_empty() && this.wire.is_empty() && lost.is_none() {
                this.eof = false;
                if conn.resumable() {
                    lost = Some("end of stream");
                } else {
                    conn.handle_transport_closed(ConnectionError::ClosedByPeer);
                }
            }
            conn.handle_tick(now.into_std());
            if conn.take_link_lost() {
                lost = Some("keepalive expired");
            }
            if lost.is_some() {
                drop(conn);
                if let Some(why) = lost {
                    this.detach(why);
                }
                continue;
            }
            if conn.drained() {
                conn.finish_drain();
            }
            if this.spare_run.capacity() > 0 {
                conn.recycle_run(std::mem::take(&mut this.spare_run));
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
            // Whatever asked for this task while it held the state is seen
            // by the checks above: no need to wake it again.
            conn.clear_driver_wakeup();
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
            let resumable = conn.resumable();
            drop(conn);

            // 4. Write and flush once.
            if let Err(e) = this.write_out(cx) {
                debug!(error = %e, "write failed");
                if resumable && matches!(e, TransportError::Io(_)) {
                    this.detach("write failed");
                    continue;
                }
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
            // A writer still closing waits under the close deadline (the
            // timer below): one that never finishes must not keep the
            // driver alive.
            let mut closing = false;
            if finished && this.outbox.is_empty() && !this.needs_flush {
                if let Some(link) = this.link.as_mut() {
                    closing = Pin::new(&mut link.writer).poll_close(cx).is_pending();
                }
                if !closing {
                    this.shared.driver_finished();
                    return Poll::Ready(match ended {
                        Some(ConnectionError::LocallyClosed) | None => Ok(()),
                        Some(e) => Err(e),
                    });
                }
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
            if closing {
                return Poll::Pending;
            }

            // Frames still queued in the state machine once the staged ones
            // are all handed to the writer: take them now. Nobody else would
            // wake us for them (producers waiting for queue space are woken
            // only when we drain it).
            let more_to_write = queued && this.outbox.is_empty();
            // Unless the reader itself said it has nothing (and will wake
            // us), reading goes on in the next round: the budget was used,
            // or frames read earlier were handled instead.
            let more_to_read = !this.read_paused
                && ((!this.read_done && !reader_pending) || !this.wire.is_empty());
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
