//! Leasing in the sans-IO state machine, with an exact clock: what the
//! fixed policy sends and when, what the responder admits, rejects and
//! drops, and what the requester may send. Driven through
//! `rsocket_core::harness` (frames and time in, frames and events out).

use std::time::{Duration, Instant};

use bytes::Bytes;
use rsocket_core::frame::{
    Lease as LeaseFrame, RequestChannel, RequestFnf, RequestResponse, RequestStream,
};
use rsocket_core::harness::{Event, Harness};
use rsocket_core::{
    Config, ErrorCode, Frame, Interaction, Lease, LeaseConfig, LeasePolicy, NoLease, Payload,
    RequestCount, RequestError, StreamId,
};

const LIFETIME: Duration = Duration::from_secs(3600);

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("valid stream id")
}

fn leasing(policy: Option<LeasePolicy>) -> Config {
    let mut lease = LeaseConfig::new();
    if let Some(p) = policy {
        lease = lease.policy(p);
    }
    Config {
        lease: Some(lease),
        ..Config::default()
    }
}

fn server(policy: Option<LeasePolicy>, t0: Instant) -> Harness {
    Harness::server(leasing(policy), LIFETIME, t0)
}

fn client(policy: Option<LeasePolicy>, t0: Instant) -> Harness {
    Harness::client(leasing(policy), Duration::from_secs(1800), LIFETIME, t0)
}

fn lease_frame(ttl_ms: u32, n: u32) -> Frame {
    Frame::Lease(LeaseFrame {
        ttl_ms,
        number_of_requests: n,
        metadata: None,
    })
}

fn rr(id: u32) -> Frame {
    Frame::RequestResponse(RequestResponse {
        stream_id: sid(id),
        follows: false,
        payload: Payload::from("q"),
    })
}

fn fnf(id: u32) -> Frame {
    Frame::RequestFnf(RequestFnf {
        stream_id: sid(id),
        follows: false,
        payload: Payload::from("f"),
    })
}

fn rs(id: u32) -> Frame {
    Frame::RequestStream(RequestStream {
        stream_id: sid(id),
        follows: false,
        initial_request_n: RequestCount::new(1).expect("n"),
        payload: Payload::from("s"),
    })
}

fn rc(id: u32) -> Frame {
    Frame::RequestChannel(RequestChannel {
        stream_id: sid(id),
        follows: false,
        complete: false,
        initial_request_n: RequestCount::new(1).expect("n"),
        payload: Payload::from("c"),
    })
}

#[track_caller]
fn assert_rejected(frames: &[Frame], id: u32) {
    match frames {
        [Frame::Error(e)] if e.stream_id == Some(sid(id)) && e.code == ErrorCode::REJECTED => {}
        other => panic!("expected only ERROR[REJECTED] on stream {id}, got {other:?}"),
    }
}

#[track_caller]
fn assert_request_event(events: &[Event], id: u32) {
    match events {
        [Event::Request { stream, .. }] if *stream == sid(id) => {}
        other => panic!("expected the request on stream {id} for the handler, got {other:?}"),
    }
}

#[track_caller]
fn assert_no_lease(r: Result<StreamId, RequestError>, why: NoLease) {
    match r {
        Err(RequestError::NoLease(w)) if w == why => {}
        other => panic!("expected NoLease({why:?}), got {other:?}"),
    }
}

#[test]
fn fixed_policy_grants_at_setup_and_again_every_ttl() {
    let t0 = Instant::now();
    let mut h = server(Some(LeasePolicy::fixed(Duration::from_secs(10), 3)), t0);
    assert_eq!(h.new_frames(), vec![lease_frame(10_000, 3)]);
    assert_eq!(h.deadline(), Some(t0 + Duration::from_secs(10)));
    h.advance(t0 + Duration::from_millis(9_999));
    assert_eq!(h.new_frames(), vec![]);
    h.advance(t0 + Duration::from_secs(10));
    assert_eq!(h.new_frames(), vec![lease_frame(10_000, 3)]);
    assert_eq!(h.deadline(), Some(t0 + Duration::from_secs(20)));
    h.advance(t0 + Duration::from_secs(20));
    assert_eq!(h.new_frames(), vec![lease_frame(10_000, 3)]);
}

