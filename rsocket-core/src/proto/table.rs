//! Values by stream id, without hashing in the common case: the open
//! streams, and the runtime's wakers of their handles.
//!
//! Stream ids of one side are handed out in sequence (1, 3, 5, … or 2, 4,
//! 6, …), so the ids open at once are usually close together: a stream
//! lives in slot `(id / 2) mod slots` of a direct-mapped table, found with
//! one index and one compare. An id whose slot is taken when it opens (a
//! long-lived stream, or ids a peer picked far apart) goes to an overflow
//! map. The table doubles while more than half of its slots would be in
//! use, so while streams are opening it holds at most about four slots per
//! open stream, like a hash map's spare capacity. It shrinks only when
//! asked ([`IdTable::shrink_if_sparse`]): the connection's stream table is
//! asked on each KEEPALIVE, so a burst's memory is given back within a
//! keepalive interval; the runtime's waker tables (16 bytes a slot) are
//! never asked and keep the size of their largest burst, as the hash maps
//! before them did.

use super::ids::IdMap;

/// Slots of the first table.
const MIN_SLOTS: usize = 4;

#[derive(Debug)]
pub(crate) struct IdTable<V> {
    /// Id of the stream in each slot of `states`, 0 when the slot is free
    /// (0 is never a stream id). The length is a power of two (or zero).
    keys: Vec<u32>,
    /// Direct-mapped values, `Some` exactly where `keys` is not 0.
    states: Vec<Option<V>>,
    /// Values whose slot was taken when they were added.
    overflow: IdMap<V>,
    len: usize,
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            states: Vec::new(),
            overflow: IdMap::default(),
            len: 0,
        }
    }
}

impl<V> IdTable<V> {
    #[inline]
    fn slot_of(&self, key: u32) -> usize {
        ((key >> 1) as usize) & self.keys.len().wrapping_sub(1)
    }

