//! Requests through the balancer: picking, statistics, and retries.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use rsocket_core::{
    async_trait, CallHints, ErrorCode, Initiator, Payload, PayloadStream, RSocket, RequestError,
    Requester, ResponseFuture, ResponseStream,
};
use tracing::debug;

use crate::balancer::{BalanceError, Balancer, Core};
use crate::member::{Picked, Start};
use crate::Key;

/// Per-call options of the raw API ([`Balancer::request_response_with`],
/// [`Balancer::request_stream_with`]) and of [`Balancer::with_options`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// The request may be processed twice without harm, so it may be sent
    /// again to another member after its connection died with it in
    /// flight. Requests that were never sent, or were refused by a server
    /// that is closing, are retried whatever this says.
    pub idempotent: bool,
}

impl CallOptions {
    /// Not idempotent.
    pub fn new() -> Self {
        Self::default()
    }

    /// These options with the caller's [`CallHints`] added.
    pub fn with_hints(mut self, hints: CallHints) -> Self {
        self.idempotent |= hints.idempotent;
        self
    }

    /// Marks the call idempotent (or not).
    #[must_use]
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }
}

/// What to do about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Hand the error to the caller.
    Return,
    /// Try another member; the member's connection is going away.
    Retry,
}

/// Decides whether a failed attempt may go to another member.
///
/// * never sent (the connection was closed or closing before the request
///   was queued): always;
/// * refused because the server is closing (`ConnectionClosing`; a
///   `REJECTED` for a request that crossed its CONNECTION_CLOSE is known by
///   the connection's state in [`on_failure`]): always, the server did not
///   process it;
/// * refused locally for want of a lease (`NoLease`, nothing was sent):
///   always, and the member stays in use (its availability, which follows
///   its lease, steers the next picks away from it);
/// * the connection died with the request in flight: only if idempotent;
/// * anything the responder answered (an application error, any other
///   `REJECTED`, a cancel): never.
fn classify(err: &RequestError, sent: bool, idempotent: bool) -> Verdict {
    match err {
        RequestError::ConnectionClosing { .. } | RequestError::NoLease(_) => Verdict::Retry,
        RequestError::Connection(_) if !sent || idempotent => Verdict::Retry,
        _ => Verdict::Return,
    }
}

/// Records a failed attempt on its member and says whether to retry
/// (out of line: the path of every successful request stays small).
///
/// On top of [`classify`], an `ERROR[REJECTED]` of any text is retried
/// when the member's connection is known to have received the server's
/// CONNECTION_CLOSE (see [`manual`](crate::manual#retries)): the request
/// crossed it, and a rejected request was not processed.
#[cold]
#[inline(never)]
fn on_failure<K: Key>(
    core: &Core<K>,
    picked: &Picked,
    err: &RequestError,
    sent: bool,
    idempotent: bool,
) -> Verdict {
    let classified = classify(err, sent, idempotent);
    let peer_closing = matches!(
        err,
        RequestError::ConnectionClosing {
            initiator: Initiator::Remote
        }
    );
    let rejected = classified == Verdict::Return
        && matches!(err, RequestError::Stream(e) if e.code == ErrorCode::REJECTED);
    if classified == Verdict::Return && !rejected {
        return classified;
    }
    let now = core.clock.now();
    let (verdict, stopped) = core
        .on_picked(picked, |slot| {
            if peer_closing {
                slot.note_peer_close(picked);
            }
            let verdict = if rejected && slot.peer_began_close(picked) {
                Verdict::Retry
            } else {
                classified
            };
            let mut stopped = false;
            if verdict == Verdict::Retry && !matches!(err, RequestError::NoLease(_)) {
                stopped = slot.stop_using(picked, &err.to_string(), now);
                debug!(key = ?slot.key(), error = %err, sent, "retrying on another member");
            }
            (verdict, stopped)
        })
        .unwrap_or((classified, false));
    if stopped {
        // Out of the ready list before the retry picks, and seen by
        // `state_changes` watchers.
        core.changed();
    }
    verdict
}

