//! Commands from local handles: opening requests, consuming inbound
//! halves, producing on outbound halves.

use std::borrow::Cow;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;

use super::{
    add_credit, fragment, Batch, Connection, FragKind, Interaction, Pace, RecvHalf, Replenish,
    Role, SendHalf, SendReady, SendState, State, StreamState,
};
use crate::error::{RequestError, StreamError};
use crate::frame::{
    Cancel, ErrorCode, ErrorFrame, Frame, MetadataPush, PayloadFrame, RequestCount, RequestN,
    StreamId, MAX_U31,
};
use crate::Payload;

impl Connection {
    // ----- requester commands ------------------------------------------

    /// Ready when a new request may be queued (the outbound queue has room).
    /// `Pending` waits for [`Wakeup::Space`](super::Wakeup::Space).
    pub(crate) fn open_ready(&mut self) -> Poll<Result<(), RequestError>> {
        if let Some(refusal) = self.refusal() {
            return Poll::Ready(Err(refusal));
        }
        if self.has_space() {
            Poll::Ready(Ok(()))
        } else {
            self.wait_space();
            Poll::Pending
        }
    }

    /// Opens a stream and queues its request frame(s). `window` is the
    /// initial request-n for streams and channels; with `manual`, credit is
    /// only added by [`Connection::request_credit`]; with `adaptive`, the
    /// window may grow while items are small ([`Config::max_prefetch`](crate::Config::max_prefetch)).
    pub(crate) fn open(
        &mut self,
        interaction: Interaction,
        payload: Payload,
        window: u32,
        manual: bool,
        adaptive: bool,
        now: Instant,
    ) -> Result<StreamId, RequestError> {
        self.open_cow(
            interaction,
            Cow::Owned(payload),
            window,
            manual,
            adaptive,
            now,
        )
    }

