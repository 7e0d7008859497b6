//! Leasing in the state machine: the grant the peer gave our requester, the
//! grant we gave the peer, and the fixed policy's timer. Time comes in as
//! `now`, like every other deadline here.

use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, trace, warn};

use super::Connection;
use crate::error::{NoLease, RequestError};
use crate::frame::Frame;
use crate::lease::{Lease, LeaseConfig, LeaseState};

/// One grant, as either side keeps it.
#[derive(Debug)]
struct Grant {
    expires_at: Instant,
    remaining: u32,
    allowed: u32,
    metadata: Option<Bytes>,
}

impl Grant {
    fn new(lease: &Lease, from: Instant) -> Self {
        // As the LEASE frame carries it (a struct literal may say more).
        let requests = lease.requests.min(crate::frame::MAX_U31);
        Self {
            expires_at: from + lease.wire_ttl(),
            remaining: requests,
            allowed: requests,
            metadata: lease.metadata.clone(),
        }
    }

    /// Takes one request from an optional grant: `Err` says why not.
    fn take(grant: Option<&mut Self>, now: Instant) -> Result<(), NoLease> {
        Self::check(grant.as_deref(), now)?;
        if let Some(g) = grant {
            g.remaining -= 1;
        }
        Ok(())
    }

    /// Like [`Grant::take`] without taking.
    fn check(grant: Option<&Self>, now: Instant) -> Result<(), NoLease> {
        let g = grant.ok_or(NoLease::NotGranted)?;
        if now >= g.expires_at {
            Err(NoLease::Expired)
        } else if g.remaining == 0 {
            Err(NoLease::Exhausted)
        } else {
            Ok(())
        }
    }
}

/// Leasing state of a connection that negotiated it.
#[derive(Debug)]
pub(crate) struct Leasing {
    /// What the peer granted our requester.
    received: Option<Grant>,
    /// What we granted the peer's requester.
    granted: Option<Grant>,
    /// The fixed policy's grant and when it is due again.
    fixed: Option<(Lease, Instant)>,
    /// Requests waiting for a grant from the peer.
    /// A request returned `Pending` waiting for a grant.
    waiting: bool,
}

impl Connection {
    /// Turns leasing on (the SETUP carried L and both sides agreed). With a
    /// fixed policy the first grant is queued now and repeated every TTL.
    pub(crate) fn enable_lease(&mut self, config: &LeaseConfig, now: Instant) {
        let fixed = config
            .policy
            .as_ref()
            .and_then(|p| p.fixed_grant())
            .map(|l| (l.clone(), now));
        self.lease = Some(Leasing {
            received: None,
            granted: None,
            fixed,
            waiting: false,
        });
        self.regrant_due(now);
    }

    /// Leasing was negotiated on this connection.
    pub(crate) fn lease_enabled(&self) -> bool {
        self.lease.is_some()
    }

    /// The time for lease checks: `clock()` when leasing is on; without
    /// leasing no check reads it, so the clock is not read (a stored
    /// instant stands in).
    pub(crate) fn lease_now(&self, clock: impl FnOnce() -> Instant) -> Instant {
        if self.lease.is_some() {
            clock()
        } else {
            self.last_received
        }
    }

    /// Sends a LEASE to the peer, replacing what we granted before. False
    /// when leasing is off, the connection has ended or the frame would
    /// exceed `max_frame_len`.
    pub(crate) fn grant_lease(&mut self, lease: &Lease, now: Instant) -> bool {
        if self.closed().is_some() {
            return false;
        }
        if self.lease.is_none() {
            return false;
        }
        // LEASE cannot be fragmented: one over the limit is not sent (the
        // transport or the peer would close the connection over it).
        let frame = Frame::Lease(lease.to_frame());
        let len = frame.encoded_len();
        if len > self.config.max_frame_len {
            warn!(
                len,
                max = self.config.max_frame_len,
                "not granting a lease whose frame exceeds max_frame_len"
            );
            return false;
        }
        let Some(l) = self.lease.as_mut() else {
            return false;
        };
        l.granted = Some(Grant::new(lease, now));
        debug!(ttl = ?lease.ttl, requests = lease.requests, "granting a lease");
        self.push_control(frame);
        true
    }

    /// Re-sends the fixed policy's grant when it is due.
    fn regrant_due(&mut self, now: Instant) {
        let Some((lease, due)) = self.lease.as_mut().and_then(|l| l.fixed.as_mut()) else {
            return;
        };
        if now < *due {
            return;
        }
        // `Config::validate` guarantees a TTL of at least 1 ms.
        *due = now + lease.wire_ttl().max(Duration::from_millis(1));
        let lease = lease.clone();
        self.grant_lease(&lease, now);
    }

