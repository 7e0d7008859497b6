//! A frames-in / frames-out harness around the sans-IO connection, for
//! model-based tests (`rsocket-core/tests/model.rs`).
//!
//! Inputs are inbound frames (or raw frame bytes), commands from local
//! handles and the current time; outputs are the frames queued for the
//! peer, the requests for the responder, the next deadline and the
//! engine's counters. The harness applies the rules the tokio driver and
//! the handles follow (no frame is read while reading is paused, a request
//! is opened only when the outbound queue has room, a producer sends only
//! the credit it was told about), so a test that goes through it exercises
//! what the runtime can do and nothing more.
//!
//! The API names no internal type: a rebuild of the core keeps this module's
//! signatures and ports only their bodies, and the tests keep guarding it.
//! Not part of the supported API.

use std::collections::VecDeque;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Connection, KeepaliveParams, SendReady, Side};
use crate::config::Config;
use crate::error::{ConnectionError, RequestError, StreamError};
use crate::frame::{ErrorCode, Frame, StreamId};
use crate::stats::ConnectionStats;
use crate::{Interaction, Payload};

/// The longest frame a 24-bit length prefix can carry.
const MAX_WIRE_FRAME: usize = 0xFF_FFFF;

/// Work for the responder that the connection produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request that opened a stream; `stream` identifies it in later
    /// commands.
    Request {
        /// The stream the peer opened.
        stream: StreamId,
        /// Its interaction model.
        interaction: Interaction,
        /// The (reassembled) request payload.
        payload: Payload,
    },
    /// A fire-and-forget request. Its handler counts until
    /// [`Harness::handler_done`].
    FireAndForget(Payload),
    /// A metadata push. Its handler counts until [`Harness::handler_done`].
    MetadataPush(Bytes),
}

/// What a consumer got from [`Harness::recv`].
#[derive(Debug, Clone)]
pub enum Recv {
    /// Items, in order (at least one).
    Items(Vec<Payload>),
    /// The stream completed; the half is released.
    End,
    /// The stream failed; the half is released.
    Failed(RequestError),
    /// Nothing yet.
    Pending,
}

/// What a producer got from [`Harness::send_ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// It may send this many items (0 only with `zero_ok`).
    Credit(u64),
    /// It must stop and release its half.
    Stopped,
    /// Not now (no credit, or no room in the outbound queue).
    Pending,
}

/// One connection driven by hand. See the module docs.
#[derive(Debug)]
pub struct Harness {
    conn: Connection,
    now: Instant,
    /// Frames queued since the last [`Harness::new_frames`].
    log: Vec<Frame>,
    /// `frames_queued` already copied into `log`.
    seen: u64,
}

impl Harness {
    /// A client that has just queued its SETUP (with the L flag, and
    /// leasing on, when `config.lease` is set).
    pub fn client(
        config: Config,
        keepalive: Duration,
        max_lifetime: Duration,
        now: Instant,
    ) -> Self {
        let params = KeepaliveParams {
            send_interval: Some(keepalive),
            max_lifetime,
        };
        let lease = config.lease.clone();
        let mut conn = Connection::new(Side::Client, config, params, now);
        let setup = crate::config::SetupParams {
            keepalive_interval: keepalive,
            max_lifetime,
            ..crate::config::SetupParams::default()
        };
        let mut frame = setup.to_frame();
        frame.lease = lease.is_some();
        conn.queue_setup(frame);
        if let Some(lease) = &lease {
            conn.enable_lease(lease, now);
        }
        Self::wrap(conn, now)
    }

    /// A server whose peer's SETUP announced `max_lifetime` (and the L
    /// flag, which the server accepted, when `config.lease` is set).
    pub fn server(config: Config, max_lifetime: Duration, now: Instant) -> Self {
        let params = KeepaliveParams {
            send_interval: None,
            max_lifetime,
        };
        let lease = config.lease.clone();
        let mut conn = Connection::new(Side::Server, config, params, now);
        if let Some(lease) = &lease {
            conn.enable_lease(lease, now);
        }
        Self::wrap(conn, now)
    }

    /// Makes the connection resumable (a store of
    /// `Config::resume_store_bytes`), as a client built with resumption or
    /// a server that accepted a SETUP with a resume token is.
    pub fn resumable(mut self) -> Self {
        self.conn.enable_resume();
        self
    }

