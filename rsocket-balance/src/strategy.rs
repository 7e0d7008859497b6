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
/// not being removed, in a stable order (insertion order). Never empty
/// when a strategy is asked.
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

    /// The weighted-p2c weight of candidate `i` now (see
    /// [`WeightedP2c`]); 0 for an index out of range.
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

/// Chooses one member per request. Called with the balancer's lock held,
/// so keep it short; it is never called with no candidate.
pub trait Strategy: Send + fmt::Debug + 'static {
    /// Returns an index into `candidates` (out of range is treated as 0).
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
/// take the one with the higher weight
/// `availability / (1 + latency × (pending + 1))` (the statistics are
/// described in the crate's [`manual`](crate::manual)). Up to
/// `max_pair_attempts` draws are made to find a pair with both
/// availabilities above 0.
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

    struct Fixed(&'static str, f64);

    impl View for Fixed {
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
            if self.1 > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }

    impl List for Vec<Fixed> {
        fn len(&self) -> usize {
            Self::len(self)
        }
        fn view(&self, i: usize) -> &dyn View {
            &self[i]
        }
    }

    #[test]
    fn round_robin_cycles() {
        let list = vec![Fixed("a", 1.0), Fixed("b", 1.0), Fixed("c", 1.0)];
        let c = Candidates::new(&list, 0);
        let mut rr = RoundRobin::new();
        let mut rng = Rng::seeded(0);
        let picks: Vec<_> = (0..6).map(|_| rr.select(&c, &mut rng)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn p2c_never_picks_the_lightest_of_three() {
        let list = vec![Fixed("a", 0.5), Fixed("b", 0.01), Fixed("c", 0.6)];
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

    #[test]
    fn p2c_with_two_takes_the_heavier_and_one_takes_it() {
        let two = vec![Fixed("a", 0.1), Fixed("b", 0.2)];
        let mut rng = Rng::seeded(0);
        let mut p2c = WeightedP2c::new();
        assert_eq!(p2c.select(&Candidates::new(&two, 0), &mut rng), 1);
        let one = vec![Fixed("a", 0.0)];
        assert_eq!(p2c.select(&Candidates::new(&one, 0), &mut rng), 0);
        let c = Candidates::new(&one, 0);
        assert_eq!(c.weight(5), 0.0);
        assert!(c.key(5).is_none());
    }
}
