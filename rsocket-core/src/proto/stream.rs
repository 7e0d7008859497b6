//! The state of one stream: its inbound half (items the peer sends us, and
//! the credit we grant for them) and its outbound half (items we send, and
//! the credit the peer granted).
//!
//! ```text
//!  outbound half (SendState)            inbound half (RecvHalf::end)
//!
//!   Open ──send complete / ERROR──▶ Done     open ──PAYLOAD(C) / ERROR / CANCEL──▶ ended
//!    │                                         │                                    │
//!    └──CANCEL from the peer, stream ERROR,    │ items queued, taken by the         │ queue drained,
//!       connection end──────────────▶ Stopped  ▼ consumer                           ▼ end delivered
//!                                                                          half released
//! ```
//!
//! A half exists while a local handle holds it; the stream is forgotten
//! when both are released. `StreamState::terminated` records that ERROR or
//! CANCEL ended the whole stream, so that nothing more is sent on it.
//!
//! Credit of an inbound half: `outstanding + queued + consumed == window
//! (+ extra granted by hand)`. The replenishment rule lives here alone
//! ([`RecvHalf::consume`]): when half the window has been consumed, that
//! many items (plus the window's growth, see [`Replenish::Adaptive`]) are
//! granted again.

use std::collections::VecDeque;

use super::wakeup::{Wakeup, Wakeups};
use super::Interaction;
use crate::error::RequestError;
use crate::frame::MAX_U31;
use crate::Payload;

/// Which side opened the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// We opened it: we are its requester.
    Requester,
    /// The peer opened it: we respond.
    Responder,
}

/// How an inbound half earns the peer more credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replenish {
    /// Half the window consumed: that many granted again.
    Fixed,
    /// Like `Fixed`, and the window doubles at each grant while items are
    /// small (`Config::max_prefetch`, `Config::prefetch_bytes`).
    Adaptive,
    /// Only explicit grants (`Connection::request_credit`).
    Manual,
}

/// Where an outbound half is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendState {
    /// The producer may send (as credit allows).
    Open,
    /// We sent our terminal frame (COMPLETE or ERROR).
    Done,
    /// The producer must stop: the peer cancelled, or the stream or the
    /// connection ended.
    Stopped,
}

#[derive(Debug)]
pub(super) struct StreamState {
    pub(super) interaction: Interaction,
    pub(super) role: Role,
    /// ERROR or CANCEL ended the whole stream; nothing more is sent on it.
    pub(super) terminated: bool,
    pub(super) recv: Option<RecvHalf>,
    pub(super) send: Option<SendHalf>,
}

impl StreamState {
    pub(super) fn local(&self) -> bool {
        self.role == Role::Requester
    }
}

#[derive(Debug)]
pub(super) struct RecvHalf {
    pub(super) queue: Items,
    /// Terminal signal, delivered after the queue drains.
    pub(super) end: Option<Result<(), RequestError>>,
    /// Credit the peer may still use.
    pub(super) outstanding: u64,
    pub(super) window: u32,
    /// Items consumed since the last REQUEST_N.
    pub(super) consumed: u32,
    /// Whether the initial credit has been sent (a responder's channel
    /// inbound grants lazily, on first poll).
    pub(super) granted: bool,
    pub(super) replenish: Replenish,
    /// Credit granted by `Connection::request_credit` on top of the
    /// window (saturating).
    pub(super) extra: u64,
    /// The largest item seen, for an adaptive window.
    pub(super) largest: usize,
    /// Its consumer returned `Pending` and waits for a [`Wakeup::Recv`].
    pub(super) waiting: bool,
}

impl RecvHalf {
    pub(super) fn new(window: u32, granted: bool, replenish: Replenish) -> Self {
        Self {
            queue: Items::default(),
            end: None,
            outstanding: if granted { u64::from(window) } else { 0 },
            window,
            consumed: 0,
            granted,
            replenish,
            extra: 0,
            largest: 0,
            waiting: false,
        }
    }

    /// An item arrived (within credit; the caller checked).
    pub(super) fn push(&mut self, item: Payload) {
        // At 2^31 - 1 credit is unbounded and is not counted down.
        if self.outstanding < u64::from(MAX_U31) {
            self.outstanding -= 1;
        }
        if self.replenish == Replenish::Adaptive && item.len() > self.largest {
            self.largest = item.len();
        }
        self.queue.push_back(item);
    }

    /// The lazy initial grant of a responder's channel inbound: the credit
    /// to send now (0 once granted, or when the stream already ended).
    pub(super) fn initial_grant(&mut self, terminated: bool) -> u32 {
        if self.granted {
            return 0;
        }
        self.granted = true;
        if self.end.is_some() || terminated {
            return 0;
        }
        self.outstanding = u64::from(self.window);
        self.window
    }

    /// Counts `n` items handed to the consumer; returns the credit to grant
    /// now (0: none due). The one replenishment rule: half the window
    /// consumed earns that many back, plus the window's growth when it is
    /// adaptive.
    pub(super) fn consume(&mut self, n: u32, rr: bool, max_prefetch: u32, budget: usize) -> u32 {
        if n == 0 || rr || self.window >= MAX_U31 || self.replenish == Replenish::Manual {
            return 0;
        }
        self.consumed += n;
        if self.end.is_some() || self.consumed < (self.window / 2).max(1) {
            return 0;
        }
        let window = self.next_window(max_prefetch, budget);
        let grant = self.consumed + (window - self.window);
        self.outstanding += u64::from(grant);
        self.window = window;
        self.consumed = 0;
        grant
    }

