//! How a member is chosen for each request: [`RoundRobin`] or
//! [`WeightedP2c`], or any [`Strategy`] of your own.

use std::fmt;
use tracing::trace;

use crate::clock::Micros;
use crate::rng::Rng;

/// What a strategy may ask about one candidate.
pub(crate) trait View {
    fn key(&self) -> &dyn fmt::Debug;
    fn weight(&self, now: Micros) -> f64;
    fn pending(&self) -> u32;
    fn availability(&self) -> f64;
}

/// A list of candidates, without allocating one per pick.
pub(crate) trait List {
    fn len(&self) -> usize;
    fn view(&self, i: usize) -> &dyn View;
}

/// The members a strategy chooses among: every member that is ready and
/// not being removed, in a stable order (insertion order). A strategy is
/// only asked when there are two or more (see [`Strategy`]).
pub struct Candidates<'a> {
    list: &'a dyn List,
    now: Micros,
}

impl fmt::Debug for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for i in 0..self.len() {
            l.entry(self.list.view(i).key());
        }
        l.finish()
    }
}

impl<'a> Candidates<'a> {
    pub(crate) fn new(list: &'a dyn List, now: Micros) -> Self {
        Self { list, now }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.list.len() == 0
    }

    /// The weighted-p2c weight of candidate `i` now (the formula is in
    /// [`WeightedP2c`]'s docs); 0 for an index out of range.
    pub fn weight(&self, i: usize) -> f64 {
        if i >= self.len() {
            return 0.0;
        }
        self.list.view(i).weight(self.now)
    }

    /// Requests in flight plus open streams on candidate `i`.
    pub fn pending(&self, i: usize) -> u32 {
        if i >= self.len() {
            return 0;
        }
        self.list.view(i).pending()
    }

    /// The availability of candidate `i` in `[0, 1]`: 1 for a ready
    /// member, or, when its connection leases, the lease's remaining share
    /// (`remaining / allowed`; 0 once spent or expired).
    pub fn availability(&self, i: usize) -> f64 {
        if i >= self.len() {
            return 0.0;
        }
        self.list.view(i).availability()
    }

    /// The key of candidate `i`, for logging.
    pub fn key(&self, i: usize) -> Option<&dyn fmt::Debug> {
        (i < self.len()).then(|| self.list.view(i).key())
    }
}

/// Chooses one member per request when two or more are ready. With a
/// single ready member the balancer sends to it without calling the
/// strategy (so a strategy that counts its calls, or keeps a cursor as
/// [`RoundRobin`] does, does not see those requests). Called with the
/// balancer's lock held, so keep it short.
pub trait Strategy: Send + fmt::Debug + 'static {
    /// Returns an index into `candidates`; an index out of range picks the
    /// first candidate (index 0).
    fn select(&mut self, candidates: &Candidates<'_>, rng: &mut Rng) -> usize;
}

impl Strategy for Box<dyn Strategy> {
    fn select(&mut self, candidates: &Candidates<'_>, rng: &mut Rng) -> usize {
        (**self).select(candidates, rng)
    }
}

/// Each ready member in turn: over `n × k` requests with a fixed set of
/// `n` members, each gets exactly `k`.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// Starts with the first member.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for RoundRobin {
    fn select(&mut self, candidates: &Candidates<'_>, _rng: &mut Rng) -> usize {
        let i = self.next % candidates.len().max(1);
        self.next = self.next.wrapping_add(1);
        i
    }
}

/// Weighted power of two choices, as rsocket-java's
/// `WeightedLoadbalanceStrategy`: draw two distinct members at random and
/// take the one with the higher weight (the first drawn on a tie), where
///
/// ```text
/// weight = availability × availability_ewma / (1 + latency × (pending + 1))
/// ```
///
/// * `availability`: the member's own, as [`Candidates::availability`]
///   gives it (1 when ready, or its lease's remaining share); a member
///   whose availability is 0 weighs 0;
/// * `availability_ewma`: a moving average of the outcomes on it, 1 per
///   success and 0 per error;
/// * `pending`: its requests in flight plus open streams
///   ([`Candidates::pending`]);
/// * `latency`: its predicted round trip in microseconds, divided by
///   `(1 + distance / band)^4` when below the band between the 0.5 and
///   0.8 quantiles of its measured round trips and multiplied by it when
///   above, where `distance` is how far outside the band it is.
///
/// How each input is estimated (the median, the startup penalty, the
/// decay while idle) is in the manual's [Picking](crate::manual#picking)
/// section.
///
/// With exactly two candidates both are compared. With three or more, up
/// to `max_pair_attempts` pairs are drawn until one has both
/// availabilities above 0; if none has, the last pair drawn is compared.
#[derive(Debug, Clone)]
pub struct WeightedP2c {
    max_pair_attempts: usize,
}

