//! The connection state machine, without I/O and without a clock.
//!
//! [`Connection`] is fed inbound frames ([`Connection::handle_frame`]), the
//! current time ([`Connection::handle_timeout`]) and commands from local
//! handles (open a request, consume an item, produce an item), and it queues
//! the frames to send, the events to dispatch, and the next deadline. The
//! async runtime only moves frames and arms the timer. It stores the
//! [`Waker`]s of the tasks that wait on a stream so that an inbound frame
//! wakes its consumer directly, without a channel hop.
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

mod fragment;
mod ids;

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, trace, warn};

use crate::config::Config;
use crate::error::{ConnectionError, Initiator, Limit, RequestError, StreamError, StreamViolation};
use crate::frame::{
    Cancel, DecodeError, ErrorCode, ErrorFrame, Frame, FrameType, Keepalive, MetadataPush,
    PayloadFrame, RequestCount, RequestN, StreamId, MAX_U31,
};
use crate::Payload;

pub(crate) use fragment::FragKind;
use fragment::Reassembly;
use ids::{IdAllocator, IdMap};

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
    waker: Option<Waker>,
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
            waker: None,
        }
    }

    fn finish(&mut self, end: Result<(), RequestError>) {
        if self.end.is_none() {
            self.end = Some(end);
        }
        wake(&mut self.waker);
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
    waker: Option<Waker>,
}

impl SendHalf {
    fn new(credit: u64) -> Self {
        Self {
            credit,
            stopped: false,
            done: false,
            waker: None,
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
        wake(&mut self.waker);
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

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
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
    inbound_streams: usize,
    inflight_fnf: usize,
    /// Frames for the writer, each with its encoded length.
    out: VecDeque<(Frame, usize)>,
    out_bytes: usize,
    writer_waker: Option<Waker>,
    space_waiters: Vec<Waker>,
    events: VecDeque<Event>,
    keepalive: KeepaliveParams,
    last_received: Instant,
    next_keepalive: Option<Instant>,
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
            inbound_streams: 0,
            inflight_fnf: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            writer_waker: None,
            space_waiters: Vec::new(),
            events: VecDeque::new(),
            keepalive,
            last_received: now,
            next_keepalive: keepalive.send_interval.map(|i| now + i),
        }
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
        matches!(self.state, State::Draining { .. }) && self.is_idle()
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

    /// Queues a frame and wakes the writer.
    fn push(&mut self, frame: Frame) {
        trace!(?frame, "queue");
        let len = frame.encoded_len();
        self.out_bytes += len;
        self.out.push_back((frame, len));
        wake(&mut self.writer_waker);
    }

    /// Queues a control frame (never held back); closes the connection if the
    /// queue grows far past its cap, which means the peer is not reading.
    fn push_control(&mut self, frame: Frame) {
        self.push(frame);
        if self.out_bytes > self.config.max_outbound_queue_bytes.saturating_mul(2) + (64 << 10) {
            self.fail(ConnectionError::LimitExceeded(Limit::OutboundQueue {
                cap: self.config.max_outbound_queue_bytes,
            }));
        }
    }

    fn push_fragmented(&mut self, kind: FragKind, id: StreamId, payload: Payload, complete: bool) {
        let mtu = self.config.fragment_at();
        fragment::fragment(kind, id, payload, complete, mtu, |f, len| {
            self.out_bytes += len;
            self.out.push_back((f, len));
        });
        wake(&mut self.writer_waker);
    }

    fn has_space(&self) -> bool {
        self.out_bytes < self.config.max_outbound_queue_bytes
    }

    fn wait_space(&mut self, cx: &Context<'_>) {
        if !self.space_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            self.space_waiters.push(cx.waker().clone());
        }
    }

    /// Frames are waiting for the writer.
    pub(crate) fn has_queued(&self) -> bool {
        !self.out.is_empty()
    }

    /// Moves up to `max` queued frames into `into` for the writer.
    pub(crate) fn poll_transmit(&mut self, max: usize, into: &mut VecDeque<Frame>) {
        let n = max.min(self.out.len());
        for (f, len) in self.out.drain(..n) {
            self.out_bytes -= len;
            into.push_back(f);
        }
        if self.has_space() {
            for w in self.space_waiters.drain(..) {
                w.wake();
            }
        }
    }