#[test]
fn fixed_policy_with_metadata_on_a_client_follows_setup() {
    let t0 = Instant::now();
    let lease = Lease::new(Duration::from_millis(1500), 7).with_metadata("md");
    let mut h = client(Some(LeasePolicy::fixed_lease(lease)), t0);
    let frames = h.new_frames();
    match &frames[..] {
        [Frame::Setup(s), Frame::Lease(l)] => {
            assert!(s.lease, "SETUP must carry the L flag");
            assert_eq!(
                l,
                &LeaseFrame {
                    ttl_ms: 1500,
                    number_of_requests: 7,
                    metadata: Some(Bytes::from_static(b"md")),
                }
            );
        }
        other => panic!("expected SETUP(L) then LEASE, got {other:?}"),
    }
}

#[test]
fn responder_rejects_requests_beyond_the_lease_and_counts_them() {
    let t0 = Instant::now();
    let mut h = server(Some(LeasePolicy::fixed(Duration::from_secs(10), 4)), t0);
    h.new_frames();
    // Every request type takes one unit.
    for (i, frame) in [rr(1), rs(3), rc(5)].into_iter().enumerate() {
        assert!(h.frame_in(frame));
        assert_request_event(&h.events(), 1 + 2 * i as u32);
    }
    assert!(h.frame_in(fnf(7)));
    assert!(matches!(&h.events()[..], [Event::FireAndForget(_)]));
    assert_eq!(
        h.new_frames(),
        vec![],
        "admitted requests get no answer yet"
    );
    // The fifth: used up.
    for (id, frame) in [(9, rr(9)), (11, rs(11)), (13, rc(13))] {
        assert!(h.frame_in(frame));
        assert_rejected(&h.new_frames(), id);
        assert!(h.events().is_empty(), "the handler must not run");
    }
    assert!(h.frame_in(fnf(15)));
    assert!(
        h.events().is_empty(),
        "fire-and-forget beyond the lease is dropped"
    );
    assert_eq!(h.new_frames(), vec![], "nothing is sent back for it");
    let stats = h.stats();
    assert_eq!((stats.lease_rejected, stats.lease_dropped_fnf), (3, 1));
    // The re-grant at the TTL admits requests again.
    h.advance(t0 + Duration::from_secs(10));
    assert_eq!(h.new_frames(), vec![lease_frame(10_000, 4)]);
    assert!(h.frame_in(rr(17)));
    assert_request_event(&h.events(), 17);
    h.check_consistency().expect("consistent");
}

#[test]
fn responder_rejects_before_the_first_grant_and_after_expiry() {
    let t0 = Instant::now();
    let mut h = server(None, t0);
    assert_eq!(h.new_frames(), vec![], "no policy: nothing granted");
    assert!(h.frame_in(rr(1)));
    assert_rejected(&h.new_frames(), 1);
    assert!(h.events().is_empty());
    assert!(h.grant_lease(&Lease::new(Duration::from_secs(2), 10)));
    assert_eq!(h.new_frames(), vec![lease_frame(2_000, 10)]);
    h.advance(t0 + Duration::from_millis(1_999));
    assert!(h.frame_in(rr(3)));
    assert_request_event(&h.events(), 3);
    h.advance(t0 + Duration::from_secs(2));
    assert!(h.frame_in(rr(5)));
    assert_rejected(&h.new_frames(), 5);
    assert!(h.frame_in(fnf(7)));
    assert!(h.events().is_empty());
    // A newer grant replaces the old one; zero requests stop everything.
    assert!(h.grant_lease(&Lease::new(Duration::from_secs(60), 0)));
    h.new_frames();
    assert!(h.frame_in(rr(9)));
    assert_rejected(&h.new_frames(), 9);
    assert_eq!(
        (h.stats().lease_rejected, h.stats().lease_dropped_fnf),
        (3, 1)
    );
}

