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

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rsocket_core::Requester;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::balancer::Core;
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
    /// failure): then it re-dials while it is still a target.
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
    /// Dials that failed since the last success.
    pub failed_dials: u32,
    /// The last dial or connection error, if any.
    pub last_error: Option<String>,
}

impl Inner {
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
}

pub(crate) struct Inner {
    pub(crate) state: MemberState,
    requester: Option<Requester>,
    /// Bumped on every new connection, so that a refusal seen on an old
    /// connection does not mark the new one.
    generation: u64,
    pub(crate) stats: WeightedStats,
    connects: u64,
    failed_dials: u32,
    /// A request succeeded on the current connection.
    healthy: bool,
    last_error: Option<String>,
    rng: Rng,
}

pub(crate) struct Member<K> {
    pub(crate) key: K,
    /// Cancelled when the key leaves the target list or the balancer shuts
    /// down.
    pub(crate) removed: CancellationToken,
    inner: Mutex<Inner>,
    now: Arc<dyn crate::Clock>,
}

impl<K: Key> fmt::Debug for Member<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("key", &self.key)
            .field("state", &self.lock().state)
            .finish()
    }
}

/// A member chosen for one request, with the connection to send it on.
pub(crate) struct Picked<K> {
    pub(crate) member: Arc<Member<K>>,
    pub(crate) requester: Requester,
    pub(crate) generation: u64,
    /// The request's start in the statistics (request/response only).
    pub(crate) started: i64,
}

/// What a pick starts counting, under the same lock as the pick itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Nothing (fire-and-forget, metadata push).
    Nothing,
    /// A request/response, at this time.
    Request(Instant),
    /// A stream or channel.
    Stream,
}

impl<K: Key> Member<K> {
    pub(crate) fn new(
        key: K,
        removed: CancellationToken,
        clock: Arc<dyn crate::Clock>,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::seeded(seed);
        let stats = WeightedStats::new(clock.now(), rng.next_u64());
        Self {
            key,
            removed,
            inner: Mutex::new(Inner {
                state: MemberState::Connecting,
                requester: None,
                generation: 0,
                stats,
                connects: 0,
                failed_dials: 0,
                healthy: false,
                last_error: None,
                rng,
            }),
            now: clock,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn now(&self) -> Instant {
        self.now.now()
    }

    /// The connection to use, if the member is ready, with `start`
    /// counted in the statistics.
    pub(crate) fn begin(self: &Arc<Self>, start: Start) -> Option<Picked<K>> {
        let mut inner = self.lock();
        if inner.state != MemberState::Ready {
            return None;
        }
        let requester = inner.requester.clone()?;
        let started = match start {
            Start::Nothing => 0,
            Start::Request(now) => inner.stats.start_request(now),
            Start::Stream => {
                inner.stats.start_stream();
                0
            }
        };
        Some(Picked {
            member: self.clone(),
            requester,
            generation: inner.generation,
            started,
        })
    }

    /// A request/response started at `started` on connection `generation`
    /// ended; `ok` records its round trip.
    pub(crate) fn end_request(&self, started: i64, ok: bool, generation: u64) {
        let now = self.now();
        let mut inner = self.lock();
        inner.stats.end_request(now, started, ok);
        if ok && inner.generation == generation {
            inner.healthy = true;
        }
    }

    /// A request succeeded on connection `generation`.
    pub(crate) fn note_success(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.healthy = true;
        }
    }

    /// The connection `generation` refused a request or failed under it:
    /// take no more traffic on it. Returns true if the state changed.
    pub(crate) fn stop_using(&self, generation: u64, why: &str) -> bool {
        let mut inner = self.lock();
        if inner.generation != generation || inner.state != MemberState::Ready {
            return false;
        }
        inner.last_error = Some(why.to_owned());
        self.transition(&mut inner, MemberState::Draining);
        true
    }

    fn transition(&self, inner: &mut Inner, to: MemberState) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        let now = self.now();
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

    pub(crate) fn info(&self, is_target: bool) -> MemberInfo<K> {
        let now = self.now();
        let mut inner = self.lock();
        let availability = inner.stats.weighted_availability(now);
        let own = inner.own_availability();
        let latency_us = inner.stats.predicted_latency(now);
        MemberInfo {
            key: self.key.clone(),
            state: inner.state,
            is_target,
            pending: inner.stats.pending(),
            latency: Duration::from_secs_f64((latency_us / 1e6).clamp(0.0, 1e9)),
            weight: inner.stats.weight(now, own),
            availability,
            connects: inner.connects,
            failed_dials: inner.failed_dials,
            last_error: inner.last_error.clone(),
        }
    }
}

impl<K: Key> View for Arc<Member<K>> {
    fn key(&self) -> &dyn fmt::Debug {
        &self.key
    }

