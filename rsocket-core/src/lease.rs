//! Leasing (protocol spec §7): a responder meters its peer's requester.
//!
//! A LEASE frame grants the peer permission to start up to
//! [`Lease::requests`] new requests (request/response, stream, channel,
//! fire-and-forget; not metadata push) within [`Lease::ttl`], counted from
//! the moment it is received. The newest LEASE replaces the previous one.
//!
//! Leasing is negotiated per connection: the client sets the L flag in
//! SETUP (`ClientBuilder::lease`) and a server accepts such a SETUP only when
//! it is configured for lease (`Server::lease`; otherwise it answers
//! `ERROR[UNSUPPORTED_SETUP]`). Once negotiated it applies in both
//! directions, since both peers are requester and responder:
//!
//! * **requester side**: no request leaves without a valid lease (unexpired,
//!   count above zero); each one consumes one unit. Without one the request
//!   fails at once with [`RequestError::NoLease`](crate::RequestError::NoLease)
//!   and nothing is sent, or, with [`LeaseConfig::wait`], waits up to that
//!   long for the next LEASE. `Requester::lease` reads what is left.
//! * **responder side**: LEASE frames come from the [`LeasePolicy`] (a fixed
//!   grant re-sent every TTL, or a stream of grants the application
//!   computes), or from `Requester::send_lease`. A request beyond what was
//!   granted (none yet, used up, or expired) is answered
//!   `ERROR[REJECTED]` and its handler never runs; a fire-and-forget beyond
//!   it is dropped and counted in
//!   [`ConnectionStats::lease_dropped_fnf`](crate::ConnectionStats::lease_dropped_fnf).
//!
//! The responder measures a grant's time-to-live from when it queued the
//! LEASE, the requester from when it received it, so the requester's view
//! ends a little later; a request sent in the last moments of a lease can
//! cross its expiry on the way and be rejected. Grant a fresh lease before
//! the old one runs out (the fixed policy re-grants exactly at expiry) or
//! leave some margin.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::config::duration_ms_or_zero;
use crate::frame;

/// One grant: up to `requests` new requests within `ttl` of receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// How long the grant is valid (whole milliseconds on the wire, at most
    /// 2^31 − 1 ms). Zero stops all requests until the next grant.
    pub ttl: Duration,
    /// How many requests it allows (at most 2^31 − 1). Zero stops all
    /// requests until the next grant.
    pub requests: u32,
    /// Optional metadata carried by the LEASE frame.
    pub metadata: Option<Bytes>,
}

impl Lease {
    /// A grant of `requests` requests for `ttl`, without metadata.
    pub fn new(ttl: Duration, requests: u32) -> Self {
        Self {
            ttl,
            requests: requests.min(frame::MAX_U31),
            metadata: None,
        }
    }

    /// The same grant with metadata.
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// The LEASE frame for this grant.
    pub(crate) fn to_frame(&self) -> frame::Lease {
        frame::Lease {
            ttl_ms: duration_ms_or_zero(self.ttl),
            number_of_requests: self.requests.min(frame::MAX_U31),
            metadata: self.metadata.clone(),
        }
    }

    /// The grant a LEASE frame carries.
    pub(crate) fn from_frame(f: frame::Lease) -> Self {
        Self {
            ttl: Duration::from_millis(u64::from(f.ttl_ms)),
            requests: f.number_of_requests,
            metadata: f.metadata,
        }
    }

    /// The time-to-live as it goes on the wire (whole milliseconds).
    pub(crate) fn wire_ttl(&self) -> Duration {
        Duration::from_millis(u64::from(duration_ms_or_zero(self.ttl)))
    }
}

type StreamFactory = dyn Fn() -> BoxStream<'static, Lease> + Send + Sync;

/// Where a responder's grants come from. Each connection that negotiated
/// leasing gets its own grants from the policy.
#[derive(Clone)]
pub struct LeasePolicy {
    pub(crate) kind: PolicyKind,
}

#[derive(Clone)]
pub(crate) enum PolicyKind {
    /// The same grant at once and again every `ttl` (timed by the state
    /// machine, like keepalive).
    Fixed(Lease),
    /// Each connection polls its own stream of grants.
    Stream(Arc<StreamFactory>),
}

impl fmt::Debug for LeasePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PolicyKind::Fixed(l) => f.debug_tuple("LeasePolicy::Fixed").field(l).finish(),
            PolicyKind::Stream(_) => f.write_str("LeasePolicy::Stream"),
        }
    }
}

