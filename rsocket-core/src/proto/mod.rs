//! The connection state machine, without I/O and without a clock.
//!
//! [`Connection`] is fed inbound frames ([`Connection::handle_frame`]), the
//! current time ([`Connection::handle_timeout`]) and commands from local
//! handles (open a request, consume an item, produce an item), and it queues
//! the frames to send, the events to dispatch, and the next deadline. The
//! async runtime only moves frames and arms the timer. No waker is kept
//! here: a call that must wait returns `Poll::Pending` and marks the waiter,
//! and the connection records which waiters to wake ([`Wakeup`]) for the
//! runtime, which keeps the wakers and wakes them once it has released its
//! lock (see `wakeup.rs`).
//!
//! # Streams
//!
//! ```text
//!            requester side                      responder side
//!  RR       recv(window 1)                       send(credit 1)
//!  stream   recv(window W, REQUEST_N W/2)        send(credit n)
//!  channel  recv(window W) + send(credit 0..)    send(credit n) + recv(window W)
//!  fnf      no state                             no state (an event)
//! ```
//!
//! A half exists while a local handle holds it: the consumer of the inbound
//! half (`recv`), the producer of the outbound half (`send`). A stream is
//! forgotten when both halves are released; until then its id is in use.
//!
//! # Credit
//!
//! Inbound: `outstanding + queued + consumed == window` at all times, so a
//! stream never buffers more than its window. When half the window has been
//! consumed, REQUEST_N(consumed) is queued. A window of 2^31 − 1 is
//! unbounded and never replenished. An item beyond the credit granted is a
//! protocol violation: the stream is cancelled and fails locally.
//!
//! Outbound: credit accumulates with saturation; at 2^31 − 1 it is treated as
//! unbounded (rsocket-java's convention). Producers are polled only while
//! credit is above zero and the outbound queue is below its byte cap.

mod check;
mod fragment;
pub mod harness;
mod ids;
mod inbound;
mod lease;
mod local;
pub mod pair;
mod resume;
mod wakeup;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, trace, warn};

use crate::config::Config;
use crate::error::{ConnectionError, Initiator, Limit, RequestError};
use crate::frame::{ErrorCode, ErrorFrame, Frame, Keepalive, StreamId, MAX_U31};
use crate::stats::ConnectionStats;
use crate::Payload;

pub(crate) use fragment::FragKind;
use fragment::Reassembly;
use ids::IdAllocator;
pub(crate) use ids::IdMap;
pub(crate) use resume::is_resumable;
use resume::ResumeState;
pub(crate) use wakeup::Wakeup;
use wakeup::Wakeups;

/// The four request interaction models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// REQUEST_RESPONSE.
    RequestResponse,
    /// REQUEST_FNF.
    FireAndForget,
    /// REQUEST_STREAM.
    RequestStream,
    /// REQUEST_CHANNEL.
    RequestChannel,
}

/// Which end of the transport this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// Work for the runtime: requests to hand to the responder.
#[derive(Debug)]
pub(crate) enum Event {
    Request {
        stream_id: StreamId,
        interaction: Interaction,
        payload: Payload,
    },
    FireAndForget(Payload),
    MetadataPush(Bytes),
}

/// Keepalive settings of an established connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepaliveParams {
    /// Send KEEPALIVE(R) this often (`None`: this side does not send).
    pub(crate) send_interval: Option<Duration>,
    /// Close when nothing was received for this long.
    pub(crate) max_lifetime: Duration,
}

