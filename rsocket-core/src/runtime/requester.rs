//! The requester handle and the futures and streams it returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use std::num::NonZeroU32;
use std::time::Duration;

use super::shared::Shared;
use super::stream::{poll_open, Inbound, LeaseGate};
use crate::error::{ConnectionError, RequestError};
use crate::frame::{ErrorCode, StreamId};
use crate::lease::{Lease, LeaseState};
use crate::proto::Interaction;
use crate::rsocket::{async_trait, PayloadStream, RSocket};
use crate::Payload;

/// Sends requests over one connection. Cheap to clone; every clone talks to
/// the same connection.
#[derive(Clone)]
pub struct Requester {
    shared: Arc<Shared>,
    // Both 4 bytes: balancer state embeds requesters and their streams.
    prefetch: Option<NonZeroU32>,
    /// `with_lease_wait`, in whole milliseconds.
    lease_wait_ms: u32,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("prefetch", &self.prefetch)
            .field("lease_wait_ms", &self.lease_wait_ms)
            .finish_non_exhaustive()
    }
}

impl Requester {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            lease_wait_ms: wait_ms(shared.lease_wait),
            shared,
            prefetch: None,
        }
    }

    /// A handle whose request/stream and request/channel calls use `n` as
    /// the credit window (initial request-n; REQUEST_N when half is
    /// consumed) instead of `Config::default_prefetch`. `u32::MAX` or
    /// 2^31 − 1 requests everything at once; 0 is taken as 1.
    pub fn with_prefetch(&self, n: u32) -> Self {
        Self {
            shared: self.shared.clone(),
            prefetch: NonZeroU32::new(n.clamp(1, crate::frame::MAX_U31)),
            lease_wait_ms: self.lease_wait_ms,
        }
    }

    /// A handle whose requests, when leasing is on and the peer's lease
    /// allows none, wait up to `wait` for the next LEASE before failing
    /// with [`RequestError::NoLease`] (zero: fail at once; whole
    /// milliseconds, rounded up). The default is `LeaseConfig::wait`.
    pub fn with_lease_wait(&self, wait: Duration) -> Self {
        Self {
            lease_wait_ms: wait_ms(wait),
            ..self.clone()
        }
    }

    /// What is left of the lease the peer granted this side's requester
    /// (see [`crate::lease`]); `None` when leasing is off on this
    /// connection.
    pub fn lease(&self) -> Option<LeaseState> {
        if !self.shared.leasing {
            // Asked for every candidate of every pick by the load balancer:
            // no lock and no clock reading when there is nothing to read.
            return None;
        }
        self.shared.lock().lease_state(super::tokio_now())
    }

    /// Sends a LEASE to the peer now, replacing this side's previous grant
    /// (in addition to what the lease policy sends). False when leasing is
    /// off on this connection or it has ended, or when the LEASE frame
    /// (with its metadata) would exceed `Config::max_frame_len`; then
    /// nothing is sent and the previous grant stands.
    pub fn send_lease(&self, lease: &Lease) -> bool {
        self.shared.lock().grant_lease(lease, super::tokio_now())
    }

    /// The inbound side of a new request, with this handle's lease wait.
    fn inbound(&self, interaction: Interaction, request: Payload, window: u32) -> Inbound {
        let mut inbound = Inbound::new(self.shared.clone(), interaction, request, window);
        inbound.gate = self.lease_gate();
        // A window set with `with_prefetch` is fixed; the default one grows
        // while items are small.
        inbound.adaptive = self.prefetch.is_none();
        inbound
    }

    fn window(&self) -> u32 {
        self.prefetch
            .map_or(self.shared.default_prefetch, NonZeroU32::get)
    }

    fn lease_wait(&self) -> Duration {
        Duration::from_millis(u64::from(self.lease_wait_ms))
    }

    /// The lease gate of a new request: without a lease wait (always so
    /// without leasing), one that fails at once, with no `Duration` to
    /// compute.
    #[inline]
    fn lease_gate(&self) -> LeaseGate {
        if self.lease_wait_ms == 0 {
            LeaseGate::new(Duration::ZERO)
        } else {
            LeaseGate::new(self.lease_wait())
        }
    }

    /// Fire-and-forget: resolves once the frame is queued for sending (not
    /// when it is delivered). Waits while the outbound queue is full.
    pub fn fire_and_forget(&self, request: Payload) -> OpenFuture {
        OpenFuture {
            shared: self.shared.clone(),
            request: Some(request),
            gate: self.lease_gate(),
        }
    }

    /// Request/response. Resolves to `None` when the responder completes
    /// without a payload. Dropping the future before it resolves sends
    /// CANCEL.
    pub fn request_response(&self, request: Payload) -> ResponseFuture {
        ResponseFuture {
            shared: self.shared.clone(),
            request: Some(request),
            id: None,
            done: false,
            released: false,
            gate: self.lease_gate(),
        }
    }

    /// Request/response whose request the caller keeps, to send it again
    /// elsewhere if this attempt fails (what the load balancer does):
    /// poll the future with [`ResponseFuture::poll_lent`], which copies the
    /// request into the connection's write buffer when it is sent (and
    /// clones it only where it has to be kept: a request sent in
    /// fragments, or with resumption on). Awaited as a plain future, it
    /// sends an empty request.
    pub fn request_response_lent(&self) -> ResponseFuture {
        ResponseFuture {
            shared: self.shared.clone(),
            request: None,
            id: None,
            done: false,
            released: false,
            gate: self.lease_gate(),
        }
    }

    /// Request/stream. The request is sent on the first poll; polling
    /// grants credit, dropping early sends CANCEL.
    pub fn request_stream(&self, request: Payload) -> ResponseStream {
        let window = self.window();
        ResponseStream {
            inner: self.inbound(Interaction::RequestStream, request, window),
        }
    }

    /// Request/stream with explicit credit, like Reactive Streams'
    /// `request(n)`: REQUEST_STREAM carries `initial` (at least 1) and more
    /// is granted only by [`ResponseStream::request`]. Nothing is granted as
    /// items are consumed, so at most the credit requested is ever buffered.
    pub fn request_stream_with_credit(&self, request: Payload, initial: u32) -> ResponseStream {
        let mut inner = self.inbound(
            Interaction::RequestStream,
            request,
            initial.clamp(1, crate::frame::MAX_U31),
        );
        inner.manual = true;
        ResponseStream { inner }
    }

    /// Request/channel: `first` goes in REQUEST_CHANNEL, `rest` is polled
    /// only as the responder grants credit, and its end sends COMPLETE. The
    /// returned stream is the responder's half; dropping it cancels the
    /// whole channel.
    pub fn request_channel<S>(&self, first: Payload, rest: S) -> ResponseStream
    where
        S: Stream<Item = Payload> + Send + 'static,
    {
        self.request_channel_fallible(first, rest.map(Ok))
    }

    /// Request/channel whose outbound items may fail: an `Err` item sends
    /// ERROR on the channel (as [`StreamError`](crate::StreamError) when it
    /// is one, `APPLICATION_ERROR` otherwise) and ends it.
    pub fn request_channel_fallible<S>(&self, first: Payload, rest: S) -> ResponseStream
    where
        S: Stream<Item = Result<Payload, RequestError>> + Send + 'static,
    {
        self.open_channel(first, rest.boxed())
    }

    fn open_channel(&self, first: Payload, rest: PayloadStream) -> ResponseStream {
        let window = self.window();
        let mut inner = self.inbound(Interaction::RequestChannel, first, window);
        inner.outbound = Some(rest);
        ResponseStream { inner }
    }

    /// Metadata push on stream 0: resolves once the frame is queued,
    /// waiting while the outbound queue is over
    /// `Config::max_outbound_queue_bytes`, like fire-and-forget. A
    /// METADATA_PUSH cannot be fragmented: one longer than
    /// `Config::max_frame_len` fails with `RequestError::FrameTooLarge`.
    pub fn metadata_push(&self, metadata: Bytes) -> MetadataPushFuture {
        MetadataPushFuture {
            shared: self.shared.clone(),
            metadata: Some(metadata),
        }
    }

    /// Closes gracefully, as the spec's `CONNECTION_CLOSE` means: sends
    /// `ERROR[CONNECTION_CLOSE]` now, refuses new requests (locally with
    /// [`RequestError::ConnectionClosing`]; the peer does the same on its
    /// side), lets open requests and streams finish, then closes. Streams
    /// still open after `Config::close_timeout` are failed and the
    /// connection is closed with `ERROR[CONNECTION_ERROR]`. Await
    /// [`closed`](Self::closed) to know when it is done.
    pub fn close(&self) {
        let timeout = self.shared.close_timeout;
        self.start_drain(timeout, "closed by the application");
    }

    /// Closes at once: `ERROR[CONNECTION_ERROR]` to the peer, and every
    /// pending request on both sides fails.
    pub fn abort(&self) {
        self.close_with(ErrorCode::CONNECTION_ERROR, "closed by the application");
    }

    /// Closes with a given stream-0 error code.
    pub(crate) fn close_with(&self, code: ErrorCode, message: &str) {
        self.shared
            .lock()
            .close(code, message, ConnectionError::LocallyClosed);
    }

    /// Begins a graceful close with the given drain timeout.
    pub(crate) fn start_drain(&self, timeout: Duration, message: &str) {
        self.shared
            .lock()
            .start_drain(super::tokio_now(), timeout, message);
    }

    /// Resolves when the connection has ended, with the reason (its
    /// [`initiator`](ConnectionError::initiator) says who caused it), once
    /// the connection's driver has written what was queued before the end
    /// (fire-and-forgets, metadata pushes, the closing ERROR frame) and
    /// closed the transport, or was dropped. Resolves at once if that has
    /// happened. [`is_closed`](Self::is_closed) turns true as soon as the
    /// connection ends.
    pub async fn closed(&self) -> ConnectionError {
        loop {
            let notified = self.shared.closed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self
                .shared
                .driver_done
                .load(std::sync::atomic::Ordering::Acquire)
            {
                if let Some(e) = self.shared.lock().closed() {
                    return e.clone();
                }
            }
            notified.await;
        }
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed().is_some()
    }

    /// Why the connection ended, or `None` while it is open.
    pub fn closed_reason(&self) -> Option<ConnectionError> {
        self.shared.lock().closed().cloned()
    }

    /// True once the peer has begun a graceful close (its
    /// `ERROR[CONNECTION_CLOSE]` was received), and ever after, also once
    /// the connection has ended. Frames are handled in order, so a request
    /// the peer rejects after its close is seen with this already true: a
    /// load balancer can tell such a refusal (the request was not
    /// processed) from any other.
    pub fn peer_closing(&self) -> bool {
        self.shared.lock().peer_closing()
    }

    /// Takes new requests: not closing gracefully (either side) and not
    /// ended.
    pub(crate) fn takes_requests(&self) -> bool {
        self.shared.lock().is_open()
    }

    /// Number of streams currently open on the connection.
    pub fn open_streams(&self) -> usize {
        self.shared.lock().stream_count()
    }

    /// The connection's engine counters now (see [`crate::stats`]).
    pub fn stats(&self) -> crate::stats::ConnectionStats {
        self.shared.lock().stats()
    }
}

