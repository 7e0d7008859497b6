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
mod inbound;
mod local;

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, trace, warn};

use crate::config::Config;
use crate::error::{ConnectionError, Initiator, RequestError, StreamError};
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
    /// No new streams; existing ones run to completion.
    Draining,
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
        matches!(self.state, State::Draining) && self.is_idle()
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
            self.fail(ConnectionError::LimitExceeded(
                "outbound queue full: the peer is not reading".into(),
            ));
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
        let dead = self.last_received + self.keepalive.max_lifetime;
        Some(self.next_keepalive.map_or(dead, |k| k.min(dead)))
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
        self.close_streams(err);
    }

    /// Stops accepting new streams; open ones continue.
    pub(crate) fn start_drain(&mut self) {
        if matches!(self.state, State::Open) {
            self.state = State::Draining;
            wake(&mut self.writer_waker);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.closed().is_some() {
            return;
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
}
