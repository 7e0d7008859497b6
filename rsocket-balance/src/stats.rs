//! Per-member load statistics and the weight computed from them: a port
//! of rsocket-java's `BaseWeightedStats`, `Ewma`, `FrugalQuantile`,
//! `Median` and `WeightedLoadbalanceStrategy.algorithmicWeight`, with the
//! clock passed in (`now`) instead of read, so that it is exact under test.
//!
//! Times are microseconds, as in rsocket-java, counted from the moment the
//! statistics were created.
//!
//! ```text
//! weight = availability × availability_ewma / (1 + latency × (pending + 1))
//! ```
//!
//! * `pending`: requests in flight plus open streams;
//! * `latency`: the median round trip (a frugal streaming estimate); while
//!   nothing has been measured it is 0 for an idle member and a huge
//!   startup penalty for a busy one; after a long idle spell artificial
//!   zeros are fed into the median so that a member is tried again; when
//!   the work in flight has already run longer than predicted, the
//!   instantaneous estimate is used; the result is pushed further out when
//!   it leaves the band between the 0.5 and 0.8 quantiles;
//! * `availability_ewma`: successes (1) and errors (0), 5 s half-life,
//!   nudged towards 1 after 7 s without requests;
//! * `availability`: the member's own (0 unless ready; 1 when ready, or
//!   the lease's remaining share when its connection leases).

use crate::clock::Micros;
use crate::rng::Rng;

const LOWER_QUANTILE: f64 = 0.5;
const HIGHER_QUANTILE: f64 = 0.8;
const INACTIVITY_FACTOR: f64 = 500.0;
const INITIAL_INTER_ARRIVAL_US: f64 = 1_000_000.0;
/// `Long.MAX_VALUE >> 12`, rsocket-java's penalty for a busy member with
/// no measurement yet.
const STARTUP_PENALTY: f64 = (i64::MAX >> 12) as f64;
/// rsocket-java computes `(long) (halfLife / ln 2)` in the half-life's own
/// unit before converting, so 5 s becomes 7 s and 1 min stays 1 min.
const AVAILABILITY_TAU_US: f64 = 7_000_000.0;
const INTER_ARRIVAL_TAU_US: f64 = 60_000_000.0;
const IDLE_RESET_US: i64 = 7_000_000;
const EXP_FACTOR: i32 = 4;

/// Exponentially weighted moving average over time.
#[derive(Debug, Clone)]
struct Ewma {
    /// `1 / tau`: a multiplication per sample instead of a division.
    inv_tau: f64,
    stamp: Option<i64>,
    value: f64,
}

impl Ewma {
    fn new(tau: f64, initial: f64) -> Self {
        Self {
            inv_tau: 1.0 / tau,
            stamp: None,
            value: initial,
        }
    }

    #[inline]
    fn insert(&mut self, now: i64, x: f64) {
        // The first sample replaces the initial value, as in rsocket-java
        // (whose stamp starts at 0, an age of "forever").
        let w = match self.stamp {
            // No time has passed (requests within the same microsecond,
            // the usual case under load): the weight of the old value is
            // exactly 1, so nothing changes.
            Some(s) if now <= s => return,
            Some(s) => decay((now - s) as f64 * self.inv_tau),
            None => 0.0,
        };
        self.stamp = Some(now);
        self.value = w * self.value + (1.0 - w) * x;
    }
}

/// `e^-x` for `x >= 0`; for the tiny `x` of back-to-back requests (µs over
/// a tau of seconds) a Taylor polynomial, exact to 1e-13 and much cheaper.
fn decay(x: f64) -> f64 {
    if x < 1e-4 {
        1.0 - x + x * x / 2.0
    } else {
        (-x).exp()
    }
}

/// Frugal streaming quantile estimate (Ma, Muthukrishnan, Sandler), with
/// rsocket-java's integer step arithmetic. With `randomized` off and the
/// quantile at 0.5 it is rsocket-java's `Median`.
#[derive(Debug, Clone)]
struct FrugalQuantile {
    randomized: bool,
    /// A uniform draw above this moves the estimate up (`1 - quantile` of
    /// the `u32` range) ...
    up_above: u32,
    /// ... and above this, down (`quantile` of the range).
    down_above: u32,
    estimate: f64,
    step: i32,
    sign: i32,
}