#[derive(Debug)]
struct RecvHalf {
    queue: VecDeque<Payload>,
    /// Terminal signal, delivered after the queue drains.
    end: Option<Result<(), RequestError>>,
    /// Credit the peer may still use.
    outstanding: u64,
    window: u32,
    /// Items consumed since the last REQUEST_N.
    consumed: u32,
    /// Whether the initial credit has been sent (a responder's channel
    /// inbound grants lazily, on first poll).
    granted: bool,
    /// Credit is granted only by explicit [`Connection::request_credit`]
    /// calls, not as items are consumed.
    manual: bool,
    /// Credit granted by [`Connection::request_credit`] on top of the
    /// window (saturating).
    extra: u64,
    /// The window may grow while items are small (see
    /// [`Config::max_prefetch`]).
    adaptive: bool,
    /// The largest item seen, for an adaptive window.
    largest: usize,
    /// Its consumer returned `Pending` and waits for a [`Wakeup::Recv`].
    waiting: bool,
}

impl RecvHalf {
    fn new(window: u32, granted: bool) -> Self {
        Self {
            queue: VecDeque::new(),
            end: None,
            outstanding: if granted { u64::from(window) } else { 0 },
            window,
            consumed: 0,
            granted,
            manual: false,
            extra: 0,
            adaptive: false,
            largest: 0,
            waiting: false,
        }
    }

    /// Where the window goes at a replenishment: an adaptive window
    /// doubles towards `prefetch_bytes / largest item`, at most
    /// `max_prefetch`; it never shrinks (credit granted cannot be taken
    /// back).
    fn next_window(&self, max_prefetch: u32, prefetch_bytes: usize) -> u32 {
        if !self.adaptive {
            return self.window;
        }
        let fits = prefetch_bytes / self.largest.max(1);
        let target = u32::try_from(fits)
            .unwrap_or(u32::MAX)
            .min(max_prefetch)
            .min(self.window.saturating_mul(2));
        target.max(self.window)
    }

    /// Items still to be consumed before the next REQUEST_N is due (0:
    /// never, for request/response, unbounded or manual credit).
    fn report_after(&self, rr: bool) -> u32 {
        if rr || self.manual || self.window >= MAX_U31 || self.end.is_some() {
            return 0;
        }
        (self.window / 2)
            .max(1)
            .saturating_sub(self.consumed)
            .max(1)
    }

    /// Records a wake-up for the consumer, if it waits.
    fn notify(&mut self, key: u32, w: &mut Wakeups) {
        if std::mem::take(&mut self.waiting) {
            w.stream(Wakeup::Recv(key));
        }
    }

    /// The half is released: a waker still registered for it is woken
    /// (spuriously) so that the runtime drops it.
    fn forget(&mut self, key: u32, w: &mut Wakeups) {
        self.notify(key, w);
    }

    fn finish(&mut self, end: Result<(), RequestError>, key: u32, w: &mut Wakeups) {
        if self.end.is_none() {
            self.end = Some(end);
        }
        self.notify(key, w);
    }
}

#[derive(Debug)]
struct SendHalf {
    credit: u64,
    /// The producer must stop: the peer cancelled, or the stream/connection
    /// ended.
    stopped: bool,
    /// We sent our terminal frame.
    done: bool,
    /// The producer found no credit and waits for REQUEST_N.
    awaiting_credit: bool,
    /// Its producer waits for a [`Wakeup::Send`] (credit, or the order to
    /// stop).
    waiting: bool,
}

impl SendHalf {
    fn new(credit: u64) -> Self {
        Self {
            credit,
            stopped: false,
            done: false,
            awaiting_credit: false,
            waiting: false,
        }
    }

    /// Records a wake-up for the producer, if it waits.
    fn notify(&mut self, key: u32, w: &mut Wakeups) {
        if std::mem::take(&mut self.waiting) {
            w.stream(Wakeup::Send(key));
        }
    }

    /// The half is released: a waker still registered for it is woken
    /// (spuriously) so that the runtime drops it.
    fn forget(&mut self, key: u32, w: &mut Wakeups) {
        self.notify(key, w);
    }

    fn stop(&mut self, key: u32, w: &mut Wakeups) {
        self.stopped = true;
        self.notify(key, w);
    }
}

