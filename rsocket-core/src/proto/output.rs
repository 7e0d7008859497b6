//! The outbound queue: frames waiting for the writer, counted against
//! `Config::max_outbound_queue_bytes`, and the wake-ups the runtime drains.
//!
//! Paced frames (requests, stream items) were queued after waiting for
//! room; unpaced ones (control frames, answers written while reading) were
//! queued at once and pause reading when they fill the cap. A resumable
//! connection hands a frame to the writer only when its resume store has
//! room for it.

use std::collections::VecDeque;

use tracing::trace;

use super::fragment::{self, FragKind};
use super::resume::{is_resumable, ResumeState};
use super::wakeup::Wakeup;
use super::Connection;
use crate::error::{ConnectionError, Limit};
use crate::frame::{Frame, StreamId};
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

/// A frame waiting for the writer.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) frame: Frame,
    pub(super) len: usize,
    pub(super) pace: Pace,
}

/// The frames waiting for the writer, in order, with their lengths and
/// pacing kept beside them: when everything queued goes to the writer at
/// once, the frames are handed over as they are, without moving each one.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    frames: VecDeque<Frame>,
    /// Length and pacing of each frame of `frames`.
    meta: VecDeque<(usize, Pace)>,
}

impl OutQueue {
    #[inline]
    pub(super) fn push_back(&mut self, frame: Frame, len: usize, pace: Pace) {
        self.frames.push_back(frame);
        self.meta.push_back((len, pace));
    }

    /// The first frame and its length.
    pub(super) fn front(&self) -> Option<(&Frame, usize)> {
        Some((self.frames.front()?, self.meta.front()?.0))
    }

    pub(super) fn pop_front(&mut self) -> Option<Queued> {
        let frame = self.frames.pop_front()?;
        let (len, pace) = self.meta.pop_front()?;
        Some(Queued { frame, len, pace })
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.frames.clear();
        self.meta.clear();
    }

    /// Each frame with its length and pacing, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Frame, usize, Pace)> {
        self.frames
            .iter()
            .zip(&self.meta)
            .map(|(f, &(len, pace))| (f, len, pace))
    }

    /// Hands every frame to `into`, which must be empty: the two queues
    /// trade places.
    fn take_all(&mut self, into: &mut VecDeque<Frame>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.frames, into);
        self.meta.clear();
    }
}

impl Connection {
    pub(super) fn enqueue(&mut self, frame: Frame, len: usize, pace: Pace) {
        self.out_bytes += len;
        if pace == Pace::Unpaced {
            self.unpaced_bytes += len;
        }
        self.counters.frames_queued += 1;
        self.out.push_back(frame, len, pace);
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
    /// resume store holds back a resumable frame at the head).
    pub(crate) fn has_queued(&self) -> bool {
        if let Some(r) = &self.resume {
            if r.ack_due() {
                return true;
            }
            return self
                .out
                .front()
                .is_some_and(|(f, len)| self.may_take(r, f, len));
        }
        !self.out.is_empty()
    }

    /// The resume store lets `frame` (`len` bytes) go to the writer now.
    pub(super) fn may_take(&self, r: &ResumeState, frame: &Frame, len: usize) -> bool {
        self.closed().is_some() || !is_resumable(frame) || r.has_room(len)
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
        if self.resume.is_none()
            && into.is_empty()
            && self.out.len() <= max
            && self.out_bytes <= max_bytes
        {
            // Everything queued goes (the loop below would take it all):
            // hand the frames over at once.
            let n = self.out.len();
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
            into.push_back(ack);
        }
        for _ in 0..max {
            if taken >= max_bytes {
                break;
            }
            if let Some(r) = &self.resume {
                match self.out.front() {
                    Some((f, len)) if !self.may_take(r, f, len) => break,
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
}
