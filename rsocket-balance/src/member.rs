//! One member of a balancer: its state machine, statistics and the task
//! that dials and re-dials it.
//!
//! ```text
//!            dial ok                connection ends / refusal seen
//! Connecting ───────► Ready ──────────────────────────────► Draining
//!     ▲  │ dial failed  │ removed from the targets              │
//!     │  └─ back-off ◄┐ └────────────► Draining ──► Closed      │ ended, still a target:
//!     └───────────────┴───────────────────────────────────────────┘ back-off, re-dial
//! ```

use std::cell::RefCell;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rsocket_core::{ConnectionError, ErrorCode, Requester};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::balancer::Core;
use crate::clock::Micros;
use crate::connect::Connect;
use crate::rng::Rng;
use crate::stats::WeightedStats;
use crate::strategy::View;
use crate::Key;

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemberState {
    /// Dialling, or waiting out the back-off before the next dial. Takes
    /// no traffic.
    Connecting,
    /// Connected: takes traffic.
    Ready,
    /// Takes no new requests; those in flight finish. Either the target
    /// was removed (the member closes once they are done) or its
    /// connection is going away (a graceful close from the server, or a
    /// failure): then it re-dials while it is still a target, without
    /// waiting for a connection the server is closing to finish draining.
    Draining,
    /// Removed and closed; about to be forgotten.
    Closed,
}

/// A snapshot of one member, for the application's own dashboards.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemberInfo<K> {
    /// The target's key.
    pub key: K,
    /// Its state.
    pub state: MemberState,
    /// True while the key is in the target list (false once removed,
    /// while it drains).
    pub is_target: bool,
    /// Requests in flight plus open streams.
    pub pending: u32,
    /// The predicted latency (median round trip, adjusted for load).
    pub latency: Duration,
    /// The weighted-p2c weight (0 when not ready).
    pub weight: f64,
    /// The availability average (successes vs errors), in `[0, 1]`.
    pub availability: f64,
    /// Successful dials so far.
    pub connects: u64,
    /// Dials that failed, and connections that ended before a request
    /// succeeded on them, since the last request that succeeded (what the
    /// re-dial delay grows with).
    pub failed_dials: u32,
    /// The last dial or connection error, if any.
    pub last_error: Option<String>,
}

impl Inner {
    fn new(now: Micros, seed: u64) -> Self {
        let mut rng = Rng::seeded(seed);
        let stats = WeightedStats::new(now, rng.next_u64());
        Self {
            state: MemberState::Connecting,
            requester: None,
            generation: 0,
            stats,
            connects: 0,
            failed_dials: 0,
            healthy: false,
            last_error: None,
            peer_closed: 0,
            out_of_use: Arc::new(Notify::new()),
            rng,
        }
    }

    /// The member's own availability: 0 unless ready; when its connection
    /// leases, the lease's remaining share (`remaining / allowed`, 0 when
    /// spent or expired), so p2c avoids a member out of lease.
    fn own_availability(&self) -> f64 {
        if self.state != MemberState::Ready {
            return 0.0;
        }
        self.requester
            .as_ref()
            .and_then(Requester::lease)
            .map_or(1.0, |lease| lease.availability())
    }

    /// The connection to use for a new request, if the member is ready,
    /// with `start` counted in the statistics.
    #[inline]
    pub(crate) fn begin(&mut self, start: Start, now: Micros) -> Option<(u64, i64)> {
        if self.state != MemberState::Ready || self.requester.is_none() {
            return None;
        }
        let started = match start {
            Start::Nothing => 0,
            Start::Request => self.stats.start_request(now),
            Start::Stream => {
                self.stats.start_stream();
                0
            }
        };
        Some((self.generation, started))
    }

    /// The current connection, if any.
    pub(crate) fn requester(&self) -> Option<&Requester> {
        self.requester.as_ref()
    }

    /// The connection the request was sent on is still the current one.
    fn current(&self, generation: u64) -> bool {
        self.generation == generation
    }
}

/// What the balancer keeps about one member, under its lock: its state,
/// connection and statistics.
pub(crate) struct Inner {
    pub(crate) state: MemberState,
    requester: Option<Requester>,
    /// Bumped on every new connection, so that a refusal seen on an old
    /// connection does not mark the new one.
    generation: u64,
    stats: WeightedStats,
    connects: u64,
    failed_dials: u32,
    /// A request succeeded on the current connection.
    healthy: bool,
    last_error: Option<String>,
    /// The latest connection (generation) known to have received the
    /// server's CONNECTION_CLOSE; 0 for none.
    peer_closed: u64,
    /// Wakes the member's task when a request took its connection out of
    /// use (see [`Slot::stop_using`]): it re-dials without waiting for that
    /// connection to end.
    out_of_use: Arc<Notify>,
    rng: Rng,
}

