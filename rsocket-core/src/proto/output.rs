//! The outbound queue: frames waiting for the writer, counted against
//! `Config::max_outbound_queue_bytes`, and the wake-ups the runtime drains.
//! Without resumption the frames under 4 KiB are encoded as they are
//! queued, into runs the writer takes as they are (see [`OutQueue`]).
//!
//! Paced frames (requests, stream items) were queued after waiting for
//! room; unpaced ones (control frames, answers written while reading) were
//! queued at once and pause reading when they fill the cap. A resumable
//! connection hands a frame to the writer only when its resume store has
//! room for it.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tracing::{debug, trace};

use super::fragment::{self, FragKind};
use super::resume::{is_resumable, ResumeState};
use super::wakeup::Wakeup;
use super::Connection;
use crate::codec::LENGTH_PREFIX_LEN;
use crate::error::{ConnectionError, Limit};
use crate::frame::{get_u24, Frame, PayloadFrame, RequestFnf, RequestResponse, StreamId};
use crate::Payload;

/// How a queued frame counts against the outbound cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// Queued after waiting for room (requests, stream items): counted in
    /// `out_bytes` only.
    Paced,
    /// Queued without waiting (control frames, request/response answers
    /// written while reading): also counted in `unpaced_bytes`, which
    /// pauses reading when it reaches the cap.
    Unpaced,
}

/// What the writer is handed: a frame, or a run of frames already
/// encoded.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame, to be encoded by the transport (resumable connections).
    Frame(Frame),
    /// Whole frames, each behind its 24-bit length prefix: the byte-stream
    /// transports write them as they are; any other transport decodes them
    /// again.
    Wire(BytesMut),
}

impl Outgoing {
    /// The frames, decoded again when encoded (for the harness, and
    /// transports that take frames only).
    pub(crate) fn into_frames(self) -> Vec<Frame> {
        match self {
            Self::Frame(f) => vec![f],
            Self::Wire(b) => decode_run(b.freeze()),
        }
    }
}

/// Decodes a run of length-prefixed frames that this side encoded.
pub(crate) fn decode_run(mut run: Bytes) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(len) = get_u24(&run) {
        let Some(end) = len
            .checked_add(LENGTH_PREFIX_LEN)
            .filter(|&e| e <= run.len())
        else {
            break;
        };
        match Frame::decode(run.slice(LENGTH_PREFIX_LEN..end)) {
            Ok(f) => frames.push(f),
            // Not reached: the run holds frames this side encoded.
            Err(e) => debug!(error = %e, "dropping a frame of an encoded run"),
        }
        run.advance(end);
    }
    frames
}

/// The largest run of encoded frames (unless one frame is larger): a run
/// takes frames while they fit and is never grown, which would copy it.
const RUN_BYTES: usize = 64 << 10;
/// The smallest run.
const MIN_RUN_BYTES: usize = 256;
/// The largest buffer kept for the next run: what an idle connection may
/// hold (a run large enough to matter is usually taken by the writer as
/// its buffer).
pub(crate) const RECYCLE_RUN_BYTES: usize = 4 * MIN_RUN_BYTES;
/// A frame at least this large is queued as a value, not encoded into a
/// run: the writer encodes it into its own buffer, which it keeps as the
/// thread's spare, whereas runs for large frames would be fresh
/// allocations of up to [`RUN_BYTES`] for each burst, freed once written
/// (with the allocator giving the memory back and faulting it in again).
const RUN_FRAME_MAX: usize = 4 << 10;

/// Length, pacing and frame count of a queued entry (a run's frames all
/// have the same pacing).
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// Encoded bytes of its frames (length prefixes excluded).
    len: usize,
    pace: Pace,
    frames: usize,
}

impl Meta {
    /// Bytes of `len` queued unpaced (see [`Pace`]).
    fn unpaced(&self) -> usize {
        match self.pace {
            Pace::Paced => 0,
            Pace::Unpaced => self.len,
        }
    }
}

/// An entry waiting for the writer.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) item: Outgoing,
    pub(super) len: usize,
    pub(super) unpaced: usize,
    pub(super) frames: usize,
}