#[async_trait]
impl RSocket for Requester {
    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        Self::fire_and_forget(self, request).await
    }

    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        Self::request_response(self, request).await
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        Self::request_stream(self, request).boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        self.open_channel(first, rest).boxed()
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        Self::metadata_push(self, metadata).await
    }
}

/// Future of [`Requester::metadata_push`].
#[must_use = "futures do nothing unless polled"]
pub struct MetadataPushFuture {
    shared: Arc<Shared>,
    metadata: Option<Bytes>,
}

impl std::fmt::Debug for MetadataPushFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataPushFuture").finish_non_exhaustive()
    }
}

impl Future for MetadataPushFuture {
    type Output = Result<(), RequestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.shared
            .lock()
            .poll_metadata_push(cx, &mut this.metadata)
    }
}

/// Future of [`Requester::fire_and_forget`].
#[must_use = "futures do nothing unless polled"]
pub struct OpenFuture {
    shared: Arc<Shared>,
    request: Option<Payload>,
    gate: LeaseGate,
}

impl std::fmt::Debug for OpenFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFuture").finish_non_exhaustive()
    }
}

impl Future for OpenFuture {
    type Output = Result<(), RequestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.request.is_none() {
            return Poll::Ready(Ok(()));
        }
        if !this.shared.leasing {
            // Without leasing nothing waits for a lease: room, the id and
            // the frame in one call.
            let mut conn = this.shared.lock();
            let now = conn.lease_now(super::tokio_now);
            return conn.poll_fire_and_forget(cx, &mut this.request, now);
        }
        let Some(request) = this.request.take() else {
            return Poll::Ready(Ok(()));
        };
        let mut conn = this.shared.lock();
        let ready = match conn.poll_open_ready(cx) {
            Poll::Ready(Ok(())) => this.gate.poll(&mut conn, cx),
            other => other,
        };
        match ready {
            Poll::Ready(Ok(())) => {
                let now = conn.lease_now(super::tokio_now);
                let r = conn
                    .open(Interaction::FireAndForget, request, 1, false, false, now)
                    .map(|_| ());
                Poll::Ready(r)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                drop(conn);
                this.request = Some(request);
                Poll::Pending
            }
        }
    }
}