/// A member's entry in the balancer's state. The state, connection and
/// statistics of every member sit under the balancer's one lock, so that a
/// request takes one lock to start (pick and count) and one to end.
pub(crate) struct Slot<K> {
    /// The member's id, so that a late end does not touch a new member
    /// that reuses the slot.
    id: u64,
    key: K,
    /// Borrowed mutably through a shared reference only by strategies
    /// (whose [`Candidates`](crate::Candidates) are shared), always under
    /// the balancer's lock.
    inner: RefCell<Inner>,
}

impl<K: Key> Slot<K> {
    pub(crate) fn inner(&mut self) -> &mut Inner {
        self.inner.get_mut()
    }

    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// A snapshot for [`Balancer::members`](crate::Balancer::members).
    /// Reading the estimates may update them (an idle member's latency
    /// decays as it is read for a pick), so they are read from a copy:
    /// looking changes nothing.
    pub(crate) fn info(&mut self, now: Micros, is_target: bool) -> MemberInfo<K> {
        let key = self.key.clone();
        let inner = self.inner.get_mut();
        let own = inner.own_availability();
        let weight = inner.stats.clone().weight(now, own);
        let mut stats = inner.stats.clone();
        let availability = stats.weighted_availability(now);
        let latency_us = stats.predicted_latency(now);
        MemberInfo {
            key,
            state: inner.state,
            is_target,
            pending: stats.pending(),
            latency: Duration::from_secs_f64((latency_us / 1e6).clamp(0.0, 1e9)),
            weight,
            availability,
            connects: inner.connects,
            failed_dials: inner.failed_dials,
            last_error: inner.last_error.clone(),
        }
    }

    /// Moves the member to `to`, logging its statistics.
    pub(crate) fn transition(&mut self, to: MemberState, now: Micros) {
        let inner = self.inner.get_mut();
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        let pending = inner.stats.pending();
        let latency_us = inner.stats.predicted_latency(now);
        let availability = inner.stats.weighted_availability(now);
        debug!(
            key = ?self.key,
            ?from,
            ?to,
            pending,
            latency_us,
            availability,
            connects = inner.connects,
            "member state"
        );
    }

    /// The request/response `picked` ended; `ok` records its round trip.
    #[inline]
    pub(crate) fn end_request(&mut self, picked: &Picked, now: Micros, ok: bool) {
        let inner = self.inner.get_mut();
        inner
            .stats
            .end_request(now, picked.started, ok, picked.timed);
        if ok && inner.current(picked.generation) {
            inner.healthy = true;
            inner.failed_dials = 0;
        }
    }

    /// The request/response `picked` was dropped before its answer: it
    /// ends without a round trip.
    pub(crate) fn cancel_request(&mut self, picked: &Picked, now: Micros) {
        self.inner.get_mut().stats.stop_request(now, picked.started);
    }

    /// The stream `picked` ended; `ok` (when known) feeds the availability
    /// average.
    pub(crate) fn end_stream(&mut self, now: Option<Micros>, ok: bool) {
        let stats = &mut self.inner.get_mut().stats;
        if let Some(now) = now {
            stats.update_availability(now, if ok { 1.0 } else { 0.0 });
        }
        stats.stop_stream();
    }

    /// A request on `picked`'s connection succeeded.
    pub(crate) fn note_success(&mut self, picked: &Picked) {
        let inner = self.inner.get_mut();
        if inner.current(picked.generation) {
            inner.healthy = true;
            inner.failed_dials = 0;
        }
    }

    /// `picked`'s connection refused a request locally because the server
    /// had begun a graceful close (`ConnectionClosing` from the remote
    /// side): the connection received the server's CONNECTION_CLOSE.
    pub(crate) fn note_peer_close(&mut self, picked: &Picked) {
        let inner = self.inner.get_mut();
        inner.peer_closed = inner.peer_closed.max(picked.generation);
    }

    /// Whether `picked`'s connection is known to have received the
    /// server's CONNECTION_CLOSE: a request on it was refused locally for
    /// that, or it ended with it (seen by the member's task, or now).
    pub(crate) fn peer_began_close(&mut self, picked: &Picked) -> bool {
        let inner = self.inner.get_mut();
        if inner.peer_closed == picked.generation {
            return true;
        }
        let closing = inner.current(picked.generation)
            && inner
                .requester
                .as_ref()
                .is_some_and(Requester::peer_closing);
        if closing {
            inner.peer_closed = picked.generation;
        }
        closing
    }