    /// Where the window goes at a replenishment: an adaptive window
    /// doubles towards `budget / largest item`, at most `max_prefetch`; it
    /// never shrinks (credit granted cannot be taken back).
    fn next_window(&self, max_prefetch: u32, budget: usize) -> u32 {
        if self.replenish != Replenish::Adaptive {
            return self.window;
        }
        let fits = budget / self.largest.max(1);
        let target = u32::try_from(fits)
            .unwrap_or(u32::MAX)
            .min(max_prefetch)
            .min(self.window.saturating_mul(2));
        target.max(self.window)
    }

    /// Items still to be consumed before the next REQUEST_N is due (0:
    /// never, for request/response, unbounded or manual credit).
    pub(super) fn report_after(&self, rr: bool) -> u32 {
        if rr || self.replenish == Replenish::Manual || self.window >= MAX_U31 || self.end.is_some()
        {
            return 0;
        }
        (self.window / 2)
            .max(1)
            .saturating_sub(self.consumed)
            .max(1)
    }

    /// Records a wake-up for the consumer, if it waits.
    pub(super) fn notify(&mut self, key: u32, w: &mut Wakeups) {
        if std::mem::take(&mut self.waiting) {
            w.stream(Wakeup::Recv(key));
        }
    }

    /// The half is released: a waker still registered for it is woken
    /// (spuriously) so that the runtime drops it.
    pub(super) fn forget(&mut self, key: u32, w: &mut Wakeups) {
        self.notify(key, w);
    }

    pub(super) fn finish(&mut self, end: Result<(), RequestError>, key: u32, w: &mut Wakeups) {
        if self.end.is_none() {
            self.end = Some(end);
        }
        self.notify(key, w);
    }
}

#[derive(Debug)]
pub(super) struct SendHalf {
    pub(super) credit: u64,
    pub(super) state: SendState,
    /// The producer found no credit and waits for REQUEST_N.
    pub(super) awaiting_credit: bool,
    /// Its producer waits for a [`Wakeup::Send`] (credit, or the order to
    /// stop).
    pub(super) waiting: bool,
}

impl SendHalf {
    pub(super) fn new(credit: u64) -> Self {
        Self {
            credit,
            state: SendState::Open,
            awaiting_credit: false,
            waiting: false,
        }
    }

    /// The producer may still send.
    pub(super) fn open(&self) -> bool {
        self.state == SendState::Open
    }

    /// Credit from a REQUEST_N, unless the half was stopped.
    pub(super) fn add_credit(&mut self, n: u32, key: u32, w: &mut Wakeups) {
        if self.state != SendState::Stopped {
            self.credit = add_credit(self.credit, n);
            self.awaiting_credit = false;
            self.notify(key, w);
        }
    }

    /// Records a wake-up for the producer, if it waits.
    pub(super) fn notify(&mut self, key: u32, w: &mut Wakeups) {
        if std::mem::take(&mut self.waiting) {
            w.stream(Wakeup::Send(key));
        }
    }

    /// The half is released: a waker still registered for it is woken
    /// (spuriously) so that the runtime drops it.
    pub(super) fn forget(&mut self, key: u32, w: &mut Wakeups) {
        self.notify(key, w);
    }

    pub(super) fn stop(&mut self, key: u32, w: &mut Wakeups) {
        self.state = SendState::Stopped;
        self.notify(key, w);
    }
}

/// The items an inbound half holds, in order. The first is kept inline, so
/// that a request/response answer (or any one-item wait) needs no
/// allocation, and the queue of the others exists only once a second item
/// has been held (dropping an unused one is free).
#[derive(Debug, Default)]
pub(super) struct Items {
    /// The front item, when it is not in `rest`.
    head: Option<Payload>,
    rest: Option<VecDeque<Payload>>,
}

impl Items {
    pub(super) fn push_back(&mut self, p: Payload) {
        match &mut self.rest {
            Some(rest) if !rest.is_empty() => rest.push_back(p),
            rest => {
                if self.head.is_none() {
                    self.head = Some(p);
                } else {
                    rest.get_or_insert_with(VecDeque::new).push_back(p);
                }
            }
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<Payload> {
        self.head
            .take()
            .or_else(|| self.rest.as_mut().and_then(VecDeque::pop_front))
    }

    fn rest_len(&self) -> usize {
        self.rest.as_ref().map_or(0, VecDeque::len)
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest_len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Payload> {
        self.head.iter().chain(self.rest.iter().flatten())
    }

    /// Moves up to `n` items into `into`; returns their bytes. When `into`
    /// is empty and takes them all, the two queues trade places instead.
    pub(super) fn move_into(&mut self, mut n: usize, into: &mut VecDeque<Payload>) -> usize {
        if self.head.is_none() && into.is_empty() {
            if let Some(rest) = self.rest.as_mut() {
                if rest.len() <= n {
                    std::mem::swap(rest, into);
                    return into.iter().map(Payload::len).sum();
                }
            }
        }
        let mut bytes = 0;
        if n > 0 {
            if let Some(p) = self.head.take() {
                bytes += p.len();
                into.push_back(p);
                n -= 1;
            }
        }
        if let Some(rest) = self.rest.as_mut() {
            let n = n.min(rest.len());
            for p in rest.drain(..n) {
                bytes += p.len();
                into.push_back(p);
            }
        }
        bytes
    }
}

/// Sum of credits, saturating at 2^31 − 1 (unbounded).
pub(super) fn add_credit(credit: u64, n: u32) -> u64 {
    (credit + u64::from(n)).min(u64::from(MAX_U31))
}