impl FrugalQuantile {
    fn new(quantile: f64, randomized: bool) -> Self {
        // Float-to-int casts saturate: a quantile of 0 never moves up.
        let share = |p: f64| (p * 4_294_967_296.0) as u32;
        Self {
            randomized,
            up_above: share(1.0 - quantile),
            down_above: share(quantile),
            estimate: 0.0,
            step: 1,
            sign: 0,
        }
    }

    #[inline]
    /// Feeds `x`; `draw` is a uniform random `u32` (used when randomized).
    fn insert(&mut self, x: f64, draw: u32) {
        if self.sign == 0 {
            self.estimate = x;
            self.sign = 1;
            return;
        }
        let (up, down) = if self.randomized {
            (draw > self.up_above, draw > self.down_above)
        } else {
            (true, true)
        };
        if x > self.estimate && up {
            self.higher(x);
        } else if x < self.estimate && down {
            self.lower(x);
        }
    }

    fn higher(&mut self, x: f64) {
        self.step = self.step.saturating_add(self.sign);
        let mut estimate = self.estimate;
        if self.step > 0 {
            estimate += f64::from(self.step);
        } else {
            estimate += 1.0;
        }
        if estimate > x {
            self.step = (f64::from(self.step) + (x - estimate)) as i32;
            estimate = x;
        }
        if self.sign < 0 {
            self.step = 1;
        }
        self.sign = 1;
        self.estimate = estimate;
    }

    fn lower(&mut self, x: f64) {
        self.step = self.step.saturating_sub(self.sign);
        let mut estimate = self.estimate;
        if self.step > 0 {
            estimate -= f64::from(self.step);
        } else {
            estimate -= 1.0;
        }
        if estimate < x {
            self.step = (f64::from(self.step) + (estimate - x)) as i32;
            estimate = x;
        }
        if self.sign > 0 {
            self.step = 1;
        }
        self.sign = -1;
        self.estimate = estimate;
    }
}

/// The load statistics of one member.
#[derive(Debug, Clone)]
pub(crate) struct WeightedStats {
    origin: Micros,
    lower: FrugalQuantile,
    higher: FrugalQuantile,
    median: FrugalQuantile,
    availability: Ewma,
    inter_arrival: Ewma,
    /// Last time a request was sent.
    stamp: i64,
    /// Last time a request was sent or answered.
    stamp0: i64,
    /// Cumulated time the requests in flight have been waiting, in µs (a
    /// float: no overflow to guard against, and exact below 2^53).
    duration: f64,
    pending_requests: u32,
    pending_streams: u32,
    rng: Rng,
}

impl WeightedStats {
    pub(crate) fn new(now: Micros, seed: u64) -> Self {
        Self {
            origin: now,
            lower: FrugalQuantile::new(LOWER_QUANTILE, true),
            higher: FrugalQuantile::new(HIGHER_QUANTILE, true),
            median: FrugalQuantile::new(0.5, false),
            availability: Ewma::new(AVAILABILITY_TAU_US, 1.0),
            inter_arrival: Ewma::new(INTER_ARRIVAL_TAU_US, INITIAL_INTER_ARRIVAL_US),
            stamp: 0,
            stamp0: 0,
            duration: 0.0,
            pending_requests: 0,
            pending_streams: 0,
            rng: Rng::seeded(seed),
        }
    }

    fn micros(&self, now: Micros) -> i64 {
        (now - self.origin).max(0)
    }

    /// The time the requests in flight have waited since `stamp0`.
    #[inline]
    fn waited_since_stamp0(&self, now: i64) -> f64 {
        (now - self.stamp0).max(0) as f64 * f64::from(self.pending_requests)
    }