#[test]
fn responder_counts_a_fragmented_request_once_and_rejects_at_its_first_fragment() {
    let t0 = Instant::now();
    let mut h = server(None, t0);
    assert!(h.grant_lease(&Lease::new(Duration::from_secs(60), 1)));
    h.new_frames();
    let first = |id| {
        Frame::RequestResponse(RequestResponse {
            stream_id: sid(id),
            follows: true,
            payload: Payload::from("part1-"),
        })
    };
    let last = |id| {
        Frame::Payload(rsocket_core::frame::PayloadFrame {
            stream_id: sid(id),
            follows: false,
            complete: false,
            next: true,
            payload: Payload::from("part2"),
        })
    };
    assert!(h.frame_in(first(1)));
    assert!(h.frame_in(last(1)));
    match &h.events()[..] {
        [Event::Request {
            stream, payload, ..
        }] => {
            assert_eq!(*stream, sid(1));
            assert_eq!(payload.data, "part1-part2");
        }
        other => panic!("expected the reassembled request, got {other:?}"),
    }
    assert!(h.frame_in(first(3)));
    assert_rejected(&h.new_frames(), 3);
    assert!(h.frame_in(last(3)));
    assert!(h.events().is_empty());
    assert_eq!(h.new_frames(), vec![]);
    assert_eq!(h.stats().reassembly_bytes, 0);
    h.check_consistency().expect("consistent");
}

#[test]
fn requester_needs_a_lease_and_each_request_takes_one() {
    let t0 = Instant::now();
    let mut h = client(None, t0);
    let setup = h.new_frames();
    assert!(matches!(&setup[..], [Frame::Setup(s)] if s.lease));
    let state = h.lease().expect("leasing is on");
    assert_eq!((state.remaining, state.expires_at), (0, None));

    // Before any grant: refused locally, nothing queued.
    assert_no_lease(
        h.open(Interaction::RequestResponse, Payload::from("x"), 1, false),
        NoLease::NotGranted,
    );
    assert_eq!(h.new_frames(), vec![]);
    // Metadata push is not subject to lease.
    assert!(matches!(
        h.metadata_push(Bytes::from_static(b"m")),
        Some(Ok(()))
    ));
    assert!(matches!(&h.new_frames()[..], [Frame::MetadataPush(_)]));

    assert!(h.frame_in(lease_frame(5_000, 2)));
    let state = h.lease().expect("leasing is on");
    assert_eq!(state.remaining, 2);
    assert_eq!(state.allowed, 2);
    assert_eq!(state.expires_at, Some(t0 + Duration::from_secs(5)));
    assert_eq!(state.availability(), 1.0);

    let a = h.open(Interaction::FireAndForget, Payload::from("a"), 1, false);
    assert!(a.is_ok(), "{a:?}");
    assert_eq!(h.lease().map(|s| s.availability()), Some(0.5));
    let b = h.open(Interaction::RequestStream, Payload::from("b"), 8, false);
    let b = b.expect("second request within the lease");
    assert_eq!(h.new_frames().len(), 2);
    assert_no_lease(
        h.open(Interaction::RequestChannel, Payload::from("c"), 1, false),
        NoLease::Exhausted,
    );
    assert_eq!(h.new_frames(), vec![], "no frame for a refused request");
    assert_eq!(h.lease().map(|s| s.remaining), Some(0));

    // A new LEASE replaces the spent one; it expires TTL after receipt.
    h.advance(t0 + Duration::from_secs(1));
    assert!(h.frame_in(lease_frame(1_000, 5)));
    assert!(h
        .open(Interaction::RequestResponse, Payload::from("d"), 1, false)
        .is_ok());
    h.advance(t0 + Duration::from_secs(2));
    assert_eq!(h.lease().map(|s| (s.remaining, s.allowed)), Some((0, 5)));
    assert_no_lease(
        h.open(Interaction::RequestResponse, Payload::from("e"), 1, false),
        NoLease::Expired,
    );
    assert_eq!(h.lease_ready(false).map(|r| r.is_ok()), Some(false));
    h.release_recv(b);
    h.check_consistency().expect("consistent");
}