    fn weight(&self, now: Instant) -> f64 {
        let mut inner = self.lock();
        let own = inner.own_availability();
        inner.stats.weight(now, own)
    }

    fn pending(&self) -> u32 {
        self.lock().stats.pending()
    }

    fn availability(&self) -> f64 {
        self.lock().own_availability()
    }
}

/// Re-dial delays: exponential from `min` to `max`, each drawn uniformly
/// from its upper half ("equal jitter").
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
    /// The delay after `failures` consecutive failures (0: the first).
    pub(crate) fn delay(&self, failures: u32, rng: &mut Rng) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << failures.min(20))
            .min(self.max.max(self.min));
        let half = base / 2;
        half + half.mul_f64(rng.next_f64())
    }
}

/// The member's task: dial, serve while connected, re-dial with back-off
/// after the connection ends, drain and close once removed.
pub(crate) async fn run<K: Key>(
    core: Arc<Core<K>>,
    member: Arc<Member<K>>,
    connector: Arc<dyn Connect>,
) {
    let mut wait = Duration::ZERO;
    loop {
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = member.removed.cancelled() => break,
            }
        }
        let dialled = tokio::select! {
            r = connector.connect() => r,
            () = member.removed.cancelled() => break,
        };
        let requester = match dialled {
            Ok(r) => r,
            Err(e) => {
                let mut inner = member.lock();
                inner.failed_dials = inner.failed_dials.saturating_add(1);
                inner.last_error = Some(e.to_string());
                let failures = inner.failed_dials;
                wait = core.config.backoff.delay(failures, &mut inner.rng);
                drop(inner);
                warn!(key = ?member.key, error = %e, failures, retry_in = ?wait, "dial failed");
                core.changed();
                continue;
            }
        };
        {
            let mut inner = member.lock();
            inner.requester = Some(requester.clone());
            inner.generation += 1;
            inner.connects += 1;
            inner.failed_dials = 0;
            inner.healthy = false;
            member.transition(&mut inner, MemberState::Ready);
        }
        core.changed();
        let removed = tokio::select! {
            reason = requester.closed() => {
                debug!(key = ?member.key, %reason, "connection ended");
                member.lock().last_error = Some(reason.to_string());
                false
            }
            () = member.removed.cancelled() => true,
        };
        {
            let mut inner = member.lock();
            inner.requester = None;
            if removed {
                member.transition(&mut inner, MemberState::Draining);
            } else {
                member.transition(&mut inner, MemberState::Connecting);
                // A connection that served nothing counts as a failure, so
                // a server that accepts and drops at once is not hammered.
                if !inner.healthy {
                    inner.failed_dials = inner.failed_dials.saturating_add(1);
                }
                let failures = inner.failed_dials;
                wait = core.config.backoff.delay(failures, &mut inner.rng);
            }
        }
        core.changed();
        if removed {
            // Graceful: CONNECTION_CLOSE now, in-flight streams finish
            // (bounded by the connection's close timeout), then it closes.
            requester.close();
            let _ = requester.closed().await;
            break;
        }
    }
    {
        let mut inner = member.lock();
        inner.requester = None;
        member.transition(&mut inner, MemberState::Closed);
    }
    core.forget(&member);
}