    /// A request was sent; returns its start time for [`stop_request`](Self::stop_request).
    #[inline]
    pub(crate) fn start_request(&mut self, now: Micros) -> i64 {
        let now = self.micros(now);
        if now == self.stamp && now == self.stamp0 {
            // No time has passed since the last start and nothing ended
            // since (the usual case for requests the sampler does not
            // time): the inter-arrival average already stands at `now` and
            // nothing has waited, so only the count moves. Exact.
            self.pending_requests += 1;
            return now;
        }
        self.inter_arrival.insert(now, (now - self.stamp) as f64);
        self.duration += self.waited_since_stamp0(now);
        self.pending_requests += 1;
        self.stamp = now;
        self.stamp0 = now;
        now
    }

    /// A request ended (answered, failed or cancelled); returns the time.
    #[inline]
    pub(crate) fn stop_request(&mut self, now: Micros, started: i64) -> i64 {
        let now = self.micros(now);
        self.duration += self.waited_since_stamp0(now) - (now - started) as f64;
        self.pending_requests = self.pending_requests.saturating_sub(1);
        self.stamp0 = now;
        now
    }

    /// A request/response ended: stops it, records its round trip if it
    /// succeeded and was `timed` (its start and `now` are readings of the
    /// clock), and feeds the availability average.
    #[inline]
    pub(crate) fn end_request(&mut self, now: Micros, started: i64, ok: bool, timed: bool) {
        let end = self.stop_request(now, started);
        if ok && timed {
            self.record((end - started) as f64);
        }
        self.availability.insert(end, if ok { 1.0 } else { 0.0 });
    }

    /// Records a measured round trip in microseconds.
    #[inline]
    pub(crate) fn record(&mut self, rtt_us: f64) {
        // One draw, its two halves for the two randomized estimates.
        let draw = self.rng.next_u64();
        self.median.insert(rtt_us, 0);
        self.lower.insert(rtt_us, draw as u32);
        self.higher.insert(rtt_us, (draw >> 32) as u32);
    }

    pub(crate) fn start_stream(&mut self) {
        self.pending_streams += 1;
    }

    pub(crate) fn stop_stream(&mut self) {
        self.pending_streams = self.pending_streams.saturating_sub(1);
    }

    /// Feeds the availability average: 1 for a success, 0 for an error.
    pub(crate) fn update_availability(&mut self, now: Micros, value: f64) {
        let now = self.micros(now);
        self.availability.insert(now, value);
    }

    /// Requests in flight plus open streams.
    pub(crate) fn pending(&self) -> u32 {
        self.pending_requests + self.pending_streams
    }

    /// The availability average, nudged towards 1 after an idle spell.
    pub(crate) fn weighted_availability(&mut self, now: Micros) -> f64 {
        let t = self.micros(now);
        if t - self.stamp > IDLE_RESET_US {
            self.availability.insert(t, 1.0);
        }
        self.availability.value
    }

    /// The predicted latency in microseconds.
    pub(crate) fn predicted_latency(&mut self, now: Micros) -> f64 {
        let now = self.micros(now);
        let elapsed = (now - self.stamp).max(1) as f64;
        let prediction = self.median.estimate;
        let pending = self.pending();
        if prediction == 0.0 {
            if pending == 0 {
                0.0
            } else {
                STARTUP_PENALTY + f64::from(pending)
            }
        } else if pending == 0 && elapsed > INACTIVITY_FACTOR * self.inter_arrival.value {
            // Idle for long: decay the prediction so the member is tried.
            self.median.insert(0.0, 0);
            self.median.estimate
        } else {
            let predicted = prediction * f64::from(pending);
            let instant = self.duration + (now - self.stamp0) as f64 * f64::from(pending);
            if predicted < instant {
                instant / f64::from(pending)
            } else {
                prediction
            }
        }
    }

    /// The p2c weight, given the member's own availability.
    pub(crate) fn weight(&mut self, now: Micros, availability: f64) -> f64 {
        if availability <= 0.0 {
            return 0.0;
        }
        let pending = f64::from(self.pending());
        let mut latency = self.predicted_latency(now);
        let low = self.lower.estimate;
        let high = self.higher.estimate.max(low * 1.001);
        let band = (high - low).max(1.0);
        if latency < low {
            latency /= factor(low, latency, band);
        } else if latency > high {
            latency *= factor(latency, high, band);
        }
        availability * self.weighted_availability(now) / (1.0 + latency * (pending + 1.0))
    }
}

