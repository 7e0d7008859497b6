//! Inbound frames: what the peer sent, checked and applied to the streams.

use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, trace};

use super::fragment::Reassembly;
use super::stream::Run;
use super::{
    Connection, Event, FragKind, Interaction, RecvHalf, Replenish, Role, SendHalf, Side, State,
    StreamState,
};
use crate::codec::LENGTH_PREFIX_LEN;
use crate::error::{ConnectionError, Initiator, Limit, RequestError, StreamError, StreamViolation};
use crate::frame::{
    Cancel, DecodeError, ErrorCode, ErrorFrame, Frame, FrameType, PayloadFrame, RequestFnf,
    RequestN, RequestResponse, StreamId, MAX_U31,
};
use crate::Payload;

/// Fire-and-forgets [`Connection::handle_wire`] leaves, at most, before
/// the caller dispatches them.
pub(crate) const FNF_BATCH: usize = 32;

impl Connection {
    // ----- inbound frames -----------------------------------------------

    /// Handles a frame that failed to decode.
    pub(crate) fn handle_decode_error(&mut self, err: DecodeError) {
        if self.closed().is_some() {
            return;
        }
        self.counters.frames_in += 1;
        if let DecodeError::ZeroRequestN { len, .. } = &err {
            // REQUEST_N and the requests are resumable frames: the peer
            // counted this one in its position, so this side does too.
            self.counters.bytes_in += *len as u64;
            if let Some(r) = self.resume.as_mut() {
                if r.record_received(*len) {
                    self.wakeups.driver();
                }
            }
        }
        match err {
            // REQUEST_N of 0: ignored (rsocket-protocol.md §2.14).
            DecodeError::ZeroRequestN {
                frame: FrameType::RequestN,
                ..
            } => debug!("ignoring REQUEST_N of 0"),
            // A request with initial request-n 0: ERROR[INVALID] on it,
            // unless it may not open a stream there (id in use, also by a
            // request still in fragments, or of our parity): ignored then,
            // as any such request.
            DecodeError::ZeroRequestN { stream_id, .. } => {
                if let Some(id) = StreamId::new(stream_id) {
                    if self.opens_new_stream(id) {
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
        let len = frame.encoded_len();
        self.handle_frame_len(frame, len, now);
    }

    /// Handles frames from the start of `buf`, raw bytes of whole frames
    /// each behind its 24-bit length prefix (as the runtime's `WireRead`
    /// readers give them): the first frame, and after it the PAYLOAD
    /// frames that follow (or, after a REQUEST_FNF, the REQUEST_FNF frames
    /// that follow), read in place (metadata and data sliced from `buf`),
    /// in the same call. Stops before any other frame, after `max` frames,
    /// after a frame that left an [`Event`] other than the fire-and-forget
    /// of a REQUEST_FNF taken here (the caller dispatches it before the
    /// next frame is read), after [`FNF_BATCH`] such fire-and-forgets, and
    /// once reading is paused (which running fire-and-forget handlers,
    /// counted as their events are left, also cause: a run never starts
    /// more handlers than the limit allows). Returns the bytes and the
    /// frames taken (at least one frame when `max` is not 0).
    pub(crate) fn handle_wire(&mut self, buf: &Bytes, now: Instant, max: usize) -> (usize, usize) {
        let (mut at, mut n) = (0, 0);
        while n < max {
            let len = buf
                .get(at..)
                .and_then(crate::frame::get_u24)
                .unwrap_or(usize::MAX);
            let start = at + LENGTH_PREFIX_LEN;
            let Some(mut end) = len.checked_add(start).filter(|&end| end <= buf.len()) else {
                // The reader hands out whole frames only.
                self.handle_transport_violation("a partial frame in a run of frames".into());
                return (buf.len(), n + 1);
            };
            match PayloadFrame::peek(buf, start, len) {
                Some(p) => {
                    let key = p.stream_id.get();
                    if self.handle_payload_frame(p, len, now) && n + 1 < max {
                        // The items of the same stream right behind it:
                        // one run.
                        let (run_end, taken) = self.take_run(buf, end, key, max - n - 1);
                        end = run_end;
                        n += taken;
                    }
                }
                None if n == 0 => {
                    if let Some(r) = RequestFnf::peek(buf, start, len) {
                        let before = self.events.len();
                        self.handle_fnf_frame(r, len, now);
                        let fnf_events = self.events.len() - before;
                        return self.handle_fnf_run(buf, end, fnf_events, now, max);
                    }
                    if let Some(r) = RequestResponse::peek(buf, start, len) {
                        self.handle_rr_frame(r, len, now);
                        return (end, 1);
                    }
                    match Frame::decode(buf.slice(start..end)) {
                        Ok(frame) => self.handle_frame_len(frame, len, now),
                        Err(e) => self.handle_decode_error(e),
                    }
                    return (end, 1);
                }
                // Another frame: the next call takes it.
                None => break,
            }
            at = end;
            n += 1;
            if at == buf.len() || !self.events.is_empty() || self.read_paused() {
                break;
            }
        }
        (at, n)
    }

    /// [`Connection::handle_wire`] after a REQUEST_FNF at the start of
    /// `buf`, ending at `at`, that left `fnf_events` events (its own
    /// fire-and-forget, or none): the REQUEST_FNF frames right after it,
    /// while each leaves no event but its own fire-and-forget, up to
    /// [`FNF_BATCH`] of those, `max` (at least 1) frames in all, and the
    /// pause (see `handle_wire`). Events pending before the first frame
    /// end the run after it, as any event would. Kept out of line: the
    /// PAYLOAD loop of `handle_wire` is the hotter one.
    #[inline(never)]
    fn handle_fnf_run(
        &mut self,
        buf: &Bytes,
        mut at: usize,
        mut fnf_events: usize,
        now: Instant,
        max: usize,
    ) -> (usize, usize) {
        let mut n = 1;
        while n < max
            && at < buf.len()
            && self.events.len() == fnf_events
            && fnf_events < FNF_BATCH
            && !self.read_paused()
        {
            let len = buf
                .get(at..)
                .and_then(crate::frame::get_u24)
                .unwrap_or(usize::MAX);
            let start = at + LENGTH_PREFIX_LEN;
            // A partial frame is left for the next call, which fails the
            // connection; another frame for the next call too.
            let Some((r, end)) = len
                .checked_add(start)
                .filter(|&end| end <= buf.len())
                .and_then(|end| Some((RequestFnf::peek(buf, start, len)?, end)))
            else {
                break;
            };
            let before = self.events.len();
            self.handle_fnf_frame(r, len, now);
            fnf_events += self.events.len() - before;
            at = end;
            n += 1;
        }
        (at, n)
    }

    /// A REQUEST_FNF read in place (see [`Connection::handle_wire`]): what
    /// [`Connection::handle_frame`] does with it, without the `Frame`.
    #[inline(always)]
    fn handle_fnf_frame(&mut self, r: RequestFnf, len: usize, now: Instant) {
        if self.closed().is_some() {
            return;
        }
        trace!(frame = ?r, "recv");
        if !self.received_resumable(len, now) {
            return;
        }
        self.on_fnf_frame(r.stream_id, r.payload, r.follows);
    }

    /// A REQUEST_RESPONSE read in place (see [`Connection::handle_wire`]):
    /// what [`Connection::handle_frame`] does with it, without the `Frame`.
    #[inline]
    fn handle_rr_frame(&mut self, r: RequestResponse, len: usize, now: Instant) {
        if self.closed().is_some() {
            return;
        }
        trace!(frame = ?r, "recv");
        if !self.received_resumable(len, now) {
            return;
        }
        if r.follows || self.lease.is_some() {
            return self.on_request_frame(
                r.stream_id,
                FragKind::RequestResponse,
                r.payload,
                r.follows,
                false,
            );
        }
        // A whole one without leasing (the common case): what
        // `on_request_frame` and `on_request` do for it, in one call.
        let id = r.stream_id;
        let key = id.get();
        if !self.opens_new_stream(id) {
            return;
        }
        if matches!(self.state, State::Draining { .. }) {
            return self.reject(id, "connection is shutting down");
        }
        if self.inbound_streams + self.partial_requests
            >= self.config.max_concurrent_inbound_streams
        {
            return self.reject(id, "too many concurrent streams");
        }
        self.inbound_streams += 1;
        // Not in use (checked above).
        self.streams.insert_new_with(key, || StreamState {
            interaction: Interaction::RequestResponse,
            role: Role::Responder,
            terminated: false,
            recv: None,
            send: Some(SendHalf::new(1)),
        });
        self.events.push_back(Event::Request {
            stream_id: id,
            interaction: Interaction::RequestResponse,
            payload: r.payload,
        });
    }

    /// [`on_request_frame`](Self::on_request_frame) of a REQUEST_FNF. A
    /// whole one without leasing (the common case) is checked and queued
    /// here, as `on_request_frame` and `on_request` would, in one call
    /// and without the checks that concern other requests; the others go
    /// through `on_request_frame`.
    #[inline(never)]
    fn on_fnf_frame(&mut self, id: StreamId, payload: Payload, follows: bool) {
        if follows || self.lease.is_some() {
            return self.on_request_frame(id, FragKind::RequestFnf, payload, follows, false);
        }
        if !self.opens_new_stream(id) {
            return;
        }
        if matches!(self.state, State::Draining { .. }) {
            debug!("dropping fire-and-forget: connection is shutting down");
            return;
        }
        // Never dropped for load (see `on_request`).
        self.inflight_oneway += 1;
        self.events.push_back(Event::FireAndForget(payload));
    }

    /// After an item [`handle_payload_frame`](Self::handle_payload_frame)
    /// queued in one step: the plain items of the same stream that follow
    /// it in `buf` from `from` (see [`PayloadFrame::scan_item`]), at most
    /// `max` and within the credit left, are queued together as one
    /// [`Run`], sliced from `buf`. Returns where they end and how many they
    /// are.
    fn take_run(&mut self, buf: &Bytes, from: usize, key: u32, max: usize) -> (usize, usize) {
        let max_len = self.config.max_frame_len;
        let Some(r) = self.streams.get_mut(&key).and_then(|st| st.recv.as_mut()) else {
            return (from, 0);
        };
        // At 2^31 - 1 credit is unbounded and is not counted down.
        let unbounded = r.outstanding >= u64::from(MAX_U31);
        let limit = if unbounded {
            max
        } else {
            usize::try_from(r.outstanding).map_or(max, |o| o.min(max))
        };
        let (mut at, mut count, mut bytes, mut largest) = (from, 0, 0, 0);
        let frames: &[u8] = buf;
        while count < limit {
            let Some((end, len)) = PayloadFrame::scan_item(frames, at, key, max_len) else {
                break;
            };
            at = end;
            count += 1;
            bytes += len;
            largest = largest.max(len);
        }
        if count == 0 {
            return (from, 0);
        }
        if !unbounded {
            r.outstanding -= count as u64;
        }
        if r.replenish == Replenish::Adaptive && largest > r.largest {
            r.largest = largest;
        }
        r.queue
            .push_run(Run::new(buf.slice(from..at), count, bytes));
        trace!(stream = key, count, "recv a run of PAYLOAD frames");
        self.counters.frames_in += count as u64;
        self.counters.bytes_in += (at - from - count * LENGTH_PREFIX_LEN) as u64;
        self.in_bytes += bytes;
        (at, count)
    }

    /// A PAYLOAD read in place (see [`Connection::handle_wire`]): what
    /// [`Connection::handle_frame`] does with it, without the `Frame`.
    /// True when it was an item within credit, queued in one step.
    fn handle_payload_frame(&mut self, p: PayloadFrame, len: usize, now: Instant) -> bool {
        if self.closed().is_some() {
            return false;
        }
        trace!(frame = ?p, "recv");
        if p.next
            && !p.follows
            && self.resume.is_none()
            && self.frags.is_empty()
            && len <= self.config.max_frame_len
        {
            // The common cases, in one step: a stream's item within credit
            // (what `received` and `on_payload` do for it), and a
            // request/response's answer, PAYLOAD(N+C) (what `received`,
            // `on_payload_frame` and `on_payload` do for it). Anything else
            // (an answer without C, a stream's last item with C) takes the
            // general path.
            let key = p.stream_id.get();
            let answer = p.complete;
            let open = self
                .streams
                .get_mut(&key)
                .filter(|st| (st.interaction == Interaction::RequestResponse) == answer)
                .and_then(|st| st.recv.as_mut())
                .filter(|r| r.end.is_none() && r.outstanding > 0);
            if let Some(r) = open {
                self.counters.frames_in += 1;
                self.counters.bytes_in += len as u64;
                self.last_received = now;
                self.established = true;
                self.in_bytes += p.payload.len();
                r.push(p.payload);
                if answer {
                    r.end = Some(Ok(()));
                }
                r.notify(key, &mut self.wakeups);
                return !answer;
            }
        }
        if self.received_resumable(len, now) {
            self.on_payload_frame(p);
        }
        false
    }

    /// [`received`](Self::received) for a resumable frame that establishes
    /// the connection (PAYLOAD, REQUEST_FNF): also marks it established
    /// and records the frame in the resume position.
    #[inline]
    fn received_resumable(&mut self, len: usize, now: Instant) -> bool {
        if !self.received(len, now) {
            return false;
        }
        self.established = true;
        if let Some(r) = self.resume.as_mut() {
            if r.record_received(len) {
                self.wakeups.driver();
            }
        }
        true
    }

    /// Counts a frame of `len` bytes received at `now`; false (and the
    /// connection failed) when it is larger than `max_frame_len`.
    #[inline]
    fn received(&mut self, len: usize, now: Instant) -> bool {
        self.counters.frames_in += 1;
        self.counters.bytes_in += len as u64;
        self.last_received = now;
        if len > self.config.max_frame_len {
            // Transports that frame with a length prefix reject such a
            // frame before reading it; this catches any other transport.
            self.protocol_violation(format!(
                "frame of {len} bytes exceeds max_frame_len {}",
                self.config.max_frame_len
            ));
            return false;
        }
        true
    }

    /// [`Connection::handle_frame`] of a frame whose encoded length is
    /// known.
    fn handle_frame_len(&mut self, frame: Frame, len: usize, now: Instant) {
        if self.closed().is_some() {
            return;
        }
        trace!(?frame, "recv");
        if !self.received(len, now) {
            return;
        }
        if !self.established && !matches!(&frame, Frame::Error(e) if e.stream_id.is_none()) {
            self.established = true;
        }
        if let Some(r) = self.resume.as_mut() {
            if super::is_resumable(&frame) {
                if r.record_received(len) {
                    self.wakeups.driver();
                }
            } else if let Frame::Keepalive(k) = &frame {
                if !r.peer_reported(k.last_received_position) {
                    debug!(
                        position = k.last_received_position,
                        sent = r.sent(),
                        "ignoring a KEEPALIVE position beyond what was sent"
                    );
                }
            }
        }
        match frame {
            Frame::Setup(_) => debug!("ignoring SETUP on an established connection"),
            Frame::Lease(l) => self.on_lease(l, now),
            Frame::Keepalive(k) => self.on_keepalive(k),
            Frame::MetadataPush(m) => {
                // Its handler counts like a fire-and-forget one: at the
                // limit, reading pauses (`read_paused`).
                self.inflight_oneway += 1;
                self.events.push_back(Event::MetadataPush(m.metadata));
            }
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
            if e.code == ErrorCode::CONNECTION_CLOSE {
                self.peer_closing = true;
            }
            if e.code == ErrorCode::CONNECTION_CLOSE && matches!(self.state, State::Open) {
                // Graceful close by the peer: open streams finish, new ones
                // are refused on both sides.
                debug!(%message, "peer began a graceful close");
                let deadline = self.last_received + self.config.close_timeout;
                self.enter_drain(Initiator::Remote, deadline, message);
                return;
            }
            if e.code == ErrorCode::CONNECTION_CLOSE && self.drained_state() {
                // Both sides began a graceful close (their CONNECTION_CLOSE
                // frames crossed): still graceful, the open streams finish.
                if self.is_idle() {
                    self.finish_drain();
                }
                return;
            }
            self.close_streams(ConnectionError::Remote {
                code: e.code,
                message,
            });
            return;
        };
        self.drop_reassembly(id.get());
        let err = StreamError {
            code: e.code,
            message: e.message(),
        };
        let key = id.get();
        if let Some(st) = self.streams.get_mut(&key) {
            // ERROR ends the whole stream, both halves (spec §5.4).
            st.terminated = true;
            let w = &mut self.wakeups;
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Stream(err)), key, w);
            }
            if let Some(s) = st.send.as_mut() {
                s.stop(key, w);
            }
        }
    }

    /// Discards the reassembly in progress on `key`, if any.
    #[inline]
    pub(super) fn drop_reassembly(&mut self, key: u32) {
        // Nearly always nothing is being reassembled: skip the lookup.
        if self.frags.is_empty() {
            return;
        }
        if let Some(r) = self.frags.remove(&key) {
            self.reassembly_bytes -= r.len();
            if r.is_request() {
                self.partial_requests -= 1;
            }
        }
    }

    /// Refuses every request whose fragments are still arriving (with
    /// `ERROR[REJECTED]`; a fire-and-forget is dropped).
    pub(super) fn refuse_partial_requests(&mut self, message: &str) {
        if self.partial_requests == 0 {
            return;
        }
        let keys: Vec<(u32, bool)> = self
            .frags
            .iter()
            .filter(|(_, r)| r.is_request())
            .map(|(k, r)| (*k, matches!(r.kind, FragKind::RequestFnf)))
            .collect();
        for (key, fnf) in keys {
            self.drop_reassembly(key);
            if let (false, Some(id)) = (fnf, StreamId::new(key)) {
                self.reject(id, message);
            }
        }
    }

    /// Appends a fragment to the reassembly in progress on `id` (which the
    /// caller has checked may take it, or started); returns the whole
    /// payload when `follows` is clear.
    fn reassemble(
        &mut self,
        id: StreamId,
        kind: FragKind,
        payload: Payload,
        follows: bool,
    ) -> Option<(FragKind, Payload)> {
        let key = id.get();
        let added = payload.len();
        if self.reassembly_bytes + added > self.config.max_reassembly_bytes {
            self.fail(ConnectionError::LimitExceeded(Limit::ReassemblyBytes {
                cap: self.config.max_reassembly_bytes,
            }));
            return None;
        }
        self.reassembly_bytes += added;
        let r = match self.frags.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let r = Reassembly::new(kind);
                if r.is_request() {
                    self.partial_requests += 1;
                }
                e.insert(r)
            }
        };
        r.push(&payload);
        if follows {
            return None;
        }
        let r = self.frags.remove(&key)?;
        self.reassembly_bytes -= r.len();
        if r.is_request() {
            self.partial_requests -= 1;
        }
        Some((r.kind, r.finish()))
    }

    /// Whether a request on `id` may open a stream: the id is not in use
    /// (by a stream or a reassembly) and has the peer's parity. A request
    /// that may not is ignored (logged here).
    #[inline(always)]
    fn opens_new_stream(&self, id: StreamId) -> bool {
        let key = id.get();
        if self.streams.contains_key(&key)
            || (!self.frags.is_empty() && self.frags.contains_key(&key))
        {
            debug!(stream = key, "ignoring request on a stream id in use");
            return false;
        }
        if id.is_client_initiated() == (self.side == Side::Client) {
            debug!(stream = key, "ignoring request with our own stream parity");
            return false;
        }
        true
    }

    fn on_request_frame(
        &mut self,
        id: StreamId,
        kind: FragKind,
        payload: Payload,
        follows: bool,
        complete: bool,
    ) {
        if !self.opens_new_stream(id) {
            return;
        }
        let key = id.get();
        // The first frame of a request is what a lease counts (one unit per
        // logical request, however fragmented).
        let fnf = matches!(kind, FragKind::RequestFnf);
        if !self.admit_leased(self.last_received) {
            // Its follow-up fragments, if any, find no reassembly and are
            // dropped.
            if fnf {
                self.counters.lease_dropped_fnf += 1;
                debug!(stream = key, "dropping fire-and-forget beyond the lease");
            } else {
                self.counters.lease_rejected += 1;
                self.reject(id, "request beyond the lease");
            }
            return;
        }
        if !follows {
            return self.on_request(id, kind, payload, complete);
        }
        // The first fragment of a request: it takes a stream slot now, so
        // that a peer cannot open unbounded partial requests.
        let refusal = if matches!(self.state, State::Draining { .. }) {
            Some("connection is shutting down")
        } else if self.inbound_streams + self.partial_requests
            >= self.config.max_concurrent_inbound_streams
        {
            Some("too many concurrent streams")
        } else {
            None
        };
        if let Some(message) = refusal {
            // Its follow-up fragments find no reassembly and are dropped.
            if fnf {
                debug!(stream = key, message, "dropping fragmented fire-and-forget");
            } else {
                self.reject(id, message);
            }
            return;
        }
        self.reassemble(id, kind, payload, true);
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
            self.inflight_oneway += 1;
            self.events.push_back(Event::FireAndForget(payload));
            return;
        }
        if draining {
            return self.reject(id, "connection is shutting down");
        }
        if self.inbound_streams + self.partial_requests
            >= self.config.max_concurrent_inbound_streams
        {
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
                let mut recv =
                    RecvHalf::new(self.config.default_prefetch, false, Replenish::Adaptive);
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
                role: Role::Responder,
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
        let key = n.stream_id.get();
        if let Some(st) = self.streams.get_mut(&key) {
            if let Some(s) = st.send.as_mut() {
                s.add_credit(n.request_n.get(), key, &mut self.wakeups);
            }
            return;
        }
        // The requester may send REQUEST_N at any time, also between the
        // fragments of its request: the credit adds to the request's.
        if self.frags.is_empty() {
            return;
        }
        if let Some(r) = self.frags.get_mut(&key) {
            r.add_credit(n.request_n);
        }
    }

    fn on_cancel(&mut self, id: StreamId) {
        let key = id.get();
        self.drop_reassembly(key);
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let w = &mut self.wakeups;
        if let Some(s) = st.send.as_mut() {
            s.stop(key, w);
        }
        if !st.local() {
            // The requester cancelled: the whole stream is over.
            st.terminated = true;
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Cancelled), key, w);
            }
        }
        // A responder's CANCEL on a channel only closes the requester's
        // outbound half; the responder may still send to us.
    }

    fn on_payload_frame(&mut self, p: PayloadFrame) {
        let id = p.stream_id;
        let (next, complete) = (p.next, p.complete);
        let follows = p.follows && !complete;
        // Most connections never fragment: skip the map lookup then.
        let in_progress = !self.frags.is_empty() && self.frags.contains_key(&id.get());
        if !in_progress && !follows {
            return self.on_payload(id, p.payload, next, complete);
        }
        if !in_progress && !self.may_receive(id) {
            // Buffering fragments for a stream that cannot take them would
            // let a peer fill memory with streams it never opened.
            trace!(stream = id.get(), "ignoring fragment for an unknown stream");
            return;
        }
        let Some((kind, payload)) =
            self.reassemble(id, FragKind::Payload { next }, p.payload, follows)
        else {
            return;
        };
        match kind {
            // N as the first fragment had it (every fragment of an item
            // should carry it; C alone on the last still ends an item).
            FragKind::Payload { next: first } => {
                self.on_payload(id, payload, first || next, complete);
            }
            // The last follow-up of a fragmented request: the request is
            // whole now (C on a channel's last fragment completes its
            // requester half).
            request => self.on_request(id, request, payload, complete),
        }
    }

    /// The stream exists and its inbound half is still open.
    fn may_receive(&self, id: StreamId) -> bool {
        self.streams
            .get(&id.get())
            .is_some_and(|st| !st.terminated && st.recv.as_ref().is_some_and(|r| r.end.is_none()))
    }

    fn on_payload(&mut self, id: StreamId, payload: Payload, next: bool, complete: bool) {
        let key = id.get();
        let Some(st) = self.streams.get_mut(&key) else {
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
                // More than we asked for: the stream ends, and fails
                // locally.
                st.terminated = true;
                let w = &mut self.wakeups;
                r.finish(
                    Err(RequestError::Protocol(StreamViolation::BeyondCredit)),
                    key,
                    w,
                );
                let mut sending = false;
                if let Some(s) = st.send.as_mut() {
                    sending = s.open();
                    s.stop(key, w);
                }
                // A requester cancels. So does a channel's responder whose
                // half is done; one still sending answers ERROR: its
                // CANCEL would end only the requester's outbound half, and
                // the requester would wait for the rest of ours for ever.
                let frame = if st.local() || !sending {
                    Frame::Cancel(Cancel { stream_id: id })
                } else {
                    Frame::Error(ErrorFrame::new(
                        Some(id),
                        ErrorCode::CANCELED,
                        "more items than the credit granted",
                    ))
                };
                self.push_control(frame);
                return;
            }
            self.in_bytes += payload.len();
            r.push(payload);
        }
        if complete || rr {
            r.end = Some(Ok(()));
        }
        r.notify(key, &mut self.wakeups);
    }
}