/// A wait bound in whole milliseconds, rounded up (at most about 49
/// days).
fn wait_ms(d: Duration) -> u32 {
    u32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

/// Future of [`Requester::request_response`].
///
/// Kept small (it is moved into whatever awaits it): only what opening the
/// request and taking its one answer need.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    shared: Arc<Shared>,
    /// The request, until it is opened on the first poll.
    request: Option<Payload>,
    id: Option<StreamId>,
    /// Resolved; polled again, it resolves to `Ok(None)`.
    done: bool,
    /// The stream's inbound half is no longer held (the answer or the end
    /// was delivered): nothing to release on drop.
    released: bool,
    gate: LeaseGate,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("stream_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ResponseFuture {
    /// The stream id, once the request has been queued for sending. A
    /// request that failed while this is still `None` never reached the
    /// connection, so it is safe to send again elsewhere.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.id
    }
}

impl ResponseFuture {
    /// Polls a future of [`Requester::request_response_lent`], with the
    /// request it sends (the same one at every poll). For a future that
    /// holds its own request, `request` is not used.
    pub fn poll_lent(
        &mut self,
        cx: &mut Context<'_>,
        request: &Payload,
    ) -> Poll<Result<Option<Payload>, RequestError>> {
        self.poll_with(cx, Some(request))
    }