#[test]
fn a_waiting_request_is_ready_when_a_lease_arrives() {
    let t0 = Instant::now();
    let mut h = client(None, t0);
    h.new_frames();
    assert!(h.lease_ready(true).is_none(), "waits for the first LEASE");
    assert!(matches!(
        h.lease_ready(false),
        Some(Err(RequestError::NoLease(NoLease::NotGranted)))
    ));
    assert!(h.frame_in(lease_frame(1_000, 1)));
    assert!(matches!(h.lease_ready(true), Some(Ok(()))));
}

#[test]
fn without_leasing_lease_frames_are_ignored_and_nothing_is_metered() {
    let t0 = Instant::now();
    let mut h = Harness::server(Config::default(), LIFETIME, t0);
    assert!(h.lease().is_none());
    assert!(!h.grant_lease(&Lease::new(Duration::from_secs(1), 1)));
    assert!(h.frame_in(lease_frame(1, 0)));
    assert!(h.frame_in(rr(1)));
    assert_request_event(&h.events(), 1);
    assert!(h
        .open(Interaction::FireAndForget, Payload::from("x"), 1, false)
        .is_ok());
}

#[test]
fn zero_ttl_stops_requests_and_ttls_travel_in_whole_milliseconds() {
    let t0 = Instant::now();
    let mut h = client(None, t0);
    h.new_frames();
    assert!(h.frame_in(lease_frame(0, 5)));
    assert_no_lease(
        h.open(Interaction::RequestResponse, Payload::from("x"), 1, false),
        NoLease::Expired,
    );
    let mut s = server(None, t0);
    assert!(s.grant_lease(&Lease::new(Duration::from_micros(2_500_900), 1)));
    assert_eq!(s.new_frames(), vec![lease_frame(2_500, 1)]);
    // The responder's view expires with what went on the wire.
    s.advance(t0 + Duration::from_millis(2_500));
    assert!(s.frame_in(rr(1)));
    assert_rejected(&s.new_frames(), 1);
}

#[test]
fn a_fixed_policy_needs_a_ttl_of_at_least_one_millisecond() {
    let bad = leasing(Some(LeasePolicy::fixed(Duration::from_micros(999), 1)));
    assert!(bad.validate().is_err());
    let good = leasing(Some(LeasePolicy::fixed(Duration::from_millis(1), 1)));
    assert!(good.validate().is_ok());
    assert!(leasing(Some(LeasePolicy::fixed(Duration::from_secs(1), 0)))
        .validate()
        .is_ok());
}

#[test]
fn a_fixed_policy_whose_lease_frame_does_not_fit_max_frame_len_is_refused() {
    let policy = |md: usize| {
        LeasePolicy::fixed_lease(Lease::new(Duration::from_secs(1), 1).with_metadata(vec![0; md]))
    };
    let with_max = |md: usize| Config {
        max_frame_len: 1024,
        ..leasing(Some(policy(md)))
    };
    // A LEASE frame is 14 bytes before its metadata.
    assert!(with_max(1024 - 14).validate().is_ok());
    assert_eq!(
        with_max(1024 - 14 + 1).validate(),
        Err(rsocket_core::ConfigError::LeaseFrameTooLong {
            len: 1025,
            max: 1024
        })
    );
}