    /// The slot holding stream `key`, if it is direct-mapped.
    #[inline]
    fn find(&self, key: u32) -> Option<usize> {
        let slot = self.slot_of(key);
        (key != 0 && self.keys.get(slot) == Some(&key)).then_some(slot)
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub(crate) fn contains_key(&self, key: &u32) -> bool {
        self.get(key).is_some()
    }

    #[inline]
    pub(crate) fn get(&self, key: &u32) -> Option<&V> {
        if let Some(slot) = self.find(*key) {
            return self.states.get(slot).and_then(Option::as_ref);
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.get(key)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: &u32) -> Option<&mut V> {
        if let Some(slot) = self.find(*key) {
            return self.states.get_mut(slot).and_then(Option::as_mut);
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.get_mut(key)
    }

    /// Adds the state of stream `key` (replacing one already there).
    pub(crate) fn insert(&mut self, key: u32, st: V) {
        if let Some(old) = self.get_mut(&key) {
            *old = st;
            return;
        }
        if (self.len + 1) * 2 > self.keys.len() {
            self.grow();
        }
        self.len += 1;
        self.place(key, st);
    }

    /// Adds a value for `key`, which the caller knows has none.
    #[inline]
    pub(crate) fn insert_new(&mut self, key: u32, v: V) {
        if (self.len + 1) * 2 > self.keys.len() {
            self.grow();
        }
        self.len += 1;
        self.place(key, v);
    }

    /// Adds the value `make` builds for `key`, which the caller knows has
    /// none. The value is built where it goes (a free slot is known to
    /// hold `None`: nothing to drop first), not built and then copied.
    #[inline]
    pub(crate) fn insert_new_with(&mut self, key: u32, make: impl FnOnce() -> V) {
        if (self.len + 1) * 2 > self.keys.len() {
            self.grow();
        }
        self.len += 1;
        let slot = self.slot_of(key);
        match (self.keys.get_mut(slot), self.states.get_mut(slot)) {
            (Some(k), Some(s)) if *k == 0 && key != 0 => {
                *k = key;
                s.get_or_insert_with(make);
            }
            _ => {
                self.overflow.insert(key, make());
            }
        }
    }

    /// Puts a stream known not to be in the table in its slot, or in the
    /// overflow map when the slot is taken (or `key` is 0). Inlined: the
    /// value is then written where it goes, not copied there.
    #[inline]
    fn place(&mut self, key: u32, st: V) {
        let slot = self.slot_of(key);
        match (self.keys.get_mut(slot), self.states.get_mut(slot)) {
            (Some(k), Some(s)) if *k == 0 && key != 0 => {
                *k = key;
                *s = Some(st);
            }
            _ => {
                self.overflow.insert(key, st);
            }
        }
    }

    /// Doubles the table (at least `MIN_SLOTS`), placing every stream again.
    #[cold]
    fn grow(&mut self) {
        self.resize(((self.len + 1) * 2).next_power_of_two().max(MIN_SLOTS));
    }

    /// Gives back the memory of a burst: a table left with more than 8
    /// slots per stream goes back to about 4 (the hash map this replaced
    /// never shrank). Called now and then (on KEEPALIVE), not on every
    /// removal: a connection whose streams come and go in batches would
    /// otherwise resize at every batch.
    pub(crate) fn shrink_if_sparse(&mut self) {
        if self.keys.len() > MIN_SLOTS && self.len * 8 < self.keys.len() {
            self.shrink();
        }
    }

    #[cold]
    fn shrink(&mut self) {
        self.resize((self.len * 4).next_power_of_two().max(MIN_SLOTS));
    }

    /// A table of `n` slots (a power of two), every stream placed again.
    fn resize(&mut self, n: usize) {
        let keys = std::mem::replace(&mut self.keys, vec![0; n]);
        let mut states = Vec::with_capacity(n);
        states.resize_with(n, || None);
        let states = std::mem::replace(&mut self.states, states);
        let overflow = std::mem::take(&mut self.overflow);
        let direct = keys
            .into_iter()
            .zip(states)
            .filter_map(|(k, st)| st.map(|st| (k, st)));
        for (key, st) in direct.chain(overflow) {
            self.place(key, st);
        }
    }

    /// Forgets stream `key`, dropping its state where it is (no move out);
    /// returns what `f` read from it first.
    #[inline]
    pub(crate) fn remove_with<R>(&mut self, key: &u32, f: impl FnOnce(&V) -> R) -> Option<R> {
        let r = match self.find(*key) {
            Some(slot) => {
                let r = self.states.get(slot).and_then(Option::as_ref).map(f);
                if let (Some(k), Some(s)) = (self.keys.get_mut(slot), self.states.get_mut(slot)) {
                    *k = 0;
                    *s = None;
                }
                r
            }
            None if self.overflow.is_empty() => None,
            None => self.overflow.remove(key).map(|st| f(&st)),
        };
        if r.is_some() {
            self.len -= 1;
        }
        r
    }

    /// Forgets stream `key` when `f`, given its state, returns something
    /// (which is returned; the state is dropped where it is, after `f` took
    /// what it wanted from it), with one lookup. When `f` returns `None`
    /// the state stays.
    #[inline]
    pub(crate) fn take_if<R>(
        &mut self,
        key: &u32,
        f: impl FnOnce(&mut V) -> Option<R>,
    ) -> Option<R> {
        let r = match self.find(*key) {
            Some(slot) => {
                let (Some(k), Some(s)) = (self.keys.get_mut(slot), self.states.get_mut(slot))
                else {
                    return None;
                };
                let r = f(s.as_mut()?)?;
                *k = 0;
                *s = None;
                r
            }
            None if self.overflow.is_empty() => return None,
            None => {
                let r = f(self.overflow.get_mut(key)?)?;
                self.overflow.remove(key);
                r
            }
        };
        self.len -= 1;
        Some(r)
    }

    /// Forgets stream `key`; returns its state.
    pub(crate) fn remove(&mut self, key: &u32) -> Option<V> {
        let st = match self.find(*key) {
            Some(slot) => {
                if let Some(k) = self.keys.get_mut(slot) {
                    *k = 0;
                }
                self.states.get_mut(slot).and_then(Option::take)
            }
            None => self.overflow.remove(key),
        };
        if st.is_some() {
            self.len -= 1;
        }
        st
    }

    /// Removes every value, handing each to `f`.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(V)) {
        if self.len == 0 {
            return;
        }
        for (k, st) in self.keys.iter_mut().zip(&mut self.states) {
            *k = 0;
            if let Some(v) = st.take() {
                f(v);
            }
        }
        for (_, v) in self.overflow.drain() {
            f(v);
        }
        self.len = 0;
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, st)| st)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &V)> {
        self.keys
            .iter()
            .zip(&self.states)
            .filter_map(|(k, st)| st.as_ref().map(|st| (*k, st)))
            .chain(self.overflow.iter().map(|(k, st)| (*k, st)))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut V)> {
        self.keys
            .iter()
            .zip(&mut self.states)
            .filter_map(|(k, st)| st.as_mut().map(|st| (*k, st)))
            .chain(self.overflow.iter_mut().map(|(k, st)| (*k, st)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stream::{Role, SendHalf, StreamState};
    use crate::proto::Interaction;

    fn st(credit: u64) -> StreamState {
        StreamState {
            interaction: Interaction::RequestStream,
            role: Role::Responder,
            terminated: false,
            recv: None,
            send: Some(SendHalf::new(credit)),
        }
    }

    fn credit(t: &IdTable<StreamState>, key: u32) -> Option<u64> {
        t.get(&key).and_then(|s| s.send.as_ref()).map(|s| s.credit)
    }

    #[test]
    fn colliding_ids_overflow_and_come_back() {
        let mut t = IdTable::<StreamState>::default();
        // 1 and 33 share a slot in any table of up to 16 slots.
        t.insert(1, st(1));
        t.insert(33, st(33));
        t.insert(3, st(3));
        assert_eq!(t.len(), 3);
        assert_eq!(
            (credit(&t, 1), credit(&t, 33), credit(&t, 3)),
            (Some(1), Some(33), Some(3))
        );
        assert!(t.remove(&1).is_some());
        assert!(t.remove(&1).is_none());
        assert_eq!(credit(&t, 33), Some(33));
        // 65's slot is free now, while 33 is still in the overflow map.
        t.insert(65, st(65));
        t.insert(33, st(34));
        assert_eq!(
            (credit(&t, 33), credit(&t, 65), t.len()),
            (Some(34), Some(65), 3)
        );
        let mut keys: Vec<u32> = t.iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        assert_eq!(keys, [3, 33, 65]);
    }

    #[test]
    fn grows_and_keeps_every_stream() {
        let mut t = IdTable::<StreamState>::default();
        let ids: Vec<u32> = (0..1000).map(|i| i * 7919 % 100_003 + 1).collect();
        for &id in &ids {
            t.insert(id, st(u64::from(id)));
        }
        assert_eq!(t.len(), ids.len());
        assert!(t.keys.len() <= 4 * ids.len());
        for &id in &ids {
            assert_eq!(credit(&t, id), Some(u64::from(id)));
        }
        for &id in &ids[..500] {
            assert!(t.remove(&id).is_some());
        }
        assert_eq!(t.len(), 500);
        assert_eq!(t.values().count(), 500);
        for &id in &ids[500..] {
            assert_eq!(credit(&t, id), Some(u64::from(id)));
        }
    }

    #[test]
    fn shrinks_after_a_burst() {
        let mut t = IdTable::<StreamState>::default();
        let ids: Vec<u32> = (0..1000).map(|i| 2 * i + 1).collect();
        for &id in &ids {
            t.insert(id, st(u64::from(id)));
        }
        let peak = t.keys.len();
        assert!(peak >= 2000);
        for &id in &ids[..995] {
            assert!(t.remove(&id).is_some());
        }
        assert_eq!(t.keys.len(), peak, "removals alone do not resize");
        t.shrink_if_sparse();
        assert!(t.keys.len() <= 32, "{} slots for 5 streams", t.keys.len());
        for &id in &ids[995..] {
            assert_eq!(credit(&t, id), Some(u64::from(id)));
        }
        // And grows again.
        for &id in &ids[..995] {
            t.insert(id, st(u64::from(id)));
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.values().count(), 1000);
    }
}