    pub(crate) fn set_writer_waker(&mut self, cx: &Context<'_>) {
        register(&mut self.writer_waker, cx);
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant [`Connection::handle_timeout`] must be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, State::Closed(_)) {
            return None;
        }
        let mut next = self.last_received + self.keepalive.max_lifetime;
        if let Some(k) = self.next_keepalive {
            next = next.min(k);
        }
        if let State::Draining { deadline, .. } = &self.state {
            next = next.min(*deadline);
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

    /// True once closed and every queued frame has been handed out.
    pub(crate) fn is_finished(&self) -> bool {
        self.closed().is_some() && self.out.is_empty()
    }

    /// No streams are open.
    pub(crate) fn is_idle(&self) -> bool {
        self.streams.is_empty() && self.frags.is_empty()
    }

    // ----- lifecycle ----------------------------------------------------

    /// Ends the connection: every pending stream fails with `err` and every
    /// waiting task is woken.
    fn close_streams(&mut self, err: ConnectionError) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        debug!(error = %err, "connection closed");
        for st in self.streams.values_mut() {
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Connection(err.clone())));
            }
            if let Some(s) = st.send.as_mut() {
                s.stop();
            }
        }
        self.frags.clear();
        self.reassembly_bytes = 0;
        self.state = State::Closed(err);
        for w in self.space_waiters.drain(..) {
            w.wake();
        }
        wake(&mut self.writer_waker);
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
    /// refuses new streams in both directions, and closes once the open
    /// ones have finished or `timeout` has passed.
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
            self.state = State::Draining {
                initiator: Initiator::Local,
                deadline: now + timeout,
                message: String::new(),
            };
            wake(&mut self.writer_waker);
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
        if now >= self.last_received + self.keepalive.max_lifetime {
            self.fail(ConnectionError::KeepaliveTimeout);
            return;
        }
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

    // ----- inbound frames -----------------------------------------------

    /// Handles a frame that failed to decode.
    pub(crate) fn handle_decode_error(&mut self, err: DecodeError) {
        match err {
            // REQUEST_N of 0: ignored (rsocket-protocol.md §2.14).
            DecodeError::ZeroRequestN {
                frame: FrameType::RequestN,
                ..
            } => debug!("ignoring REQUEST_N of 0"),
            // A request with initial request-n 0: ERROR[INVALID] on it.
            DecodeError::ZeroRequestN { stream_id, .. } => {
                if let Some(id) = StreamId::new(stream_id) {
                    if !self.streams.contains_key(&stream_id) {
                        self.push_control(Frame::Error(ErrorFrame::new(
                            Some(id),
                            ErrorCode::INVALID,
                            "initial request-n must be greater than 0",
                        )));
                    }
                }
            }
            other => self.protocol_violation(other.to_string()),
        }
    }

    pub(crate) fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if self.closed().is_some() {
            return;
        }
        trace!(?frame, "recv");
        self.last_received = now;
        if !self.established && !matches!(&frame, Frame::Error(e) if e.stream_id.is_none()) {
            self.established = true;
        }
        match frame {
            Frame::Setup(_) => debug!("ignoring SETUP on an established connection"),
            Frame::Lease(_) => debug!("ignoring LEASE: leasing is not enabled"),
            Frame::Keepalive(k) => {
                if k.respond {
                    self.push_control(Frame::Keepalive(Keepalive {
                        respond: false,
                        last_received_position: 0,
                        data: k.data,
                    }));
                }
            }
            Frame::MetadataPush(m) => self.events.push_back(Event::MetadataPush(m.metadata)),
            Frame::Resume(_) | Frame::ResumeOk(_) => {
                self.protocol_violation("RESUME frames after setup".into());
            }
            Frame::Error(e) => self.on_error(e),
            Frame::Ext(e) => {
                if !e.ignore {
                    self.protocol_violation(format!(
                        "unsupported EXT frame type {}",
                        e.extended_type
                    ));
                }
            }
            Frame::Ignored(i) => trace!(?i, "ignored frame"),
            Frame::RequestResponse(r) => self.on_request_frame(
                r.stream_id,
                FragKind::RequestResponse,
                r.payload,
                r.follows,
                false,
            ),
            Frame::RequestFnf(r) => self.on_request_frame(
                r.stream_id,
                FragKind::RequestFnf,
                r.payload,
                r.follows,
                false,
            ),
            Frame::RequestStream(r) => self.on_request_frame(
                r.stream_id,
                FragKind::RequestStream(r.initial_request_n),
                r.payload,
                r.follows,
                false,
            ),
            Frame::RequestChannel(r) => self.on_request_frame(
                r.stream_id,
                FragKind::RequestChannel(r.initial_request_n),
                r.payload,
                r.follows,
                r.complete,
            ),
            Frame::RequestN(n) => self.on_request_n(n),
            Frame::Cancel(c) => self.on_cancel(c.stream_id),
            Frame::Payload(p) => self.on_payload_frame(p),
        }
    }

    fn on_error(&mut self, e: ErrorFrame) {
        let Some(id) = e.stream_id else {
            let message = e.message();
            if e.code.is_setup_error() {
                if self.side == Side::Client && !self.established {
                    self.close_streams(ConnectionError::SetupRejected {
                        code: e.code,
                        message,
                        initiator: Initiator::Remote,
                    });
                } else {
                    debug!(code = %e.code, "ignoring setup error after establishment");
                }
                return;
            }
            if e.code == ErrorCode::CONNECTION_CLOSE && matches!(self.state, State::Open) {
                // Graceful close by the peer: open streams finish, new ones
                // are refused on both sides.
                debug!(%message, "peer began a graceful close");
                self.state = State::Draining {
                    initiator: Initiator::Remote,
                    deadline: self.last_received + self.config.close_timeout,
                    message,
                };
                for w in self.space_waiters.drain(..) {
                    w.wake();
                }
                wake(&mut self.writer_waker);
                return;
            }
            if e.code == ErrorCode::CONNECTION_CLOSE && self.drained() {
                return self.finish_drain();
            }
            self.close_streams(ConnectionError::Remote {
                code: e.code,
                message,
            });
            return;
        };
        if self.frags.remove(&id.get()).is_some() {
            self.recompute_reassembly();
        }
        let err = StreamError {
            code: e.code,
            message: e.message(),
        };
        if let Some(st) = self.streams.get_mut(&id.get()) {
            // ERROR ends the whole stream, both halves (spec §5.4).
            st.terminated = true;
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Stream(err)));
            }
            if let Some(s) = st.send.as_mut() {
                s.stop();
            }
        }
    }

    fn recompute_reassembly(&mut self) {
        self.reassembly_bytes = self.frags.values().map(Reassembly::len).sum();
    }

    /// Appends a fragment; returns the whole payload when `follows` is clear.
    fn reassemble(
        &mut self,
        id: StreamId,
        kind: FragKind,
        payload: Payload,
        follows: bool,
    ) -> Option<(FragKind, Payload)> {
        let key = id.get();
        // Most connections never fragment: skip the map lookup then.
        let in_progress = !self.frags.is_empty() && self.frags.contains_key(&key);
        if !in_progress && !follows {
            return Some((kind, payload));
        }
        let added = payload.len();
        if self.reassembly_bytes + added > self.config.max_reassembly_bytes {
            self.fail(ConnectionError::LimitExceeded(Limit::ReassemblyBytes {
                cap: self.config.max_reassembly_bytes,
            }));
            return None;
        }
        self.reassembly_bytes += added;
        let r = self
            .frags
            .entry(key)
            .or_insert_with(|| Reassembly::new(kind));
        r.push(&payload);
        if follows {
            return None;
        }
        let r = self.frags.remove(&key)?;
        self.reassembly_bytes -= r.len();
        Some((r.kind, r.finish()))
    }

    fn on_request_frame(
        &mut self,
        id: StreamId,
        kind: FragKind,
        payload: Payload,
        follows: bool,
        complete: bool,
    ) {
        let key = id.get();
        if self.streams.contains_key(&key) || self.frags.contains_key(&key) {
            debug!(stream = key, "ignoring request on a stream id in use");
            return;
        }
        let ours = id.is_client_initiated() == (self.side == Side::Client);
        if ours {
            debug!(stream = key, "ignoring request with our own stream parity");
            return;
        }
        if let Some((kind, payload)) = self.reassemble(id, kind, payload, follows) {
            self.on_request(id, kind, payload, complete);
        }
    }

    fn reject(&mut self, id: StreamId, message: &str) {
        self.push_control(Frame::Error(ErrorFrame::new(
            Some(id),
            ErrorCode::REJECTED,
            message,
        )));
    }

    fn on_request(&mut self, id: StreamId, kind: FragKind, payload: Payload, complete: bool) {
        let draining = matches!(self.state, State::Draining { .. });
        if let FragKind::RequestFnf = kind {
            if draining {
                debug!("dropping fire-and-forget: connection is shutting down");
                return;
            }
            // Never dropped for load: at the limit the driver stops reading
            // (see `read_paused`), which pushes back on the peer through the
            // transport instead.
            self.inflight_fnf += 1;
            self.events.push_back(Event::FireAndForget(payload));
            return;
        }
        if draining {
            return self.reject(id, "connection is shutting down");
        }
        if self.inbound_streams >= self.config.max_concurrent_inbound_streams {
            return self.reject(id, "too many concurrent streams");
        }
        let (interaction, send, recv) = match kind {
            FragKind::RequestResponse => (Interaction::RequestResponse, SendHalf::new(1), None),
            FragKind::RequestStream(n) => (
                Interaction::RequestStream,
                SendHalf::new(u64::from(n.get())),
                None,
            ),
            FragKind::RequestChannel(n) => {
                let mut recv = RecvHalf::new(self.config.default_prefetch, false);
                if complete {
                    recv.end = Some(Ok(()));
                }
                (
                    Interaction::RequestChannel,
                    SendHalf::new(u64::from(n.get())),
                    Some(recv),
                )
            }
            FragKind::RequestFnf | FragKind::Payload { .. } => return,
        };
        self.inbound_streams += 1;
        self.streams.insert(
            id.get(),
            StreamState {
                interaction,
                local: false,
                terminated: false,
                recv,
                send: Some(send),
            },
        );
        self.events.push_back(Event::Request {
            stream_id: id,
            interaction,
            payload,
        });
    }

    fn on_request_n(&mut self, n: RequestN) {
        if let Some(s) = self
            .streams
            .get_mut(&n.stream_id.get())
            .and_then(|st| st.send.as_mut())
        {
            if !s.stopped {
                s.credit = add_credit(s.credit, n.request_n.get());
                wake(&mut s.waker);
            }
        }
    }

    fn on_cancel(&mut self, id: StreamId) {
        let key = id.get();
        if self.frags.remove(&key).is_some() {
            self.recompute_reassembly();
        }
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        if let Some(s) = st.send.as_mut() {
            s.stop();
        }
        if !st.local {
            // The requester cancelled: the whole stream is over.
            st.terminated = true;
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Cancelled));
            }
        }
        // A responder's CANCEL on a channel only closes the requester's
        // outbound half; the responder may still send to us.
    }

    fn on_payload_frame(&mut self, p: PayloadFrame) {
        let id = p.stream_id;
        let (next, complete) = (p.next, p.complete);
        let Some((kind, payload)) = self.reassemble(
            id,
            FragKind::Payload { next },
            p.payload,
            p.follows && !complete,
        ) else {
            return;
        };
        match kind {
            FragKind::Payload { .. } => self.on_payload(id, payload, next, complete),
            // The last follow-up of a fragmented request: the request is
            // whole now (C on a channel's last fragment completes its
            // requester half).
            request => self.on_request(id, request, payload, complete),
        }
    }

    fn on_payload(&mut self, id: StreamId, payload: Payload, next: bool, complete: bool) {
        let Some(st) = self.streams.get_mut(&id.get()) else {
            trace!(stream = id.get(), "ignoring PAYLOAD for an unknown stream");
            return;
        };
        let rr = st.interaction == Interaction::RequestResponse;
        let Some(r) = st.recv.as_mut() else {
            return;
        };
        if r.end.is_some() {
            return;
        }
        if next {
            if r.outstanding == 0 {
                // More than we asked for: cancel and fail locally.
                st.terminated = true;
                r.finish(Err(RequestError::Protocol(StreamViolation::BeyondCredit)));
                if let Some(s) = st.send.as_mut() {
                    s.stop();
                }
                self.push_control(Frame::Cancel(Cancel { stream_id: id }));
                return;
            }
            // At 2^31 - 1 credit is unbounded and is not counted down.
            if r.outstanding < u64::from(MAX_U31) {
                r.outstanding -= 1;
            }
            r.queue.push_back(payload);
        }
        if complete || rr {
            r.end = Some(Ok(()));
        }
        wake(&mut r.waker);
    }

    // ----- requester commands ------------------------------------------

    /// Ready when a new request may be queued (the outbound queue has room).
    pub(crate) fn poll_open_ready(&mut self, cx: &Context<'_>) -> Poll<Result<(), RequestError>> {
        if let Some(refusal) = self.refusal() {
            return Poll::Ready(Err(refusal));
        }
        if self.has_space() {
            Poll::Ready(Ok(()))
        } else {
            self.wait_space(cx);
            Poll::Pending
        }
    }

    /// Opens a stream and queues its request frame(s). `window` is the
    /// initial request-n for streams and channels; with `manual`, credit is
    /// only added by [`Connection::request_credit`].
    pub(crate) fn open(
        &mut self,
        interaction: Interaction,
        payload: Payload,
        window: u32,
        manual: bool,
    ) -> Result<StreamId, RequestError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let streams = &self.streams;
        let id = self
            .ids
            .next(streams.len(), |id| streams.contains_key(&id))
            .ok_or_else(|| RequestError::Stream(StreamError::rejected("no free stream ids")))?;
        let n = RequestCount::new(window.min(MAX_U31)).unwrap_or(RequestCount::ONE);
        let (kind, recv, send) = match interaction {
            Interaction::FireAndForget => (FragKind::RequestFnf, None, None),
            Interaction::RequestResponse => (
                FragKind::RequestResponse,
                Some(RecvHalf::new(1, true)),
                None,
            ),
            Interaction::RequestStream => (
                FragKind::RequestStream(n),
                Some(RecvHalf::new(n.get(), true)),
                None,
            ),
            Interaction::RequestChannel => (
                FragKind::RequestChannel(n),
                Some(RecvHalf::new(n.get(), true)),
                Some(SendHalf::new(0)),
            ),
        };
        let mut recv = recv;
        if let Some(r) = recv.as_mut() {
            r.manual = manual;
        }
        if recv.is_some() || send.is_some() {
            self.streams.insert(
                id.get(),
                StreamState {
                    interaction,
                    local: true,
                    terminated: false,
                    recv,
                    send,
                },
            );
        }
        self.push_fragmented(kind, id, payload, false);
        Ok(id)
    }

    /// Queues a METADATA_PUSH once the outbound queue has room. Allowed
    /// while a graceful close drains (it opens no stream).
    pub(crate) fn poll_metadata_push(
        &mut self,
        cx: &Context<'_>,
        metadata: &mut Option<Bytes>,
    ) -> Poll<Result<(), RequestError>> {
        if let Some(e) = self.closed() {
            return Poll::Ready(Err(RequestError::Connection(e.clone())));
        }
        if !self.has_space() {
            self.wait_space(cx);
            return Poll::Pending;
        }
        if let Some(metadata) = metadata.take() {
            self.push(Frame::MetadataPush(MetadataPush { metadata }));
        }
        Poll::Ready(Ok(()))
    }

    /// A spawned fire-and-forget handler finished.
    pub(crate) fn fnf_done(&mut self) {
        let was_paused = self.read_paused();
        self.inflight_fnf = self.inflight_fnf.saturating_sub(1);
        if was_paused && !self.read_paused() {
            // The driver stopped reading; let it resume.
            wake(&mut self.writer_waker);
        }
    }

    /// Too many fire-and-forget handlers are running: the driver reads no
    /// more frames until some finish. Backpressure reaches the peer through
    /// the transport (its writer, then its requests, wait), and nothing is
    /// dropped.
    pub(crate) fn read_paused(&self) -> bool {
        self.inflight_fnf >= self.config.max_concurrent_inbound_streams
    }

    // ----- consumers of inbound halves ----------------------------------

    /// Takes the next item and moves up to `max - 1` more into `into`, after
    /// counting `consumed` items the caller has handed to its user since its
    /// last call: consumption, not arrival, is what earns the peer more
    /// credit, so a consumer that stops polling stops the producer. Ready
    /// with `Some(Ok(item))`, `None` at completion,
    /// `Some(Err(_))` when the stream failed; both terminal answers release
    /// the half.
    pub(crate) fn poll_recv(
        &mut self,
        id: StreamId,
        cx: &Context<'_>,
        consumed: u32,
        max: usize,
        into: &mut VecDeque<Payload>,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        self.poll_recv_inner(id, cx, consumed, max, into, true)
    }

    fn poll_recv_inner(
        &mut self,
        id: StreamId,
        cx: &Context<'_>,
        consumed: u32,
        max: usize,
        into: &mut VecDeque<Payload>,
        take: bool,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        let key = id.get();
        let Some(st) = self.streams.get_mut(&key) else {
            return Poll::Ready(None);
        };
        let terminated = st.terminated;
        let rr = st.interaction == Interaction::RequestResponse;
        let Some(r) = st.recv.as_mut() else {
            return Poll::Ready(None);
        };
        let mut grant = 0;
        if !r.granted {
            r.granted = true;
            if r.end.is_none() && !terminated {
                r.outstanding = u64::from(r.window);
                grant = r.window;
            }
        }
        if consumed > 0 && r.window < MAX_U31 && !r.manual && !rr {
            r.consumed += consumed;
            if r.end.is_none() && r.consumed >= (r.window / 2).max(1) {
                grant = r.consumed;
                r.outstanding += u64::from(r.consumed);
                r.consumed = 0;
            }
        }
        let result = if !take {
            Poll::Pending
        } else if let Some(first) = r.queue.pop_front() {
            // The first item is returned directly, so a single response
            // never touches the caller's buffer.
            let n = max.saturating_sub(1).min(r.queue.len());
            into.extend(r.queue.drain(..n));
            Poll::Ready(Some(Ok(first)))
        } else {
            match r.end.take() {
                Some(Ok(())) => Poll::Ready(None),
                Some(Err(e)) => Poll::Ready(Some(Err(e))),
                None => {
                    register(&mut r.waker, cx);
                    Poll::Pending
                }
            }
        };
        if matches!(result, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // The terminal signal was delivered: the half is done.
            st.recv = None;
            self.maybe_remove(key);
        } else if grant > 0 && !terminated {
            if let Some(n) = RequestCount::new(grant) {
                self.push_control(Frame::RequestN(RequestN {
                    stream_id: id,
                    request_n: n,
                }));
            }
        }
        result
    }

    /// Counts `n` items as handed to the user, replenishing credit when half
    /// the window has been consumed.
    pub(crate) fn report_consumed(&mut self, id: StreamId, n: u32) {
        let mut noop = VecDeque::new();
        let cx = Context::from_waker(Waker::noop());
        // `max` 0 moves nothing; only the accounting and REQUEST_N happen.
        let _ = self.poll_recv_inner(id, &cx, n, 0, &mut noop, false);
    }

    /// Grants the peer `n` more items on a stream opened with manual credit
    /// (REQUEST_N). Ignored once the stream has ended.
    pub(crate) fn request_credit(&mut self, id: StreamId, n: u32) {
        let Some(st) = self.streams.get_mut(&id.get()) else {
            return;
        };
        if st.terminated {
            return;
        }
        let Some(r) = st.recv.as_mut() else {
            return;
        };
        let Some(count) = RequestCount::new(n.min(MAX_U31)) else {
            return;
        };
        if r.end.is_some() {
            return;
        }
        r.outstanding = add_credit(r.outstanding, count.get());
        self.push_control(Frame::RequestN(RequestN {
            stream_id: id,
            request_n: count,
        }));
    }

    /// The consumer of an inbound half went away.
    pub(crate) fn release_recv(&mut self, id: StreamId) {
        let key = id.get();
        let conn_open = self.closed().is_none();
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let Some(r) = st.recv.take() else {
            return;
        };
        let open = r.end.is_none() && !st.terminated && conn_open;
        if open {
            if st.local {
                // Requester gives up: the whole stream ends.
                st.terminated = true;
                if let Some(s) = st.send.as_mut() {
                    s.stop();
                }
            }
            self.push_control(Frame::Cancel(Cancel { stream_id: id }));
        }
        self.maybe_remove(key);
    }

    // ----- producers of outbound halves ---------------------------------

    /// Ready with the credit available when the producer may send, or with
    /// `Stopped` when it must give up.
    ///
    /// With `zero_ok`, a producer without credit gets `Credit(0)` (its waker
    /// is registered for the next REQUEST_N): a requester's channel uses this
    /// to look one item ahead, so that it can send COMPLETE, which needs no
    /// credit, to a responder that never grants any.
    pub(crate) fn poll_send_ready(
        &mut self,
        id: StreamId,
        cx: &Context<'_>,
        zero_ok: bool,
    ) -> Poll<SendReady> {
        let has_space = self.has_space();
        let Some(s) = self
            .streams
            .get_mut(&id.get())
            .and_then(|st| st.send.as_mut())
        else {
            return Poll::Ready(SendReady::Stopped);
        };
        if s.stopped || s.done {
            return Poll::Ready(SendReady::Stopped);
        }
        // Registered even when credit is available: a producer whose user
        // stream is pending must still be woken by CANCEL or close.
        register(&mut s.waker, cx);
        if s.credit == 0 {
            if !zero_ok {
                return Poll::Pending;
            }
            if has_space {
                return Poll::Ready(SendReady::Credit(0));
            }
            self.wait_space(cx);
            return Poll::Pending;
        }
        if !has_space {
            self.wait_space(cx);
            return Poll::Pending;
        }
        Poll::Ready(SendReady::Credit(s.credit))
    }

    /// Ready once the producer must stop (cancelled or connection closed).
    pub(crate) fn poll_stopped(&mut self, id: StreamId, cx: &Context<'_>) -> Poll<()> {
        match self
            .streams
            .get_mut(&id.get())
            .and_then(|st| st.send.as_mut())
        {
            Some(s) if !s.stopped => {
                register(&mut s.waker, cx);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Sends items (each spends one credit; callers never send more than
    /// [`SendReady::Credit`] allowed) and optionally completes in the last
    /// frame.
    pub(crate) fn send_items(
        &mut self,
        id: StreamId,
        items: impl ExactSizeIterator<Item = Payload>,
        complete: bool,
    ) {
        let Some(st) = self.streams.get_mut(&id.get()) else {
            return;
        };
        let Some(s) = st.send.as_mut() else {
            return;
        };
        if s.stopped || s.done {
            return;
        }
        let rr = st.interaction == Interaction::RequestResponse;
        let count = items.len();
        if s.credit < u64::from(MAX_U31) {
            s.credit = s.credit.saturating_sub(count as u64);
        }
        let complete = complete || rr;
        if complete {
            s.done = true;
        }
        let mtu = self.config.fragment_at();
        for (i, p) in items.enumerate() {
            let c = complete && i + 1 == count;
            fragment::fragment(FragKind::Payload { next: true }, id, p, c, mtu, |f, len| {
                self.out_bytes += len;
                self.out.push_back((f, len));
            });
        }
        if count == 0 && complete {
            let f = Frame::Payload(PayloadFrame::complete(id));
            let len = f.encoded_len();
            self.out_bytes += len;
            self.out.push_back((f, len));
        }
        wake(&mut self.writer_waker);
    }

    /// Sends ERROR on the stream, ending it on both halves.
    pub(crate) fn send_error(&mut self, id: StreamId, err: &StreamError) {
        let Some(st) = self.streams.get_mut(&id.get()) else {
            return;
        };
        let Some(s) = st.send.as_mut() else {
            return;
        };
        if s.stopped || s.done {
            return;
        }
        s.done = true;
        st.terminated = true;
        if let Some(r) = st.recv.as_mut() {
            r.finish(Err(RequestError::Cancelled));
        }
        let code = if !st.local && err.code.is_connection_level() {
            ErrorCode::APPLICATION_ERROR
        } else {
            err.code
        };
        self.push(Frame::Error(ErrorFrame::new(Some(id), code, &err.message)));
    }

    /// The producer of an outbound half went away.
    pub(crate) fn release_send(&mut self, id: StreamId) {
        let key = id.get();
        let conn_open = self.closed().is_none();
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let Some(s) = st.send.take() else {
            return;
        };
        if !s.done && !s.stopped && !st.terminated && conn_open {
            st.terminated = true;
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Cancelled));
            }
            let frame = if st.local {
                Frame::Cancel(Cancel { stream_id: id })
            } else {
                Frame::Error(ErrorFrame::new(
                    Some(id),
                    ErrorCode::CANCELED,
                    "responder dropped the stream",
                ))
            };
            self.push_control(frame);
        }
        self.maybe_remove(key);
    }

    fn maybe_remove(&mut self, key: u32) {
        let done = self
            .streams
            .get(&key)
            .is_some_and(|st| st.recv.is_none() && st.send.is_none());
        if done {
            if let Some(st) = self.streams.remove(&key) {
                if !st.local {
                    self.inbound_streams = self.inbound_streams.saturating_sub(1);
                }
            }
            if self.streams.is_empty() && matches!(self.state, State::Draining { .. }) {
                // Let the driver notice that draining has finished.
                wake(&mut self.writer_waker);
            }
        }
    }

    /// Number of streams currently tracked (for tests and metrics).
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }
}
