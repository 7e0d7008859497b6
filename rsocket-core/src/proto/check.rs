//! Self-checks of the connection's bookkeeping, for the test harness.

use super::{Connection, FragKind};
use crate::frame::MAX_U31;

impl Connection {
    /// Recounts what the connection holds and compares it with its running
    /// totals and limits. `Err` names the first mismatch.
    pub(crate) fn check_consistency(&self) -> Result<(), String> {
        let frag_bytes: usize = self.frags.values().map(|r| r.len()).sum();
        let partial = self.frags.values().filter(|r| r.is_request()).count();
        let inbound = self.streams.values().filter(|st| !st.local()).count();
        let in_bytes: usize = self
            .streams
            .values()
            .filter_map(|st| st.recv.as_ref())
            .map(|r| r.queue.bytes())
            .sum();
        let out_bytes: usize = self.out.iter_meta().map(|(len, _)| len).sum();
        let unpaced: usize = self.out.iter_meta().map(|(_, unpaced)| unpaced).sum();
        let (keepalives, keepalives_counted) = self.out.keepalive_counts();
        let totals = [
            ("queued_keepalives", keepalives, keepalives_counted),
            ("reassembly_bytes", self.reassembly_bytes, frag_bytes),
            ("partial_requests", self.partial_requests, partial),
            ("inbound_streams", self.inbound_streams, inbound),
            ("in_bytes", self.in_bytes, in_bytes),
            ("out_bytes", self.out_bytes, out_bytes),
            ("unpaced_bytes", self.unpaced_bytes, unpaced),
        ];
        for (name, kept, counted) in totals {
            if kept != counted {
                return Err(format!("{name} is {kept} but {counted} is held"));
            }
        }
        for (id, r) in &self.frags {
            let ok = match r.kind {
                // A payload is reassembled only for an open inbound half.
                FragKind::Payload { .. } => self
                    .streams
                    .get(id)
                    .is_some_and(|st| st.recv.as_ref().is_some_and(|r| r.end.is_none())),
                // A request is reassembled only for an id not in use.
                _ => !self.streams.contains_key(id),
            };
            if !ok {
                return Err(format!("reassembly on stream {id} that cannot take it"));
            }
        }
        for (id, st) in self.streams.iter() {
            let Some(r) = &st.recv else { continue };
            if r.window >= MAX_U31 || r.replenish == super::Replenish::Manual {
                continue;
            }
            if r.replenish == super::Replenish::Adaptive
                && r.window > self.config.max_prefetch.max(self.config.default_prefetch)
            {
                return Err(format!(
                    "stream {id}: adaptive window {} beyond max_prefetch {}",
                    r.window, self.config.max_prefetch
                ));
            }
            let held = r.queue.len() as u64 + r.outstanding + u64::from(r.consumed);
            if held > u64::from(r.window) + r.extra {
                return Err(format!(
                    "stream {id}: {} queued + {} outstanding + {} consumed exceed the window {}",
                    r.queue.len(),
                    r.outstanding,
                    r.consumed,
                    r.window
                ));
            }
        }
        if self.closed().is_some() && (self.reassembly_bytes > 0 || !self.frags.is_empty()) {
            return Err("a closed connection holds reassembly buffers".into());
        }
        Ok(())
    }

    /// A request on `key` is still arriving in fragments (for the test
    /// harness).
    pub(crate) fn partial_request(&self, key: u32) -> bool {
        self.frags.get(&key).is_some_and(|r| r.is_request())
    }
}