mod model {
    //! Arbitrary sequences of grants, requests and time against a plain
    //! model of the lease: the engine admits (responder) and sends
    //! (requester) exactly what the newest grant allows, and nothing from
    //! the wire makes it panic or lose count.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A LEASE (granted by us on the server, received on the client).
        Grant {
            ttl_ms: u32,
            n: u32,
        },
        /// A request from the peer (server) or opened locally (client).
        Request {
            fnf: bool,
        },
        Advance {
            ms: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0u32..3_000, 0u32..4).prop_map(|(ttl_ms, n)| Op::Grant { ttl_ms, n }),
            2 => any::<bool>().prop_map(|fnf| Op::Request { fnf }),
            1 => (0u64..1_500).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// The newest grant: (expires at, remaining).
    #[derive(Default)]
    struct Model {
        grant: Option<(Instant, u32)>,
    }

    impl Model {
        fn take(&mut self, now: Instant) -> bool {
            match &mut self.grant {
                Some((expires, left)) if now < *expires && *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        }
    }

    proptest! {
        #[test]
        fn responder_admits_exactly_the_grant(ops in proptest::collection::vec(op(), 1..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut h = server(None, t0);
            let mut model = Model::default();
            let (mut id, mut rejected, mut dropped) = (1u32, 0u64, 0u64);
            for op in ops {
                match op {
                    Op::Grant { ttl_ms, n } => {
                        prop_assert!(h.grant_lease(&Lease::new(Duration::from_millis(u64::from(ttl_ms)), n)));
                        model.grant = Some((now + Duration::from_millis(u64::from(ttl_ms)), n));
                    }
                    Op::Request { fnf: is_fnf } => {
                        let frame = if is_fnf { fnf(id) } else { rr(id) };
                        prop_assert!(h.frame_in(frame));
                        let admitted = model.take(now);
                        let events = h.events();
                        prop_assert_eq!(events.len(), usize::from(admitted), "{:?}", events);
                        if !admitted && is_fnf {
                            dropped += 1;
                        } else if !admitted {
                            rejected += 1;
                        }
                        // Handlers finish at once; streams are answered.
                        for ev in events {
                            match ev {
                                Event::Request { stream, .. } => {
                                    h.send(stream, vec![Payload::from("r")], true);
                                    h.release_send(stream);
                                }
                                _ => h.handler_done(),
                            }
                        }
                        id += 2;
                    }
                    Op::Advance { ms } => {
                        now += Duration::from_millis(ms);
                        h.advance(now);
                    }
                }
                h.new_frames();
                h.transmit(usize::MAX);
                prop_assert_eq!((h.stats().lease_rejected, h.stats().lease_dropped_fnf), (rejected, dropped));
                prop_assert!(h.check_consistency().is_ok());
            }
        }

        #[test]
        fn requester_sends_exactly_what_the_grant_allows(ops in proptest::collection::vec(op(), 1..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut h = client(None, t0);
            h.new_frames();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Grant { ttl_ms, n } => {
                        prop_assert!(h.frame_in(lease_frame(ttl_ms, n)));
                        model.grant = Some((now + Duration::from_millis(u64::from(ttl_ms)), n));
                    }
                    Op::Request { fnf } => {
                        let kind = if fnf { Interaction::FireAndForget } else { Interaction::RequestResponse };
                        let ready = matches!(h.lease_ready(false), Some(Ok(())));
                        let r = h.open(kind, Payload::from("q"), 1, false);
                        let allowed = model.take(now);
                        prop_assert_eq!(ready, allowed);
                        prop_assert_eq!(r.is_ok(), allowed, "{:?}", r);
                        let frames = h.new_frames();
                        prop_assert_eq!(frames.len(), usize::from(allowed), "{:?}", frames);
                        if let Ok(id) = r {
                            if !fnf {
                                // Dropping it sends CANCEL, which is no request.
                                h.release_recv(id);
                                h.new_frames();
                            }
                        }
                    }
                    Op::Advance { ms } => {
                        now += Duration::from_millis(ms);
                        h.advance(now);
                    }
                }
                let left = model.grant.map_or(0, |(e, l)| if now < e { l } else { 0 });
                prop_assert_eq!(h.lease().map(|s| s.remaining), Some(left));
                h.transmit(usize::MAX);
                prop_assert!(h.check_consistency().is_ok());
            }
        }
    }
}
