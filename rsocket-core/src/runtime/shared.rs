//! State shared by the driver and every handle of one connection: the
//! sans-IO [`Connection`] and the wakers of the tasks waiting on it.
//!
//! The state machine keeps no wakers (see `proto/wakeup.rs`): when a call
//! into it returns `Pending`, the handle registers its task here under the
//! same key the connection will name in a [`Wakeup`]. [`Locked`], the lock
//! guard, drains the recorded wake-ups when it is dropped, releases the lock
//! and only then wakes the tasks, so a woken task never finds the lock
//! still held by the task that woke it.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use tracing::Span;

use crate::error::RequestError;
use crate::frame::StreamId;
use crate::proto::{Connection, IdTable, SendReady, Wakeup};
use crate::Payload;

/// State shared by the driver and every handle of one connection.
#[derive(Debug)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    pub(crate) span: Span,
    /// `Config::default_prefetch`, readable without the lock.
    pub(crate) default_prefetch: u32,
    /// `Config::close_timeout`.
    pub(crate) close_timeout: std::time::Duration,
    /// `LeaseConfig::wait` (zero without leasing).
    pub(crate) lease_wait: std::time::Duration,
    /// Leasing was negotiated on this connection (decided before the
    /// connection is shared, never changed): without it, lease queries
    /// need no lock.
    pub(crate) leasing: bool,
    /// Notified when the driver has finished (see `Requester::closed`).
    pub(crate) closed: tokio::sync::Notify,
    /// The driver has finished: the connection ended and what was queued
    /// has been written (or the driver was dropped).
    pub(crate) driver_done: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    wakers: Wakers,
}

impl Shared {
    pub(crate) fn new(conn: Connection, span: Span) -> Arc<Self> {
        Arc::new(Self {
            default_prefetch: conn.config().default_prefetch,
            close_timeout: conn.config().close_timeout,
            lease_wait: conn
                .config()
                .lease
                .as_ref()
                .map_or(std::time::Duration::ZERO, |l| l.wait),
            leasing: conn.lease_enabled(),
            closed: tokio::sync::Notify::new(),
            driver_done: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(Inner {
                conn,
                wakers: Wakers::default(),
            }),
            span,
        })
    }

    /// Locks the state. A panic in another thread while holding the lock
    /// cannot leave the state half-updated in a way that matters more than
    /// refusing all further work, so poisoning is ignored.
    #[inline]
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked {
            guard: Some(self.inner.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Marks the driver finished and wakes every `Requester::closed`
    /// waiter.
    pub(crate) fn driver_finished(&self) {
        self.driver_done
            .store(true, std::sync::atomic::Ordering::Release);
        self.closed.notify_waiters();
    }
}

/// The locked state: derefs to the [`Connection`]; its `poll_` methods call
/// the connection and register the task's waker when it must wait. Wakes
/// what the connection recorded once the lock is released.
pub(crate) struct Locked<'a> {
    /// `None` only inside `drop`.
    guard: Option<MutexGuard<'a, Inner>>,
}

impl Locked<'_> {
    #[inline]
    fn inner(&mut self) -> &mut Inner {
        match self.guard.as_mut() {
            Some(g) => g,
            None => unreachable!("the guard is held until drop"),
        }
    }

    /// Ready when a new request may be queued.
    pub(crate) fn poll_open_ready(&mut self, cx: &Context<'_>) -> Poll<Result<(), RequestError>> {
        let inner = self.inner();
        let r = inner.conn.open_ready();
        if r.is_pending() {
            register_list(&mut inner.wakers.space, cx.waker());
        }
        r
    }

    /// See [`Connection::request_response`]; once opened, registers for
    /// the answer.
    #[inline]
    pub(crate) fn poll_request_response(
        &mut self,
        cx: &Context<'_>,
        request: &mut Option<Payload>,
        lent: Option<&Payload>,
    ) -> Poll<Result<StreamId, RequestError>> {
        let inner = self.inner();
        let r = inner.conn.request_response(request, lent);
        match r {
            Poll::Ready(Ok(id)) => register_map(&mut inner.wakers.recv, id.get(), cx.waker()),
            Poll::Pending => register_list(&mut inner.wakers.space, cx.waker()),
            Poll::Ready(Err(_)) => {}
        }
        r
    }

    /// See [`Connection::fire_and_forget`].
    pub(crate) fn poll_fire_and_forget(
        &mut self,
        cx: &Context<'_>,
        request: &mut Option<Payload>,
        now: Instant,
    ) -> Poll<Result<(), RequestError>> {
        let inner = self.inner();
        let r = inner.conn.fire_and_forget(request, now);
        if r.is_pending() {
            register_list(&mut inner.wakers.space, cx.waker());
        }
        r
    }

    /// Queues a METADATA_PUSH once the outbound queue has room.
    pub(crate) fn poll_metadata_push(
        &mut self,
        cx: &Context<'_>,
        metadata: &mut Option<Bytes>,
    ) -> Poll<Result<(), RequestError>> {
        let inner = self.inner();
        let r = inner.conn.metadata_push(metadata);
        if r.is_pending() {
            register_list(&mut inner.wakers.space, cx.waker());
        }
        r
    }

