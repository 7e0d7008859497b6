//! Requests through the balancer: picking, statistics, and retries.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use rsocket_core::{
    async_trait, CallHints, ErrorCode, Payload, PayloadStream, RSocket, RequestError,
    ResponseStream,
};
use tracing::debug;

use crate::balancer::{Balancer, Core};
use crate::member::{Member, Picked, Start};
use crate::Key;

/// The message rsocket-core's responder sends with `ERROR[REJECTED]` for a
/// request that reached it after it began a graceful close.
const DRAINING_REFUSAL: &str = "connection is shutting down";

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
/// * refused because the server is closing (`ConnectionClosing`, or the
///   engine's `REJECTED` for a request that crossed its CONNECTION_CLOSE):
///   always, the server did not process it;
/// * refused locally for want of a lease (`NoLease`, nothing was sent):
///   always, and the member stays in use (its availability, which follows
///   its lease, steers the next picks away from it);
/// * the connection died with the request in flight: only if idempotent;
/// * anything the responder answered (an application error, any other
///   `REJECTED`, a cancel): never.
fn classify(err: &RequestError, sent: bool, idempotent: bool) -> Verdict {
    match err {
        RequestError::ConnectionClosing { .. } | RequestError::NoLease(_) => Verdict::Retry,
        RequestError::Stream(e)
            if e.code == ErrorCode::REJECTED && e.message == DRAINING_REFUSAL =>
        {
            Verdict::Retry
        }
        RequestError::Connection(_) if !sent || idempotent => Verdict::Retry,
        _ => Verdict::Return,
    }
}

/// Records a failed attempt on its member and says whether to retry.
fn on_failure<K: Key>(
    picked: &Picked<K>,
    err: &RequestError,
    sent: bool,
    idempotent: bool,
) -> Verdict {
    let verdict = classify(err, sent, idempotent);
    if verdict == Verdict::Retry && !matches!(err, RequestError::NoLease(_)) {
        picked
            .member
            .stop_using(picked.generation, &err.to_string());
        debug!(key = ?picked.member.key, error = %err, sent, "retrying on another member");
    }
    verdict
}

/// Pending-request accounting for one request/response; ends the request
/// in the statistics when dropped (a cancel records no latency).
struct RequestGuard<K: Key> {
    member: Arc<Member<K>>,
    started: i64,
    generation: u64,
    done: bool,
}

impl<K: Key> RequestGuard<K> {
    fn new(picked: &Picked<K>) -> Self {
        Self {
            member: picked.member.clone(),
            started: picked.started,
            generation: picked.generation,
            done: false,
        }
    }

    fn finish(mut self, ok: bool) {
        self.done = true;
        self.member.end_request(self.started, ok, self.generation);
    }
}

impl<K: Key> Drop for RequestGuard<K> {
    fn drop(&mut self) {
        if !self.done {
            let now = self.member.now();
            self.member.lock().stats.stop_request(now, self.started);
        }
    }
}

/// Open-stream accounting for one stream or channel.
struct StreamGuard<K: Key> {
    member: Arc<Member<K>>,
}

impl<K: Key> StreamGuard<K> {
    /// Takes over the stream counted by the pick.
    fn new(member: &Arc<Member<K>>) -> Self {
        Self {
            member: member.clone(),
        }
    }

    fn finish(self, ok: bool) {
        let now = self.member.now();
        self.member
            .lock()
            .stats
            .update_availability(now, if ok { 1.0 } else { 0.0 });
    }
}

impl<K: Key> Drop for StreamGuard<K> {
    fn drop(&mut self) {
        self.member.lock().stats.stop_stream();
    }
}

impl<K: Key> Balancer<K> {
    async fn picked(&self, start: Start) -> Result<Picked<K>, RequestError> {
        match self.core.try_pick(start) {
            Some(p) => Ok(p),
            // Boxed: the waiting state (a timer among others) would
            // otherwise grow every request's future, and be copied with it.
            None => Box::pin(self.core.pick(start)).await,
        }
    }

    /// Request/response with per-call options: sent to one member, and
    /// again to another (at most `max_retries` times) when that is safe.
    pub async fn request_response_with(
        &self,
        request: Payload,
        options: CallOptions,
    ) -> Result<Option<Payload>, RequestError> {
        let max = self.core.config.max_retries;
        let mut request = request;
        let mut attempt = 0;
        loop {
            let picked = self.picked(Start::Request(self.core.clock.now())).await?;
            let spare = (attempt < max).then(|| request.clone());
            let guard = RequestGuard::new(&picked);
            let mut response = picked.requester.request_response(request);
            match (&mut response).await {
                Ok(reply) => {
                    guard.finish(true);
                    return Ok(reply);
                }
                Err(err) => {
                    guard.finish(false);
                    let sent = response.stream_id().is_some();
                    match (on_failure(&picked, &err, sent, options.idempotent), spare) {
                        (Verdict::Retry, Some(spare)) => {
                            request = spare;
                            attempt += 1;
                        }
                        _ => return Err(err),
                    }
                }
            }
        }
    }

    /// Request/stream with per-call options. The stream picks its member
    /// when first polled; it is sent again elsewhere only before its first
    /// item (see [`CallOptions`]).
    pub fn request_stream_with(&self, request: Payload, options: CallOptions) -> PayloadStream {
        BalancedStream {
            core: self.core.clone(),
            options,
            request: Some(request),
            attempt: 0,
            state: StreamState::Idle,
        }
        .boxed()
    }

