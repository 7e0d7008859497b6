//! The clock the balancer measures latency with, injectable so that tests
//! are exact.
//!
//! A timed request/response reads the clock twice (start and end; every
//! request is timed below the busy rate, one in eight above it: see
//! [`Sampler`]), so the default is the cheapest reading there is: the CPU's time-stamp counter,
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

/// How long the start rate is measured over before the sampling is
/// reconsidered.
const WINDOW_US: Micros = 1_000;

/// When busy, one request/response in this many is timed.
pub(crate) const BUSY_SAMPLE: u32 = 8;

/// Which request/responses read the clock.
///
/// Timing a request costs two clock readings and a statistics update (about
/// half of what a balanced request adds to a direct one). While requests
/// start at less than the busy rate (`BalancerConfig::busy_rate`, 50,000 a
/// second by default, measured over a millisecond) every request is timed,
/// as in rsocket-java; above, one in [`BUSY_SAMPLE`],
/// which still feeds the estimates thousands of round trips a second. The
/// others are counted (pending requests stay exact) at the time of the
/// latest reading, as if no time had passed since: for the statistics the
/// clock moves in small steps, which keeps their accounting consistent, and
/// only timed requests record a round trip. A failed request always reads
/// the clock, so that the availability average sees every error. When the
/// rate drops, the next timed request (at most [`BUSY_SAMPLE`] later) sees
/// it and timing goes back to every request.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// Busy: more than this many request/responses a second, over a
    /// window of [`WINDOW_US`].
    busy_rate: i64,
    /// The latest reading.
    latest: Micros,
    /// Requests started since the last timed one.
    since: u32,
    /// Time one request in this many (1, or [`BUSY_SAMPLE`] when busy; 0
    /// before the first).
    every: u32,
    /// When the current rate window began, and the requests started in it
    /// up to the last timed one.
    window_at: Micros,
    window_starts: u32,
}

impl Sampler {
    /// A sampler that times every request until more than `busy_rate`
    /// start in a second.
    pub(crate) fn new(busy_rate: u32) -> Self {
        Self {
            busy_rate: i64::from(busy_rate),
            latest: 0,
            since: 0,
            every: 0,
            window_at: 0,
            window_starts: 0,
        }
    }

    /// A request/response starts: its time, and whether it is timed.
    #[inline]
    pub(crate) fn start(&mut self, clock: &Time) -> (Micros, bool) {
        self.since += 1;
        if self.since < self.every {
            return (self.latest, false);
        }
        let now = self.saw(clock.now());
        self.window_starts = self.window_starts.saturating_add(self.since);
        self.since = 0;
        let elapsed = now - self.window_at;
        if elapsed >= WINDOW_US {
            let busy = Micros::from(self.window_starts) * 1_000_000 > self.busy_rate * elapsed;
            self.every = if busy { BUSY_SAMPLE } else { 1 };
            self.window_at = now;
            self.window_starts = 0;
        } else if self.every == 0 {
            self.every = 1;
        }
        (now, true)
    }

    /// The time for the end of a request: read if it was timed or failed,
    /// else the latest reading.
    #[inline]
    pub(crate) fn end(&mut self, clock: &Time, timed: bool, ok: bool) -> Micros {
        if timed || !ok {
            self.saw(clock.now())
        } else {
            self.latest
        }
    }

    /// Notes a reading; returns the latest (readings taken on other threads
    /// can arrive out of order).
    #[inline]
    pub(crate) fn saw(&mut self, now: Micros) -> Micros {
        self.latest = self.latest.max(now);
        self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manual() -> (ManualClock, Time) {
        let clock = ManualClock::new();
        let time = Time::injected(Arc::new(clock.clone()));
        (clock, time)
    }

    /// Starts `n` requests; returns how many were timed.
    fn timed(sampler: &mut Sampler, time: &Time, n: usize) -> usize {
        (0..n).filter(|_| sampler.start(time).1).count()
    }

    #[test]
    fn every_request_is_timed_below_the_busy_rate() {
        let (clock, time) = manual();
        let mut s = Sampler::new(50_000);
        // 40 µs apart: 25,000 a second.
        for _ in 0..1_000 {
            assert!(s.start(&time).1);
            clock.advance(Duration::from_micros(40));
        }
        // A burst at one instant is not a rate: still every request.
        assert_eq!(timed(&mut s, &time, 30), 30);
    }

    #[test]
    fn one_in_eight_is_timed_while_busy_and_all_again_after() {
        let (clock, time) = manual();
        let mut s = Sampler::new(50_000);
        // 4 per µs: every request is timed until the first window ends
        // (1 ms), then one in eight.
        let mut counted = 0;
        for _ in 0..1_000 {
            counted += timed(&mut s, &time, 4);
            clock.advance(Duration::from_micros(1));
        }
        assert_eq!(counted, 4_000);
        counted = 0;
        for _ in 0..2_000 {
            counted += timed(&mut s, &time, 4);
            clock.advance(Duration::from_micros(1));
        }
        assert_eq!(counted, 8_000 / BUSY_SAMPLE as usize);
        // Untimed requests carry the latest reading, never a later one.
        let (at, was_timed) = s.start(&time);
        assert!(was_timed || at <= time.now());
        // The rate drops to one per 100 µs: at most BUSY_SAMPLE requests
        // later, every request is timed again.
        let mut untimed_run = 0;
        for _ in 0..BUSY_SAMPLE {
            clock.advance(Duration::from_micros(1_100));
            if !s.start(&time).1 {
                untimed_run += 1;
            }
        }
        assert!(untimed_run < BUSY_SAMPLE as usize);
        for _ in 0..100 {
            clock.advance(Duration::from_micros(100));
            assert!(s.start(&time).1);
        }
    }

    #[test]
    fn the_busy_rate_is_configurable() {
        let (clock, time) = manual();
        // `u32::MAX`: every request, however fast they come.
        let mut every = Sampler::new(u32::MAX);
        // 1,000 a second: busy at 2 per millisecond.
        let mut low = Sampler::new(1_000);
        let (mut all, mut some) = (0, 0);
        for _ in 0..4_000 {
            all += timed(&mut every, &time, 4);
            some += timed(&mut low, &time, 1);
            clock.advance(Duration::from_micros(500));
        }
        assert_eq!(all, 16_000);
        // Every request until the first window closes (at 0, 0.5 and
        // 1 ms), then one in eight.
        assert_eq!(some, 3 + (4_000 - 3) / BUSY_SAMPLE as usize);
    }

    #[test]
    fn errors_and_timed_ends_read_the_clock_others_take_the_latest() {
        let (clock, time) = manual();
        let mut s = Sampler::new(50_000);
        let (t0, _) = s.start(&time);
        clock.advance(Duration::from_micros(50));
        assert_eq!(s.end(&time, false, true), t0);
        assert_eq!(s.end(&time, false, false), t0 + 50);
        clock.advance(Duration::from_micros(50));
        assert_eq!(s.end(&time, true, true), t0 + 100);
        assert_eq!(s.end(&time, false, true), t0 + 100);
    }
}