    /// See [`Connection::recv`].
    pub(crate) fn poll_recv(
        &mut self,
        id: StreamId,
        cx: &Context<'_>,
        consumed: u32,
        max: usize,
        into: &mut crate::proto::Batch,
        report_after: &mut u32,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        let inner = self.inner();
        let r = inner.conn.recv(id, consumed, max, into, report_after);
        if r.is_pending() {
            register_map(&mut inner.wakers.recv, id.get(), cx.waker());
        }
        r
    }

    /// See [`Connection::recv_response`].
    pub(crate) fn poll_response(
        &mut self,
        id: StreamId,
        cx: &Context<'_>,
    ) -> Poll<Option<Result<Payload, RequestError>>> {
        let inner = self.inner();
        let r = inner.conn.recv_response(id);
        if r.is_pending() {
            register_map(&mut inner.wakers.recv, id.get(), cx.waker());
        }
        r
    }

    /// See [`Connection::send_ready`].
    pub(crate) fn poll_send_ready(
        &mut self,
        id: StreamId,
        cx: &Context<'_>,
        zero_ok: bool,
    ) -> Poll<SendReady> {
        let inner = self.inner();
        let r = inner.conn.send_ready(id, zero_ok);
        if !matches!(r, Poll::Ready(SendReady::Stopped)) {
            register_map(&mut inner.wakers.send, id.get(), cx.waker());
            if r.is_pending() && !inner.conn.has_space() {
                register_list(&mut inner.wakers.space, cx.waker());
            }
        }
        r
    }

    /// See [`Connection::check_stopped`].
    pub(crate) fn poll_stopped(&mut self, id: StreamId, cx: &Context<'_>) -> Poll<()> {
        let inner = self.inner();
        let r = inner.conn.check_stopped(id);
        if r.is_pending() {
            register_map(&mut inner.wakers.send, id.get(), cx.waker());
        }
        r
    }

    /// See [`Connection::lease_ready`].
    pub(crate) fn poll_lease(
        &mut self,
        cx: &Context<'_>,
        now: Instant,
        wait: bool,
    ) -> Poll<Result<(), RequestError>> {
        let inner = self.inner();
        let r = inner.conn.lease_ready(now, wait);
        if r.is_pending() {
            register_list(&mut inner.wakers.lease, cx.waker());
        }
        r
    }

    /// The driver's task is the one to wake for [`Wakeup::Driver`].
    pub(crate) fn set_writer_waker(&mut self, cx: &Context<'_>) {
        let slot = &mut self.inner().wakers.driver;
        match slot {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
    }
}

impl Deref for Locked<'_> {
    type Target = Connection;

    #[inline]
    fn deref(&self) -> &Connection {
        match self.guard.as_ref() {
            Some(g) => &g.conn,
            None => unreachable!("the guard is held until drop"),
        }
    }
}

impl DerefMut for Locked<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.inner().conn
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if !guard.conn.has_wakeups() {
            return;
        }
        if guard.conn.driver_wakeup_only() && guard.wakers.driver.is_none() {
            // The driver was woken and has not waited again since (a burst
            // of requests from one task): nothing to wake.
            guard.conn.clear_driver_wakeup();
            return;
        }
        let mut wake = WakeList::default();
        let Inner { conn, wakers } = &mut *guard;
        conn.drain_wakeups(|w| wakers.collect(w, &mut wake));
        drop(guard);
        wake.wake();
    }
}

/// Wakers of the tasks waiting on the connection, keyed like [`Wakeup`].
#[derive(Debug, Default)]
struct Wakers {
    recv: IdTable<Waker>,
    send: IdTable<Waker>,
    driver: Option<Waker>,
    space: Vec<Waker>,
    lease: Vec<Waker>,
}

impl Wakers {
    /// Moves the wakers `w` names into `out`.
    #[inline]
    fn collect(&mut self, w: Wakeup, out: &mut WakeList) {
        match w {
            Wakeup::Recv(k) => out.extend(self.recv.remove(&k)),
            Wakeup::Send(k) => out.extend(self.send.remove(&k)),
            Wakeup::Driver => out.extend(self.driver.take()),
            Wakeup::Space => out.extend(self.space.drain(..)),
            Wakeup::Lease => out.extend(self.lease.drain(..)),
            Wakeup::All => {
                self.recv.drain(|w| out.extend(Some(w)));
                self.send.drain(|w| out.extend(Some(w)));
                out.extend(self.space.drain(..));
                out.extend(self.lease.drain(..));
                out.extend(self.driver.take());
            }
        }
    }
}

#[inline]
fn register_map(map: &mut IdTable<Waker>, key: u32, waker: &Waker) {
    match map.get_mut(&key) {
        Some(w) if w.will_wake(waker) => {}
        Some(w) => w.clone_from(waker),
        None => map.insert_new_with(key, || waker.clone()),
    }
}

fn register_list(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

/// Wakers to wake after the lock is released; the first without an
/// allocation.
#[derive(Default)]
struct WakeList {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl WakeList {
    #[inline]
    fn extend(&mut self, wakers: impl IntoIterator<Item = Waker>) {
        for w in wakers {
            if self.first.is_none() {
                self.first = Some(w);
            } else {
                self.more.push(w);
            }
        }
    }

    #[inline]
    fn wake(self) {
        if let Some(w) = self.first {
            w.wake();
        }
        if !self.more.is_empty() {
            for w in self.more {
                w.wake();
            }
        }
    }
}