    /// After a resume: LEASE frames have no position and are not kept, so
    /// one written to the lost transport is gone. Grant again: the fixed
    /// policy's grant now, otherwise what is left of the last grant.
    pub(crate) fn regrant_after_resume(&mut self, now: Instant) {
        let Some(l) = self.lease.as_mut() else {
            return;
        };
        if let Some((_, due)) = l.fixed.as_mut() {
            *due = now;
            self.regrant_due(now);
            return;
        }
        let Some(g) = l.granted.as_ref() else {
            return;
        };
        if now >= g.expires_at {
            return;
        }
        let lease = Lease {
            ttl: g.expires_at - now,
            requests: g.remaining,
            metadata: g.metadata.clone(),
        };
        self.grant_lease(&lease, now);
    }

    /// When the fixed policy grants next.
    pub(crate) fn lease_deadline(&self) -> Option<Instant> {
        self.lease.as_ref()?.fixed.as_ref().map(|(_, due)| *due)
    }

    /// Timer work for leasing.
    pub(crate) fn lease_timeout(&mut self, now: Instant) {
        self.regrant_due(now);
    }

    /// A LEASE arrived: it replaces the previous grant and wakes requests
    /// waiting for one.
    pub(super) fn on_lease(&mut self, frame: crate::frame::Lease, now: Instant) {
        let Some(l) = self.lease.as_mut() else {
            debug!("ignoring LEASE: leasing is not enabled on this connection");
            return;
        };
        let lease = Lease::from_frame(frame);
        trace!(ttl = ?lease.ttl, requests = lease.requests, "lease received");
        l.received = Some(Grant::new(&lease, now));
        if std::mem::take(&mut l.waiting) {
            self.wakeups.lease();
        }
    }

    /// Wakes every request waiting for a lease (the connection ended).
    pub(super) fn wake_lease_waiters(&mut self) {
        if let Some(l) = self.lease.as_mut() {
            if std::mem::take(&mut l.waiting) {
                self.wakeups.lease();
            }
        }
    }

    /// Requester side: may a request be sent now? Ready(Ok) when leasing is
    /// off or the peer's lease allows one (nothing is consumed; `open`
    /// does that). Otherwise `Pending` with `wait` (woken by the next
    /// LEASE or the end of the connection), or the reason.
    pub(crate) fn lease_ready(
        &mut self,
        now: Instant,
        wait: bool,
    ) -> Poll<Result<(), RequestError>> {
        if let Some(refusal) = self.refusal() {
            return Poll::Ready(Err(refusal));
        }
        let Some(l) = self.lease.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match Grant::check(l.received.as_ref(), now) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) if wait => {
                l.waiting = true;
                Poll::Pending
            }
            Err(why) => Poll::Ready(Err(RequestError::NoLease(why))),
        }
    }

    /// Requester side: says why the peer's lease allows no request now.
    pub(super) fn check_lease(&self, now: Instant) -> Result<(), RequestError> {
        match self.lease.as_ref() {
            None => Ok(()),
            Some(l) => Grant::check(l.received.as_ref(), now).map_err(RequestError::NoLease),
        }
    }

    /// Requester side: consumes one request of the peer's lease, or says
    /// why there is none. Always Ok when leasing is off.
    pub(super) fn take_lease(&mut self, now: Instant) -> Result<(), RequestError> {
        match self.lease.as_mut() {
            None => Ok(()),
            Some(l) => Grant::take(l.received.as_mut(), now).map_err(RequestError::NoLease),
        }
    }

    /// Responder side: a new request from the peer arrived; true if our
    /// lease covers it (and one unit is consumed).
    pub(super) fn admit_leased(&mut self, now: Instant) -> bool {
        if self.lease.is_none() {
            return true;
        }
        // A fixed grant due now is sent before the request is judged.
        self.regrant_due(now);
        match self.lease.as_mut() {
            None => true,
            Some(l) => match Grant::take(l.granted.as_mut(), now) {
                Ok(()) => true,
                Err(why) => {
                    debug!(%why, "request beyond the lease we granted");
                    false
                }
            },
        }
    }

    /// What is left of the peer's lease to our requester; `None` when
    /// leasing is off.
    pub(crate) fn lease_state(&self, now: Instant) -> Option<LeaseState> {
        let l = self.lease.as_ref()?;
        Some(match &l.received {
            None => LeaseState {
                remaining: 0,
                allowed: 0,
                expires_at: None,
                metadata: None,
            },
            Some(g) => LeaseState {
                remaining: if now < g.expires_at { g.remaining } else { 0 },
                allowed: g.allowed,
                expires_at: Some(g.expires_at),
                metadata: g.metadata.clone(),
            },
        })
    }
}