    /// Fire-and-forget: resolves once queued on a member's connection. A
    /// failure means it was not queued, so it is tried on another member.
    pub async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        let max = self.core.config.max_retries;
        let mut request = request;
        let mut attempt = 0;
        loop {
            let picked = self.picked(Start::Nothing).await?;
            let spare = (attempt < max).then(|| request.clone());
            match picked.requester.fire_and_forget(request).await {
                Ok(()) => return Ok(()),
                Err(err) => match (on_failure(&picked, &err, false, false), spare) {
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
        let max = self.core.config.max_retries;
        let mut attempt = 0;
        loop {
            let picked = self.picked(Start::Nothing).await?;
            match picked.requester.metadata_push(metadata.clone()).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    if on_failure(&picked, &err, false, false) == Verdict::Return || attempt >= max
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
            core: self.core.clone(),
            first: Some(first),
            rest: Arc::new(Mutex::new(Some(rest))),
            attempt: 0,
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

enum StreamState<K: Key> {
    /// Not yet sent (or to be sent again).
    Idle,
    /// Waiting for a ready member.
    Waiting(BoxFuture<'static, Result<Picked<K>, RequestError>>),
    Running {
        picked: Picked<K>,
        inner: ResponseStream,
        guard: StreamGuard<K>,
        /// An item has arrived: no retry from here on.
        started: bool,
    },
    Done,
}

impl<K: Key> StreamState<K> {
    /// Picks without waiting if it can, else starts waiting.
    fn poll_pick(
        &mut self,
        core: &Arc<Core<K>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Picked<K>, RequestError>> {
        if let Self::Idle = self {
            if let Some(p) = core.try_pick(Start::Stream) {
                return Poll::Ready(Ok(p));
            }
            let core = core.clone();
            *self = Self::Waiting(async move { core.pick(Start::Stream).await }.boxed());
        }
        match self {
            Self::Waiting(fut) => {
                let r = ready!(fut.as_mut().poll(cx));
                *self = Self::Done;
                Poll::Ready(r)
            }
            _ => Poll::Ready(Err(crate::BalanceError::Closed.into())),
        }
    }
}

/// A request/stream through the balancer.
struct BalancedStream<K: Key> {
    core: Arc<Core<K>>,
    options: CallOptions,
    /// Kept for a retry until the first item arrives.
    request: Option<Payload>,
    attempt: u32,
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
                    let picked = match ready!(this.state.poll_pick(&this.core, cx)) {
                        Ok(p) => p,
                        Err(e) => {
                            this.state = StreamState::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    };
                    let guard = StreamGuard::new(&picked.member);
                    let Some(request) = this.request.take() else {
                        this.state = StreamState::Done;
                        return Poll::Ready(None);
                    };
                    if this.attempt < this.core.config.max_retries {
                        this.request = Some(request.clone());
                    }
                    let inner = picked.requester.request_stream(request);
                    this.state = StreamState::Running {
                        picked,
                        inner,
                        guard,
                        started: false,
                    };
                }
                StreamState::Running {
                    picked,
                    inner,
                    started,
                    ..
                } => match ready!(inner.poll_next_unpin(cx)) {
                    Some(Ok(item)) => {
                        if !*started {
                            *started = true;
                            this.request = None;
                            picked.member.note_success(picked.generation);
                        }
                        return Poll::Ready(Some(Ok(item)));
                    }
                    Some(Err(err)) => {
                        let sent = inner.stream_id().is_some();
                        let retry = !*started
                            && on_failure(picked, &err, sent, this.options.idempotent)
                                == Verdict::Retry
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
                    let picked = match ready!(this.state.poll_pick(&this.core, cx)) {
                        Ok(p) => p,
                        Err(e) => {
                            this.state = StreamState::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    };
                    let guard = StreamGuard::new(&picked.member);
                    let Some(first) = this.first.take() else {
                        this.state = StreamState::Done;
                        return Poll::Ready(None);
                    };
                    if this.attempt < this.core.config.max_retries {
                        this.first = Some(first.clone());
                    }
                    let rest = SlotStream {
                        slot: this.rest.clone(),
                        taken: None,
                    };
                    let inner = picked.requester.request_channel_fallible(first, rest);
                    this.state = StreamState::Running {
                        picked,
                        inner,
                        guard,
                        started: false,
                    };
                }
                StreamState::Running {
                    picked,
                    inner,
                    started,
                    ..
                } => match ready!(inner.poll_next_unpin(cx)) {
                    Some(Ok(item)) => {
                        if !*started {
                            *started = true;
                            this.first = None;
                            picked.member.note_success(picked.generation);
                        }
                        return Poll::Ready(Some(Ok(item)));
                    }
                    Some(Err(err)) => {
                        // Never sent means the outbound half is untouched:
                        // take it back for the next member.
                        let sent = inner.stream_id().is_some();
                        let retry = !*started
                            && on_failure(picked, &err, sent, false) == Verdict::Retry
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
        let drain = RequestError::Stream(StreamError::rejected(DRAINING_REFUSAL));
        let app_reject = RequestError::Stream(StreamError::rejected("not allowed"));
        let app_error = RequestError::Stream(StreamError::application("boom"));
        assert_eq!(classify(&closing, false, false), Verdict::Retry);
        assert_eq!(classify(&drain, true, false), Verdict::Retry);
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