#[derive(Debug)]
struct StreamState {
    interaction: Interaction,
    /// We opened it (we are its requester).
    local: bool,
    /// ERROR or CANCEL ended the whole stream; nothing more is sent on it.
    terminated: bool,
    recv: Option<RecvHalf>,
    send: Option<SendHalf>,
}

#[derive(Debug)]
enum State {
    Open,
    /// No new streams; existing ones run to completion, until the
    /// deadline. `ERROR[CONNECTION_CLOSE]` has been sent (when this side
    /// began) or received (when the peer did).
    Draining {
        initiator: Initiator,
        deadline: Instant,
        /// The peer's message, when it began.
        message: String,
    },
    Closed(ConnectionError),
}

/// Sum of credits, saturating at 2^31 − 1 (unbounded).
fn add_credit(credit: u64, n: u32) -> u64 {
    (credit + u64::from(n)).min(u64::from(MAX_U31))
}

/// Outcome of a producer's readiness check.
#[derive(Debug)]
pub(crate) enum SendReady {
    /// This many items may be sent now (at least 1, or 0 when asked for
    /// with `zero_ok`).
    Credit(u64),
    /// Stop producing: cancelled by the peer or the connection ended.
    Stopped,
}

/// How a queued frame counts against the outbound cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Queued after waiting for room (requests, stream items): counted in
    /// `out_bytes` only.
    Paced,
    /// Queued without waiting (control frames, request/response answers
    /// written while reading): also counted in `unpaced_bytes`, which
    /// pauses reading when it reaches the cap.
    Unpaced,
}

/// A frame waiting for the writer.
#[derive(Debug)]
struct Queued {
    frame: Frame,
    len: usize,
    pace: Pace,
}

/// Frames and bytes moved, for [`ConnectionStats`].
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    frames_in: u64,
    bytes_in: u64,
    frames_out: u64,
    bytes_out: u64,
    /// Frames ever queued (the harness uses it to find new ones).
    frames_queued: u64,
    /// Requests answered REJECTED for exceeding our lease.
    lease_rejected: u64,
    /// Fire-and-forgets dropped for exceeding our lease.
    lease_dropped_fnf: u64,
}

/// One connection's protocol state. See the module docs.
#[derive(Debug)]
pub(crate) struct Connection {
    side: Side,
    config: Config,
    state: State,
    /// Client only: a frame from the server has shown the SETUP was taken.
    established: bool,
    streams: IdMap<StreamState>,
    ids: IdAllocator,
    frags: IdMap<Reassembly>,
    reassembly_bytes: usize,
    /// Fragmented requests still being reassembled; they count against
    /// `max_concurrent_inbound_streams` like open inbound streams.
    partial_requests: usize,
    inbound_streams: usize,
    /// Fire-and-forget and metadata-push handlers running.
    inflight_oneway: usize,
    /// Frames for the writer.
    out: VecDeque<Queued>,
    out_bytes: usize,
    /// Bytes of `out` queued without waiting for room (see [`Pace`]).
    unpaced_bytes: usize,
    /// Since when reading has been paused because `unpaced_bytes` reached
    /// the cap (the peer is not reading what we answer).
    stalled_since: Option<Instant>,
    /// Payload bytes in the inbound queues, waiting for their consumers.
    in_bytes: usize,
    /// Closed because the peer read nothing for too long: the driver drops
    /// the transport without writing what is left.
    abandoned: bool,
    counters: Counters,
    /// Some task returned `Pending` for lack of room in the outbound queue.
    space_waiting: bool,
    /// Wake-ups for the runtime (see `wakeup.rs`).
    wakeups: Wakeups,
    events: VecDeque<Event>,
    keepalive: KeepaliveParams,
    last_received: Instant,
    next_keepalive: Option<Instant>,
    /// Leasing, when negotiated (see `lease.rs`).
    lease: Option<lease::Leasing>,
    /// Positions and the store of unacknowledged frames, on a resumable
    /// connection (see `resume.rs`).
    resume: Option<ResumeState>,
    /// Resumable connection without a transport: no keepalive timers, no
    /// stall timer, nothing transmitted until [`Connection::attach`].
    detached: bool,
    /// Resumable connection whose keepalive expired: the driver must drop
    /// the transport and resume (see [`Connection::take_link_lost`]).
    link_lost: bool,
}

