//! Target lists: the changes a balancer follows, and helpers that produce
//! them from a fixed list or a `tokio::sync::watch` of lists. DNS is in
//! [`dns`](crate::dns) (feature `dns`), etcd in the `rsocket-balance-etcd`
//! crate.

use std::collections::HashSet;
use std::fmt;

use futures::Stream;
use tokio::sync::watch;

use crate::Key;

/// One change to the set of targets, the shape of tower's `Discover`.
pub enum Change<K, C> {
    /// Add a target (or replace the one with the same key: the old member
    /// drains while the new one connects).
    Insert(K, C),
    /// Remove a target: its member takes no new requests, lets those in
    /// flight finish, then closes.
    Remove(K),
}

impl<K: fmt::Debug, C> fmt::Debug for Change<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Insert(k, _) => f.debug_tuple("Insert").field(k).finish_non_exhaustive(),
            Self::Remove(k) => f.debug_tuple("Remove").field(k).finish(),
        }
    }
}

impl<K, C> Change<K, C> {
    /// The key it is about.
    pub fn key(&self) -> &K {
        match self {
            Self::Insert(k, _) | Self::Remove(k) => k,
        }
    }
}

/// A fixed set: one insert per entry, then the stream ends (the balancer
/// keeps its members).
pub fn from_list<K, C, I>(targets: I) -> impl Stream<Item = Change<K, C>> + Send + 'static
where
    K: Send + 'static,
    C: Send + 'static,
    I: IntoIterator<Item = (K, C)>,
    I::IntoIter: Send + 'static,
{
    futures::stream::iter(targets.into_iter().map(|(k, c)| Change::Insert(k, c)))
}

/// Turns successive full lists into changes. A target is its key: a key
/// that stays keeps its member; to move a target, give it a new key (an
/// address makes a good one).
#[derive(Debug, Clone)]
pub struct Differ<K> {
    known: HashSet<K>,
}

impl<K: Key> Default for Differ<K> {
    fn default() -> Self {
        Self {
            known: HashSet::new(),
        }
    }
}

impl<K: Key> Differ<K> {
    /// Knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The changes from the previous list to `list`: removals first, then
    /// insertions in list order. A key listed twice counts once.
    pub fn diff<C>(&mut self, list: impl IntoIterator<Item = (K, C)>) -> Vec<Change<K, C>> {
        let mut connectors = Vec::new();
        let keys: Vec<K> = list
            .into_iter()
            .map(|(k, c)| {
                connectors.push(Some(c));
                k
            })
            .collect();
        let mut i = 0;
        self.diff_keys(keys, |_| {
            i += 1;
            connectors.get_mut(i - 1).and_then(Option::take)
        })
        .into_iter()
        .filter_map(|c| match c {
            Change::Insert(k, Some(c)) => Some(Change::Insert(k, c)),
            Change::Insert(_, None) => None,
            Change::Remove(k) => Some(Change::Remove(k)),
        })
        .collect()
    }

    /// Like [`diff`](Self::diff) for a list of keys, calling `connector`
    /// once for each key (in list order) and keeping the result only for
    /// new ones.
    pub fn diff_keys<C>(
        &mut self,
        keys: impl IntoIterator<Item = K>,
        mut connector: impl FnMut(&K) -> C,
    ) -> Vec<Change<K, C>> {
        let mut next = HashSet::new();
        let mut inserts = Vec::new();
        for k in keys {
            let c = connector(&k);
            if next.insert(k.clone()) && !self.known.contains(&k) {
                inserts.push(Change::Insert(k, c));
            }
        }
        let mut changes: Vec<_> = self
            .known
            .iter()
            .filter(|k| !next.contains(*k))
            .map(|k| Change::Remove(k.clone()))
            .collect();
        changes.extend(inserts);
        self.known = next;
        changes
    }

    /// The keys of the last list.
    pub fn known(&self) -> impl Iterator<Item = &K> {
        self.known.iter()
    }
}

/// Follows a `watch` of full lists: the current list first, then the
/// difference at every change. Ends when the sender is dropped (the
/// balancer keeps its members).
pub fn from_watch<K, C>(
    rx: watch::Receiver<Vec<(K, C)>>,
) -> impl Stream<Item = Change<K, C>> + Send + 'static
where
    K: Key,
    C: Clone + Send + Sync + 'static,
{
    let state = (rx, Differ::new(), true);
    let batches = futures::stream::unfold(state, |(mut rx, mut differ, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let list = rx.borrow_and_update().clone();
        let changes = differ.diff(list);
        Some((futures::stream::iter(changes), (rx, differ, false)))
    });
    futures::StreamExt::flatten(batches)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn keys(changes: &[Change<&'static str, u8>]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Insert(k, _) => format!("+{k}"),
                Change::Remove(k) => format!("-{k}"),
            })
            .collect()
    }

    #[test]
    fn differ_reports_additions_removals_and_replacements() {
        let mut d = Differ::new();
        assert_eq!(keys(&d.diff([("a", 0), ("b", 0)])), ["+a", "+b"]);
        assert!(d.diff([("b", 0), ("a", 0)]).is_empty());
        assert_eq!(keys(&d.diff([("a", 0), ("c", 0), ("c", 0)])), ["-b", "+c"]);
        assert_eq!(keys(&d.diff(Vec::<(&str, u8)>::new())).len(), 2);
        assert_eq!(d.known().count(), 0);
    }

    #[tokio::test]
    async fn watch_is_diffed() {
        let (tx, rx) = watch::channel(vec![("a", 1u8)]);
        let mut s = Box::pin(from_watch(rx));
        assert_eq!(format!("{:?}", s.next().await), "Some(Insert(\"a\", ..))");
        tx.send(vec![("b", 2)]).unwrap();
        let got = vec![s.next().await.unwrap(), s.next().await.unwrap()];
        assert_eq!(keys(&got), ["-a", "+b"]);
        drop(tx);
        assert!(s.next().await.is_none());
    }
}
