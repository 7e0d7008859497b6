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

use bytes::Bytes;

use super::wakeup::{Wakeup, Wakeups};
use super::Interaction;
use crate::error::RequestError;
use crate::frame::{PayloadFrame, MAX_U31};
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
    /// doubles towards `budget / largest item`, at most `max_prefetch`,
    /// and below 2^31 - 1 (which would mean unbounded, and stop the
    /// grants); it never shrinks (credit granted cannot be taken back).
    fn next_window(&self, max_prefetch: u32, budget: usize) -> u32 {
        if self.replenish != Replenish::Adaptive {
            return self.window;
        }
        let fits = budget / self.largest.max(1);
        let target = u32::try_from(fits)
            .unwrap_or(u32::MAX)
            .min(max_prefetch)
            .min(MAX_U31 - 1)
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

/// Plain items received in one read and kept in place: `count`
/// consecutive PAYLOAD(N) frames of one stream, each behind its length
/// prefix, as [`PayloadFrame::scan_item`] accepted them; `bytes` is the
/// length of their payloads. A run costs one queue entry and one reference
/// to the read buffer however many items it holds; each item is cut from
/// it when it is taken.
#[derive(Debug, Default)]
pub(super) struct Run {
    frames: Bytes,
    count: usize,
    bytes: usize,
}

impl Run {
    pub(super) fn new(frames: Bytes, count: usize, bytes: usize) -> Self {
        Self {
            frames,
            count,
            bytes,
        }
    }

    /// The next item of a run that holds one (`bytes` is left to the
    /// caller: a consumer's batch does not need it). `None`, which the
    /// run's check when read rules out, when what is left is not a run:
    /// the run is then used up.
    #[inline(always)]
    fn take(&mut self) -> Option<Payload> {
        self.count = self.count.saturating_sub(1);
        let p = PayloadFrame::take_item(&mut self.frames);
        if p.is_none() {
            debug_assert!(false, "a run holds only checked frames");
            self.count = 0;
        }
        p
    }

    /// Splits off the first `n` items (fewer than the run holds) as a run
    /// of their own.
    fn split_front(&mut self, n: usize) -> Self {
        let (mut at, mut bytes) = (0, 0);
        for _ in 0..n {
            let Some((end, len)) = run_frame(&self.frames, at) else {
                break;
            };
            at = end;
            bytes += len;
        }
        let front = Self::new(self.frames.split_to(at), n, bytes);
        self.count -= n;
        self.bytes -= bytes.min(self.bytes);
        front
    }
}

/// Where the frame of a run at `at` ends and its payload's length,
/// whatever its stream (see [`Run::split_front`]).
fn run_frame(frames: &[u8], at: usize) -> Option<(usize, usize)> {
    let b = frames.get(at..)?;
    let key = u32::from_be_bytes(b.get(3..7)?.try_into().ok()?);
    PayloadFrame::scan_item(frames, at, key, usize::MAX)
}

/// One entry of an item queue: an item, or a run of them.
#[derive(Debug)]
enum Entry {
    One(Payload),
    Run(Run),
}

impl Entry {
    fn count(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Run(r) => r.count,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::One(p) => p.len(),
            Self::Run(r) => r.bytes,
        }
    }
}

/// Takes the front item of `entries`, cutting it from a run when the front
/// entry is one; with `track`, the run's `bytes` follow.
#[inline(always)]
fn pop_entry(entries: &mut VecDeque<Entry>, track: bool) -> Option<Payload> {
    loop {
        match entries.front_mut()? {
            Entry::Run(run) => {
                let p = run.take();
                if track {
                    let len = p.as_ref().map_or(run.bytes, Payload::len);
                    run.bytes = run.bytes.saturating_sub(len);
                }
                if run.count == 0 {
                    entries.pop_front();
                }
                if p.is_some() {
                    return p;
                }
            }
            Entry::One(_) => {
                if let Some(Entry::One(p)) = entries.pop_front() {
                    return Some(p);
                }
            }
        }
    }
}

/// Items a consumer took from an inbound half in one lock, in order, which
/// it hands out without the connection ([`Connection::recv`](super::Connection::recv)).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The run items are being cut from, before `entries` (`count` 0:
    /// none): the next item is cut from it without a look at the queue.
    run: Run,
    entries: VecDeque<Entry>,
}

impl Batch {
    /// The next item.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<Payload> {
        if self.run.count > 0 {
            if let Some(p) = self.run.take() {
                return Some(p);
            }
        }
        self.pop_entry()
    }

    /// Whether [`pop_front`](Self::pop_front) has an item to give.
    #[inline]
    pub(crate) fn has_next(&self) -> bool {
        self.run.count > 0 || !self.entries.is_empty()
    }

    /// [`pop_front`](Self::pop_front) once the current run is used up: the
    /// next entry, which becomes the current run when it is one.
    fn pop_entry(&mut self) -> Option<Payload> {
        loop {
            match self.entries.pop_front()? {
                Entry::One(p) => return Some(p),
                Entry::Run(run) => {
                    self.run = run;
                    if let Some(p) = self.run.take() {
                        return Some(p);
                    }
                }
            }
        }
    }
}