/// The frames waiting for the writer, in order, with their lengths kept
/// beside them: when everything queued goes to the writer at once, the
/// entries are handed over as they are, without moving each one.
///
/// On a connection without resumption every frame under
/// [`RUN_FRAME_MAX`] is encoded as it is queued, into runs of frames of the
/// same pacing ([`Outgoing::Wire`])
/// that the writer of a byte-stream transport takes as they are: no frame
/// value is kept, and the encoded length is computed once. A new run has
/// room for twice what the run before it holds (from [`MIN_RUN_BYTES`] to
/// [`RUN_BYTES`]): a burst gets large runs, and frames of alternating
/// pacing get small ones, so that the memory of the runs stays within
/// about twice the bytes they hold. A run larger than what the writer may
/// take at once is split at a frame boundary. Larger frames, and every
/// frame of a resumable connection (its store replays frames), are kept as
/// values.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    items: VecDeque<Outgoing>,
    /// Length and pacing of each entry of `items`.
    meta: VecDeque<Meta>,
    /// Frames in `items`.
    frames: usize,
    /// KEEPALIVE frames in `items` (kept as values: a resumable
    /// connection's, which may pass a frame held back by a full resume
    /// store; see [`OutQueue::take_keepalive`]).
    keepalives: usize,
    /// An empty buffer for the next run (see [`Connection::recycle_run`]).
    spare: Option<BytesMut>,
}

impl OutQueue {
    #[inline]
    pub(super) fn push_back(&mut self, frame: Frame, len: usize, pace: Pace) {
        if matches!(frame, Frame::Keepalive(_)) {
            self.keepalives += 1;
        }
        self.items.push_back(Outgoing::Frame(frame));
        self.meta.push_back(Meta {
            len,
            pace,
            frames: 1,
        });
        self.frames += 1;
    }

    /// Encodes `frame` (`len` bytes) at the end of the last run, or of a
    /// new one when it has no room or another pacing.
    #[inline]
    pub(super) fn push_encoded(&mut self, frame: &Frame, len: usize, pace: Pace) {
        let need = LENGTH_PREFIX_LEN + len;
        let run = match (self.items.back_mut(), self.meta.back_mut()) {
            (Some(Outgoing::Wire(buf)), Some(m))
                if m.pace == pace && buf.capacity() - buf.len() >= need =>
            {
                m.len += len;
                m.frames += 1;
                buf
            }
            last => {
                let before = match last {
                    (Some(Outgoing::Wire(buf)), _) => buf.len(),
                    _ => 0,
                };
                let buf = match self.spare.take() {
                    Some(b) if b.capacity() >= need => b,
                    _ => {
                        let room = (2 * before).clamp(MIN_RUN_BYTES, RUN_BYTES).max(need);
                        BytesMut::with_capacity(room)
                    }
                };
                self.items.push_back(Outgoing::Wire(buf));
                self.meta.push_back(Meta {
                    len,
                    pace,
                    frames: 1,
                });
                match self.items.back_mut() {
                    Some(Outgoing::Wire(buf)) => buf,
                    _ => unreachable!("a run was just pushed"),
                }
            }
        };
        self.frames += 1;
        frame.encode_prefixed(len, run);
    }

    /// The last entry, when it is a run of frames of this pacing with room
    /// for `need` more bytes, and its length and frame count.
    #[inline]
    fn tail_run(&mut self, pace: Pace, need: usize) -> Option<(&mut BytesMut, &mut Meta)> {
        match (self.items.back_mut(), self.meta.back_mut()) {
            (Some(Outgoing::Wire(buf)), Some(m))
                if m.pace == pace && buf.capacity() - buf.len() >= need =>
            {
                Some((buf, m))
            }
            _ => None,
        }
    }

    /// The first entry and its length.
    pub(super) fn front(&self) -> Option<(&Outgoing, usize)> {
        Some((self.items.front()?, self.meta.front()?.len))
    }

    pub(super) fn pop_front(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        let m = self.meta.pop_front()?;
        Some(self.taken(item, m))
    }

    /// An entry just taken out of the queue, with the counts updated.
    fn taken(&mut self, item: Outgoing, m: Meta) -> Queued {
        self.frames -= m.frames;
        if matches!(item, Outgoing::Frame(Frame::Keepalive(_))) {
            self.keepalives -= 1;
        }
        Queued {
            item,
            len: m.len,
            unpaced: m.unpaced(),
            frames: m.frames,
        }
    }

    /// Takes the first KEEPALIVE queued as a value, wherever it is (a
    /// full resume store holds back the frames before it).
    fn take_keepalive(&mut self) -> Option<Queued> {
        if self.keepalives == 0 {
            return None;
        }
        let i = self
            .items
            .iter()
            .position(|item| matches!(item, Outgoing::Frame(Frame::Keepalive(_))))?;
        let item = self.items.remove(i)?;
        let m = self.meta.remove(i)?;
        Some(self.taken(item, m))
    }