impl Default for WeightedP2c {
    fn default() -> Self {
        Self {
            max_pair_attempts: 5,
        }
    }
}

impl WeightedP2c {
    /// rsocket-java's defaults (5 pair attempts).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many random pairs to draw when looking for two available
    /// members (at least 1).
    #[must_use]
    pub fn max_pair_attempts(mut self, n: usize) -> Self {
        self.max_pair_attempts = n.max(1);
        self
    }
}

impl Strategy for WeightedP2c {
    fn select(&mut self, c: &Candidates<'_>, rng: &mut Rng) -> usize {
        let n = c.len();
        let (a, b) = match n {
            0 | 1 => return 0,
            2 => (0, 1),
            _ => {
                let mut pair = (0, 1);
                for _ in 0..self.max_pair_attempts {
                    let i1 = rng.below(n);
                    let mut i2 = rng.below(n - 1);
                    if i2 >= i1 {
                        i2 += 1;
                    }
                    pair = (i1, i2);
                    if c.availability(i1) > 0.0 && c.availability(i2) > 0.0 {
                        break;
                    }
                }
                pair
            }
        };
        let (wa, wb) = (c.weight(a), c.weight(b));
        let chosen = if wa < wb { b } else { a };
        trace!(
            a = ?c.key(a),
            a.weight = wa,
            b = ?c.key(b),
            b.weight = wb,
            chosen = ?c.key(chosen),
            "p2c"
        );
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate of weight `w`, available when `w` is above 0.
    fn fixed(name: &'static str, w: f64) -> Split {
        Split(name, w, if w > 0.0 { 1.0 } else { 0.0 })
    }

    #[test]
    fn round_robin_cycles() {
        let list = vec![fixed("a", 1.0), fixed("b", 1.0), fixed("c", 1.0)];
        let c = Candidates::new(&list, 0);
        let mut rr = RoundRobin::new();
        let mut rng = Rng::seeded(0);
        let picks: Vec<_> = (0..6).map(|_| rr.select(&c, &mut rng)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn p2c_never_picks_the_lightest_of_three() {
        let list = vec![fixed("a", 0.5), fixed("b", 0.01), fixed("c", 0.6)];
        let c = Candidates::new(&list, 0);
        let mut p2c = WeightedP2c::new();
        let mut rng = Rng::seeded(3);
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[p2c.select(&c, &mut rng)] += 1;
        }
        assert_eq!(counts[1], 0, "{counts:?}");
        // c wins every pair it is in (2/3), a wins only against b (1/3).
        assert!(counts[2] > counts[0], "{counts:?}");
        assert!(format!("{c:?}").contains("\"b\""));
    }

    /// A candidate whose weight and availability are set apart, to see
    /// which pairs p2c compares (a real member with availability 0 also
    /// weighs 0, so it could never win).
    struct Split(&'static str, f64, f64);

    impl View for Split {
        fn key(&self) -> &dyn fmt::Debug {
            &self.0
        }
        fn weight(&self, _now: Micros) -> f64 {
            self.1
        }
        fn pending(&self) -> u32 {
            0
        }
        fn availability(&self) -> f64 {
            self.2
        }
    }

    impl List for Vec<Split> {
        fn len(&self) -> usize {
            Self::len(self)
        }
        fn view(&self, i: usize) -> &dyn View {
            &self[i]
        }
    }

    fn p2c_counts(p2c: &mut WeightedP2c, list: &Vec<Split>, seed: u64) -> Vec<usize> {
        let c = Candidates::new(list, 0);
        let mut rng = Rng::seeded(seed);
        let mut counts = vec![0; list.len()];
        for _ in 0..1000 {
            counts[p2c.select(&c, &mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn p2c_redraws_a_pair_with_an_unavailable_member() {
        // b would win any pair it is in, but its availability is 0.
        let list = vec![
            Split("a", 0.2, 1.0),
            Split("b", 9.0, 0.0),
            Split("c", 0.1, 1.0),
        ];
        // Two pairs in three hold b: 64 attempts always find the other.
        let counts = p2c_counts(&mut WeightedP2c::new().max_pair_attempts(64), &list, 5);
        assert_eq!(counts, [1000, 0, 0]);
        // With one attempt the first pair is compared as drawn: b is in
        // about two thirds of them.
        let counts = p2c_counts(&mut WeightedP2c::new().max_pair_attempts(1), &list, 5);
        assert!((600..730).contains(&counts[1]), "{counts:?}");
        // 0 attempts count as 1.
        let zero = p2c_counts(&mut WeightedP2c::new().max_pair_attempts(0), &list, 5);
        assert_eq!(zero, counts);
        // The default 5 attempts leave b in (2/3)^5 of the pairs, 13 %.
        let counts = p2c_counts(&mut WeightedP2c::new(), &list, 5);
        assert!((90..180).contains(&counts[1]), "{counts:?}");
        // When every member is unavailable, the last pair is compared.
        let none = vec![
            Split("a", 0.2, 0.0),
            Split("b", 9.0, 0.0),
            Split("c", 0.1, 0.0),
        ];
        let counts = p2c_counts(&mut WeightedP2c::new(), &none, 5);
        assert!((600..730).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn p2c_takes_the_first_drawn_on_a_tie() {
        let two = vec![Split("a", 0.5, 1.0), Split("b", 0.5, 1.0)];
        assert_eq!(p2c_counts(&mut WeightedP2c::new(), &two, 1), [1000, 0]);
    }

    #[test]
    fn the_weight_is_availability_times_its_average_over_latency_and_pending() {
        use crate::stats::WeightedStats;
        let ms = |n: i64| n * 1000;
        let t0: Micros = 5_000_000;
        // Unmeasured and idle: latency 0, so the weight is the product of
        // the two availabilities.
        let mut s = WeightedStats::new(t0, 1);
        s.update_availability(t0, 1.0);
        let t1 = t0 + ms(2000);
        s.update_availability(t1, 0.0);
        let average = s.weighted_availability(t1);
        assert!(average > 0.0 && average < 1.0, "{average}");
        assert_eq!(s.weight(t1, 1.0), average);
        assert_eq!(s.weight(t1, 0.25), 0.25 * average);
        assert_eq!(s.weight(t1, 0.0), 0.0);

        // Round trips of 1 to 3 ms, every 5 ms; the same in two copies, so
        // that one gives the inputs and the other the weight (reading the
        // latency can move the estimates).
        let measured = || {
            let mut s = WeightedStats::new(t0, 2);
            let mut t = t0;
            for i in 0..200 {
                let started = s.start_request(t);
                let ended = s.stop_request(t + ms(1 + i % 3), started);
                s.record((ended - started) as f64);
                t += ms(5);
            }
            (s, t)
        };

        // One request in flight for 1 s: the latency predicted is far above
        // the band between the quantiles, and is pushed further up.
        let (mut inputs, t) = measured();
        let (mut s, _) = measured();
        let now = t + ms(1000);
        inputs.start_request(t);
        s.start_request(t);
        let latency = inputs.predicted_latency(now);
        assert!(latency > 900_000.0, "{latency}");
        let unscaled = inputs.weighted_availability(now) / (1.0 + latency * 2.0);
        let weight = s.weight(now, 1.0);
        assert!(
            weight > 0.0 && weight * 1e6 < unscaled,
            "{weight} {unscaled}"
        );

        // Idle for 3 s (over 500 mean inter-arrival times): each reading
        // lowers the median, until it is below the band, where the latency
        // is pulled further down.
        let (mut inputs, t) = measured();
        let (mut s, _) = measured();
        let now = t + ms(3000);
        while inputs.predicted_latency(now) > 500.0 {
            s.predicted_latency(now);
        }
        s.predicted_latency(now);
        let latency = inputs.predicted_latency(now);
        assert!(latency > 100.0, "{latency}");
        let unscaled = inputs.weighted_availability(now) / (1.0 + latency);
        let weight = s.weight(now, 1.0);
        assert!(weight > 5.0 * unscaled, "{weight} {unscaled}");
    }

    #[test]
    fn p2c_with_two_takes_the_heavier_and_one_takes_it() {
        let two = vec![fixed("a", 0.1), fixed("b", 0.2)];
        let mut rng = Rng::seeded(0);
        let mut p2c = WeightedP2c::new();
        assert_eq!(p2c.select(&Candidates::new(&two, 0), &mut rng), 1);
        let one = vec![fixed("a", 0.0)];
        assert_eq!(p2c.select(&Candidates::new(&one, 0), &mut rng), 0);
        let c = Candidates::new(&one, 0);
        assert_eq!(c.weight(5), 0.0);
        assert!(c.key(5).is_none());
    }
}