impl Connection {
    pub(crate) fn new(
        side: Side,
        config: Config,
        keepalive: KeepaliveParams,
        now: Instant,
    ) -> Self {
        Self {
            side,
            config,
            state: State::Open,
            established: side == Side::Server,
            streams: IdMap::default(),
            ids: IdAllocator::new(side == Side::Client),
            frags: IdMap::default(),
            reassembly_bytes: 0,
            partial_requests: 0,
            inbound_streams: 0,
            inflight_oneway: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            unpaced_bytes: 0,
            stalled_since: None,
            in_bytes: 0,
            abandoned: false,
            counters: Counters::default(),
            space_waiting: false,
            wakeups: Wakeups::default(),
            events: VecDeque::new(),
            keepalive,
            last_received: now,
            next_keepalive: keepalive.send_interval.map(|i| now + i),
            lease: None,
            resume: None,
            detached: false,
            link_lost: false,
        }
    }

    /// Makes this connection resumable, with a store of `config.resume_store_bytes`.
    pub(crate) fn enable_resume(&mut self) {
        self.resume = Some(ResumeState::new(self.config.resume_store_bytes));
    }

    /// Resumption is on and the connection is open (not draining, not
    /// closed): a lost transport is to be resumed.
    pub(crate) fn resumable(&self) -> bool {
        self.resume.is_some() && matches!(self.state, State::Open)
    }

    /// The keepalive expired on a resumable connection; clears the flag.
    pub(crate) fn take_link_lost(&mut self) -> bool {
        std::mem::take(&mut self.link_lost)
    }

    /// The transport is gone; timers that need one stop until
    /// [`Connection::attach`].
    pub(crate) fn detach(&mut self) {
        self.detached = true;
        self.link_lost = false;
        self.stalled_since = None;
    }

    /// A new transport took over: the liveness timers start afresh.
    pub(crate) fn attach(&mut self, now: Instant) {
        self.detached = false;
        self.link_lost = false;
        self.last_received = now;
        self.stalled_since = None;
        self.next_keepalive = self.keepalive.send_interval.map(|i| now + i);
        self.regrant_after_resume(now);
        self.wakeups.driver();
    }

    /// The client's RESUME frame for the current positions.
    pub(crate) fn resume_frame(&self, token: Bytes) -> Option<crate::frame::Resume> {
        self.resume.as_ref().map(|r| r.resume_frame(token))
    }

    /// Server side of a RESUME: RESUME_OK and the frames to send again, or
    /// why the positions cannot be honoured.
    pub(crate) fn server_resume(
        &mut self,
        frame: &crate::frame::Resume,
    ) -> Result<Vec<Frame>, String> {
        match self.resume.as_mut() {
            Some(r) if matches!(self.state, State::Open) => r.server_resume(frame),
            _ => Err("the session is not resumable".into()),
        }
    }

    /// Client side of RESUME_OK: the frames to send again.
    pub(crate) fn client_resumed(
        &mut self,
        last_received_client: u64,
    ) -> Result<Vec<Frame>, String> {
        match self.resume.as_mut() {
            Some(r) => r.client_resumed(last_received_client),
            None => Err("the session is not resumable".into()),
        }
    }