    /// Splits the first entry, a run, so that it holds no more than
    /// `frames` frames and (at least one frame) `bytes` bytes.
    fn split_front(&mut self, bytes: usize, frames: usize) {
        let (Some(Outgoing::Wire(run)), Some(m)) = (self.items.front_mut(), self.meta.front_mut())
        else {
            return;
        };
        if m.frames <= frames.max(1) && m.len <= bytes {
            return;
        }
        // Walk the prefixes: frames are taken while fewer than `bytes`
        // bytes have been.
        let (mut at, mut len, mut n) = (0, 0, 0);
        while n < m.frames && n < frames.max(1) && (n == 0 || len < bytes) {
            let Some(flen) = run.get(at..).and_then(get_u24) else {
                break;
            };
            at += LENGTH_PREFIX_LEN + flen;
            len += flen;
            n += 1;
        }
        if n == m.frames || at > run.len() {
            return;
        }
        let head = run.split_to(at);
        let pace = m.pace;
        m.len -= len;
        m.frames -= n;
        self.items.push_front(Outgoing::Wire(head));
        self.meta.push_front(Meta {
            len,
            pace,
            frames: n,
        });
    }

    /// Frames queued (a run counts its frames).
    #[inline]
    pub(super) fn frame_count(&self) -> usize {
        self.frames
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.spare = None;
        self.items.clear();
        self.meta.clear();
        self.frames = 0;
        self.keepalives = 0;
    }

    /// KEEPALIVE frames held as values: the running count and a recount
    /// (for the self-checks).
    pub(super) fn keepalive_counts(&self) -> (usize, usize) {
        let counted = self
            .items
            .iter()
            .filter(|item| matches!(item, Outgoing::Frame(Frame::Keepalive(_))))
            .count();
        (self.keepalives, counted)
    }

    /// Each entry's length and its unpaced part, in order.
    pub(super) fn iter_meta(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.meta.iter().map(|m| (m.len, m.unpaced()))
    }

    /// Every queued frame, in order (runs decoded again), for the harness.
    pub(super) fn frames(&self) -> Vec<Frame> {
        let mut v = Vec::new();
        for item in &self.items {
            match item {
                Outgoing::Frame(f) => v.push(f.clone()),
                Outgoing::Wire(b) => v.extend(decode_run(Bytes::copy_from_slice(b))),
            }
        }
        v
    }

    /// Hands every entry to `into`, which must be empty: the two queues
    /// trade places.
    fn take_all(&mut self, into: &mut VecDeque<Outgoing>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.items, into);
        self.meta.clear();
        self.frames = 0;
        self.keepalives = 0;
    }
}

impl Connection {
    pub(super) fn enqueue(&mut self, frame: Frame, len: usize, pace: Pace) {
        self.count_queued(1, len, pace);
        if self.resume.is_none() && len < RUN_FRAME_MAX {
            self.out.push_encoded(&frame, len, pace);
        } else {
            self.out.push_back(frame, len, pace);
        }
    }

    /// Queues PAYLOAD(N) for each of `items` (`count` of them), the last
    /// one PAYLOAD(N+C) with `complete`, each fragmented at `mtu` if it
    /// must be, without waking the writer. Items that go whole into the
    /// current run (the common case for stream items) are encoded there
    /// one after another, without building a frame value for each, and
    /// counted once for them all; any other item goes through
    /// [`fragment`](fragment::fragment) and [`enqueue`](Self::enqueue) (a
    /// new run, when the last one is full).
    ///
    /// The items are read in place: those encoded are left in `items` for
    /// the caller to drop (moving each out cost a streamed item more than
    /// encoding it in place), those fragmented are taken out of it.
    pub(super) fn enqueue_items(
        &mut self,
        id: StreamId,
        items: &mut [Payload],
        complete: bool,
        pace: Pace,
        mtu: usize,
    ) {
        let kind = FragKind::Payload { next: true };
        let count = items.len();
        // The largest frame encoded in place (0: none, with resumption).
        let direct_max = if self.resume.is_none() {
            mtu.min(RUN_FRAME_MAX - 1)
        } else {
            0
        };
        let mut i = 0;
        while let Some(p) = items.get(i) {
            let mut len = fragment::whole_len(kind, p);
            if len <= direct_max {
                if let Some((buf, m)) = self.out.tail_run(pace, LENGTH_PREFIX_LEN + len) {
                    let (first, mut bytes) = (i, 0);
                    let mut p = p;
                    loop {
                        let c = complete && i + 1 == count;
                        PayloadFrame::encode_next(id, c, p, len, buf);
                        bytes += len;
                        i += 1;
                        let Some(np) = items.get(i) else {
                            break;
                        };
                        len = fragment::whole_len(kind, np);
                        if len > direct_max || buf.capacity() - buf.len() < LENGTH_PREFIX_LEN + len
                        {
                            break;
                        }
                        p = np;
                    }
                    let frames = i - first;
                    m.len += bytes;
                    m.frames += frames;
                    self.out.frames += frames;
                    self.count_queued(frames, bytes, pace);
                    continue;
                }
            }
            let c = complete && i + 1 == count;
            let p = std::mem::take(&mut items[i]);
            fragment::fragment(kind, id, p, c, mtu, |f, len| {
                self.enqueue(f, len, pace);
            });
            i += 1;
        }
    }