    /// The transport was lost under a resumable connection: the session
    /// waits for a RESUME (see [`Harness::server_resume`],
    /// [`Harness::client_resumed`]).
    pub fn detach(&mut self) {
        self.observe();
        self.conn.detach();
        self.observe();
    }

    /// Server side of a RESUME carrying these positions: on success the
    /// new transport is attached and the number of frames to send first
    /// (RESUME_OK and the replay) is returned; `Err` is the reason the
    /// RESUME is refused.
    pub fn server_resume(
        &mut self,
        last_received_server_position: u64,
        first_available_client_position: u64,
    ) -> Result<usize, String> {
        let frame = crate::frame::Resume {
            version: crate::frame::Version::V1_0,
            resume_token: Bytes::new(),
            last_received_server_position,
            first_available_client_position,
        };
        let r = self.conn.server_resume(&frame).map(|first| first.len());
        if r.is_ok() {
            self.conn.attach(self.now);
        }
        self.observe();
        r
    }

    /// Client side of a RESUME_OK carrying `position`: on success the new
    /// transport is attached and the number of frames to send again is
    /// returned.
    pub fn client_resumed(&mut self, position: u64) -> Result<usize, String> {
        let r = self.conn.client_resumed(position).map(|first| first.len());
        if r.is_ok() {
            self.conn.attach(self.now);
        }
        self.observe();
        r
    }

    fn wrap(conn: Connection, now: Instant) -> Self {
        let mut h = Self {
            conn,
            now,
            log: Vec::new(),
            seen: 0,
        };
        h.observe();
        h
    }

    /// Copies newly queued frames into the log. Frames are appended at the
    /// back of the queue, so the new ones are its last ones (unless the
    /// queue was dropped meanwhile).
    fn observe(&mut self) {
        if self.conn.drained() {
            // What the driver does once draining has finished.
            self.conn.finish_drain();
        }
        let queued = self.conn.counters.frames_queued;
        let new = usize::try_from(queued - self.seen).unwrap_or(usize::MAX);
        let skip = self.conn.out.frame_count().saturating_sub(new);
        self.log
            .extend(self.conn.out.frames().into_iter().skip(skip));
        self.seen = queued;
        // Nobody waits here: wake-ups are dropped (a runtime wakes tasks).
        self.conn.drain_wakeups(|_| {});
    }

    /// Runs `f` on the connection itself (for the runtime-only commands),
    /// then notes what it queued.
    #[cfg(test)]
    pub(crate) fn with_conn<R>(&mut self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let r = f(&mut self.conn);
        self.observe();
        r
    }

    // ----- inputs -------------------------------------------------------

    /// The driver would read a frame now: not paused, not closed.
    pub fn can_read(&self) -> bool {
        self.conn.closed().is_none() && !self.conn.read_paused()
    }

    /// Handles an inbound frame, if the driver would read one now; returns
    /// whether it was read.
    pub fn frame_in(&mut self, frame: Frame) -> bool {
        if !self.can_read() {
            return false;
        }
        self.conn.handle_frame(frame, self.now);
        self.observe();
        true
    }

    /// Decodes one frame's bytes (length prefix stripped) and handles the
    /// frame or the decode error, if the driver would read now.
    pub fn bytes_in(&mut self, bytes: Bytes) -> bool {
        if !self.can_read() {
            return false;
        }
        match Frame::decode(bytes) {
            Ok(frame) => self.conn.handle_frame(frame, self.now),
            Err(e) => self.conn.handle_decode_error(e),
        }
        self.observe();
        true
    }

    /// Handles an inbound frame the way a byte-stream transport delivers it
    /// (encoded behind its length prefix and read in place, see
    /// `Connection::handle_wire`), if the driver would read one now;
    /// returns whether it was read. Frames too long for the 24-bit prefix
    /// go through [`frame_in`](Self::frame_in).
    pub fn wire_in(&mut self, frame: Frame) -> bool {
        let len = frame.encoded_len();
        if len > MAX_WIRE_FRAME {
            return self.frame_in(frame);
        }
        let mut buf = BytesMut::with_capacity(3 + len);
        frame.encode_prefixed(len, &mut buf);
        self.wire_run_in(buf.freeze())
    }

    /// [`bytes_in`](Self::bytes_in) the way a byte-stream transport
    /// delivers the bytes: behind a length prefix, read in place.
    pub fn wire_bytes_in(&mut self, bytes: Bytes) -> bool {
        if bytes.len() > MAX_WIRE_FRAME {
            return self.bytes_in(bytes);
        }
        let mut buf = BytesMut::with_capacity(3 + bytes.len());
        crate::frame::put_u24(&mut buf, bytes.len());
        buf.extend_from_slice(&bytes);
        self.wire_run_in(buf.freeze())
    }