    /// Bytes in the resume store (0 when not resumable).
    pub(crate) fn resume_store_bytes(&self) -> usize {
        self.resume.as_ref().map_or(0, ResumeState::bytes)
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Queues the client's SETUP; must be called before anything else.
    pub(crate) fn queue_setup(&mut self, setup: crate::frame::Setup) {
        self.push(Frame::Setup(Box::new(setup)));
    }

    /// Draining and no stream left.
    pub(crate) fn drained(&self) -> bool {
        self.drained_state() && self.is_idle()
    }

    fn drained_state(&self) -> bool {
        matches!(self.state, State::Draining { .. })
    }

    /// Ends a drained connection: no frame is sent (CONNECTION_CLOSE went out
    /// when draining began, or came from the peer).
    pub(crate) fn finish_drain(&mut self) {
        if let State::Draining {
            initiator, message, ..
        } = &self.state
        {
            let err = match initiator {
                Initiator::Local => ConnectionError::LocallyClosed,
                Initiator::Remote => ConnectionError::Remote {
                    code: ErrorCode::CONNECTION_CLOSE,
                    message: message.clone(),
                },
            };
            self.close_streams(err);
        }
    }

    /// The error a new request gets while the connection drains or after it
    /// ended.
    fn refusal(&self) -> Option<RequestError> {
        match &self.state {
            State::Open => None,
            State::Draining { initiator, .. } => Some(RequestError::ConnectionClosing {
                initiator: *initiator,
            }),
            State::Closed(e) => Some(RequestError::Connection(e.clone())),
        }
    }

    // ----- output side -------------------------------------------------

    fn enqueue(&mut self, frame: Frame, len: usize, pace: Pace) {
        self.out_bytes += len;
        if pace == Pace::Unpaced {
            self.unpaced_bytes += len;
        }
        self.counters.frames_queued += 1;
        self.out.push_back(Queued { frame, len, pace });
    }

    /// Queues a frame and wakes the writer.
    fn push(&mut self, frame: Frame) {
        trace!(?frame, "queue");
        let len = frame.encoded_len();
        self.enqueue(frame, len, Pace::Unpaced);
        self.wakeups.driver();
    }

    /// Queues a control frame (never held back). Reading pauses once such
    /// frames fill the cap; if they alone pass twice the cap (local handles
    /// keep adding them while the peer reads nothing), the connection
    /// closes.
    fn push_control(&mut self, frame: Frame) {
        self.push(frame);
        if self.unpaced_bytes > self.config.max_outbound_queue_bytes.saturating_mul(2) {
            self.fail(ConnectionError::LimitExceeded(Limit::OutboundQueue {
                cap: self.config.max_outbound_queue_bytes,
            }));
        }
    }

    /// Queues a logical frame, fragmented at the MTU.
    fn push_fragmented(
        &mut self,
        kind: FragKind,
        id: StreamId,
        payload: Payload,
        complete: bool,
        pace: Pace,
    ) {
        let mtu = self.config.fragment_at();
        fragment::fragment(kind, id, payload, complete, mtu, |f, len| {
            self.enqueue(f, len, pace);
        });
        self.wakeups.driver();
    }

    pub(crate) fn has_space(&self) -> bool {
        self.out_bytes < self.config.max_outbound_queue_bytes
    }

    /// The caller returns `Pending` until the outbound queue has room.
    fn wait_space(&mut self) {
        self.space_waiting = true;
    }

    /// Records a wake-up for the tasks waiting for room.
    fn notify_space(&mut self) {
        if std::mem::take(&mut self.space_waiting) {
            self.wakeups.space();
        }
    }

    /// Frames are waiting for the writer and may be taken now (a full
    /// resume store holds back a resumable frame at the head).
    pub(crate) fn has_queued(&self) -> bool {
        if let Some(r) = &self.resume {
            if r.ack_due() {
                return true;
            }
            return self.out.front().is_some_and(|q| self.may_take(r, q));
        }
        !self.out.is_empty()
    }

    /// The resume store lets `q` go to the writer now.
    fn may_take(&self, r: &ResumeState, q: &Queued) -> bool {
        self.closed().is_some() || !is_resumable(&q.frame) || r.has_room(q.len)
    }

    /// Moves queued frames into `into` for the writer: up to `max` frames,
    /// and no more once `max_bytes` have been taken (at least one frame is
    /// taken when any is queued).
    pub(crate) fn poll_transmit(
        &mut self,
        max: usize,
        max_bytes: usize,
        into: &mut VecDeque<Frame>,
    ) {
        let mut taken = 0usize;
        if let Some(ack) = self.resume.as_mut().and_then(ResumeState::take_ack) {
            into.push_back(ack);
        }
        for _ in 0..max {
            if taken >= max_bytes {
                break;
            }
            if let Some(r) = &self.resume {
                match self.out.front() {
                    Some(q) if !self.may_take(r, q) => break,
                    _ => {}
                }
            }
            let Some(mut q) = self.out.pop_front() else {
                break;
            };
            if let Some(r) = self.resume.as_mut() {
                if is_resumable(&q.frame) {
                    r.record_sent(&q.frame, q.len);
                } else if let Frame::Keepalive(k) = &mut q.frame {
                    r.stamp(k);
                }
            }
            taken += q.len;
            self.out_bytes -= q.len;
            if q.pace == Pace::Unpaced {
                self.unpaced_bytes -= q.len;
            }
            self.counters.frames_out += 1;
            self.counters.bytes_out += q.len as u64;
            into.push_back(q.frame);
        }
        if self.unpaced_bytes < self.config.max_outbound_queue_bytes {
            self.stalled_since = None;
        }
        if self.has_space() {
            self.notify_space();
        }
    }

    /// Wake-ups are recorded (see [`Connection::drain_wakeups`]).
    #[inline]
    pub(crate) fn has_wakeups(&self) -> bool {
        self.wakeups.any()
    }

    /// Hands the recorded wake-ups to `f` and clears them.
    #[inline]
    pub(crate) fn drain_wakeups(&mut self, f: impl FnMut(Wakeup)) {
        self.wakeups.drain(f);
    }

    /// Forgets a recorded wake-up of the driver: the driver calls this
    /// while it holds the state and is about to check it before waiting.
    #[inline]
    pub(crate) fn clear_driver_wakeup(&mut self) {
        self.wakeups.clear_driver();
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant [`Connection::handle_timeout`] must be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, State::Closed(_)) {
            return None;
        }
        if self.detached {
            return match &self.state {
                State::Draining { deadline, .. } => Some(*deadline),
                _ => None,
            };
        }
        let dead = self.last_received + self.keepalive.max_lifetime;
        let mut next = self.next_keepalive.map_or(dead, |k| k.min(dead));
        if let Some(since) = self.stalled_since {
            next = next.min(since + self.config.outbound_stall_timeout);
        }
        if let State::Draining { deadline, .. } = &self.state {
            next = next.min(*deadline);
        }
        if let Some(grant) = self.lease_deadline() {
            next = next.min(grant);
        }
        Some(next)
    }