/// The items an inbound half holds, in order. The first is kept inline, so
/// that a request/response answer (or any one-item wait) needs no
/// allocation, and the queue of the others exists only once a second item
/// has been held (dropping an unused one is free). Items read together may
/// be held as one [`Run`].
#[derive(Debug, Default)]
pub(super) struct Items {
    /// The front item, when it is not in `rest`.
    head: Option<Payload>,
    rest: Option<VecDeque<Entry>>,
}

impl Items {
    pub(super) fn push_back(&mut self, p: Payload) {
        match &mut self.rest {
            Some(rest) if !rest.is_empty() => rest.push_back(Entry::One(p)),
            rest => {
                if self.head.is_none() {
                    self.head = Some(p);
                } else {
                    rest.get_or_insert_with(VecDeque::new)
                        .push_back(Entry::One(p));
                }
            }
        }
    }

    /// Queues a run of items after the others.
    pub(super) fn push_run(&mut self, run: Run) {
        if run.count > 0 {
            self.rest
                .get_or_insert_with(VecDeque::new)
                .push_back(Entry::Run(run));
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<Payload> {
        self.head
            .take()
            .or_else(|| self.rest.as_mut().and_then(|rest| pop_entry(rest, true)))
    }

    /// The one item held, taken out; `None` (and nothing taken) when
    /// there is none or more than one.
    #[inline]
    pub(super) fn take_only(&mut self) -> Option<Payload> {
        if self.rest.as_ref().is_some_and(|rest| !rest.is_empty()) {
            return None;
        }
        self.head.take()
    }

    /// The number of items held.
    pub(super) fn len(&self) -> usize {
        usize::from(self.head.is_some())
            + self
                .rest
                .as_ref()
                .map_or(0, |rest| rest.iter().map(Entry::count).sum())
    }

    /// Whether no item is held.
    pub(super) fn is_empty(&self) -> bool {
        self.head.is_none() && self.rest.as_ref().is_none_or(VecDeque::is_empty)
    }

    /// The length of the payloads held.
    pub(super) fn bytes(&self) -> usize {
        self.head.as_ref().map_or(0, Payload::len)
            + self
                .rest
                .as_ref()
                .map_or(0, |rest| rest.iter().map(Entry::bytes).sum())
    }

    /// Moves up to `n` items into `into`; returns their bytes. When `into`
    /// is empty and takes them all, the two queues trade places instead.
    pub(super) fn move_into(&mut self, mut n: usize, into: &mut Batch) -> usize {
        let into = &mut into.entries;
        if self.head.is_none() && into.is_empty() {
            if let Some(rest) = self.rest.as_mut() {
                if rest.iter().map(Entry::count).sum::<usize>() <= n {
                    std::mem::swap(rest, into);
                    return into.iter().map(Entry::bytes).sum();
                }
            }
        }
        let mut bytes = 0;
        if n > 0 {
            if let Some(p) = self.head.take() {
                bytes += p.len();
                into.push_back(Entry::One(p));
                n -= 1;
            }
        }
        let Some(rest) = self.rest.as_mut() else {
            return bytes;
        };
        while n > 0 {
            let Some(front) = rest.front_mut() else {
                break;
            };
            let count = front.count();
            let entry = if count <= n {
                match rest.pop_front() {
                    Some(e) => e,
                    None => break,
                }
            } else {
                match front {
                    Entry::Run(run) => Entry::Run(run.split_front(n)),
                    Entry::One(_) => break,
                }
            };
            n -= entry.count();
            bytes += entry.bytes();
            into.push_back(entry);
        }
        bytes
    }
}

/// Sum of credits, saturating at 2^31 − 1 (unbounded).
pub(super) fn add_credit(credit: u64, n: u32) -> u64 {
    (credit + u64::from(n)).min(u64::from(MAX_U31))
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::{Batch, Items, Run};
    use crate::frame::{Frame, PayloadFrame, StreamId};
    use crate::Payload;

    fn item(i: usize) -> Payload {
        let data = Bytes::from(vec![b'a' + (i % 26) as u8; i % 5]);
        match i % 3 {
            0 => Payload::new(data),
            1 => Payload::new(data).with_metadata(Bytes::from(vec![b'm'; i % 4])),
            _ => Payload::new(data).with_metadata(Bytes::new()),
        }
    }

    /// `n` items on stream `id`, encoded behind their prefixes as read.
    fn wire(id: u32, n: usize) -> Bytes {
        let mut buf = BytesMut::new();
        for i in 0..n {
            let f = Frame::Payload(PayloadFrame::next(StreamId::new(id).expect("id"), item(i)));
            f.encode_prefixed(f.encoded_len(), &mut buf);
        }
        buf.freeze()
    }

    /// Scans `buf` the way the reader does; the run and where it ends.
    fn scan(buf: &Bytes, id: u32) -> (Run, usize) {
        let (mut at, mut count, mut bytes) = (0, 0, 0);
        while let Some((end, len)) = PayloadFrame::scan_item(buf, at, id, usize::MAX) {
            at = end;
            count += 1;
            bytes += len;
        }
        (Run::new(buf.slice(..at), count, bytes), at)
    }

    #[test]
    fn a_run_gives_back_its_items_in_order() {
        let buf = wire(5, 7);
        let (run, end) = scan(&buf, 5);
        assert_eq!(end, buf.len());
        assert_eq!(run.count, 7);
        assert_eq!(run.bytes, (0..7).map(|i| item(i).len()).sum::<usize>());
        let mut items = Items::default();
        items.push_back(Payload::from("first"));
        items.push_run(run);
        assert_eq!(items.len(), 8);
        assert_eq!(items.pop_front(), Some(Payload::from("first")));
        for i in 0..7 {
            let p = items.pop_front().expect("item");
            assert_eq!(p.data, item(i).data, "item {i}");
            assert_eq!(p.metadata, item(i).metadata, "item {i}");
        }
        assert!(items.is_empty());
        assert_eq!(items.pop_front(), None);
    }

    #[test]
    fn scanning_stops_at_another_stream_or_frame() {
        let mut buf = BytesMut::from(&wire(5, 2)[..]);
        buf.extend_from_slice(&wire(7, 1));
        let buf = buf.freeze();
        let (run, end) = scan(&buf, 5);
        assert_eq!(run.count, 2);
        assert_eq!(end, wire(5, 2).len());
        // PAYLOAD(N+C), fragments and other frames are not items of a run.
        for f in [
            Frame::Payload(PayloadFrame::next_complete(
                StreamId::new(5).expect("id"),
                item(1),
            )),
            Frame::Payload(PayloadFrame {
                follows: true,
                ..PayloadFrame::next(StreamId::new(5).expect("id"), item(1))
            }),
            Frame::Payload(PayloadFrame::complete(StreamId::new(5).expect("id"))),
        ] {
            let mut b = BytesMut::new();
            f.encode_prefixed(f.encoded_len(), &mut b);
            assert_eq!(PayloadFrame::scan_item(&b, 0, 5, usize::MAX), None, "{f:?}");
        }
        // Too long, or cut short.
        assert_eq!(PayloadFrame::scan_item(&buf, 0, 5, 5), None);
        assert_eq!(PayloadFrame::scan_item(&buf[..8], 0, 5, usize::MAX), None);
    }

    #[test]
    fn a_batch_hands_out_items_and_runs_in_order() {
        let mut items = Items::default();
        items.push_back(Payload::from("a"));
        items.push_run(scan(&wire(5, 3), 5).0);
        items.push_back(Payload::from("b"));
        items.push_run(scan(&wire(5, 2), 5).0);
        items.push_back(Payload::from("c"));
        let mut batch = Batch::default();
        // Taken in two goes, the second while the batch still holds items.
        items.move_into(3, &mut batch);
        assert_eq!(batch.pop_front(), Some(Payload::from("a")));
        items.move_into(10, &mut batch);
        assert!(items.is_empty());
        let got: Vec<Payload> = std::iter::from_fn(|| batch.pop_front()).collect();
        let mut want: Vec<Payload> = (0..3).map(item).collect();
        want.push(Payload::from("b"));
        want.extend((0..2).map(item));
        want.push(Payload::from("c"));
        assert_eq!(got, want);
    }

    #[test]
    fn moving_part_of_a_run_splits_it() {
        let buf = wire(5, 6);
        let (run, _) = scan(&buf, 5);
        let total = run.bytes;
        let mut items = Items::default();
        items.push_run(run);
        let mut first = Batch::default();
        let moved = items.move_into(4, &mut first);
        assert_eq!(items.len(), 2);
        assert_eq!(moved + items.bytes(), total);
        let mut second = Batch::default();
        assert_eq!(items.move_into(10, &mut second), total - moved);
        assert!(items.is_empty());
        let got: Vec<Payload> = std::iter::from_fn(|| first.pop_front())
            .chain(std::iter::from_fn(|| second.pop_front()))
            .collect();
        assert_eq!(got, (0..6).map(item).collect::<Vec<_>>());
    }

    #[test]
    fn an_adaptive_window_never_grows_into_the_unbounded_value() {
        use super::{RecvHalf, Replenish};
        use crate::frame::MAX_U31;
        // A window near 2^31 - 1 with no limit on its growth: each grant
        // must still fit a REQUEST_N, and the window must stay counted
        // (2^31 - 1 would mean unbounded, which the peer was never told).
        let mut r = RecvHalf::new(1 << 30, true, Replenish::Adaptive);
        for _ in 0..4 {
            let half = r.window / 2;
            r.outstanding -= u64::from(half);
            let grant = r.consume(half, false, u32::MAX, usize::MAX);
            assert!(grant > 0 && grant <= MAX_U31, "grant {grant}");
            assert!(r.window < MAX_U31, "window {}", r.window);
            assert!(r.report_after(false) > 0);
        }
    }
}