    /// Queues a REQUEST_FNF (`fnf`) or REQUEST_RESPONSE of `payload` on
    /// `id`, paced, encoded straight into the current run when it goes
    /// there whole (no resumption, no fragmenting, room in a run of paced
    /// frames): true when it did, false (nothing done) otherwise.
    #[inline]
    pub(super) fn enqueue_request_direct(
        &mut self,
        fnf: bool,
        id: StreamId,
        payload: &Payload,
        mtu: usize,
    ) -> bool {
        let kind = if fnf {
            FragKind::RequestFnf
        } else {
            FragKind::RequestResponse
        };
        let len = fragment::whole_len(kind, payload);
        if self.resume.is_some() || len > mtu || len >= RUN_FRAME_MAX {
            return false;
        }
        let Some((buf, m)) = self.out.tail_run(Pace::Paced, LENGTH_PREFIX_LEN + len) else {
            return false;
        };
        if fnf {
            RequestFnf::encode_whole(id, payload, len, buf);
        } else {
            RequestResponse::encode_whole(id, payload, len, buf);
        }
        m.len += len;
        m.frames += 1;
        self.out.frames += 1;
        self.count_queued(1, len, Pace::Paced);
        true
    }

    /// Queues a request/response answer, PAYLOAD(N+C) of `payload` on
    /// `id`, unpaced, encoded straight into the current run when it goes
    /// there whole (no resumption, no fragmenting, room in a run of
    /// unpaced frames): what [`fragment`](fragment::fragment) and
    /// [`enqueue`](Self::enqueue) do for it, without the frame value. True
    /// when it did, false (nothing done) otherwise.
    #[inline]
    pub(super) fn enqueue_answer_direct(
        &mut self,
        id: StreamId,
        payload: &Payload,
        mtu: usize,
    ) -> bool {
        let len = fragment::whole_len(FragKind::Payload { next: true }, payload);
        if self.resume.is_some() || len > mtu || len >= RUN_FRAME_MAX {
            return false;
        }
        let Some((buf, m)) = self.out.tail_run(Pace::Unpaced, LENGTH_PREFIX_LEN + len) else {
            return false;
        };
        PayloadFrame::encode_next(id, true, payload, len, buf);
        m.len += len;
        m.frames += 1;
        self.out.frames += 1;
        self.count_queued(1, len, Pace::Unpaced);
        true
    }

    /// Counts `frames` frames of `bytes` bytes (without length prefixes)
    /// queued with `pace`, against the outbound cap and in the counters.
    #[inline]
    fn count_queued(&mut self, frames: usize, bytes: usize, pace: Pace) {
        self.out_bytes += bytes;
        if pace == Pace::Unpaced {
            self.unpaced_bytes += bytes;
        }
        self.counters.frames_queued += frames as u64;
    }

    /// Keeps `buf`, an empty buffer the writer is done with, for the next
    /// run of encoded frames (one of at most [`RECYCLE_RUN_BYTES`]), sparing
    /// an allocation for each lone frame.
    pub(crate) fn recycle_run(&mut self, mut buf: BytesMut) {
        if self.resume.is_some() || buf.capacity() > RECYCLE_RUN_BYTES {
            return;
        }
        buf.clear();
        self.out.spare = Some(buf);
    }

    /// Queues a frame and wakes the writer.
    pub(super) fn push(&mut self, frame: Frame) {
        trace!(?frame, "queue");
        let len = frame.encoded_len();
        self.enqueue(frame, len, Pace::Unpaced);
        self.wakeups.driver();
    }