#[cfg(test)]
mod tests {
    //! `handle_wire` taking a run of raw frames: REQUEST_FNF frames are
    //! taken together, up to the handler limit and `FNF_BATCH`; any other
    //! event still ends the call.

    use bytes::{Bytes, BytesMut};

    use super::FNF_BATCH;
    use crate::frame::{Frame, RequestFnf, RequestResponse, StreamId};
    use crate::proto::harness::Event;
    use crate::proto::pair::{Pair, PairConfig, Peer};
    use crate::{Config, Payload};

    fn sid(id: u32) -> StreamId {
        StreamId::new(id).expect("non-zero")
    }

    fn fnf(id: u32) -> Frame {
        Frame::RequestFnf(RequestFnf {
            stream_id: sid(id),
            follows: false,
            payload: Payload::from(format!("f{id}")),
        })
    }

    fn rr(id: u32) -> Frame {
        Frame::RequestResponse(RequestResponse {
            stream_id: sid(id),
            follows: false,
            payload: Payload::from(format!("r{id}")),
        })
    }

    fn run(frames: &[Frame]) -> Bytes {
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode_prefixed(f.encoded_len(), &mut buf);
        }
        buf.freeze()
    }

    fn connected(limit: usize) -> Pair {
        let config = Config {
            max_concurrent_inbound_streams: limit,
            ..Config::default()
        };
        let mut p = Pair::new(PairConfig::both(config));
        p.settle();
        p
    }

    /// Takes frames from `run` the way the driver does, returning the
    /// frames each call took and the events each left.
    fn take(p: &mut Pair, run: &Bytes) -> Vec<(usize, Vec<Event>)> {
        let now = std::time::Instant::now();
        let mut at = 0;
        let mut calls = Vec::new();
        while at < run.len() {
            let rest = run.slice(at..);
            let (used, n) = p.server().with_conn(|c| c.handle_wire(&rest, now, 256));
            assert!(used > 0, "no progress");
            at += used;
            let events = p.events(Peer::Server);
            for e in &events {
                if matches!(e, Event::FireAndForget(_)) {
                    p.server().handler_done();
                }
            }
            calls.push((n, events));
        }
        calls
    }

    #[test]
    fn fire_and_forgets_are_taken_together_until_another_event() {
        let mut p = connected(1_000);
        let frames = [fnf(1), fnf(3), fnf(5), rr(7), fnf(9), fnf(11)];
        let calls = take(&mut p, &run(&frames));
        let shape: Vec<(usize, usize)> = calls.iter().map(|(n, e)| (*n, e.len())).collect();
        // Three fire-and-forgets at once; the request/response is read
        // alone (decoded) and dispatched before the next frame; then the
        // last two together.
        assert_eq!(shape, vec![(3, 3), (1, 1), (2, 2)]);
        assert!(matches!(&calls[1].1[0], Event::Request { .. }));
        let fnf_data: Vec<Bytes> = calls
            .iter()
            .flat_map(|(_, e)| e.iter())
            .filter_map(|e| match e {
                Event::FireAndForget(p) => Some(p.data.clone()),
                _ => None,
            })
            .collect();
        let want: Vec<Bytes> = ["f1", "f3", "f5", "f9", "f11"]
            .into_iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        assert_eq!(fnf_data, want);
    }

    #[test]
    fn fire_and_forgets_on_ids_in_use_of_our_parity_or_while_draining_are_dropped() {
        let mut p = connected(1_000);
        // Stream 1 is in use: the client's request/stream.
        p.client()
            .open(
                crate::proto::Interaction::RequestStream,
                Payload::from("s"),
                8,
                false,
            )
            .expect("open");
        p.settle();
        assert_eq!(p.events(Peer::Server).len(), 1);
        let running = p.server().stats().handlers_running;
        // In use, our own parity, then a good one.
        let calls = take(&mut p, &run(&[fnf(1), fnf(2), fnf(3)]));
        let events: Vec<&Event> = calls.iter().flat_map(|(_, e)| e.iter()).collect();
        assert!(
            matches!(events.as_slice(), [Event::FireAndForget(f)] if &f.data[..] == b"f3"),
            "{events:?}"
        );
        assert_eq!(p.server().stats().handlers_running, running);
        // Draining: dropped, and not counted as running.
        p.server().start_drain(std::time::Duration::from_secs(30));
        let calls = take(&mut p, &run(&[fnf(5), fnf(7)]));
        assert!(calls.iter().all(|(_, e)| e.is_empty()), "{calls:?}");
        assert_eq!(p.server().stats().handlers_running, running);
    }

    #[test]
    fn a_batch_stops_at_the_handler_limit_and_at_its_size() {
        // Limit 2: each call leaves at most two running handlers.
        let mut p = connected(2);
        let frames: Vec<Frame> = (0..5).map(|i| fnf(2 * i + 1)).collect();
        let calls = take(&mut p, &run(&frames));
        let shape: Vec<usize> = calls.iter().map(|(n, _)| *n).collect();
        assert_eq!(shape, vec![2, 2, 1]);
        // No limit in the way: a batch holds at most `FNF_BATCH`.
        let mut p = connected(10_000);
        let frames: Vec<Frame> = (0..FNF_BATCH as u32 + 3).map(|i| fnf(2 * i + 1)).collect();
        let calls = take(&mut p, &run(&frames));
        let shape: Vec<usize> = calls.iter().map(|(n, _)| *n).collect();
        assert_eq!(shape, vec![FNF_BATCH, 3]);
    }
}
