//! How the balancer works, and why.
//!
//! # Picking
//!
//! Every request/response, stream, fire-and-forget and metadata push picks
//! one member among those that are *ready* and still in the target list;
//! a channel picks once for its whole life. With one candidate the
//! strategy is not consulted.
//!
//! [`WeightedP2c`](crate::WeightedP2c) follows rsocket-java's
//! `WeightedLoadbalanceStrategy`: it draws two distinct candidates and
//! takes the heavier, where
//!
//! ```text
//! weight = availability × availability_ewma / (1 + latency × (pending + 1))
//! ```
//!
//! with latency in microseconds and these inputs, kept per member:
//!
//! * `pending`: request/responses in flight plus open streams and
//!   channels, counted by guards that end with the request (a cancel
//!   included);
//! * `latency`: a frugal median of request/response round trips, with
//!   rsocket-java's adjustments: 0 for an unmeasured idle member, a startup
//!   penalty of 2^51 for an unmeasured busy one (so one probe at a time goes
//!   to a new member), zeros fed in after an idle spell of 500 × the mean
//!   inter-arrival time (so a member that was slow is tried again), the
//!   instantaneous estimate when work in flight has already run longer than
//!   predicted, and a push of `(1 + distance / band)^4` outside the band
//!   between the 0.5 and 0.8 quantiles;
//! * `availability_ewma`: 1 per success and 0 per error, 5 s half-life,
//!   nudged back towards 1 after 7 s without requests;
//! * `availability`: the member's own, 1 when ready and 0 otherwise.
//!
//! **Leasing.** When a member's connection leases
//! ([`ClientBuilder::lease`](rsocket_core::ClientBuilder::lease) in its
//! connector), its own availability is the lease's remaining share
//! (`remaining / allowed`, 0 when spent or expired), so p2c stops sending
//! to a server out of lease, and a request refused locally for want of a
//! lease (`RequestError::NoLease`, nothing sent) is retried without taking
//! this one out of use: the retry's pick usually finds another member, but
//! may take the same one again (always, when it is the only one ready).
//!
//! The randomness is a seedable [`Rng`](crate::Rng) and the time comes from
//! a [`Clock`](crate::Clock) (by default the CPU's time-stamp counter; a
//! test injects [`TokioClock`](crate::TokioClock), which follows
//! `tokio::time::pause`, or a [`ManualClock`](crate::ManualClock)), so a
//! test replays exactly.
//!
//! **Busy balancers time a sample.** Timing a request (two clock readings,
//! the three latency estimates, the moving averages) is about half of what
//! the balancer adds to a request. While requests start at less than
//! 50,000 a second (measured over each millisecond;
//! [`BalancerConfig::busy_rate`](crate::BalancerConfig::busy_rate)), every
//! request/response is timed, as in rsocket-java. Above that rate one in eight is timed,
//! which still feeds the estimates thousands of round trips a second; the
//! others are counted exactly (pending requests, and so the `pending` of
//! the weight) at the time of the latest reading, and record no round trip.
//! A failed request always reads the clock, so the availability average
//! sees every error, and when the rate falls the next timed request (at
//! most eight later) sees it and timing goes back to every request. Tests
//! on a paused clock that start more than 50 requests per millisecond of
//! that clock are sampled too (`weighted_p2c_starves_the_slow_server_while_sampling`
//! in `tests/balance.rs`).
//!
//! [`RoundRobin`](crate::RoundRobin) takes the candidates in turn.
//!
//! # Members
//!
//! ```text
//! Connecting ──dial ok──► Ready ──target removed──► Draining ──► Closed
//!     ▲                     │
//!     │ back-off            │ connection ends, or the server began a
//!     └──── Draining ◄──────┘ graceful close (CONNECTION_CLOSE)
//! ```
//!
//! * A member dials with its connector as soon as its target is inserted.
//!   When a dial fails, or a connection ends while the key is still a
//!   target, it dials again after a jittered exponential back-off
//!   ([`Backoff`](crate::Backoff): from `min`, doubling up to `max`, each
//!   delay drawn from the upper half of its range). A connection that ends
//!   before any request succeeded on it counts as a failed dial, so a
//!   server that accepts and drops at once is not hammered; so does a
//!   connector that panics. The member
//!   takes no traffic until it is ready again; nobody needs to re-send the
//!   target list.
//! * Removing a target (or inserting its key again with a new connector)
//!   drains it: it leaves the ready list at once, its connection is closed
//!   gracefully (CONNECTION_CLOSE; requests and streams in flight finish,
//!   within the connection's `Config::close_timeout`), then the member is
//!   forgotten.
//! * A request that finds its member's connection closing or dead takes
//!   that member out of the ready list at once, without waiting for its
//!   task to notice, and the member re-dials (after the back-off) while it
//!   is still a target, without waiting for that connection to end: a
//!   connection the server is closing gracefully lets what is open on it
//!   finish (within its close timeout), and new requests go to the new
//!   connection.
//! * With no ready member a request waits up to
//!   [`BalancerConfig::wait_for_member`](crate::BalancerConfig::wait_for_member),
//!   then fails with [`RequestError::Unavailable`](rsocket_core::RequestError::Unavailable)
//!   carrying [`BalanceError::NoReadyMember`](crate::BalanceError::NoReadyMember).
//!
//! # Retries
//!
//! A failed attempt is sent again, at most
//! [`BalancerConfig::max_retries`](crate::BalancerConfig::max_retries)
//! times, when the server cannot have processed it. Each retry is a new
//! pick: every failure below except `NoLease` first takes the member's
//! connection out of use, so the retry does not go to it; a member that
//! refused for want of a lease stays ready and may be picked again
//! (always, when it is the only ready member).
//!
//! | failure | retried |
//! |---|---|
//! | never sent: the connection was closed before the request was queued | always |
//! | `RequestError::ConnectionClosing` (the server's CONNECTION_CLOSE arrived first) | always |
//! | `RequestError::NoLease` (leasing on, the member's lease allowed no request; nothing sent) | always |
//! | `ERROR[REJECTED]` for a request that crossed the server's CONNECTION_CLOSE (see below) | always |
//! | the connection died with the request in flight | only if marked idempotent ([`CallOptions`](crate::CallOptions), or [`CallHints`](rsocket_core::CallHints) from the caller, as generated RPC clients pass for methods marked idempotent) |
//! | any other answer (application error, other `REJECTED`, cancel) | never: it is the caller's answer |
//!
//! **A refusal from a closing server.** A server that begins a graceful
//! close sends `ERROR[CONNECTION_CLOSE]` and then answers `ERROR[REJECTED]`
//! to every request that reaches it afterwards: requests the client sent
//! before the CONNECTION_CLOSE arrived. The connection delivers frames in
//! order, and the spec guarantees that a rejected request was not
//! processed, so sending it to another member cannot run it twice. Such a
//! rejection is recognised by what the balancer knows of the member's
//! connection when the rejection is handled, whatever its text:
//!
//! the connection had processed the server's CONNECTION_CLOSE
//! (`Requester::peer_closing`, which stays true once the connection has
//! ended), or another request on it was refused locally with
//! `RequestError::ConnectionClosing` from the remote side. The text plays
//! no part. A rejection from a server that has not begun closing reaches
//! the caller, as any other `REJECTED` does (an application's refusal is
//! the caller's answer).
//!
//! Streams are retried only before their first item; a channel only if it
//! was never sent (its outbound items untouched). Fire-and-forget and
//! metadata push fail only when not queued, so they are always retried.
//! A server's graceful shutdown therefore moves traffic to the other
//! members with no error reaching the caller.
//!
//! # Observability
//!
//! [`Balancer::members`](crate::Balancer::members) returns each member's
//! state, pending count, latency estimate, weight and availability;
//! [`Balancer::state_changes`](crate::Balancer::state_changes) wakes on
//! every change. Through `tracing`: state transitions at `debug` (with
//! pending, latency and availability), dial failures at `warn`, retries at
//! `debug` and each p2c decision at `trace` (both candidates, their weights
//! and the choice).
