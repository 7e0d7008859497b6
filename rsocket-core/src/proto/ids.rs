//! Stream-id allocation and a cheap hasher for id-keyed maps.

use std::hash::{BuildHasherDefault, Hasher};

use crate::frame::{StreamId, MAX_U31};

/// Hands out odd (client) or even (server) ids, increasing by two, wrapping
/// after 2^31 − 1 to the first id of its parity and skipping ids still in
/// use, as the spec allows.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    first: u32,
    next: u32,
    /// Ids have wrapped: an id handed out may still be in use. Until then
    /// every id is new, and nothing is looked up.
    wrapped: bool,
}

impl IdAllocator {
    pub(crate) fn new(client: bool) -> Self {
        let first = if client { 1 } else { 2 };
        Self {
            first,
            next: first,
            wrapped: false,
        }
    }

    /// The next free id; `None` when every id of our parity is in use.
    /// `live` is the number of ids in use, which bounds the search.
    #[inline]
    pub(crate) fn next(&mut self, live: usize, in_use: impl Fn(u32) -> bool) -> Option<StreamId> {
        if !self.wrapped && self.next + 2 <= MAX_U31 {
            // Before the first wrap every id is new.
            let id = self.next;
            self.next += 2;
            return StreamId::new(id);
        }
        self.next_after_wrap(live, in_use)
    }

    fn next_after_wrap(&mut self, live: usize, in_use: impl Fn(u32) -> bool) -> Option<StreamId> {
        for _ in 0..=live {
            let id = self.next;
            self.next = match id.checked_add(2) {
                Some(n) if n <= MAX_U31 => n,
                _ => {
                    self.wrapped = true;
                    self.first
                }
            };
            if !self.wrapped || !in_use(id) {
                return StreamId::new(id);
            }
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn set_next(&mut self, next: u32) {
        self.next = next;
        self.wrapped = true;
    }
}

/// Multiplicative hasher for `u32` stream ids: ids are not attacker-chosen
/// in a way that matters here (the map is bounded by the stream limit), and
/// SipHash would cost more than the rest of a frame's handling.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type IdMap<V> = std::collections::HashMap<u32, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn take(a: &mut IdAllocator, n: usize, used: &[u32]) -> Vec<u32> {
        (0..n)
            .map(|_| a.next(used.len(), |id| used.contains(&id)).unwrap().get())
            .collect()
    }

    #[test]
    fn client_odd_server_even() {
        assert_eq!(take(&mut IdAllocator::new(true), 3, &[]), vec![1, 3, 5]);
        assert_eq!(take(&mut IdAllocator::new(false), 3, &[]), vec![2, 4, 6]);
    }

    #[test]
    fn wraps_like_rsocket_java() {
        let mut c = IdAllocator::new(true);
        c.set_next(2_147_483_645);
        assert_eq!(
            take(&mut c, 4, &[]),
            vec![2_147_483_645, 2_147_483_647, 1, 3]
        );
        let mut s = IdAllocator::new(false);
        s.set_next(2_147_483_644);
        assert_eq!(
            take(&mut s, 4, &[]),
            vec![2_147_483_644, 2_147_483_646, 2, 4]
        );
    }

    #[test]
    fn wraps_without_lookups_before() {
        let mut c = IdAllocator::new(true);
        c.next = 2_147_483_643;
        assert_eq!(
            take(&mut c, 4, &[]),
            vec![2_147_483_643, 2_147_483_645, 2_147_483_647, 1]
        );
        assert!(c.wrapped);
        let mut s = IdAllocator::new(false);
        s.next = 2_147_483_642;
        assert_eq!(
            take(&mut s, 3, &[2]),
            vec![2_147_483_642, 2_147_483_644, 2_147_483_646]
        );
        // Wrapped: 2 is in use, 4 is not.
        assert_eq!(take(&mut s, 1, &[2]), vec![4]);
    }

    #[test]
    fn skips_ids_in_use_after_wrap() {
        let mut c = IdAllocator::new(true);
        c.set_next(2_147_483_647);
        assert_eq!(take(&mut c, 3, &[1, 3]), vec![2_147_483_647, 5, 7]);
    }

    #[test]
    fn exhausted_when_everything_is_in_use() {
        let mut c = IdAllocator::new(true);
        c.set_next(1);
        assert!(c.next(2, |_| true).is_none());
    }
}