    /// [`open`](Self::open) with a request that may be lent: it is copied
    /// into the outbound queue, and cloned only where it has to be kept
    /// (a request written in fragments, or with resumption on).
    #[inline]
    pub(crate) fn open_cow(
        &mut self,
        interaction: Interaction,
        payload: Cow<'_, Payload>,
        window: u32,
        manual: bool,
        adaptive: bool,
        now: Instant,
    ) -> Result<StreamId, RequestError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        if interaction == Interaction::FireAndForget {
            return self.open_fnf(&mut Some(payload.into_owned()), now);
        }
        let id = self.request_id(now)?;
        let n = RequestCount::new(window.min(MAX_U31)).unwrap_or(RequestCount::ONE);
        let replenish = match (manual, adaptive) {
            (true, _) => Replenish::Manual,
            (false, true) => Replenish::Adaptive,
            (false, false) => Replenish::Fixed,
        };
        let (kind, recv, send) = match interaction {
            Interaction::FireAndForget => (FragKind::RequestFnf, None, None),
            Interaction::RequestResponse => (
                FragKind::RequestResponse,
                Some(RecvHalf::new(1, true, Replenish::Fixed)),
                None,
            ),
            Interaction::RequestStream => (
                FragKind::RequestStream(n),
                Some(RecvHalf::new(n.get(), true, replenish)),
                None,
            ),
            Interaction::RequestChannel => (
                FragKind::RequestChannel(n),
                Some(RecvHalf::new(n.get(), true, replenish)),
                Some(SendHalf::new(0)),
            ),
        };
        if recv.is_some() || send.is_some() {
            // A new id (`request_id` skips those in use).
            self.streams.insert_new(
                id.get(),
                StreamState {
                    interaction,
                    role: Role::Requester,
                    terminated: false,
                    recv,
                    send,
                },
            );
        }
        let direct = match kind {
            FragKind::RequestFnf | FragKind::RequestResponse => {
                let mtu = self.config.fragment_at();
                self.enqueue_request_direct(matches!(kind, FragKind::RequestFnf), id, &payload, mtu)
            }
            _ => false,
        };
        if direct {
            self.wakeups.driver();
        } else {
            self.push_fragmented(kind, id, payload.into_owned(), false, Pace::Paced);
        }
        Ok(id)
    }

    /// A fire-and-forget once the outbound queue has room: what
    /// [`open_ready`](Self::open_ready) and then [`open`](Self::open) do for
    /// one, in one call. Takes the request out of `request` when it is
    /// queued or refused; `Pending` leaves it there
    /// and waits for [`Wakeup::Space`](super::Wakeup::Space). `now` is for
    /// the lease (see [`Connection::lease_now`]); a request refused for
    /// want of one fails at once (the runtime waits for a lease, when it
    /// may, before it calls this).
    #[inline]
    pub(crate) fn fire_and_forget(
        &mut self,
        request: &mut Option<Payload>,
        now: Instant,
    ) -> Poll<Result<(), RequestError>> {
        if let Some(refusal) = self.refusal() {
            // Dropped: the request is done with.
            *request = None;
            return Poll::Ready(Err(refusal));
        }
        if !self.has_space() {
            self.wait_space();
            return Poll::Pending;
        }
        if request.is_none() {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(self.open_fnf(request, now).map(|_| ()))
    }

    /// A request/response on a connection without leasing: what
    /// [`open_ready`](Self::open_ready), [`open`](Self::open) and the first
    /// [`recv_response`](Self::recv_response) do for it, in one call. Takes
    /// the request out of `request` when it is queued or refused (a frame
    /// that goes whole into the current run is encoded from it in place);
    /// `Pending` leaves it there and waits for
    /// [`Wakeup::Space`](super::Wakeup::Space). Once opened, the stream's
    /// inbound half already waits for its answer (a
    /// [`Wakeup::Recv`](super::Wakeup::Recv)), as after a `recv_response`
    /// that found nothing: the caller registers for it. Only for
    /// connections without leasing (the runtime goes through the lease
    /// gate and `open` otherwise). A request `lent` (with `request` empty)
    /// is encoded from where it lies too, and cloned only to be queued in
    /// fragments.
    #[inline]
    pub(crate) fn request_response(
        &mut self,
        request: &mut Option<Payload>,
        lent: Option<&Payload>,
    ) -> Poll<Result<StreamId, RequestError>> {
        debug_assert!(self.lease.is_none());
        if let Some(refusal) = self.refusal() {
            *request = None;
            return Poll::Ready(Err(refusal));
        }
        if !self.has_space() {
            self.wait_space();
            return Poll::Pending;
        }
        let id = match self.request_id(self.last_received) {
            Ok(id) => id,
            Err(e) => {
                *request = None;
                return Poll::Ready(Err(e));
            }
        };
        // A new id (`request_id` skips those in use).
        self.streams.insert_new_with(id.get(), || {
            let mut recv = RecvHalf::new(1, true, Replenish::Fixed);
            recv.waiting = true;
            StreamState {
                interaction: Interaction::RequestResponse,
                role: Role::Requester,
                terminated: false,
                recv: Some(recv),
                send: None,
            }
        });
        let mtu = self.config.fragment_at();
        let direct = match request.as_ref().or(lent) {
            Some(payload) => self.enqueue_request_direct(false, id, payload, mtu),
            None => false,
        };
        if direct {
            *request = None;
            self.wakeups.driver();
        } else {
            let payload = request.take().or_else(|| lent.cloned()).unwrap_or_default();
            self.push_fragmented(FragKind::RequestResponse, id, payload, false, Pace::Paced);
        }
        Poll::Ready(Ok(id))
    }

    /// [`open`](Self::open) of a fire-and-forget on an open connection:
    /// nothing of the stream is kept once its frame(s) are queued, so only
    /// the id moves on (ids still in use by other streams are skipped).
    /// The request is taken from `request` (and dropped), whatever the
    /// outcome; a frame that goes whole into the current run is encoded
    /// from it in place.
    #[inline]
    fn open_fnf(
        &mut self,
        request: &mut Option<Payload>,
        now: Instant,
    ) -> Result<StreamId, RequestError> {
        let id = match self.request_id(now) {
            Ok(id) => id,
            Err(e) => {
                *request = None;
                return Err(e);
            }
        };
        let mtu = self.config.fragment_at();
        let direct = match request.as_ref() {
            Some(payload) => self.enqueue_request_direct(true, id, payload, mtu),
            None => true,
        };
        if direct {
            *request = None;
            self.wakeups.driver();
        } else if let Some(payload) = request.take() {
            self.push_fragmented(FragKind::RequestFnf, id, payload, false, Pace::Paced);
        }
        Ok(id)
    }

    /// The id of a new request, after taking one unit of the peer's
    /// lease, which every request type needs.
    #[inline]
    fn request_id(&mut self, now: Instant) -> Result<StreamId, RequestError> {
        self.check_lease(now)?;
        let streams = &self.streams;
        let id = self
            .ids
            .next(streams.len(), |id| streams.contains_key(&id))
            .ok_or_else(|| RequestError::Stream(StreamError::rejected("no free stream ids")))?;
        self.take_lease(now)?;
        Ok(id)
    }

    /// Queues a METADATA_PUSH once the outbound queue has room (paced, like
    /// a request). Allowed while a graceful close drains (it opens no
    /// stream). `Pending` waits for [`Wakeup::Space`](super::Wakeup::Space).
    pub(crate) fn metadata_push(
        &mut self,
        metadata: &mut Option<Bytes>,
    ) -> Poll<Result<(), RequestError>> {
        if let Some(e) = self.closed() {
            return Poll::Ready(Err(RequestError::Connection(e.clone())));
        }
        // METADATA_PUSH cannot be fragmented: one over the limit would be
        // refused by the transport (closing the connection) or by the peer.
        let len = crate::frame::HEADER_LEN + metadata.as_ref().map_or(0, Bytes::len);
        if len > self.config.max_frame_len {
            *metadata = None;
            return Poll::Ready(Err(RequestError::FrameTooLarge {
                len,
                max: self.config.max_frame_len,
            }));
        }
        if !self.has_space() {
            self.wait_space();
            return Poll::Pending;
        }
        if let Some(metadata) = metadata.take() {
            let frame = Frame::MetadataPush(MetadataPush { metadata });
            let len = frame.encoded_len();
            self.enqueue(frame, len, Pace::Paced);
            self.wakeups.driver();
        }
        Poll::Ready(Ok(()))
    }

    /// A fire-and-forget or metadata-push handler finished.
    pub(crate) fn oneway_done(&mut self) {
        self.oneways_done(1);
    }

    /// `n` fire-and-forget or metadata-push handlers finished.
    pub(crate) fn oneways_done(&mut self, n: usize) {
        let was_paused = self.read_paused();
        self.inflight_oneway = self.inflight_oneway.saturating_sub(n);
        if was_paused && !self.read_paused() {
            // The driver stopped reading; let it resume.
            self.wakeups.driver();
        }
    }

    // ----- consumers of inbound halves ----------------------------------

    /// Takes the next item and moves up to `max - 1` more into `into`, after
    /// counting `consumed` items the caller has handed to its user since its
    /// last call: consumption, not arrival, is what earns the peer more
    /// credit, so a consumer that stops polling stops the producer. Ready
    /// with `Some(Ok(item))`, `None` at completion,
    /// `Some(Err(_))` when the stream failed; both terminal answers release
    /// the half. `Pending` waits for [`Wakeup::Recv`](super::Wakeup::Recv).
    ///
    /// `report_after` is set to the number of items the caller may hand out
    /// before the next REQUEST_N is due (0: never): it then reports them
    /// with [`Connection::report_consumed`] at once. The connection alone
    /// owns the replenishment rule; the caller only counts.
    pub(crate) fn recv(
        &mut self,
        id: StreamId,
        consumed: u32,
        max: usize,
        into: &mut Batch,
        report_after: &mut u32,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        self.recv_inner(id, consumed, max, Some(into), true, report_after)
    }

    fn recv_inner(
        &mut self,
        id: StreamId,
        consumed: u32,
        max: usize,
        into: Option<&mut Batch>,
        take: bool,
        report_after: &mut u32,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        *report_after = 0;
        let (max_prefetch, prefetch_bytes) = (self.config.max_prefetch, self.config.prefetch_bytes);
        let key = id.get();
        let Some(st) = self.streams.get_mut(&key) else {
            return Poll::Ready(None);
        };
        let terminated = st.terminated;
        let rr = st.interaction == Interaction::RequestResponse;
        let Some(r) = st.recv.as_mut() else {
            return Poll::Ready(None);
        };
        let mut grant = r.initial_grant(terminated);
        grant += r.consume(consumed, rr, max_prefetch, prefetch_bytes);
        *report_after = r.report_after(rr);
        let result = if !take {
            Poll::Pending
        } else if let Some(first) = r.queue.pop_front() {
            // The first item is returned directly, so a single response
            // never touches the caller's buffer.
            let more = match into {
                Some(into) => r.queue.move_into(max.saturating_sub(1), into),
                None => 0,
            };
            let taken = first.len() + more;
            self.in_bytes -= taken;
            Poll::Ready(Some(Ok(first)))
        } else {
            match r.end.take() {
                Some(Ok(())) => Poll::Ready(None),
                Some(Err(e)) => Poll::Ready(Some(Err(e))),
                None => {
                    r.waiting = true;
                    Poll::Pending
                }
            }
        };
        if matches!(result, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // The terminal signal was delivered: the half is done.
            if let Some(mut r) = st.recv.take() {
                r.forget(key, &mut self.wakeups);
            }
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
    /// the window has been consumed. Returns the new `report_after` (see
    /// [`Connection::recv`]).
    pub(crate) fn report_consumed(&mut self, id: StreamId, n: u32) -> u32 {
        let mut report_after = 0;
        // `max` 0 moves nothing; only the accounting and REQUEST_N happen.
        let _ = self.recv_inner(id, n, 0, None, false, &mut report_after);
        report_after
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
        r.extra = add_credit(r.extra, count.get());
        self.push_control(Frame::RequestN(RequestN {
            stream_id: id,
            request_n: count,
        }));
    }

    /// A request/response answer: [`Connection::recv`] of one item,
    /// releasing the half once the answer is delivered (nothing more can
    /// arrive on it), so that the requester's handle has nothing left to
    /// release. `Pending` waits for [`Wakeup::Recv`](super::Wakeup::Recv).
    #[inline]
    pub(crate) fn recv_response(
        &mut self,
        id: StreamId,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        let key = id.get();
        // The common case, the answer is there, alone: taken and the
        // stream forgotten with one lookup (what `recv_response_slow` and
        // `remove_stream` do).
        let wakeups = &mut self.wakeups;
        let taken = self.streams.take_if(&key, |st| {
            if st.interaction != Interaction::RequestResponse || st.send.is_some() {
                return None;
            }
            let r = st.recv.as_mut().filter(|r| r.end.is_some())?;
            let p = r.queue.take_only()?;
            r.forget(key, wakeups);
            Some((p, st.local()))
        });
        match taken {
            Some((answer, local)) => {
                self.in_bytes -= answer.len();
                self.removed_stream(key, local);
                Poll::Ready(Some(Ok(answer)))
            }
            None => self.recv_response_slow(id),
        }
    }

    /// [`recv_response`](Self::recv_response) in every other case.
    #[inline(never)]
    fn recv_response_slow(&mut self, id: StreamId) -> Poll<Option<Result<Payload, RequestError>>> {
        let key = id.get();
        let mut held = 0;
        let answer = match self.streams.get_mut(&key) {
            Some(st) if st.interaction == Interaction::RequestResponse && st.send.is_none() => {
                match st.recv.as_mut() {
                    Some(r) if r.end.is_some() => r.queue.pop_front().inspect(|p| {
                        // The answer ended the stream (its PAYLOAD completes
                        // it): the half is released here, as
                        // `release_recv` would.
                        r.forget(key, &mut self.wakeups);
                        held = p.len() + r.queue.bytes();
                    }),
                    Some(r) if r.queue.is_empty() => {
                        // Nothing yet: a request/response grants no credit
                        // as it is consumed, so there is nothing else to do
                        // than wait.
                        r.waiting = true;
                        return Poll::Pending;
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(answer) = answer else {
            let mut report_after = 0;
            return self.recv_inner(id, 0, 1, None, true, &mut report_after);
        };
        self.in_bytes -= held;
        self.remove_stream(key);
        Poll::Ready(Some(Ok(answer)))
    }

    /// The consumer of an inbound half went away.
    pub(crate) fn release_recv(&mut self, id: StreamId) {
        let key = id.get();
        let conn_open = self.closed().is_none();
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let Some(r) = st.recv.as_mut() else {
            return;
        };
        r.forget(key, &mut self.wakeups);
        let queued = r.queue.bytes();
        let open = r.end.is_none() && !st.terminated && conn_open;
        // Dropped in place: the half is not moved out.
        st.recv = None;
        if open && st.local() {
            // Requester gives up: the whole stream ends.
            st.terminated = true;
            if let Some(s) = st.send.as_mut() {
                s.stop(key, &mut self.wakeups);
            }
        }
        let done = st.send.is_none();
        self.in_bytes -= queued;
        // Nobody will take the item being reassembled.
        self.drop_reassembly(key);
        if open {
            self.push_control(Frame::Cancel(Cancel { stream_id: id }));
        }
        if done {
            self.remove_stream(key);
        }
    }

    // ----- producers of outbound halves ---------------------------------

    /// Ready with the credit available when the producer may send, or with
    /// `Stopped` when it must give up.
    ///
    /// With `zero_ok`, a producer without credit gets `Credit(0)` (and waits
    /// for the next REQUEST_N): a requester's channel uses this to look one
    /// item ahead, so that it can send COMPLETE, which needs no credit, to a
    /// responder that never grants any.
    ///
    /// Unless the answer is `Stopped`, the producer now waits for
    /// [`Wakeup::Send`](super::Wakeup::Send), even when it got credit: a
    /// producer whose user stream is pending must still learn of CANCEL or
    /// close. A `Pending` while the outbound queue is full
    /// ([`Connection::has_space`] false) also waits for
    /// [`Wakeup::Space`](super::Wakeup::Space).
    pub(crate) fn send_ready(&mut self, id: StreamId, zero_ok: bool) -> Poll<SendReady> {
        let has_space = self.has_space();
        let Some(s) = self
            .streams
            .get_mut(&id.get())
            .and_then(|st| st.send.as_mut())
        else {
            return Poll::Ready(SendReady::Stopped);
        };
        if !s.open() {
            return Poll::Ready(SendReady::Stopped);
        }
        s.waiting = true;
        s.awaiting_credit = s.credit == 0;
        if s.credit > 0 && has_space {
            return Poll::Ready(SendReady::Credit(s.credit));
        }
        if s.credit == 0 && zero_ok && has_space {
            return Poll::Ready(SendReady::Credit(0));
        }
        if !has_space {
            self.wait_space();
        }
        Poll::Pending
    }

    /// Ready once the producer must stop (cancelled or connection closed);
    /// `Pending` waits for [`Wakeup::Send`](super::Wakeup::Send).
    pub(crate) fn check_stopped(&mut self, id: StreamId) -> Poll<()> {
        match self
            .streams
            .get_mut(&id.get())
            .and_then(|st| st.send.as_mut())
        {
            Some(s) if s.state != SendState::Stopped => {
                s.waiting = true;
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
        mut items: impl ExactSizeIterator<Item = Payload>,
        complete: bool,
    ) {
        // No allocation for none or one (a request/response answer).
        let mut first = items.next();
        if items.len() == 0 {
            let one = first.as_mut().map_or(&mut [][..], std::slice::from_mut);
            return self.send_batch(id, one, complete);
        }
        let mut all: Vec<Payload> = first.into_iter().chain(items).collect();
        self.send_batch(id, &mut all, complete);
    }

    /// [`send_items`](Self::send_items) of the items in `items`, read in
    /// place: the caller drops them afterwards (a producer's batch is
    /// cleared and used again).
    pub(crate) fn send_batch(&mut self, id: StreamId, items: &mut [Payload], complete: bool) {
        let Some(st) = self.streams.get_mut(&id.get()) else {
            return;
        };
        let Some(s) = st.send.as_mut() else {
            return;
        };
        if !s.open() {
            return;
        }
        let rr = st.interaction == Interaction::RequestResponse;
        let count = items.len();
        if s.credit < u64::from(MAX_U31) {
            s.credit = s.credit.saturating_sub(count as u64);
        }
        let complete = complete || rr;
        if complete {
            s.state = SendState::Done;
        }
        // A request/response answer is written as soon as it is ready
        // (see `Pace`); stream items waited for room.
        let pace = if rr { Pace::Unpaced } else { Pace::Paced };
        let mtu = self.config.fragment_at();
        self.enqueue_items(id, items, complete, pace, mtu);
        if count == 0 && complete {
            let f = Frame::Payload(PayloadFrame::complete(id));
            let len = f.encoded_len();
            self.enqueue(f, len, pace);
        }
        self.wakeups.driver();
    }

    /// A request/response handler's answer (PAYLOAD(N+C), or PAYLOAD(C)
    /// for `None`) followed by the release of the outbound half: what
    /// [`send_items`](Self::send_items) and
    /// [`release_send`](Self::release_send) do, with one lookup.
    pub(crate) fn answer_and_release(&mut self, id: StreamId, answer: Option<Payload>) {
        let key = id.get();
        // The common case: the outbound half released and the stream
        // forgotten with one lookup, before the answer is queued.
        let wakeups = &mut self.wakeups;
        let fast = self.streams.take_if(&key, |st| {
            if st.interaction != Interaction::RequestResponse || st.recv.is_some() {
                return None;
            }
            let s = st.send.as_mut().filter(|s| s.open())?;
            s.forget(key, wakeups);
            Some(st.local())
        });
        let Some(local) = fast else {
            let complete = true;
            match answer {
                Some(p) => self.send_items(id, std::iter::once(p), complete),
                None => self.send_items(id, std::iter::empty(), complete),
            }
            return self.release_send(id);
        };
        // A request/response answer is written as soon as it is ready (see
        // `Pace`).
        match answer {
            Some(p) => {
                let mtu = self.config.fragment_at();
                if !self.enqueue_answer_direct(id, &p, mtu) {
                    fragment::fragment(
                        FragKind::Payload { next: true },
                        id,
                        p,
                        true,
                        mtu,
                        |f, len| {
                            self.enqueue(f, len, Pace::Unpaced);
                        },
                    );
                }
            }
            None => {
                let f = Frame::Payload(PayloadFrame::complete(id));
                let len = f.encoded_len();
                self.enqueue(f, len, Pace::Unpaced);
            }
        }
        self.wakeups.driver();
        self.removed_stream(key, local);
    }

    /// Sends ERROR on the stream, ending it on both halves.
    pub(crate) fn send_error(&mut self, id: StreamId, err: &StreamError) {
        let Some(st) = self.streams.get_mut(&id.get()) else {
            return;
        };
        let Some(s) = st.send.as_mut() else {
            return;
        };
        if !s.open() {
            return;
        }
        s.state = SendState::Done;
        st.terminated = true;
        let key = id.get();
        if let Some(r) = st.recv.as_mut() {
            r.finish(Err(RequestError::Cancelled), key, &mut self.wakeups);
        }
        // Codes that are valid on stream 0 only, and the two reserved ones
        // (0, never sent, and 0xFFFFFFFF, for extension), never go out on a
        // stream, whichever side sends it.
        let code = if err.code.is_connection_level() || err.code.is_reserved() {
            ErrorCode::APPLICATION_ERROR
        } else {
            err.code
        };
        self.drop_reassembly(id.get());
        let frame = self.error_frame(Some(id), code, &err.message);
        self.push(Frame::Error(frame));
    }

    /// The producer of an outbound half went away.
    pub(crate) fn release_send(&mut self, id: StreamId) {
        let key = id.get();
        let conn_open = self.closed().is_none();
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let Some(s) = st.send.as_mut() else {
            return;
        };
        s.forget(key, &mut self.wakeups);
        let open = s.open() && !st.terminated && conn_open;
        // Dropped in place: the half is not moved out.
        st.send = None;
        let mut frame = None;
        if open {
            st.terminated = true;
            if let Some(r) = st.recv.as_mut() {
                r.finish(Err(RequestError::Cancelled), key, &mut self.wakeups);
            }
            frame = Some(if st.local() {
                Frame::Cancel(Cancel { stream_id: id })
            } else {
                Frame::Error(ErrorFrame::new(
                    Some(id),
                    ErrorCode::CANCELED,
                    "responder dropped the stream",
                ))
            });
        }
        let done = st.recv.is_none();
        if let Some(frame) = frame {
            self.drop_reassembly(key);
            self.push_control(frame);
        }
        if done {
            self.remove_stream(key);
        }
    }

    fn maybe_remove(&mut self, key: u32) {
        let done = self
            .streams
            .get(&key)
            .is_some_and(|st| st.recv.is_none() && st.send.is_none());
        if done {
            self.remove_stream(key);
        }
    }

    /// Forgets a stream whose halves have both been released.
    fn remove_stream(&mut self, key: u32) {
        self.drop_reassembly(key);
        if let Some(local) = self.streams.remove_with(&key, StreamState::local) {
            if !local {
                self.inbound_streams = self.inbound_streams.saturating_sub(1);
            }
        }
        self.check_drained();
    }

    /// What [`remove_stream`](Self::remove_stream) does besides the
    /// removal, for a stream taken out of the table already (`local`: we
    /// opened it).
    #[inline]
    fn removed_stream(&mut self, key: u32, local: bool) {
        self.drop_reassembly(key);
        if !local {
            self.inbound_streams = self.inbound_streams.saturating_sub(1);
        }
        self.check_drained();
    }

    #[inline]
    fn check_drained(&mut self) {
        if self.streams.is_empty() && matches!(self.state, State::Draining { .. }) {
            // Let the driver notice that draining has finished.
            self.wakeups.driver();
        }
    }

    /// Number of streams currently tracked (for tests and metrics).
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    //! The request/response shortcuts the runtime uses (`recv_response`,
    //! `answer_and_release`) against two connected peers.

    use std::task::Poll;

    use crate::error::{RequestError, StreamError};
    use crate::proto::harness::Event;
    use crate::proto::pair::{Pair, PairConfig, Peer};
    use crate::proto::Interaction;
    use crate::Payload;

    fn connected() -> Pair {
        let mut p = Pair::new(PairConfig::default());
        p.settle();
        p
    }

    /// The client opens a request/response; the server sees it.
    fn request(p: &mut Pair) -> crate::frame::StreamId {
        let id = p
            .client()
            .open(Interaction::RequestResponse, Payload::from("q"), 1, false)
            .expect("open");
        p.settle();
        match p.events(Peer::Server).as_slice() {
            [Event::Request { stream, .. }] => assert_eq!(*stream, id),
            other => panic!("expected the request, got {other:?}"),
        }
        id
    }

    fn idle(p: &mut Pair) {
        p.check_consistency().expect("consistent");
        assert_eq!(p.client().stats().open_streams, 0);
        assert_eq!(p.server().stats().open_streams, 0);
        assert_eq!(p.client().stats().queued_in_bytes, 0);
    }

    #[test]
    fn answer_taken_and_stream_forgotten_on_both_sides() {
        let mut p = connected();
        let id = request(&mut p);
        let r = p.client().with_conn(|c| c.recv_response(id));
        assert!(r.is_pending(), "{r:?}");
        p.server()
            .with_conn(|c| c.answer_and_release(id, Some(Payload::from("a"))));
        assert_eq!(p.server().stats().open_streams, 0);
        p.settle();
        match p.client().with_conn(|c| c.recv_response(id)) {
            Poll::Ready(Some(Ok(a))) => assert_eq!(&a.data[..], b"a"),
            other => panic!("expected the answer, got {other:?}"),
        }
        idle(&mut p);
        // Nothing left to release; a late release changes nothing.
        p.client().release_recv(id);
        assert!(matches!(
            p.client().with_conn(|c| c.recv_response(id)),
            Poll::Ready(None)
        ));
        idle(&mut p);
    }

    #[test]
    fn empty_answer_and_error_end_the_request() {
        let mut p = connected();
        let id = request(&mut p);
        p.server().with_conn(|c| c.answer_and_release(id, None));
        p.settle();
        assert!(matches!(
            p.client().with_conn(|c| c.recv_response(id)),
            Poll::Ready(None)
        ));
        idle(&mut p);

        let id = request(&mut p);
        p.server().send_error(id, &StreamError::application("no"));
        p.server().release_send(id);
        p.settle();
        assert!(matches!(
            p.client().with_conn(|c| c.recv_response(id)),
            Poll::Ready(Some(Err(RequestError::Stream(_))))
        ));
        idle(&mut p);
    }

    /// `Connection::request_response`, the runtime's one call for a
    /// request/response without leasing: queued like `open`'s, its half
    /// already waiting for the answer (its arrival wakes it), waits while
    /// the outbound queue is full (keeping the request), fragments a large
    /// request, and fails once the connection is closed.
    #[test]
    fn request_response_opens_waits_for_room_and_fails_when_closed() {
        let config = crate::Config {
            max_outbound_queue_bytes: 256,
            mtu: Some(1024),
            ..crate::Config::default()
        };
        let mut p = Pair::new(PairConfig::both(config));
        p.settle();
        let mut request = Some(Payload::from("q"));
        let id = match p
            .client()
            .with_conn(|c| c.request_response(&mut request, None))
        {
            Poll::Ready(Ok(id)) => id,
            other => panic!("not opened: {other:?}"),
        };
        assert!(request.is_none());
        // Waiting for its answer, as after a `recv_response` that found
        // none.
        let waiting = |p: &mut Pair| {
            p.client().with_conn(|c| {
                c.streams
                    .get(&id.get())
                    .and_then(|st| st.recv.as_ref())
                    .map(|r| r.waiting)
            })
        };
        assert_eq!(waiting(&mut p), Some(true));
        p.settle();
        match p.events(Peer::Server).as_slice() {
            [Event::Request {
                stream, payload, ..
            }] => {
                assert_eq!(*stream, id);
                assert_eq!(&payload.data[..], b"q");
            }
            other => panic!("expected the request, got {other:?}"),
        }
        p.server()
            .with_conn(|c| c.answer_and_release(id, Some(Payload::from("a"))));
        p.settle();
        // The answer woke it.
        assert_eq!(waiting(&mut p), Some(false));
        match p.client().with_conn(|c| c.recv_response(id)) {
            Poll::Ready(Some(Ok(a))) => assert_eq!(&a.data[..], b"a"),
            other => panic!("expected the answer, got {other:?}"),
        }
        idle(&mut p);

        // Requests queued until the queue passes its cap; then the next
        // one waits, and keeps its request.
        let mut opened = Vec::new();
        loop {
            let mut request = Some(Payload::from("x".repeat(100)));
            match p
                .client()
                .with_conn(|c| c.request_response(&mut request, None))
            {
                Poll::Ready(Ok(id)) => {
                    assert!(request.is_none());
                    opened.push(id);
                }
                Poll::Pending => {
                    assert!(request.is_some(), "a waiting request is kept");
                    break;
                }
                Poll::Ready(Err(e)) => panic!("refused: {e}"),
            }
            assert!(opened.len() < 10, "never waited for room");
        }
        p.settle();
        for id in opened {
            p.server().with_conn(|c| c.answer_and_release(id, None));
        }
        p.settle();
        let _ = p.events(Peer::Server);

        // A large request is split in fragments and reassembled.
        let big = "y".repeat(5_000);
        let mut request = Some(Payload::from(big.clone()));
        let id = loop {
            match p
                .client()
                .with_conn(|c| c.request_response(&mut request, None))
            {
                Poll::Ready(Ok(id)) => break id,
                Poll::Pending => {
                    p.settle();
                }
                Poll::Ready(Err(e)) => panic!("refused: {e}"),
            }
        };
        p.settle();
        match p.events(Peer::Server).as_slice() {
            [Event::Request {
                stream, payload, ..
            }] => {
                assert_eq!(*stream, id);
                assert_eq!(&payload.data[..], big.as_bytes());
            }
            other => panic!("expected the large request, got {other:?}"),
        }

        // Lent requests, small (encoded where it lies) and large (cloned
        // into fragments), arrive the same, and stay with the caller.
        for lent in [Payload::from("lent"), Payload::from(big)] {
            let mut none = None;
            let id = loop {
                match p
                    .client()
                    .with_conn(|c| c.request_response(&mut none, Some(&lent)))
                {
                    Poll::Ready(Ok(id)) => break id,
                    Poll::Pending => {
                        p.settle();
                    }
                    Poll::Ready(Err(e)) => panic!("refused: {e}"),
                }
            };
            p.settle();
            match p.events(Peer::Server).as_slice() {
                [Event::Request {
                    stream, payload, ..
                }] => assert_eq!((*stream, payload), (id, &lent)),
                other => panic!("expected the lent request, got {other:?}"),
            }
        }

        // Closed: fails at once, and the request is dropped.
        p.client().close();
        let mut request = Some(Payload::from("late"));
        assert!(matches!(
            p.client()
                .with_conn(|c| c.request_response(&mut request, None)),
            Poll::Ready(Err(RequestError::Connection(_)))
        ));
        assert!(request.is_none());
    }

    /// `Connection::fire_and_forget`, the runtime's one call for a
    /// fire-and-forget without leasing: waits while the outbound queue is
    /// full (keeping the request), fragments a large request, keeps no
    /// stream, and fails once the connection is closed.
    #[test]
    fn fire_and_forget_waits_for_room_fragments_and_fails_when_closed() {
        let config = crate::Config {
            max_outbound_queue_bytes: 256,
            mtu: Some(1024),
            ..crate::Config::default()
        };
        let mut p = Pair::new(PairConfig::both(config));
        p.settle();
        let now = std::time::Instant::now();
        let send = |p: &mut Pair, data: &str, request: &mut Option<Payload>| {
            *request = Some(Payload::from(data.to_owned()));
            p.client().with_conn(|c| c.fire_and_forget(request, now))
        };
        let mut request = None;
        // Queued until the queue passes its cap; then the next one waits,
        // and keeps its request.
        let mut queued = 0;
        loop {
            match send(&mut p, &"x".repeat(100), &mut request) {
                Poll::Ready(Ok(())) => {
                    assert!(request.is_none());
                    queued += 1;
                }
                Poll::Pending => break,
                Poll::Ready(Err(e)) => panic!("refused: {e}"),
            }
            assert!(queued < 10, "never waited for room");
        }
        assert!(request.is_some(), "a waiting request is kept");
        assert_eq!(p.client().stats().open_streams, 0);
        p.settle();
        // Room again: the waiting request goes, then a large one, split in
        // fragments and reassembled by the server.
        assert!(matches!(
            p.client()
                .with_conn(|c| c.fire_and_forget(&mut request, now)),
            Poll::Ready(Ok(()))
        ));
        let big = "y".repeat(5_000);
        p.take_log();
        let mut request = Some(Payload::from(big.clone()));
        let mut r = p
            .client()
            .with_conn(|c| c.fire_and_forget(&mut request, now));
        while r.is_pending() {
            p.settle();
            r = p
                .client()
                .with_conn(|c| c.fire_and_forget(&mut request, now));
        }
        assert!(matches!(r, Poll::Ready(Ok(()))), "{r:?}");
        p.settle();
        let fragments = p
            .take_log()
            .iter()
            .filter(|d| {
                matches!(
                    &d.frame,
                    crate::frame::Frame::RequestFnf(_) | crate::frame::Frame::Payload(_)
                )
            })
            .count();
        assert!(fragments >= 5, "sent in {fragments} frames");
        let events = p.events(Peer::Server);
        assert_eq!(events.len(), queued + 2, "{events:?}");
        match events.last() {
            Some(Event::FireAndForget(last)) => assert_eq!(&last.data[..], big.as_bytes()),
            other => panic!("expected the large request, got {other:?}"),
        }
        assert_eq!(p.client().stats().open_streams, 0);
        // Closed: fails at once, and the request is dropped.
        p.client().close();
        let mut request = Some(Payload::from("late"));
        assert!(matches!(
            p.client()
                .with_conn(|c| c.fire_and_forget(&mut request, now)),
            Poll::Ready(Err(RequestError::Connection(_)))
        ));
        assert!(request.is_none());
    }

    #[test]
    fn answer_after_cancel_is_dropped() {
        let mut p = connected();
        let id = request(&mut p);
        // The requester gives up: CANCEL reaches the responder first.
        p.client().release_recv(id);
        p.settle();
        p.server()
            .with_conn(|c| c.answer_and_release(id, Some(Payload::from("late"))));
        p.take_log();
        p.settle();
        assert!(
            p.log().is_empty(),
            "nothing sent after CANCEL: {:?}",
            p.log()
        );
        idle(&mut p);
    }
}