/// A request/response through the balancer, written out by hand (rather
/// than as an `async fn`) to keep it small: it is moved whole into the
/// caller's future and copied with it. Its fields are flat rather than an
/// enum of states, so that the usual path (send, then take the answer)
/// tests one pointer per step.
struct RequestResponse<'a, K: Key> {
    core: &'a Core<K>,
    /// The attempt in flight: its answer, and the member it went to (its
    /// request is counted as pending there until it ends; a cancel, by
    /// dropping, records no latency).
    sent: Option<(ResponseFuture, Picked)>,
    /// The request, lent to each attempt.
    request: Payload,
    /// Waiting for a ready member.
    waiting: Option<BoxFuture<'a, Result<(), RequestError>>>,
    /// When it began waiting for a ready member.
    since: Option<tokio::time::Instant>,
    attempt: u32,
    idempotent: bool,
    /// Resolved.
    done: bool,
}

impl<'a, K: Key> RequestResponse<'a, K> {
    fn new(core: &'a Core<K>, request: Payload, idempotent: bool) -> Self {
        Self {
            core,
            sent: None,
            request,
            waiting: None,
            since: None,
            attempt: 0,
            idempotent,
            done: false,
        }
    }
}

impl<K: Key> Future for RequestResponse<'_, K> {
    type Output = Result<Option<Payload>, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let core = this.core;
        loop {
            if let Some((response, picked)) = &mut this.sent {
                let result = ready!(response.poll_lent(cx, &this.request));
                let picked = *picked;
                let written = response.stream_id().is_some();
                this.sent = None;
                core.end_request(&picked, result.is_ok());
                let err = match result {
                    Ok(reply) => {
                        this.done = true;
                        return Poll::Ready(Ok(reply));
                    }
                    Err(err) => err,
                };
                let verdict = on_failure(core, &picked, &err, written, this.idempotent);
                if verdict != Verdict::Retry || this.attempt >= core.config.max_retries {
                    this.done = true;
                    return Poll::Ready(Err(err));
                }
                this.attempt += 1;
            }
            if this.done {
                return Poll::Ready(Err(BalanceError::Closed.into()));
            }
            if let Some(wait) = &mut this.waiting {
                let waited = ready!(wait.as_mut().poll(cx));
                this.waiting = None;
                if let Err(e) = waited {
                    this.done = true;
                    return Poll::Ready(Err(e));
                }
            }
            let sent = &mut this.sent;
            let begun = core.try_begin(Start::Request, |requester, picked| {
                // Built in place, under the pick's lock. The request stays
                // here, lent to each attempt, so that a retry needs no copy.
                *sent = Some((requester.request_response_lent(), picked));
            });
            if begun.is_ok() {
                this.since = None;
            } else {
                this.waiting = Some(wait_for_member(core, &mut this.since));
            }
        }
    }
}

/// Waits for a ready member, from when the request first waited (out of
/// line: the usual path finds one at once).
#[cold]
#[inline(never)]
fn wait_for_member<'a, K: Key>(
    core: &'a Core<K>,
    since: &mut Option<tokio::time::Instant>,
) -> BoxFuture<'a, Result<(), RequestError>> {
    let since = *since.get_or_insert_with(tokio::time::Instant::now);
    core.wait_ready(since).boxed()
}

impl<K: Key> Drop for RequestResponse<'_, K> {
    fn drop(&mut self) {
        // Dropped in flight: the request ends without a round trip (and
        // the response future, dropped next, sends CANCEL).
        if let Some((_, picked)) = &self.sent {
            let picked = *picked;
            let now = self.core.clock.now();
            self.core
                .on_picked(&picked, |slot| slot.cancel_request(&picked, now));
        }
    }
}

/// Open-stream accounting for one stream or channel.
struct StreamGuard<K: Key> {
    core: Arc<Core<K>>,
    picked: Picked,
    done: bool,
}

impl<K: Key> StreamGuard<K> {
    /// Takes over the stream counted by the pick.
    fn new(core: Arc<Core<K>>, picked: Picked) -> Self {
        Self {
            core,
            picked,
            done: false,
        }
    }

    fn finish(mut self, ok: bool) {
        self.done = true;
        let now = self.core.clock.now();
        self.core
            .on_picked(&self.picked, |slot| slot.end_stream(Some(now), ok));
    }
}

impl<K: Key> Drop for StreamGuard<K> {
    fn drop(&mut self) {
        if !self.done {
            self.core
                .on_picked(&self.picked, |slot| slot.end_stream(None, false));
        }
    }
}