    /// Frames as a byte-stream transport delivers one read of several:
    /// encoded behind their length prefixes in one buffer and read in place
    /// (`Connection::handle_wire`, which takes a run of PAYLOAD frames in
    /// one call), for as long as the driver would read. Returns how many
    /// were read; the others stay unread, as the driver would hold them.
    /// Every frame must fit a 24-bit length prefix.
    pub fn wire_frames_in(&mut self, frames: &[Frame]) -> usize {
        let mut buf = BytesMut::new();
        for frame in frames {
            let len = frame.encoded_len();
            assert!(len <= MAX_WIRE_FRAME, "a frame too long for a prefix");
            frame.encode_prefixed(len, &mut buf);
        }
        let buf = buf.freeze();
        let (mut at, mut read) = (0, 0);
        while at < buf.len() && self.can_read() {
            // As many frames a call as the driver allows itself.
            let (taken, n) = self.conn.handle_wire(&buf.slice(at..), self.now, 256);
            at += taken;
            read += n;
            self.observe();
        }
        read.min(frames.len())
    }

    fn wire_run_in(&mut self, run: Bytes) -> bool {
        if !self.can_read() {
            return false;
        }
        let (taken, _) = self.conn.handle_wire(&run, self.now, 1);
        debug_assert_eq!(taken, run.len(), "one whole frame taken");
        self.observe();
        true
    }