    /// `picked`'s connection refused a request or failed under it: take no
    /// more traffic on it. Returns true if the state changed.
    pub(crate) fn stop_using(&mut self, picked: &Picked, why: &str, now: Micros) -> bool {
        let inner = self.inner.get_mut();
        if !inner.current(picked.generation) || inner.state != MemberState::Ready {
            return false;
        }
        inner.last_error = Some(why.to_owned());
        // A permit is kept if the task is not waiting yet.
        inner.out_of_use.notify_one();
        self.transition(MemberState::Draining, now);
        true
    }
}

/// The members' entries, indexed by slot; freed slots are reused.
pub(crate) struct Slots<K> {
    entries: Vec<Option<Slot<K>>>,
    free: Vec<usize>,
    next_id: u64,
}

impl<K: Key> Slots<K> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            next_id: 0,
        }
    }

    /// A new member's entry; returns its slot and id.
    pub(crate) fn insert(&mut self, key: K, now: Micros, seed: u64) -> (usize, u64) {
        let id = self.next_id;
        self.next_id += 1;
        let slot = Slot {
            id,
            key,
            inner: RefCell::new(Inner::new(now, seed)),
        };
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(slot);
                (i, id)
            }
            None => {
                self.entries.push(Some(slot));
                (self.entries.len() - 1, id)
            }
        }
    }

    pub(crate) fn remove(&mut self, slot: usize, id: u64) {
        if self.get_mut(slot, id).is_some() {
            self.entries[slot] = None;
            self.free.push(slot);
        }
    }

    /// The entry at `slot` if it is still member `id`'s.
    pub(crate) fn get_mut(&mut self, slot: usize, id: u64) -> Option<&mut Slot<K>> {
        self.entries
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|s| s.id == id)
    }

    /// The entry of a member that is still known.
    pub(crate) fn of(&mut self, member: &Member<K>) -> Option<&mut Slot<K>> {
        self.get_mut(member.slot, member.id)
    }

    /// The entry at `slot`, whoever it belongs to.
    pub(crate) fn at(&self, slot: usize) -> Option<&Slot<K>> {
        self.entries.get(slot).and_then(Option::as_ref)
    }

    /// The entry at `slot`, whoever it belongs to.
    pub(crate) fn at_mut(&mut self, slot: usize) -> Option<&mut Slot<K>> {
        self.entries.get_mut(slot).and_then(Option::as_mut)
    }
}

/// One member: its identity. Its state lives in the balancer's [`Slots`].
pub(crate) struct Member<K> {
    pub(crate) key: K,
    /// Cancelled when the key leaves the target list or the balancer shuts
    /// down.
    pub(crate) removed: CancellationToken,
    pub(crate) slot: usize,
    pub(crate) id: u64,
}

impl<K: Key> fmt::Debug for Member<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("key", &self.key)
            .field("id", &self.id)
            .finish()
    }
}

/// A member chosen for one request: where to record its end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Picked {
    pub(crate) slot: usize,
    pub(crate) id: u64,
    /// The connection it was sent on.
    pub(crate) generation: u64,
    /// The request's start in the statistics (request/response only).
    pub(crate) started: i64,
    /// Its start was read from the clock, and so is its end: it records
    /// a round trip (see [`Sampler`](crate::clock::Sampler)).
    pub(crate) timed: bool,
}

/// What a pick starts counting, under the same lock as the pick itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Nothing (fire-and-forget, metadata push).
    Nothing,
    /// A request/response (at a time the pick chooses).
    Request,
    /// A stream or channel.
    Stream,
}

impl<K: Key> View for Slot<K> {
    fn key(&self) -> &dyn fmt::Debug {
        &self.key
    }

    fn weight(&self, now: Micros) -> f64 {
        let mut inner = self.inner.borrow_mut();
        let own = inner.own_availability();
        inner.stats.weight(now, own)
    }

    fn pending(&self) -> u32 {
        self.inner.borrow().stats.pending()
    }

    fn availability(&self) -> f64 {
        self.inner.borrow().own_availability()
    }
}

/// The connection ended after the server's graceful close (its
/// `ERROR[CONNECTION_CLOSE]`).
fn closed_by_peer_close(reason: &ConnectionError) -> bool {
    matches!(
        reason,
        ConnectionError::Remote {
            code: ErrorCode::CONNECTION_CLOSE,
            ..
        }
    )
}

/// Re-dial delays: exponential from `min` to `max`, each drawn uniformly
/// from its upper half ("equal jitter"). A `min` of zero re-dials at once
/// after each failure, yielding to the runtime between dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (before jitter).
    pub min: Duration,
    /// The largest delay (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before the next dial after `failures` consecutive failed
    /// dials: the first from `min`, each later one from twice the one
    /// before, up to `max` (0, after a connection that served requests:
    /// from `min` too).
    pub(crate) fn after(&self, failures: u32, rng: &mut Rng) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let base = self
            .min
            .saturating_mul(1u32 << doublings)
            .min(self.max.max(self.min));
        let half = base / 2;
        half + half.mul_f64(rng.next_f64())
    }
}