    /// Queues a control frame (never held back). Reading pauses once such
    /// frames fill the cap; if they alone pass twice the cap (local handles
    /// keep adding them while the peer reads nothing), the connection
    /// closes.
    pub(super) fn push_control(&mut self, frame: Frame) {
        self.push(frame);
        if self.unpaced_bytes > self.config.max_outbound_queue_bytes.saturating_mul(2) {
            self.fail(ConnectionError::LimitExceeded(Limit::OutboundQueue {
                cap: self.config.max_outbound_queue_bytes,
            }));
        }
    }

    /// Queues a logical frame, fragmented at the MTU.
    pub(super) fn push_fragmented(
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
    pub(super) fn wait_space(&mut self) {
        self.space_waiting = true;
    }

    /// Records a wake-up for the tasks waiting for room.
    pub(super) fn notify_space(&mut self) {
        if std::mem::take(&mut self.space_waiting) {
            self.wakeups.space();
        }
    }

    /// Frames are waiting for the writer and may be taken now (a full
    /// resume store holds back a resumable frame at the head, but not the
    /// KEEPALIVEs behind it).
    pub(crate) fn has_queued(&self) -> bool {
        if let Some(r) = &self.resume {
            if r.ack_due() || self.out.keepalives > 0 {
                return true;
            }
            return self
                .out
                .front()
                .is_some_and(|(f, len)| self.may_take(r, f, len));
        }
        !self.out.is_empty()
    }

    /// The resume store lets `item` (`len` bytes) go to the writer now
    /// (with resumption, every entry is a frame).
    pub(super) fn may_take(&self, r: &ResumeState, item: &Outgoing, len: usize) -> bool {
        let resumable = match item {
            Outgoing::Frame(f) => is_resumable(f),
            Outgoing::Wire(_) => true,
        };
        self.closed().is_some() || !resumable || r.has_room(len)
    }

    /// Moves queued frames into `into` for the writer: up to `max` frames,
    /// and no more once `max_bytes` have been taken (at least one frame is
    /// taken when any is queued).
    pub(crate) fn poll_transmit(
        &mut self,
        max: usize,
        max_bytes: usize,
        into: &mut VecDeque<Outgoing>,
    ) {
        if self.resume.is_none()
            && into.is_empty()
            && self.out.frame_count() <= max
            && self.out_bytes <= max_bytes
        {
            // Everything queued goes (the loop below would take it all):
            // hand the frames over at once.
            let n = self.out.frame_count();
            self.out.take_all(into);
            self.counters.frames_out += n as u64;
            self.counters.bytes_out += self.out_bytes as u64;
            self.out_bytes = 0;
            self.unpaced_bytes = 0;
            self.stalled_since = None;
            if self.has_space() {
                self.notify_space();
            }
            return;
        }
        let mut taken = 0usize;
        if let Some(ack) = self.resume.as_mut().and_then(ResumeState::take_ack) {
            into.push_back(Outgoing::Frame(ack));
        }
        let mut frames = 0;
        while frames < max {
            if taken >= max_bytes {
                break;
            }
            let held = match (&self.resume, self.out.front()) {
                (Some(r), Some((f, len))) => !self.may_take(r, f, len),
                _ => false,
            };
            let mut q = if held {
                // A full store holds back the stream frames, not the
                // KEEPALIVEs queued behind them: they carry this side's
                // position, and the peer may be waiting for one (a
                // KEEPALIVE(R)) before it acknowledges anything, which is
                // what frees the store.
                let Some(q) = self.out.take_keepalive() else {
                    // Nothing may pass: ask the peer for its position,
                    // which frees the store.
                    if let Some(ask) = self.resume.as_mut().and_then(ResumeState::solicit) {
                        into.push_back(Outgoing::Frame(ask));
                    }
                    break;
                };
                q
            } else {
                self.out.split_front(max_bytes - taken, max - frames);
                let Some(q) = self.out.pop_front() else {
                    break;
                };
                q
            };
            if let (Some(r), Outgoing::Frame(frame)) = (self.resume.as_mut(), &mut q.item) {
                if is_resumable(frame) {
                    r.record_sent(frame, q.len);
                } else if let Frame::Keepalive(k) = frame {
                    r.stamp(k);
                }
            }
            frames += q.frames;
            taken += q.len;
            self.out_bytes -= q.len;
            self.unpaced_bytes -= q.unpaced;
            self.counters.frames_out += q.frames as u64;
            self.counters.bytes_out += q.len as u64;
            into.push_back(q.item);
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

    /// The driver's wake-up is the only one recorded (see
    /// [`Connection::drain_wakeups`]).
    #[inline]
    pub(crate) fn driver_wakeup_only(&self) -> bool {
        self.wakeups.driver_only()
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
}