fn factor(u: f64, l: f64, band: f64) -> f64 {
    (1.0 + (u - l) / band).powi(EXP_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: i64) -> Micros {
        n * 1000
    }

    #[test]
    fn unmeasured_idle_member_has_full_weight() {
        let t0: Micros = 5_000_000;
        let mut s = WeightedStats::new(t0, 1);
        assert_eq!(s.predicted_latency(t0), 0.0);
        assert_eq!(s.weight(t0, 1.0), 1.0);
        assert_eq!(s.weight(t0, 0.0), 0.0);
    }

    #[test]
    fn unmeasured_busy_member_pays_the_startup_penalty() {
        let t0: Micros = 5_000_000;
        let mut s = WeightedStats::new(t0, 1);
        s.start_request(t0);
        assert!(s.predicted_latency(t0) >= STARTUP_PENALTY);
        assert!(s.weight(t0, 1.0) < 1e-15);
    }

    #[test]
    fn slower_member_weighs_less() {
        let t0: Micros = 5_000_000;
        let mut fast = WeightedStats::new(t0, 1);
        let mut slow = WeightedStats::new(t0, 2);
        let mut t = t0;
        for _ in 0..50 {
            let a = fast.start_request(t);
            let b = slow.start_request(t);
            let end_fast = fast.stop_request(t + ms(1), a);
            fast.record((end_fast - a) as f64);
            let end_slow = slow.stop_request(t + ms(21), b);
            slow.record((end_slow - b) as f64);
            t += ms(25);
        }
        let wf = fast.weight(t, 1.0);
        let ws = slow.weight(t, 1.0);
        assert!(wf > 10.0 * ws, "fast {wf} slow {ws}");
        // The median converges on the measured round trip.
        assert!(
            (fast.median.estimate - 1000.0).abs() < 50.0,
            "{}",
            fast.median.estimate
        );
        assert!(
            (slow.median.estimate - 21000.0).abs() < 500.0,
            "{}",
            slow.median.estimate
        );
    }

    #[test]
    fn pending_lowers_weight_and_errors_lower_availability() {
        let t0: Micros = 5_000_000;
        let mut s = WeightedStats::new(t0, 1);
        let a = s.start_request(t0);
        let end = s.stop_request(t0 + ms(2), a);
        s.record((end - a) as f64);
        let t = t0 + ms(3);
        let idle = s.weight(t, 1.0);
        s.start_stream();
        let busy = s.weight(t, 1.0);
        assert!(busy < idle);
        s.stop_stream();
        assert_eq!(s.pending(), 0);
        s.update_availability(t, 0.0);
        s.update_availability(t + ms(1), 0.0);
        assert!(s.weight(t + ms(1), 1.0) < idle);
    }

    #[test]
    fn decay_matches_exp() {
        for x in [0.0, 1e-9, 1e-6, 5e-5, 1e-4, 0.5, 3.0] {
            assert!((decay(x) - (-x).exp()).abs() < 1e-12, "{x}");
        }
    }

    #[test]
    fn ewma_first_sample_replaces_initial_value_then_decays() {
        let mut e = Ewma::new(AVAILABILITY_TAU_US, 1.0);
        e.insert(10, 0.0);
        assert_eq!(e.value, 0.0);
        e.insert(10 + AVAILABILITY_TAU_US as i64, 1.0);
        let expected = 1.0 - (-1.0f64).exp();
        assert!((e.value - expected).abs() < 1e-9);
    }

    #[test]
    fn idle_member_prediction_decays() {
        let t0: Micros = 5_000_000;
        let mut s = WeightedStats::new(t0, 1);
        let a = s.start_request(t0 + ms(1));
        let end = s.stop_request(t0 + ms(21), a);
        s.record((end - a) as f64);
        let before = s.predicted_latency(t0 + ms(22));
        // 500 × the inter-arrival estimate (1 ms here) of silence.
        let after = s.predicted_latency(t0 + 2_000_000);
        assert!(after < before, "{before} -> {after}");
    }
}