/// Dials once with `connector`; a connector that panics (in the call or
/// its future) is a failed dial, so that the member goes on re-dialling.
async fn dial(connector: &dyn Connect) -> Result<Requester, crate::connect::BoxError> {
    let panicked = || -> crate::connect::BoxError { "the connector panicked".into() };
    match std::panic::catch_unwind(AssertUnwindSafe(|| connector.connect())) {
        Ok(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(panicked())),
        Err(_) => Err(panicked()),
    }
}

/// The member's task: dial, serve while connected, re-dial with back-off
/// after the connection ends, drain and close once removed.
pub(crate) async fn run<K: Key>(
    core: Arc<Core<K>>,
    member: Arc<Member<K>>,
    connector: Arc<dyn Connect>,
) {
    let backoff = core.config.backoff;
    let mut wait = Duration::ZERO;
    let Some(out_of_use) = core.update(&member, |slot, _| slot.inner().out_of_use.clone()) else {
        core.forget(&member);
        return;
    };
    // Connections left while they close gracefully (the server's
    // CONNECTION_CLOSE): what is open on them finishes there.
    let mut left: Vec<Requester> = Vec::new();
    let mut first = true;
    loop {
        left.retain(|r| !r.is_closed());
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = member.removed.cancelled() => break,
            }
        } else if !first {
            // A zero back-off re-dials at once, but a connector that fails
            // without waiting must not hold the runtime's thread.
            tokio::task::yield_now().await;
        }
        first = false;
        let dialled = tokio::select! {
            r = dial(&*connector) => r,
            () = member.removed.cancelled() => break,
        };
        let requester = match dialled {
            Ok(r) => r,
            Err(e) => {
                let failures = core.update(&member, |slot, _| {
                    let inner = slot.inner();
                    inner.failed_dials = inner.failed_dials.saturating_add(1);
                    inner.last_error = Some(e.to_string());
                    wait = backoff.after(inner.failed_dials, &mut inner.rng);
                    inner.failed_dials
                });
                warn!(key = ?member.key, error = %e, failures, retry_in = ?wait, "dial failed");
                core.changed();
                continue;
            }
        };
        core.update(&member, |slot, now| {
            let inner = slot.inner();
            inner.requester = Some(requester.clone());
            inner.generation += 1;
            inner.connects += 1;
            // Cleared by the first request that succeeds on it, not here:
            // a server that accepts and drops at once backs off further
            // each time.
            inner.healthy = false;
            slot.transition(MemberState::Ready, now);
        });
        core.changed();
        let removed = loop {
            tokio::select! {
                reason = requester.closed() => {
                    debug!(key = ?member.key, %reason, "connection ended");
                    core.update(&member, |slot, _| {
                        let inner = slot.inner();
                        inner.last_error = Some(reason.to_string());
                        if closed_by_peer_close(&reason) {
                            inner.peer_closed = inner.generation;
                        }
                    });
                    break false;
                }
                () = member.removed.cancelled() => break true,
                () = out_of_use.notified() => {
                    // A request found this connection closing (or dead) and
                    // took it out of use; a permit left from an earlier
                    // connection finds this one still ready, and is spent.
                    // A connection that has ended goes the usual way (the
                    // `closed` branch, at once).
                    let draining = core
                        .update(&member, |slot, _| slot.inner().state == MemberState::Draining)
                        .unwrap_or(false);
                    if draining && !requester.is_closed() {
                        debug!(key = ?member.key, "connection out of use; re-dialling while it drains");
                        left.push(requester.clone());
                        break false;
                    }
                }
            }
        };
        core.update(&member, |slot, now| {
            slot.inner().requester = None;
            if removed {
                slot.transition(MemberState::Draining, now);
            } else {
                slot.transition(MemberState::Connecting, now);
                let inner = slot.inner();
                // A connection that served nothing counts as a failure, so
                // a server that accepts and drops at once is not hammered.
                if !inner.healthy {
                    inner.failed_dials = inner.failed_dials.saturating_add(1);
                }
                wait = backoff.after(inner.failed_dials, &mut inner.rng);
            }
        });
        core.changed();
        if removed {
            // Graceful: CONNECTION_CLOSE now, in-flight streams finish
            // (bounded by the connection's close timeout), then it closes.
            requester.close();
            let _ = requester.closed().await;
            break;
        }
    }
    // Connections left while closing end within their close timeout.
    for r in left {
        let _ = r.closed().await;
    }
    core.update(&member, |slot, now| {
        slot.inner().requester = None;
        slot.transition(MemberState::Closed, now);
    });
    core.forget(&member);
}