impl<K: Key> Balancer<K> {
    /// Picks a ready member (waiting for one if there is none) and opens a
    /// fire-and-forget or metadata push (nothing counted) on its connection
    /// with `open`, under one lock.
    async fn begin<R>(
        &self,
        open: impl FnOnce(&Requester) -> R,
    ) -> Result<(Picked, R), RequestError> {
        let core = self.core();
        let mut open = move |requester: &Requester, picked| (picked, open(requester));
        let mut since = None;
        loop {
            match core.try_begin(Start::Nothing, open) {
                Ok(opened) => return Ok(opened),
                Err(back) => open = back,
            }
            let since = *since.get_or_insert_with(tokio::time::Instant::now);
            // Boxed: the waiting state (a timer among others) would
            // otherwise grow every request's future, and be copied with it.
            Box::pin(core.wait_ready(since)).await?;
        }
    }

    /// Request/response with per-call options: sent to one member, and
    /// again to another (at most `max_retries` times) when that is safe.
    pub fn request_response_with(
        &self,
        request: Payload,
        options: CallOptions,
    ) -> impl Future<Output = Result<Option<Payload>, RequestError>> + Send + '_ {
        RequestResponse::new(self.core(), request, options.idempotent)
    }

    /// Request/stream with per-call options. The stream picks its member
    /// when first polled; it is sent again elsewhere only before its first
    /// item (see [`CallOptions`]).
    pub fn request_stream_with(&self, request: Payload, options: CallOptions) -> PayloadStream {
        BalancedStream {
            core: self.core().clone(),
            options,
            request: Some(request),
            attempt: 0,
            since: None,
            state: StreamState::Idle,
        }
        .boxed()
    }

    /// Fire-and-forget: resolves once queued on a member's connection. A
    /// failure means it was not queued, so it is tried on another member.
    pub async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        let core = self.core();
        let max = core.config.max_retries;
        let mut request = request;
        let mut attempt = 0;
        loop {
            let spare = (attempt < max).then(|| request.clone());
            let (picked, sending) = self.begin(|r| r.fire_and_forget(request)).await?;
            match sending.await {
                Ok(()) => return Ok(()),
                Err(err) => match (on_failure(core, &picked, &err, false, false), spare) {
                    (Verdict::Retry, Some(spare)) => {
                        request = spare;
                        attempt += 1;
                    }
                    _ => return Err(err),
                },
            }
        }
    }

    /// Metadata push to one member (chosen like a request), retried
    /// elsewhere if it could not be queued.
    pub async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        let core = self.core();
        let max = core.config.max_retries;
        let mut attempt = 0;
        loop {
            let (picked, sending) = self.begin(|r| r.metadata_push(metadata.clone())).await?;
            match sending.await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    if on_failure(core, &picked, &err, false, false) == Verdict::Return
                        || attempt >= max
                    {
                        return Err(err);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Request/channel: picks one member for the whole channel. It is sent
    /// to another member only if it was never sent (its outbound items not
    /// yet touched); once sent, never.
    pub fn request_channel(
        &self,
        first: Payload,
        rest: impl Stream<Item = Payload> + Send + 'static,
    ) -> PayloadStream {
        self.channel(first, rest.map(Ok).boxed())
    }

    fn channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        BalancedChannel {
            core: self.core().clone(),
            first: Some(first),
            rest: Arc::new(Mutex::new(Some(rest))),
            attempt: 0,
            since: None,
            state: StreamState::Idle,
        }
        .boxed()
    }
}

#[async_trait]
impl<K: Key> RSocket for Balancer<K> {
    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        Self::fire_and_forget(self, request).await
    }

    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        self.request_response_with(request, self.defaults).await
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        self.request_stream_with(request, self.defaults)
    }

    /// The hints add to this view's defaults: an idempotent call (an RPC
    /// method marked so, for example) may be sent again after its
    /// connection died with it in flight.
    async fn request_response_hinted(
        &self,
        request: Payload,
        hints: CallHints,
    ) -> Result<Option<Payload>, RequestError> {
        self.request_response_with(request, self.defaults.with_hints(hints))
            .await
    }

    fn request_stream_hinted(&self, request: Payload, hints: CallHints) -> PayloadStream {
        self.request_stream_with(request, self.defaults.with_hints(hints))
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        self.channel(first, rest)
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        Self::metadata_push(self, metadata).await
    }
}