    #[inline]
    fn poll_with(
        &mut self,
        cx: &mut Context<'_>,
        lent: Option<&Payload>,
    ) -> Poll<Result<Option<Payload>, RequestError>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        let mut conn = self.shared.lock();
        let id = match self.id {
            Some(id) => id,
            None if !conn.lease_enabled() => {
                // Opened and registered for the answer in one call: the
                // answer cannot be there yet.
                let lent = if self.request.is_some() { None } else { lent };
                return match conn.poll_request_response(cx, &mut self.request, lent) {
                    Poll::Ready(Ok(id)) => {
                        self.id = Some(id);
                        Poll::Pending
                    }
                    Poll::Ready(Err(e)) => {
                        self.done = true;
                        Poll::Ready(Err(e))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            None => {
                let lent = if self.request.is_some() { None } else { lent };
                let opened = poll_open(
                    &mut conn,
                    cx,
                    &mut self.gate,
                    &mut self.request,
                    lent,
                    Interaction::RequestResponse,
                    1,
                    false,
                    false,
                );
                match opened {
                    Poll::Ready(Ok(id)) => {
                        self.id = Some(id);
                        id
                    }
                    Poll::Ready(Err(e)) => {
                        self.done = true;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        let r = conn.poll_response(id, cx);
        drop(conn);
        let out = match r {
            Poll::Ready(Some(Ok(p))) => Ok(Some(p)),
            Poll::Ready(Some(Err(e))) => Err(e),
            Poll::Ready(None) => Ok(None),
            Poll::Pending => return Poll::Pending,
        };
        // Every answer released the half (see `Connection::recv_response`).
        self.done = true;
        self.released = true;
        Poll::Ready(out)
    }
}

impl Future for ResponseFuture {
    type Output = Result<Option<Payload>, RequestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_with(cx, None)
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if let (Some(id), false) = (self.id, self.released) {
            self.shared.lock().release_recv(id);
        }
    }
}

/// Stream of [`Requester::request_stream`] and
/// [`Requester::request_channel`]: credit-aware, cancels on drop.
#[must_use = "streams do nothing unless polled"]
pub struct ResponseStream {
    inner: Inbound,
}

impl ResponseStream {
    /// The stream id, once the request has been sent.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.inner.id
    }
}

impl ResponseStream {
    /// Grants the responder `n` more items (REQUEST_N). Meant for streams
    /// from [`Requester::request_stream_with_credit`]; on other streams it
    /// adds to the automatic window. Before the first poll it is added to
    /// the initial request.
    pub fn request(&mut self, n: u32) {
        if n == 0 || self.inner.done {
            return;
        }
        match self.inner.id {
            Some(id) => self.inner.shared.lock().request_credit(id, n),
            None => {
                self.inner.extra_credit = self.inner.extra_credit.saturating_add(n);
            }
        }
    }
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("stream_id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Stream for ResponseStream {
    type Item = Result<Payload, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_waits_are_whole_milliseconds_rounded_up() {
        assert_eq!(wait_ms(Duration::ZERO), 0);
        assert_eq!(wait_ms(Duration::from_nanos(1)), 1);
        assert_eq!(wait_ms(Duration::from_micros(1_900)), 2);
        assert_eq!(wait_ms(Duration::from_millis(5)), 5);
        assert_eq!(wait_ms(Duration::from_secs(100 * 86_400)), u32::MAX);
    }
}
