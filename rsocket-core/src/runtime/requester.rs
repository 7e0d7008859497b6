//! The requester handle and the futures and streams it returns.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use std::num::NonZeroU32;
use std::time::Duration;

use super::driver::Shared;
use super::responder::Pump;
use crate::error::{ConnectionError, RequestError};
use crate::frame::{ErrorCode, StreamId};
use crate::lease::{Lease, LeaseState};
use crate::proto::Connection;
use crate::proto::Interaction;
use crate::rsocket::{async_trait, PayloadStream, RSocket};
use crate::Payload;

/// Items moved from the state machine to a consumer per lock.
const RECV_BATCH: usize = 64;

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
    /// 2^31 − 1 requests everything at once.
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
        self.shared.lock().lease_state(super::tokio_now())
    }

    /// Sends a LEASE to the peer now, replacing this side's previous grant
    /// (in addition to what the lease policy sends). False when leasing is
    /// off on this connection or it has ended.
    pub fn send_lease(&self, lease: &Lease) -> bool {
        self.shared.lock().grant_lease(lease, super::tokio_now())
    }

    /// The inbound side of a new request, with this handle's lease wait.
    fn inbound(&self, interaction: Interaction, request: Payload, window: u32) -> Inbound {
        let mut inbound = Inbound::new(self.shared.clone(), interaction, request, window);
        inbound.gate = LeaseGate::new(self.lease_wait());
        inbound
    }

    fn window(&self) -> u32 {
        self.prefetch
            .map_or(self.shared.default_prefetch, NonZeroU32::get)
    }

    fn lease_wait(&self) -> Duration {
        Duration::from_millis(u64::from(self.lease_wait_ms))
    }

    /// Fire-and-forget: resolves once the frame is queued for sending (not
    /// when it is delivered). Waits while the outbound queue is full.
    pub fn fire_and_forget(&self, request: Payload) -> OpenFuture {
        OpenFuture {
            shared: self.shared.clone(),
            request: Some(request),
            gate: LeaseGate::new(self.lease_wait()),
        }
    }

    /// Request/response. Resolves to `None` when the responder completes
    /// without a payload. Dropping the future before it resolves sends
    /// CANCEL.
    pub fn request_response(&self, request: Payload) -> ResponseFuture {
        ResponseFuture {
            inner: self.inbound(Interaction::RequestResponse, request, 1),
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
        inner.threshold = 0;
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
    /// `Config::max_outbound_queue_bytes`, like fire-and-forget.
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
        let Some(request) = self.request.take() else {
            return Poll::Ready(Ok(()));
        };
        let this = &mut *self;
        let mut conn = this.shared.lock();
        let ready = match conn.poll_open_ready(cx) {
            Poll::Ready(Ok(())) => this.gate.poll(&mut conn, cx),
            other => other,
        };
        match ready {
            Poll::Ready(Ok(())) => {
                let now = conn.lease_now(super::tokio_now);
                let r = conn
                    .open(Interaction::FireAndForget, request, 1, false, now)
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

/// The inbound side of a request this connection opened: opens lazily on
/// first poll, then pulls items from the state machine.
struct Inbound {
    shared: Arc<Shared>,
    interaction: Interaction,
    request: Option<Payload>,
    window: u32,
    id: Option<StreamId>,
    outbound: Option<PayloadStream>,
    manual: bool,
    /// Credit requested before the stream was opened.
    extra_credit: u32,
    /// Items taken from the state machine in one lock, not yet handed out.
    local: VecDeque<Payload>,
    /// Items handed out and not yet reported to the state machine.
    unreported: u32,
    /// Items handed out since credit was last replenished, and the count
    /// at which the state machine replenishes (half the window; 0: never).
    /// Mirrors the state machine so that crossing it is reported at once.
    since_grant: u32,
    threshold: u32,
    done: bool,
    gate: LeaseGate,
}

impl Inbound {
    fn new(shared: Arc<Shared>, interaction: Interaction, request: Payload, window: u32) -> Self {
        let shared_lease_wait = shared.lease_wait;
        Self {
            shared,
            interaction,
            request: Some(request),
            window,
            id: None,
            outbound: None,
            manual: false,
            extra_credit: 0,
            local: VecDeque::new(),
            unreported: 0,
            since_grant: 0,
            threshold: if interaction == Interaction::RequestResponse
                || window >= crate::frame::MAX_U31
            {
                0
            } else {
                (window / 2).max(1)
            },
            done: false,
            gate: LeaseGate::new(shared_lease_wait),
        }
    }

    /// Counts an item handed to the user; reports consumption as soon as it
    /// earns the peer more credit.
    fn note_consumed(&mut self) {
        self.unreported += 1;
        if self.threshold == 0 {
            return;
        }
        self.since_grant += 1;
        if self.since_grant >= self.threshold {
            self.since_grant = 0;
            if let Some(id) = self.id {
                let n = std::mem::take(&mut self.unreported);
                self.shared.lock().report_consumed(id, n);
            }
        }
    }

    /// The inbound half of a channel this connection is responding to.
    fn responder_channel(shared: Arc<Shared>, id: StreamId) -> Self {
        let window = shared.default_prefetch;
        let mut inbound = Self::new(
            shared,
            Interaction::RequestChannel,
            Payload::default(),
            window,
        );
        inbound.request = None;
        inbound.id = Some(id);
        inbound
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Payload, RequestError>>> {
        if let Some(p) = self.local.pop_front() {
            self.note_consumed();
            return Poll::Ready(Some(Ok(p)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let mut conn = self.shared.lock();
        let id = match self.id {
            Some(id) => id,
            None => {
                let ready = match conn.poll_open_ready(cx) {
                    Poll::Ready(Ok(())) => self.gate.poll(&mut conn, cx),
                    other => other,
                };
                match ready {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => return Poll::Pending,
                }
                let request = self.request.take().unwrap_or_default();
                let now = conn.lease_now(super::tokio_now);
                match conn.open(self.interaction, request, self.window, self.manual, now) {
                    Ok(id) => {
                        self.id = Some(id);
                        if self.extra_credit > 0 {
                            conn.request_credit(id, std::mem::take(&mut self.extra_credit));
                        }
                        if let Some(rest) = self.outbound.take() {
                            drop(conn);
                            Pump::spawn(
                                self.shared.clone(),
                                id,
                                rest,
                                Interaction::RequestChannel,
                                true,
                            );
                            conn = self.shared.lock();
                        }
                        id
                    }
                    Err(e) => {
                        self.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        };
        let consumed = std::mem::take(&mut self.unreported);
        match conn.poll_recv(id, cx, consumed, RECV_BATCH, &mut self.local) {
            Poll::Ready(Some(Ok(p))) => {
                drop(conn);
                self.note_consumed();
                Poll::Ready(Some(Ok(p)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.lock().release_recv(id);
        }
    }
}

/// A wait bound in whole milliseconds (a sub-millisecond wait rounds up
/// to 1 ms; at most about 49 days).
fn wait_ms(d: Duration) -> u32 {
    let ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    if ms == 0 && !d.is_zero() {
        1
    } else {
        ms
    }
}

/// Holds a request back while leasing allows none: fails at once, or waits
/// up to a bound for the next LEASE. One pointer wide: the waiting state is
/// allocated only for handles that wait.
struct LeaseGate {
    wait: Option<Box<LeaseWait>>,
}

struct LeaseWait {
    bound: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LeaseGate {
    fn new(wait: Duration) -> Self {
        Self {
            wait: (!wait.is_zero()).then(|| {
                Box::new(LeaseWait {
                    bound: wait,
                    deadline: None,
                })
            }),
        }
    }

    fn poll(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), RequestError>> {
        if !conn.lease_enabled() {
            // No clock reading on connections without leasing.
            return Poll::Ready(Ok(()));
        }
        let now = super::tokio_now();
        let Some(w) = self.wait.as_mut() else {
            return conn.poll_lease(cx, now, false);
        };
        let expired = w.deadline.as_ref().is_some_and(|d| d.is_elapsed());
        match conn.poll_lease(cx, now, !expired) {
            Poll::Pending => {
                let bound = w.bound;
                let deadline = w
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
                if deadline.as_mut().poll(cx).is_ready() {
                    conn.poll_lease(cx, now, false)
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }
}

/// Future of [`Requester::request_response`].
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    inner: Inbound,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("stream_id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl ResponseFuture {
    /// The stream id, once the request has been queued for sending. A
    /// request that failed while this is still `None` never reached the
    /// connection, so it is safe to send again elsewhere.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.inner.id
    }
}

impl Future for ResponseFuture {
    type Output = Result<Option<Payload>, RequestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(p))) => {
                self.inner.done = true;
                Poll::Ready(Ok(Some(p)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(None) => Poll::Ready(Ok(None)),
            Poll::Pending => Poll::Pending,
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

/// The inbound half of a channel, as a responder's handler sees it:
/// credit-aware (REQUEST_N is sent as it is polled), and dropping it before
/// the end sends CANCEL, which closes only the requester's outbound half.
pub(crate) struct ChannelInbound {
    inner: Inbound,
}

impl ChannelInbound {
    pub(crate) fn new(shared: Arc<Shared>, id: StreamId) -> Self {
        Self {
            inner: Inbound::responder_channel(shared, id),
        }
    }
}

impl Stream for ChannelInbound {
    type Item = Result<Payload, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next(cx)
    }
}