    /// Moves the clock to `now` (never backwards) and runs what is due.
    pub fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.conn.handle_tick(self.now);
        self.observe();
    }

    /// The transport ended underneath the connection.
    pub fn transport_closed(&mut self) {
        self.observe();
        self.conn
            .handle_transport_closed(ConnectionError::ClosedByPeer);
        self.observe();
    }

    // ----- local commands -------------------------------------------------

    /// A new request may be opened now (the outbound queue has room and the
    /// connection takes new streams).
    pub fn can_open(&mut self) -> bool {
        matches!(self.conn.open_ready(), Poll::Ready(Ok(())))
    }

    /// Opens a request (see [`Harness::can_open`]); `window` is the initial
    /// credit of a stream or channel, `manual` stops automatic
    /// replenishment. A window equal to `Config::default_prefetch` may grow
    /// as `Config::max_prefetch` says, as a requester's default window
    /// does.
    pub fn open(
        &mut self,
        interaction: Interaction,
        payload: Payload,
        window: u32,
        manual: bool,
    ) -> Result<StreamId, RequestError> {
        let adaptive = window == self.conn.config().default_prefetch;
        let r = self
            .conn
            .open(interaction, payload, window, manual, adaptive, self.now);
        self.observe();
        r
    }

    /// Whether a request may be sent now as far as the peer's lease goes:
    /// `Some(Ok)` yes (or leasing is off), `Some(Err(NoLease))` no, `None`
    /// when `wait` is set and the request would wait for the next LEASE.
    pub fn lease_ready(&mut self, wait: bool) -> Option<Result<(), RequestError>> {
        match self.conn.lease_ready(self.now, wait) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Sends a LEASE (responder side); false when leasing is off.
    pub fn grant_lease(&mut self, lease: &crate::lease::Lease) -> bool {
        let r = self.conn.grant_lease(lease, self.now);
        self.observe();
        r
    }

    /// What is left of the peer's lease (`None` when leasing is off).
    pub fn lease(&self) -> Option<crate::lease::LeaseState> {
        self.conn.lease_state(self.now)
    }

    /// Takes up to `max` items from an inbound half, first reporting
    /// `consumed` items as handed to the user since the last call.
    pub fn recv(&mut self, stream: StreamId, consumed: u32, max: usize) -> Recv {
        let mut rest = super::Batch::default();
        let mut report_after = 0;
        let r = self
            .conn
            .recv(stream, consumed, max.max(1), &mut rest, &mut report_after);
        self.observe();
        match r {
            Poll::Ready(Some(Ok(first))) => {
                let mut items = vec![first];
                items.extend(std::iter::from_fn(|| rest.pop_front()));
                Recv::Items(items)
            }
            Poll::Ready(Some(Err(e))) => Recv::Failed(e),
            Poll::Ready(None) => Recv::End,
            Poll::Pending => Recv::Pending,
        }
    }

    /// Grants `n` more items on a stream opened with manual credit.
    pub fn request_credit(&mut self, stream: StreamId, n: u32) {
        self.conn.request_credit(stream, n);
        self.observe();
    }

    /// The consumer of an inbound half goes away.
    pub fn release_recv(&mut self, stream: StreamId) {
        self.conn.release_recv(stream);
        self.observe();
    }

    /// May the producer of an outbound half send, and how much?
    pub fn send_ready(&mut self, stream: StreamId, zero_ok: bool) -> Ready {
        let r = self.conn.send_ready(stream, zero_ok);
        self.observe();
        match r {
            Poll::Ready(SendReady::Credit(c)) => Ready::Credit(c),
            Poll::Ready(SendReady::Stopped) => Ready::Stopped,
            Poll::Pending => Ready::Pending,
        }
    }

    /// Sends items (no more than [`Ready::Credit`] allowed), completing the
    /// half after them if `complete`.
    pub fn send(&mut self, stream: StreamId, mut items: Vec<Payload>, complete: bool) {
        self.conn.send_batch(stream, &mut items, complete);
        self.observe();
    }

    /// Fails the stream with ERROR.
    pub fn send_error(&mut self, stream: StreamId, error: &StreamError) {
        self.conn.send_error(stream, error);
        self.observe();
    }

    /// The producer of an outbound half goes away.
    pub fn release_send(&mut self, stream: StreamId) {
        self.conn.release_send(stream);
        self.observe();
    }

    /// Queues a metadata push if the outbound queue has room: `None` when
    /// it must wait.
    pub fn metadata_push(&mut self, metadata: Bytes) -> Option<Result<(), RequestError>> {
        let mut slot = Some(metadata);
        let r = match self.conn.metadata_push(&mut slot) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        };
        self.observe();
        r
    }

    /// A fire-and-forget or metadata-push handler finished.
    pub fn handler_done(&mut self) {
        self.conn.oneway_done();
        self.observe();
    }

    /// Graceful close begins here (`ERROR[CONNECTION_CLOSE]`, no new
    /// streams, open ones finish within `timeout`).
    pub fn start_drain(&mut self, timeout: Duration) {
        self.conn
            .start_drain(self.now, timeout, "closed by the application");
        self.observe();
    }

    /// Closes from this side.
    pub fn close(&mut self) {
        self.conn.close(
            ErrorCode::CONNECTION_ERROR,
            "closed by the harness",
            ConnectionError::LocallyClosed,
        );
        self.observe();
    }

    // ----- outputs --------------------------------------------------------

    /// Every frame queued since the last call, in order (they may still be
    /// waiting for [`Harness::transmit`]).
    pub fn new_frames(&mut self) -> Vec<Frame> {
        self.observe();
        std::mem::take(&mut self.log)
    }

    /// Hands queued frames to the "writer": up to `max_bytes` (at least one
    /// frame when any is queued).
    pub fn transmit(&mut self, max_bytes: usize) -> Vec<Frame> {
        self.observe();
        let mut out = VecDeque::new();
        self.conn.poll_transmit(usize::MAX, max_bytes, &mut out);
        self.observe();
        out.into_iter()
            .flat_map(super::Outgoing::into_frames)
            .collect()
    }

    /// Requests for the responder, in order.
    pub fn events(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(ev) = self.conn.poll_event() {
            v.push(match ev {
                super::Event::Request {
                    stream_id,
                    interaction,
                    payload,
                } => Event::Request {
                    stream: stream_id,
                    interaction,
                    payload,
                },
                super::Event::FireAndForget(p) => Event::FireAndForget(p),
                super::Event::MetadataPush(m) => Event::MetadataPush(m),
            });
        }
        v
    }

    /// When [`Harness::advance`] must be called next.
    pub fn deadline(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// The engine's counters.
    pub fn stats(&self) -> ConnectionStats {
        self.conn.stats()
    }

    /// A request on `stream` is still arriving in fragments.
    pub fn partial_request(&self, stream: StreamId) -> bool {
        self.conn.partial_request(stream.get())
    }

    /// Why the connection ended, once it has.
    pub fn closed(&self) -> Option<ConnectionError> {
        self.conn.closed().cloned()
    }

    /// The connection's own bookkeeping agrees with its contents (byte and
    /// stream counts, credit windows). `Err` names the first mismatch.
    pub fn check_consistency(&self) -> Result<(), String> {
        self.conn.check_consistency()
    }
}