impl LeasePolicy {
    /// `requests` requests per `ttl`: granted as soon as the connection is
    /// set up, then granted again every `ttl` (each grant replaces the last,
    /// unused requests do not carry over). `ttl` must be at least 1 ms
    /// (`Config::validate` checks it).
    pub fn fixed(ttl: Duration, requests: u32) -> Self {
        Self::fixed_lease(Lease::new(ttl, requests))
    }

    /// Like [`LeasePolicy::fixed`], with a whole [`Lease`] (metadata
    /// included) re-sent every `lease.ttl`.
    pub fn fixed_lease(lease: Lease) -> Self {
        Self {
            kind: PolicyKind::Fixed(lease),
        }
    }

    /// Grants the application computes: `make` is called once per
    /// connection and every item of the stream it returns is sent as a
    /// LEASE as it comes. When the stream ends, no more grants are sent;
    /// a stream that panics ends the same way (logged), and the connection
    /// goes on.
    pub fn stream<F, S>(make: F) -> Self
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Stream<Item = Lease> + Send + 'static,
    {
        Self {
            kind: PolicyKind::Stream(Arc::new(move || make().boxed())),
        }
    }

    /// Grants from a `tokio::sync::watch` channel: every connection sends
    /// the current value when it is set up, then each new value. When the
    /// sender is dropped, no more grants are sent.
    #[cfg(feature = "runtime")]
    pub fn watch(rx: tokio::sync::watch::Receiver<Lease>) -> Self {
        Self::stream(move || {
            let rx = rx.clone();
            futures::stream::unfold((rx, true), |(mut rx, first)| async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let lease = rx.borrow_and_update().clone();
                Some((lease, (rx, false)))
            })
        })
    }

    /// The fixed grant, if this is a fixed policy.
    pub(crate) fn fixed_grant(&self) -> Option<&Lease> {
        match &self.kind {
            PolicyKind::Fixed(l) => Some(l),
            PolicyKind::Stream(_) => None,
        }
    }

    /// A new stream of grants for one connection, if this is a stream
    /// policy.
    pub(crate) fn grants(&self) -> Option<BoxStream<'static, Lease>> {
        match &self.kind {
            PolicyKind::Fixed(_) => None,
            PolicyKind::Stream(make) => Some(make()),
        }
    }
}

/// Leasing settings of a client (`ClientBuilder::lease`) or a server
/// (`Server::lease`); also `Config::lease`.
#[derive(Debug, Clone, Default)]
pub struct LeaseConfig {
    pub(crate) policy: Option<LeasePolicy>,
    pub(crate) wait: Duration,
}

impl LeaseConfig {
    /// Leasing on, no policy (grants only through `Requester::send_lease`;
    /// until one is sent the peer's requests are rejected), requests fail
    /// at once without a valid lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where this side's grants to the peer come from.
    pub fn policy(mut self, policy: LeasePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// How long a request waits for a lease when it has none (default 0:
    /// it fails at once with `RequestError::NoLease`). A request that
    /// waits is sent as soon as a LEASE allows it; after `wait` it fails
    /// with `RequestError::NoLease`. `Requester::with_lease_wait` changes
    /// it per handle.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The policy, if any.
    pub fn lease_policy(&self) -> Option<&LeasePolicy> {
        self.policy.as_ref()
    }

    /// The wait bound.
    pub fn wait_bound(&self) -> Duration {
        self.wait
    }
}

/// What is left of the lease the peer granted this side's requester, from
/// `Requester::lease`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseState {
    /// Requests that may still be sent now (0 once expired or before the
    /// first grant).
    pub remaining: u32,
    /// Requests the current grant allowed in all.
    pub allowed: u32,
    /// When the current grant expires (on tokio's clock in the runtime;
    /// `tokio::time::Instant::from_std` converts it), `None` before the
    /// first grant.
    pub expires_at: Option<Instant>,
    /// The metadata of the current grant.
    pub metadata: Option<Bytes>,
}

impl LeaseState {
    /// A request could be sent now.
    pub fn is_valid(&self) -> bool {
        self.remaining > 0
    }

    /// `remaining / allowed` while the lease is valid, 0 otherwise (what
    /// rsocket-java's lease trackers report to a load balancer).
    pub fn availability(&self) -> f64 {
        if self.remaining == 0 || self.allowed == 0 {
            0.0
        } else {
            f64::from(self.remaining) / f64::from(self.allowed)
        }
    }
}
