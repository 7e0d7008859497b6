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
//! # Layout
//!
//! | module | concept |
//! |---|---|
//! | `mod.rs` | the connection: lifecycle (open, draining, closed), limits, timers, stats |
//! | `inbound.rs` | frames from the peer: requests, items, REQUEST_N, CANCEL, ERROR (a PAYLOAD from a run of raw frames is read in place, `handle_wire`; the items of one stream that follow it are queued as one run, cut apart as consumed) |
//! | `local.rs` | commands from local handles: open, consume, produce, release |
//! | `stream.rs` | one stream's halves, their states and credit (the replenishment rule) |
//! | `output.rs` | the outbound queue and its byte cap; frames under 4 KiB encoded into runs as they are queued |
//! | `keepalive.rs` | KEEPALIVE sending, answering, and the max lifetime |
//! | `lease.rs`, `resume.rs` | leasing; resume positions and the store of unacknowledged frames |
//! | `fragment.rs`, `ids.rs` | fragmentation and reassembly; stream ids |
//! | `wakeup.rs` | which waiting tasks the runtime must wake |
//! | `harness.rs`, `pair.rs`, `check.rs` | the frames-in/frames-out harness, two connected peers with a fake clock, and the self-check tests use |
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
//! `stream.rs` has the states of each half and the credit rules.
//!
//! # Credit
//!
//! Inbound: `outstanding + queued + consumed == window` at all times, so a
//! stream never buffers more than its window. When half the window has been
//! consumed, REQUEST_N(consumed) is queued (plus the window's growth for a
//! default window, see `Config::max_prefetch`). A window of 2^31 − 1 is
//! unbounded and never replenished. An item beyond the credit granted is a
//! protocol violation: the stream ends (CANCEL, or ERROR[CANCELED] from a
//! channel's responder still sending) and fails locally.
//!
//! Outbound: credit accumulates with saturation; at 2^31 − 1 it is treated as
//! unbounded (rsocket-java's convention). Producers are polled only while
//! credit is above zero and the outbound queue is below its byte cap.

mod check;
mod fragment;
mod handshake;
pub mod harness;
mod ids;
mod inbound;
mod keepalive;
mod lease;
mod local;
mod output;
pub mod pair;
mod resume;
mod stream;
mod table;
mod wakeup;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

use crate::config::Config;
use crate::error::{ConnectionError, Initiator, Limit, RequestError};
use crate::frame::{ErrorCode, ErrorFrame, Frame, StreamId};
use crate::stats::ConnectionStats;
use crate::Payload;

pub(crate) use fragment::FragKind;
use fragment::Reassembly;
pub(crate) use handshake::{First, Handshake};
use ids::IdAllocator;
pub(crate) use ids::IdMap;
pub(crate) use keepalive::KeepaliveParams;
pub(crate) use output::{decode_run, Outgoing, RECYCLE_RUN_BYTES};
use output::{OutQueue, Pace};
pub(crate) use resume::is_resumable;
use resume::ResumeState;
pub(crate) use stream::Batch;
use stream::{add_credit, RecvHalf, Replenish, Role, SendHalf, SendState, StreamState};
pub(crate) use table::IdTable;
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

/// Outcome of a producer's readiness check.
#[derive(Debug)]
pub(crate) enum SendReady {
    /// This many items may be sent now (at least 1, or 0 when asked for
    /// with `zero_ok`).
    Credit(u64),
    /// Stop producing: cancelled by the peer or the connection ended.
    Stopped,
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
    /// The peer's ERROR[CONNECTION_CLOSE] has been handled (it stays set
    /// after the connection ends).
    peer_closing: bool,
    streams: IdTable<StreamState>,
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
    out: OutQueue,
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
            peer_closing: false,
            streams: IdTable::default(),
            ids: IdAllocator::new(side == Side::Client),
            frags: IdMap::default(),
            reassembly_bytes: 0,
            partial_requests: 0,
            inbound_streams: 0,
            inflight_oneway: 0,
            out: OutQueue::default(),
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
        if let Some(r) = self.resume.as_mut() {
            r.new_transport();
        }
    }

    /// A new transport took over: the liveness timers start afresh.
    pub(crate) fn attach(&mut self, now: Instant) {
        self.detached = false;
        self.link_lost = false;
        self.last_received = now;
        self.stalled_since = None;
        self.next_keepalive = self.keepalive.send_interval.map(|i| now + i);
        if let Some(r) = self.resume.as_mut() {
            // A transport taken over without a detach (the server's) too.
            r.new_transport();
        }
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

    /// The peer has begun a graceful close: its ERROR[CONNECTION_CLOSE] was
    /// handled, so any frame it sent after it (a REJECTED for a request
    /// that crossed it) is handled after this turned true.
    pub(crate) fn peer_closing(&self) -> bool {
        self.peer_closing
    }

    /// Takes new requests: neither draining nor closed.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
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

    #[inline]
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Moves every pending event, in order, to the end of `into` (when
    /// `into` is empty, the two queues trade places: nothing is moved one
    /// by one). False when there was none.
    #[inline]
    pub(crate) fn take_events(&mut self, into: &mut VecDeque<Event>) -> bool {
        if self.events.is_empty() {
            return false;
        }
        if into.is_empty() {
            std::mem::swap(&mut self.events, into);
        } else {
            into.extend(self.events.drain(..));
        }
        true
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
        let mut next = self.keepalive_deadline();
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
                if !st.local() {
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
        for (key, st) in self.streams.iter_mut() {
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
        let frame = self.error_frame(None, ErrorCode::CONNECTION_ERROR, &msg);
        self.push(Frame::Error(frame));
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

    /// An ERROR frame with `message` cut (at a character boundary) so that
    /// the frame fits `max_frame_len`: ERROR frames cannot be fragmented,
    /// and the message may come from the application.
    pub(super) fn error_frame(
        &self,
        id: Option<StreamId>,
        code: ErrorCode,
        message: &str,
    ) -> ErrorFrame {
        // Header and error code.
        const FIXED: usize = crate::frame::HEADER_LEN + 4;
        let room = self.config.max_frame_len.saturating_sub(FIXED);
        let mut end = message.len().min(room);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        if end < message.len() {
            debug!(
                len = message.len(),
                kept = end,
                "error message cut to fit max_frame_len"
            );
        }
        ErrorFrame::new(id, code, message.get(..end).unwrap_or_default())
    }

    /// Closes from this side with the given code on stream 0.
    pub(crate) fn close(&mut self, code: ErrorCode, message: &str, err: ConnectionError) {
        if self.closed().is_some() {
            return;
        }
        let frame = self.error_frame(None, code, message);
        self.push(Frame::Error(frame));
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
                    && st.send.as_ref().is_none_or(|s| !s.open()))
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
            let frame = self.error_frame(None, ErrorCode::CONNECTION_CLOSE, message);
            self.push_control(Frame::Error(frame));
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
        self.keepalive_tick(now);
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
        if self.keepalive_expired(now) {
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
        self.keepalive_send(now);
    }
}