/// A balanced stream spends its life in `Running`, which holds the stream
/// by value: boxing it would add an allocation per stream and a pointer
/// chase per item to save bytes in states that last one poll.
#[allow(clippy::large_enum_variant)]
enum StreamState<K: Key> {
    /// Not yet sent (or to be sent again).
    Idle,
    /// Waiting for a ready member.
    Waiting(BoxFuture<'static, Result<(), RequestError>>),
    Running {
        inner: ResponseStream,
        guard: StreamGuard<K>,
        /// An item has arrived: no retry from here on.
        started: bool,
    },
    Done,
}

impl<K: Key> StreamState<K> {
    /// Opens the stream with `open` on a ready member (counted on it under
    /// the same lock), or waits for one. `Ready(Ok)` when the state moved
    /// on (to `Running`, to `Done` if `open` had nothing to send, or from
    /// `Idle` to `Waiting`, which is then to be polled); `since` is when
    /// waiting began.
    fn poll_begin(
        &mut self,
        core: &Arc<Core<K>>,
        since: &mut Option<tokio::time::Instant>,
        cx: &mut Context<'_>,
        open: impl FnOnce(&Requester) -> Option<ResponseStream>,
    ) -> Poll<Result<(), RequestError>> {
        if let Self::Waiting(fut) = self {
            if let Err(e) = ready!(fut.as_mut().poll(cx)) {
                *self = Self::Done;
                return Poll::Ready(Err(e));
            }
            *self = Self::Idle;
        }
        if !matches!(self, Self::Idle) {
            return Poll::Ready(Ok(()));
        }
        match core.try_begin(Start::Stream, |requester, picked| (picked, open(requester))) {
            Ok((picked, inner)) => {
                *since = None;
                // Counted by the pick; the guard takes over.
                let guard = StreamGuard::new(core.clone(), picked);
                *self = match inner {
                    Some(inner) => Self::Running {
                        inner,
                        guard,
                        started: false,
                    },
                    None => Self::Done,
                };
            }
            Err(_) => {
                let since = *since.get_or_insert_with(tokio::time::Instant::now);
                let core = core.clone();
                *self = Self::Waiting(async move { core.wait_ready(since).await }.boxed());
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A request/stream through the balancer.
struct BalancedStream<K: Key> {
    core: Arc<Core<K>>,
    options: CallOptions,
    /// Kept for a retry until the first item arrives.
    request: Option<Payload>,
    attempt: u32,
    /// When it began waiting for a ready member.
    since: Option<tokio::time::Instant>,
    state: StreamState<K>,
}

impl<K: Key> Stream for BalancedStream<K> {
    type Item = Result<Payload, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                StreamState::Done => return Poll::Ready(None),
                StreamState::Idle | StreamState::Waiting(_) => {
                    let keep = this.attempt < this.core.config.max_retries;
                    let request = &mut this.request;
                    let begun = this.state.poll_begin(&this.core, &mut this.since, cx, |r| {
                        let req = request.take()?;
                        if keep {
                            *request = Some(req.clone());
                        }
                        Some(r.request_stream(req))
                    });
                    if let Err(e) = ready!(begun) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                StreamState::Running {
                    inner,
                    guard,
                    started,
                } => match ready!(inner.poll_next_unpin(cx)) {
                    Some(Ok(item)) => {
                        if !*started {
                            *started = true;
                            this.request = None;
                            let p = guard.picked;
                            this.core.on_picked(&p, |slot| slot.note_success(&p));
                        }
                        return Poll::Ready(Some(Ok(item)));
                    }
                    Some(Err(err)) => {
                        let sent = inner.stream_id().is_some();
                        let retry = !*started
                            && on_failure(
                                &this.core,
                                &guard.picked,
                                &err,
                                sent,
                                this.options.idempotent,
                            ) == Verdict::Retry
                            && this.request.is_some();
                        let StreamState::Running { guard, .. } =
                            std::mem::replace(&mut this.state, StreamState::Idle)
                        else {
                            return Poll::Ready(None);
                        };
                        guard.finish(false);
                        if retry {
                            this.attempt += 1;
                            continue;
                        }
                        this.state = StreamState::Done;
                        return Poll::Ready(Some(Err(err)));
                    }
                    None => {
                        if let StreamState::Running { guard, .. } =
                            std::mem::replace(&mut this.state, StreamState::Done)
                        {
                            guard.finish(true);
                        }
                        return Poll::Ready(None);
                    }
                },
            }
        }
    }
}

/// The outbound half of a channel, held where it can be taken back if the
/// channel was never sent.
type Slot = Arc<Mutex<Option<PayloadStream>>>;

/// Hands the slot's stream to the connection on first poll.
struct SlotStream {
    slot: Slot,
    taken: Option<PayloadStream>,
}

impl Stream for SlotStream {
    type Item = Result<Payload, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.taken.is_none() {
            let taken = self
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match taken {
                Some(s) => self.taken = Some(s),
                None => return Poll::Ready(None),
            }
        }
        match self.taken.as_mut() {
            Some(s) => s.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

/// A request/channel through the balancer.
struct BalancedChannel<K: Key> {
    core: Arc<Core<K>>,
    first: Option<Payload>,
    rest: Slot,
    attempt: u32,
    /// When it began waiting for a ready member.
    since: Option<tokio::time::Instant>,
    state: StreamState<K>,
}

impl<K: Key> Stream for BalancedChannel<K> {
    type Item = Result<Payload, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                StreamState::Done => return Poll::Ready(None),
                StreamState::Idle | StreamState::Waiting(_) => {
                    let keep = this.attempt < this.core.config.max_retries;
                    let first = &mut this.first;
                    let slot = &this.rest;
                    let begun = this.state.poll_begin(&this.core, &mut this.since, cx, |r| {
                        let item = first.take()?;
                        if keep {
                            *first = Some(item.clone());
                        }
                        let rest = SlotStream {
                            slot: slot.clone(),
                            taken: None,
                        };
                        Some(r.request_channel_fallible(item, rest))
                    });
                    if let Err(e) = ready!(begun) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                StreamState::Running {
                    inner,
                    guard,
                    started,
                } => match ready!(inner.poll_next_unpin(cx)) {
                    Some(Ok(item)) => {
                        if !*started {
                            *started = true;
                            this.first = None;
                            let p = guard.picked;
                            this.core.on_picked(&p, |slot| slot.note_success(&p));
                        }
                        return Poll::Ready(Some(Ok(item)));
                    }
                    Some(Err(err)) => {
                        // Never sent means the outbound half is untouched:
                        // take it back for the next member.
                        let sent = inner.stream_id().is_some();
                        let retry = !*started
                            && on_failure(&this.core, &guard.picked, &err, sent, false)
                                == Verdict::Retry
                            && !sent
                            && this.first.is_some()
                            && this
                                .rest
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .is_some();
                        let StreamState::Running { guard, .. } =
                            std::mem::replace(&mut this.state, StreamState::Idle)
                        else {
                            return Poll::Ready(None);
                        };
                        guard.finish(false);
                        if retry {
                            this.attempt += 1;
                            continue;
                        }
                        this.state = StreamState::Done;
                        return Poll::Ready(Some(Err(err)));
                    }
                    None => {
                        if let StreamState::Running { guard, .. } =
                            std::mem::replace(&mut this.state, StreamState::Done)
                        {
                            guard.finish(true);
                        }
                        return Poll::Ready(None);
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rsocket_core::{ConnectionError, Initiator, StreamError};

    use super::*;

    #[test]
    fn retry_rules() {
        let closing = RequestError::ConnectionClosing {
            initiator: Initiator::Remote,
        };
        let died = RequestError::Connection(ConnectionError::ClosedByPeer);
        let app_reject = RequestError::Stream(StreamError::rejected("not allowed"));
        let app_error = RequestError::Stream(StreamError::application("boom"));
        assert_eq!(classify(&closing, false, false), Verdict::Retry);
        assert_eq!(classify(&died, false, false), Verdict::Retry);
        assert_eq!(classify(&died, true, false), Verdict::Return);
        assert_eq!(classify(&died, true, true), Verdict::Retry);
        assert_eq!(classify(&app_reject, true, true), Verdict::Return);
        assert_eq!(classify(&app_error, true, true), Verdict::Return);
        assert_eq!(
            classify(&RequestError::Cancelled, true, true),
            Verdict::Return
        );
    }
}