    /// `Some` once the connection has ended.
    pub(crate) fn closed(&self) -> Option<&ConnectionError> {
        match &self.state {
            State::Closed(e) => Some(e),
            _ => None,
        }
    }

    /// Closed because the peer stopped reading: drop the transport without
    /// flushing it.
    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned
    }

    /// True once closed and every queued frame has been handed out.
    pub(crate) fn is_finished(&self) -> bool {
        self.closed().is_some() && self.out.is_empty()
    }

    /// No streams are open (a fragmented request still arriving counts as
    /// one; payload reassembly belongs to an open stream).
    pub(crate) fn is_idle(&self) -> bool {
        self.streams.is_empty() && self.partial_requests == 0
    }

    /// The driver must not read more frames: too many fire-and-forget or
    /// metadata-push handlers are running, or what we queued in reply to
    /// the peer has filled the outbound cap (the peer is not reading).
    /// Backpressure then reaches the peer through the transport, and
    /// nothing is dropped.
    pub(crate) fn read_paused(&self) -> bool {
        self.inflight_oneway >= self.config.max_concurrent_inbound_streams
            || self.unpaced_bytes >= self.config.max_outbound_queue_bytes
    }

    /// A snapshot of the engine counters (see [`ConnectionStats`]).
    pub(crate) fn stats(&self) -> ConnectionStats {
        let mut s = ConnectionStats {
            open_streams: self.streams.len(),
            inbound_streams: self.inbound_streams + self.partial_requests,
            partial_requests: self.partial_requests,
            queued_out_bytes: self.out_bytes,
            queued_in_bytes: self.in_bytes,
            reassembly_bytes: self.reassembly_bytes,
            handlers_running: self.inflight_oneway,
            read_paused: self.read_paused(),
            closed: self.closed().is_some(),
            frames_in: self.counters.frames_in,
            bytes_in: self.counters.bytes_in,
            frames_out: self.counters.frames_out,
            bytes_out: self.counters.bytes_out,
            lease_rejected: self.counters.lease_rejected,
            lease_dropped_fnf: self.counters.lease_dropped_fnf,
            resume_store_bytes: self.resume_store_bytes(),
            ..ConnectionStats::default()
        };
        for st in self.streams.values() {
            if let Some(send) = &st.send {
                if !st.local {
                    s.handlers_running += 1;
                }
                if send.awaiting_credit {
                    s.producers_awaiting_credit += 1;
                }
            }
        }
        s
    }

    // ----- lifecycle ----------------------------------------------------

    /// Ends the connection: every pending stream fails with `err` and every
    /// waiting task is woken.
    fn close_streams(&mut self, err: ConnectionError) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        debug!(error = %err, stats = ?self.stats(), "connection closed");
        let w = &mut self.wakeups;
        for (&key, st) in self.streams.iter_mut() {
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Connection(err.clone())), key, w);
            }
            if let Some(s) = st.send.as_mut() {
                s.stop(key, w);
            }
        }
        self.frags.clear();
        self.reassembly_bytes = 0;
        self.partial_requests = 0;
        self.stalled_since = None;
        self.state = State::Closed(err);
        self.space_waiting = false;
        self.wake_lease_waiters();
        self.wakeups.all();
    }

    /// Closes after a local limit or a peer's violation, telling the peer
    /// with `ERROR[CONNECTION_ERROR]`.
    fn fail(&mut self, err: ConnectionError) {
        if self.closed().is_some() {
            return;
        }
        let msg = err.to_string();
        self.push(Frame::Error(ErrorFrame::new(
            None,
            ErrorCode::CONNECTION_ERROR,
            &msg,
        )));
        self.close_streams(err);
    }

    fn protocol_violation(&mut self, message: String) {
        warn!(%message, "protocol violation by the peer");
        self.fail(ConnectionError::Protocol {
            code: ErrorCode::CONNECTION_ERROR,
            message,
        });
    }

    /// The transport broke its own framing (an oversized frame, a text
    /// WebSocket message): a protocol violation by the peer, answered with
    /// `ERROR[CONNECTION_ERROR]` before the transport is closed.
    pub(crate) fn handle_transport_violation(&mut self, message: String) {
        self.protocol_violation(message);
    }

    /// Closes from this side with the given code on stream 0.
    pub(crate) fn close(&mut self, code: ErrorCode, message: &str, err: ConnectionError) {
        if self.closed().is_some() {
            return;
        }
        self.push(Frame::Error(ErrorFrame::new(None, code, message)));
        self.close_streams(err);
    }

    /// The transport ended (EOF or I/O error).
    pub(crate) fn handle_transport_closed(&mut self, err: ConnectionError) {
        self.out.clear();
        self.out_bytes = 0;
        self.unpaced_bytes = 0;
        let remote_drain = matches!(
            self.state,
            State::Draining {
                initiator: Initiator::Remote,
                ..
            }
        );
        let wire_idle = self.streams.values().all(|st| {
            st.terminated
                || (st.recv.as_ref().is_none_or(|r| r.end.is_some())
                    && st.send.as_ref().is_none_or(|s| s.done || s.stopped))
        });
        if remote_drain || (self.drained_state() && wire_idle) {
            // The graceful close ends here: the peer closed the transport
            // once its side was done. Items already received are still
            // delivered; streams the peer left unfinished fail with its
            // CONNECTION_CLOSE.
            return self.finish_drain();
        }
        self.close_streams(err);
    }

    /// Graceful close begun by this side: sends `ERROR[CONNECTION_CLOSE]`,
    /// refuses new streams in both directions (requests whose fragments are
    /// still arriving too, so that a peer that never finishes one cannot
    /// hold the connection open), and closes once the open ones have
    /// finished or `timeout` has passed.
    pub(crate) fn start_drain(&mut self, now: Instant, timeout: Duration, message: &str) {
        if matches!(self.state, State::Open) {
            self.push_control(Frame::Error(ErrorFrame::new(
                None,
                ErrorCode::CONNECTION_CLOSE,
                message,
            )));
            if self.closed().is_some() {
                return;
            }
            self.enter_drain(Initiator::Local, now + timeout, String::new());
        }
    }

    /// Moves to draining (either side began it).
    fn enter_drain(&mut self, initiator: Initiator, deadline: Instant, message: String) {
        self.state = State::Draining {
            initiator,
            deadline,
            message,
        };
        self.refuse_partial_requests("connection is shutting down");
        self.notify_space();
        self.wake_lease_waiters();
        self.wakeups.driver();
    }

    /// Call with the current time whenever the connection was worked on:
    /// notes when a read pause for a full queue began, and runs the timers
    /// that are due.
    pub(crate) fn handle_tick(&mut self, now: Instant) {
        if self.closed().is_some() {
            return;
        }
        if self.inflight_oneway >= self.config.max_concurrent_inbound_streams {
            // Reading is paused by our own handlers: what the peer sent
            // waits unread, so its silence proves nothing (the peer, whose
            // KEEPALIVEs go unanswered meanwhile, may judge us dead).
            self.last_received = now;
        }
        if self.detached {
            self.stalled_since = None;
        } else if self.unpaced_bytes >= self.config.max_outbound_queue_bytes {
            self.stalled_since.get_or_insert(now);
        } else {
            self.stalled_since = None;
        }
        if self.poll_timeout().is_some_and(|d| d <= now) {
            self.handle_timeout(now);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.closed().is_some() {
            return;
        }
        if let State::Draining { deadline, .. } = &self.state {
            if now >= *deadline {
                debug!("graceful close timed out; closing");
                self.close(
                    ErrorCode::CONNECTION_ERROR,
                    "graceful close timed out",
                    ConnectionError::LocallyClosed,
                );
                return;
            }
        }
        if self.detached {
            return;
        }
        if now >= self.last_received + self.keepalive.max_lifetime {
            if self.resumable() {
                // Resumption replaces the transport instead of ending the
                // connection.
                debug!("keepalive expired; the transport is considered lost");
                self.link_lost = true;
                self.last_received = now;
                return;
            }
            self.fail(ConnectionError::KeepaliveTimeout);
            return;
        }
        if let Some(since) = self.stalled_since {
            if now >= since + self.config.outbound_stall_timeout {
                // Nothing more can be written, not even an ERROR frame.
                warn!(stats = ?self.stats(), "the peer is not reading; dropping the connection");
                self.abandoned = true;
                self.handle_transport_closed(ConnectionError::LimitExceeded(Limit::OutboundStall(
                    self.config.outbound_stall_timeout,
                )));
                return;
            }
        }
        self.lease_timeout(now);
        if let (Some(next), Some(interval)) = (self.next_keepalive, self.keepalive.send_interval) {
            if now >= next {
                self.push_control(Frame::Keepalive(Keepalive {
                    respond: true,
                    last_received_position: 0,
                    data: Bytes::new(),
                }));
                self.next_keepalive = Some(now + interval);
            }
        }
    }
}
