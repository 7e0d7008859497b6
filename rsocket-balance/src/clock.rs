//! The clock the balancer measures latency with, injectable so that tests
//! are exact.
//!
//! Every request/response reads the clock twice (start and end), so the
//! default is the cheapest reading there is: the CPU's time-stamp counter,
//! calibrated against the system clock by `quanta` (about 12 ns a reading
//! on an x86-64 VM where the system clock takes about 27 ns; `quanta` falls back
//! to the system clock where the counter is missing or unreliable).
//! Internally times are microseconds since the balancer started
//! ([`Micros`]), so nothing converts to and from `Instant` per request.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the balancer reads the time. Latency estimates, the availability
/// average and idle decay all use it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// tokio's clock. It follows `tokio::time::pause` and `advance`, so a test
/// on a paused runtime whose servers delay with `tokio::time::sleep`
/// measures exactly the delays it set: inject it
/// ([`BalancerBuilder::clock`](crate::BalancerBuilder::clock)) when the
/// balancer runs on a paused clock, since the default clock reads the CPU's
/// counter and does not pause.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A clock that moves only when told to.
///
/// ```
/// use rsocket_balance::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_millis(20));
/// assert_eq!(clock.now() - t0, Duration::from_millis(20));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    offset_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at an arbitrary instant.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock (and every clone of it) forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

/// Microseconds since the balancer started: the time as its statistics
/// count it.
pub(crate) type Micros = i64;

/// Where the balancer reads the time: the time-stamp counter (default) or
/// an injected [`Clock`].
pub(crate) enum Time {
    Counter {
        clock: quanta::Clock,
        epoch: u64,
    },
    Injected {
        clock: Arc<dyn Clock>,
        epoch: Instant,
    },
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Counter { .. } => f.write_str("Time::Counter"),
            Self::Injected { clock, .. } => f.debug_tuple("Time::Injected").field(clock).finish(),
        }
    }
}

impl Time {
    /// The calibrated time-stamp counter.
    pub(crate) fn counter() -> Self {
        let clock = quanta::Clock::new();
        let epoch = clock.raw();
        Self::Counter { clock, epoch }
    }

    /// An injected clock.
    pub(crate) fn injected(clock: Arc<dyn Clock>) -> Self {
        let epoch = clock.now();
        Self::Injected { clock, epoch }
    }

    /// Now, in microseconds since the balancer started.
    #[inline]
    pub(crate) fn now(&self) -> Micros {
        match self {
            Self::Counter { clock, epoch } => {
                // Nanoseconds to microseconds: a multiplication, no division.
                (clock.delta_as_nanos(*epoch, clock.raw()) / 1000) as Micros
            }
            Self::Injected { clock, epoch } => {
                let d = clock.now().saturating_duration_since(*epoch);
                Micros::try_from(d.as_secs())
                    .unwrap_or(Micros::MAX / 2_000_000)
                    .saturating_mul(1_000_000)
                    .saturating_add(Micros::from(d.subsec_micros()))
            }
        }
    }
}
