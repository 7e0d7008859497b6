//! The sans-IO core end to end: a client and a server connection driven
//! against each other by `rsocket_core::pair` (an in-memory link and a fake
//! clock; no tokio, no real time). Each test plays both applications
//! through the two harnesses and checks what arrives on the other side.
//!
//! The property test at the end (`model`) runs arbitrary interleavings of
//! both sides' operations, link steps and clock moves, and checks the
//! end-to-end invariants after every step.

use std::time::Duration;

use bytes::Bytes;
use rsocket_core::frame::{Keepalive, MAX_U31};
use rsocket_core::harness::{Event, Ready, Recv};
use rsocket_core::pair::{Link, Pair, PairConfig, Peer};
use rsocket_core::{
    Config, ConnectionError, ErrorCode, Frame, Initiator, Interaction, Lease, LeaseConfig,
    LeasePolicy, NoLease, Payload, RequestError, StreamError, StreamId,
};

const SEC: Duration = Duration::from_secs(1);

/// Built and settled: the SETUP has crossed, and whatever the server sends
/// at once (a LEASE) too.
fn connected(config: PairConfig) -> Pair {
    let mut p = Pair::new(config);
    p.settle();
    let setup = p.setup().expect("the client's SETUP crossed the link");
    assert_eq!(setup.version.major, 1);
    p.check_consistency().expect("consistent");
    p
}

/// Keepalive every second, dead after five.
fn quick_keepalive(config: Config) -> PairConfig {
    PairConfig::both(config).keepalive(SEC, 5 * SEC)
}

/// The one request `peer`'s responder was given.
#[track_caller]
fn the_request(p: &mut Pair, peer: Peer) -> (StreamId, Interaction, Payload) {
    match &p.events(peer)[..] {
        [Event::Request {
            stream,
            interaction,
            payload,
        }] => (*stream, *interaction, payload.clone()),
        other => panic!("expected one request at the {peer:?}, got {other:?}"),
    }
}

/// The item with sequence number `seq`.
fn item(seq: u64) -> Payload {
    Payload::from(format!("item-{seq}"))
}

/// Its sequence number.
#[track_caller]
fn seq_of(p: &Payload) -> u64 {
    let s = std::str::from_utf8(&p.data).expect("utf-8");
    s.strip_prefix("item-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an item: {s:?}"))
}

/// Credit a consumer on `peer` granted on `stream` in the frames it queued
/// since the last look (initial request-n and REQUEST_N).
fn granted_in(p: &mut Pair, peer: Peer, stream: StreamId) -> u64 {
    p.peer(peer)
        .new_frames()
        .iter()
        .map(|f| match f {
            Frame::RequestStream(r) if r.stream_id == stream => {
                u64::from(r.initial_request_n.get())
            }
            Frame::RequestChannel(r) if r.stream_id == stream => {
                u64::from(r.initial_request_n.get())
            }
            Frame::RequestN(n) if n.stream_id == stream => u64::from(n.request_n.get()),
            _ => 0,
        })
        .sum()
}

/// Frames of this kind that `from` sent, in the pair's log.
fn sent_by(p: &Pair, from: Peer, pred: impl Fn(&Frame) -> bool) -> usize {
    p.log()
        .iter()
        .filter(|d| d.from == from && pred(&d.frame))
        .count()
}

#[track_caller]
fn assert_idle(p: &mut Pair) {
    for peer in Peer::BOTH {
        let s = p.peer(peer).stats();
        assert_eq!(
            (s.open_streams, s.queued_in_bytes, s.inbound_streams),
            (0, 0, 0),
            "{peer:?} still holds something: {s:?}"
        );
    }
    p.check_consistency().expect("consistent");
}

#[test]
fn request_response_round_trip() {
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(
            Interaction::RequestResponse,
            Payload::from("ping"),
            1,
            false,
        )
        .expect("open");
    assert!(matches!(p.client().recv(id, 0, 1), Recv::Pending));
    p.settle();
    let (stream, interaction, payload) = the_request(&mut p, Peer::Server);
    assert_eq!(
        (stream, interaction, payload),
        (id, Interaction::RequestResponse, Payload::from("ping"))
    );
    assert!(matches!(p.client().recv(id, 0, 1), Recv::Pending));
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(1));
    p.server().send(id, vec![Payload::from("pong")], true);
    p.server().release_send(id);
    p.settle();
    match p.client().recv(id, 0, 4) {
        Recv::Items(v) => assert_eq!(v, vec![Payload::from("pong")]),
        other => panic!("expected the answer, got {other:?}"),
    }
    assert!(matches!(p.client().recv(id, 1, 4), Recv::End));
    let frames: Vec<(Peer, Frame)> = p
        .take_log()
        .into_iter()
        .map(|d| (d.from, d.frame))
        .collect();
    match &frames[..] {
        [(Peer::Client, Frame::RequestResponse(rq)), (Peer::Server, Frame::Payload(rs))] => {
            assert_eq!((rq.stream_id, rs.stream_id), (id, id));
            assert!(rs.next && rs.complete && !rs.follows, "{rs:?}");
        }
        other => panic!("expected the request and its answer, got {other:?}"),
    }
    assert_idle(&mut p);
}

#[test]
fn a_slow_consumer_holds_the_producer_to_its_window() {
    const N: u64 = 40;
    const W: u32 = 4;
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), W, false)
        .expect("open");
    let mut granted = granted_in(&mut p, Peer::Client, id);
    assert_eq!(granted, u64::from(W));
    p.settle();
    let (stream, interaction, _) = the_request(&mut p, Peer::Server);
    assert_eq!((stream, interaction), (id, Interaction::RequestStream));

    let (mut sent, mut received, mut reported, mut unreported) = (0u64, 0u64, 0u64, 0u32);
    let (mut waits, mut max_credit, mut ended) = (0, 0, false);
    for round in 0..2_000 {
        // The producer: as much as it is told it may, three at a time.
        if sent < N {
            match p.server().send_ready(id, false) {
                Ready::Credit(c) => {
                    max_credit = max_credit.max(c);
                    assert!(
                        sent + c <= granted,
                        "round {round}: told of {c} credit after {sent} sent, {granted} granted"
                    );
                    let n = c.min(N - sent).min(3);
                    let items = (sent..sent + n).map(item).collect();
                    sent += n;
                    p.server().send(id, items, sent == N);
                    if sent == N {
                        p.server().release_send(id);
                    }
                }
                Ready::Pending => waits += 1,
                Ready::Stopped => panic!("round {round}: producer stopped"),
            }
        }
        p.step();
        // The consumer: one item every third round.
        if round % 3 == 0 {
            reported += u64::from(unreported);
            match p.client().recv(id, std::mem::take(&mut unreported), 1) {
                Recv::Items(v) => {
                    assert_eq!(v.len(), 1);
                    assert_eq!(seq_of(&v[0]), received, "out of order or duplicated");
                    received += 1;
                    unreported = 1;
                }
                Recv::End => {
                    ended = true;
                    break;
                }
                Recv::Pending => {}
                Recv::Failed(e) => panic!("round {round}: stream failed: {e}"),
            }
        }
        granted += granted_in(&mut p, Peer::Client, id);
        assert!(
            granted <= reported + u64::from(W),
            "round {round}: {granted} granted with {reported} consumed and a window of {W}"
        );
        p.check_consistency().expect("consistent");
    }
    assert!(ended, "the stream did not end: {received} of {N} received");
    assert_eq!((sent, received), (N, N));
    assert!(
        max_credit <= u64::from(W),
        "credit {max_credit} beyond the window"
    );
    assert!(waits > 0, "the producer never had to wait for the consumer");
    assert_idle(&mut p);
}

#[test]
fn a_slow_link_backs_up_into_the_producer_and_loses_nothing() {
    const N: u64 = 300;
    const CAP: usize = 512;
    let config = Config {
        max_outbound_queue_bytes: CAP,
        ..Config::default()
    };
    let link = Link {
        step_bytes: 32,
        in_flight_bytes: 96,
    };
    let mut p = connected(PairConfig::both(config).link(link));
    let id = p
        .client()
        .open(
            Interaction::RequestStream,
            Payload::from("s"),
            MAX_U31,
            false,
        )
        .expect("open");
    p.settle();
    let (stream, _, _) = the_request(&mut p, Peer::Server);
    assert_eq!(stream, id);
    let (mut sent, mut received, mut waits, mut max_queued) = (0u64, 0u64, 0, 0);
    for round in 0..10_000 {
        if sent < N {
            match p.server().send_ready(id, false) {
                Ready::Credit(c) => {
                    assert_eq!(c, u64::from(MAX_U31), "unbounded credit");
                    let items: Vec<Payload> = (sent..(sent + 4).min(N)).map(item).collect();
                    sent += items.len() as u64;
                    p.server().send(id, items, sent == N);
                    if sent == N {
                        p.server().release_send(id);
                    }
                }
                Ready::Pending => waits += 1,
                Ready::Stopped => panic!("round {round}: producer stopped"),
            }
        }
        max_queued = max_queued.max(p.server().stats().queued_out_bytes);
        let (_, in_flight) = p.in_flight(Peer::Server);
        assert!(
            in_flight <= 96 + 32,
            "round {round}: {in_flight} bytes in flight"
        );
        p.step();
        match p.client().recv(id, 0, 64) {
            Recv::Items(v) => {
                for it in v {
                    assert_eq!(seq_of(&it), received, "out of order or duplicated");
                    received += 1;
                }
            }
            Recv::End => break,
            Recv::Pending => {}
            Recv::Failed(e) => panic!("round {round}: stream failed: {e}"),
        }
    }
    assert_eq!((sent, received), (N, N));
    assert!(
        waits > 0,
        "the producer never waited for room: {max_queued} queued at most"
    );
    // Producers are held below the cap; one batch may overshoot it.
    assert!(
        max_queued < CAP + 4 * item(N).len() + 4 * 9,
        "{max_queued} bytes queued, cap {CAP}"
    );
    assert_idle(&mut p);
}

#[test]
fn a_channel_carries_items_both_ways_with_credit_on_each() {
    const N: u64 = 10;
    let config = Config {
        default_prefetch: 2,
        ..Config::default()
    };
    let mut p = connected(PairConfig::both(config));
    let id = p
        .client()
        .open(
            Interaction::RequestChannel,
            Payload::from("hello"),
            3,
            false,
        )
        .expect("open");
    p.settle();
    let (stream, interaction, payload) = the_request(&mut p, Peer::Server);
    assert_eq!(
        (stream, interaction, payload),
        (id, Interaction::RequestChannel, Payload::from("hello"))
    );
    // Per direction, indexed by producer: sent, received, consumer's
    // unreported items, credit granted, ended.
    let mut sent = [0u64; 2];
    let mut received = [0u64; 2];
    let mut unreported = [0u32; 2];
    let mut granted = [0u64, 3];
    let mut ended = [false; 2];
    let index = |peer: Peer| usize::from(peer == Peer::Server);
    // The requester's own REQUEST_CHANNEL(3) was queued at open.
    assert_eq!(granted_in(&mut p, Peer::Client, id), 3);
    for round in 0..500 {
        for producer in Peer::BOTH {
            let i = index(producer);
            if sent[i] == N {
                continue;
            }
            // The requester looks ahead (zero credit is an answer) as the
            // runtime's channel sender does.
            match p.peer(producer).send_ready(id, producer == Peer::Client) {
                Ready::Credit(c) => {
                    assert!(
                        sent[i] + c <= granted[i],
                        "{producer:?} told of {c} after {} sent, {} granted",
                        sent[i],
                        granted[i]
                    );
                    let n = c.min(N - sent[i]).min(2);
                    let items = (sent[i]..sent[i] + n).map(item).collect();
                    sent[i] += n;
                    p.peer(producer).send(id, items, sent[i] == N);
                    if sent[i] == N {
                        p.peer(producer).release_send(id);
                    }
                }
                Ready::Pending => {}
                Ready::Stopped => panic!("round {round}: {producer:?} stopped"),
            }
        }
        p.step();
        for consumer in Peer::BOTH {
            let i = index(consumer.other());
            if ended[i] {
                continue;
            }
            match p
                .peer(consumer)
                .recv(id, std::mem::take(&mut unreported[index(consumer)]), 1)
            {
                Recv::Items(v) => {
                    for it in &v {
                        assert_eq!(seq_of(it), received[i], "{consumer:?} got it out of order");
                        received[i] += 1;
                    }
                    unreported[index(consumer)] += v.len() as u32;
                }
                Recv::End => ended[i] = true,
                Recv::Pending => {}
                Recv::Failed(e) => panic!("round {round}: {consumer:?} failed: {e}"),
            }
            granted[i] += granted_in(&mut p, consumer, id);
        }
        if ended == [true; 2] {
            break;
        }
    }
    assert_eq!(ended, [true; 2], "sent {sent:?}, received {received:?}");
    assert_eq!((sent, received), ([N; 2], [N; 2]));
    // The responder's inbound half granted its prefetch, then replenished.
    assert!(
        sent_by(&p, Peer::Server, |f| matches!(f, Frame::RequestN(_))) >= 2,
        "the responder never replenished the requester's credit"
    );
    assert_idle(&mut p);
}

#[test]
fn cancel_from_the_requester_stops_the_producer() {
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 8, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(8));
    p.server().send(id, (0..3).map(item).collect(), false);
    p.settle();
    match p.client().recv(id, 0, 8) {
        Recv::Items(v) => assert_eq!(v.iter().map(seq_of).collect::<Vec<_>>(), [0, 1, 2]),
        other => panic!("expected three items, got {other:?}"),
    }
    p.client().release_recv(id);
    assert_eq!(p.client().stats().open_streams, 0);
    // Until the CANCEL arrives the producer may go on.
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(5));
    p.take_log();
    p.settle();
    match p.log() {
        [d] => assert!(
            matches!(&d.frame, Frame::Cancel(c) if c.stream_id == id) && d.from == Peer::Client,
            "{d:?}"
        ),
        other => panic!("expected the CANCEL alone, got {other:?}"),
    }
    assert_eq!(p.server().send_ready(id, false), Ready::Stopped);
    // What a producer might still try is not sent.
    p.server().send(id, vec![item(3)], true);
    p.server().release_send(id);
    p.take_log();
    p.settle();
    assert_eq!(p.log(), &[], "nothing follows the CANCEL");
    assert_idle(&mut p);
}

#[test]
fn an_error_from_the_responder_fails_the_requester_with_its_code() {
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 8, false)
        .expect("open");
    let rr = p
        .client()
        .open(Interaction::RequestResponse, Payload::from("q"), 1, false)
        .expect("open");
    p.settle();
    let events = p.events(Peer::Server);
    assert_eq!(events.len(), 2, "{events:?}");
    p.server().send(id, vec![item(0), item(1)], false);
    p.server().send_error(id, &StreamError::application("boom"));
    p.server().release_send(id);
    let custom = StreamError::new(ErrorCode(0x0000_0301), "custom code");
    p.server().send_error(rr, &custom);
    p.server().release_send(rr);
    p.settle();
    match p.client().recv(id, 0, 8) {
        Recv::Items(v) => assert_eq!(v.iter().map(seq_of).collect::<Vec<_>>(), [0, 1]),
        other => panic!("expected the items sent before the error, got {other:?}"),
    }
    match p.client().recv(id, 2, 8) {
        Recv::Failed(RequestError::Stream(e)) => {
            assert_eq!(
                (e.code, e.message.as_str()),
                (ErrorCode::APPLICATION_ERROR, "boom")
            );
        }
        other => panic!("expected the stream error, got {other:?}"),
    }
    match p.client().recv(rr, 0, 1) {
        Recv::Failed(RequestError::Stream(e)) => assert_eq!(e, custom),
        other => panic!("expected the custom error, got {other:?}"),
    }
    assert_idle(&mut p);
}

#[test]
fn fire_and_forget_and_metadata_push_arrive_as_events_both_ways() {
    let mut p = connected(PairConfig::default());
    p.client()
        .open(Interaction::FireAndForget, Payload::from("f1"), 1, false)
        .expect("open");
    assert!(matches!(
        p.client().metadata_push(Bytes::from_static(b"m1")),
        Some(Ok(()))
    ));
    // The server is a requester too.
    p.server()
        .open(Interaction::FireAndForget, Payload::from("f2"), 1, false)
        .expect("open");
    assert!(matches!(
        p.server().metadata_push(Bytes::from_static(b"m2")),
        Some(Ok(()))
    ));
    p.settle();
    assert_eq!(
        p.events(Peer::Server),
        vec![
            Event::FireAndForget(Payload::from("f1")),
            Event::MetadataPush(Bytes::from_static(b"m1")),
        ]
    );
    assert_eq!(
        p.events(Peer::Client),
        vec![
            Event::FireAndForget(Payload::from("f2")),
            Event::MetadataPush(Bytes::from_static(b"m2")),
        ]
    );
    for peer in Peer::BOTH {
        assert_eq!(p.peer(peer).stats().handlers_running, 2);
        p.peer(peer).handler_done();
        p.peer(peer).handler_done();
        assert_eq!(p.peer(peer).stats().handlers_running, 0);
    }
    assert_idle(&mut p);
}

#[test]
fn running_one_way_handlers_pause_reading_until_they_finish() {
    let config = Config {
        max_concurrent_inbound_streams: 2,
        ..Config::default()
    };
    let mut p = connected(PairConfig::both(config));
    for i in 0..5 {
        p.client()
            .open(
                Interaction::FireAndForget,
                Payload::from(format!("f{i}")),
                1,
                false,
            )
            .expect("open");
    }
    p.settle();
    assert_eq!(
        p.events(Peer::Server).len(),
        2,
        "reading pauses at the limit"
    );
    assert_eq!(p.in_flight(Peer::Client).0, 3, "the rest waits on the wire");
    p.server().handler_done();
    p.settle();
    assert_eq!(
        p.events(Peer::Server),
        vec![Event::FireAndForget(Payload::from("f2"))]
    );
    p.server().handler_done();
    p.server().handler_done();
    p.settle();
    assert_eq!(p.events(Peer::Server).len(), 2);
    assert_eq!(p.in_flight(Peer::Client), (0, 0));
}

#[test]
fn keepalive_timeout_closes_both_sides_when_the_link_stalls() {
    let mut p = connected(quick_keepalive(Config::default()));
    let id = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 4, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    // A live link first: keepalives flow.
    p.advance(3 * SEC);
    assert_eq!(p.closed(Peer::Client).map(|e| e.to_string()), None);
    p.stall();
    p.take_log();
    p.advance(Duration::from_millis(4_900));
    assert_eq!(p.log(), &[], "nothing crosses a stalled link");
    assert!(p.closed(Peer::Client).is_none() && p.closed(Peer::Server).is_none());
    p.advance(Duration::from_millis(200));
    for peer in Peer::BOTH {
        assert!(
            matches!(p.closed(peer), Some(ConnectionError::KeepaliveTimeout)),
            "{peer:?}: {:?}",
            p.closed(peer)
        );
    }
    match p.client().recv(id, 0, 1) {
        Recv::Failed(RequestError::Connection(ConnectionError::KeepaliveTimeout)) => {}
        other => panic!("expected the stream to fail with the timeout, got {other:?}"),
    }
    assert_eq!(p.server().send_ready(id, false), Ready::Stopped);
    p.server().release_send(id);
    assert_idle(&mut p);
}

#[test]
fn keepalive_answered_over_a_live_link_keeps_it_open() {
    let mut p = connected(quick_keepalive(Config::default()));
    let setup = p.setup().expect("setup");
    assert_eq!(
        (setup.keepalive_interval_ms, setup.max_lifetime_ms),
        (1_000, 5_000)
    );
    p.advance(60 * SEC);
    assert!(
        p.closed(Peer::Client).is_none(),
        "{:?}",
        p.closed(Peer::Client)
    );
    assert!(
        p.closed(Peer::Server).is_none(),
        "{:?}",
        p.closed(Peer::Server)
    );
    let asked = sent_by(&p, Peer::Client, |f| {
        matches!(f, Frame::Keepalive(Keepalive { respond: true, .. }))
    });
    let answered = sent_by(&p, Peer::Server, |f| {
        matches!(f, Frame::Keepalive(Keepalive { respond: false, .. }))
    });
    assert_eq!((asked, answered), (60, 60));
    assert_eq!(p.log().len(), 120, "nothing but keepalives: {:?}", p.log());
    // The first answer came back at once, at one second.
    let first = p
        .log()
        .iter()
        .find(|d| d.from == Peer::Server)
        .expect("an answer");
    assert_eq!(first.at - p.log()[0].at, Duration::ZERO);
    assert_eq!(p.elapsed(), 60 * SEC);
}

#[test]
fn graceful_drain_lets_open_streams_finish_and_refuses_new_ones() {
    let mut p = connected(PairConfig::default());
    let rs = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 16, false)
        .expect("open");
    let rr = p
        .server()
        .open(Interaction::RequestResponse, Payload::from("q"), 1, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    the_request(&mut p, Peer::Client);

    p.client().start_drain(30 * SEC);
    p.settle();
    assert!(
        p.log().iter().any(|d| d.from == Peer::Client
            && matches!(&d.frame, Frame::Error(e) if e.stream_id.is_none() && e.code == ErrorCode::CONNECTION_CLOSE)),
        "no CONNECTION_CLOSE: {:?}",
        p.log()
    );
    for (peer, initiator) in [
        (Peer::Client, Initiator::Local),
        (Peer::Server, Initiator::Remote),
    ] {
        match p
            .peer(peer)
            .open(Interaction::RequestResponse, Payload::from("x"), 1, false)
        {
            Err(RequestError::ConnectionClosing { initiator: i }) => assert_eq!(i, initiator),
            other => panic!("{peer:?}: expected a refusal, got {other:?}"),
        }
        assert!(!p.peer(peer).can_open());
    }

    // The open streams finish.
    p.server().send(rs, (0..5).map(item).collect(), true);
    p.server().release_send(rs);
    p.settle();
    match p.client().recv(rs, 0, 16) {
        Recv::Items(v) => assert_eq!(v.iter().map(seq_of).collect::<Vec<_>>(), [0, 1, 2, 3, 4]),
        other => panic!("expected the items, got {other:?}"),
    }
    assert!(matches!(p.client().recv(rs, 5, 16), Recv::End));
    assert!(
        p.closed(Peer::Client).is_none(),
        "closed while a stream is open"
    );
    assert_eq!(p.client().send_ready(rr, false), Ready::Credit(1));
    p.client().send(rr, vec![Payload::from("a")], true);
    p.client().release_send(rr);
    p.settle();
    match p.server().recv(rr, 0, 1) {
        Recv::Items(v) => assert_eq!(v, vec![Payload::from("a")]),
        other => panic!("the answer sent while draining was lost: {other:?}"),
    }
    assert!(matches!(p.server().recv(rr, 1, 1), Recv::End));

    // Both ends closed, gracefully.
    assert!(
        matches!(p.closed(Peer::Client), Some(ConnectionError::LocallyClosed)),
        "{:?}",
        p.closed(Peer::Client)
    );
    assert!(
        matches!(p.closed(Peer::Server), Some(ConnectionError::Remote { code, .. }) if code == ErrorCode::CONNECTION_CLOSE),
        "{:?}",
        p.closed(Peer::Server)
    );
    assert_idle(&mut p);
}

#[test]
fn a_request_crossing_the_close_is_rejected_not_lost() {
    let mut p = connected(PairConfig::default());
    let rs = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 4, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    p.stall();
    let rr = p
        .client()
        .open(
            Interaction::RequestResponse,
            Payload::from("late"),
            1,
            false,
        )
        .expect("open");
    p.server().start_drain(30 * SEC);
    p.unstall();
    p.settle();
    assert!(
        p.events(Peer::Server).is_empty(),
        "the handler must not run"
    );
    match p.client().recv(rr, 0, 1) {
        Recv::Failed(RequestError::Stream(e)) => assert_eq!(e.code, ErrorCode::REJECTED),
        other => panic!("expected REJECTED, got {other:?}"),
    }
    match p
        .client()
        .open(Interaction::FireAndForget, Payload::from("x"), 1, false)
    {
        Err(RequestError::ConnectionClosing {
            initiator: Initiator::Remote,
        }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    p.server().send(rs, vec![item(0)], true);
    p.server().release_send(rs);
    p.settle();
    assert!(matches!(p.client().recv(rs, 0, 4), Recv::Items(v) if v.len() == 1));
    assert!(matches!(p.client().recv(rs, 1, 4), Recv::End));
    assert!(matches!(
        p.closed(Peer::Server),
        Some(ConnectionError::LocallyClosed)
    ));
    assert!(matches!(
        p.closed(Peer::Client),
        Some(ConnectionError::Remote { code, .. }) if code == ErrorCode::CONNECTION_CLOSE
    ));
    assert_idle(&mut p);
}

#[test]
fn a_dropped_link_fails_everything_open_on_both_sides() {
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestChannel, Payload::from("c"), 4, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    p.drop_link();
    for peer in Peer::BOTH {
        assert!(
            matches!(p.closed(peer), Some(ConnectionError::ClosedByPeer)),
            "{peer:?}: {:?}",
            p.closed(peer)
        );
        assert!(matches!(
            p.peer(peer).recv(id, 0, 1),
            Recv::Failed(RequestError::Connection(ConnectionError::ClosedByPeer))
        ));
        assert_eq!(p.peer(peer).send_ready(id, true), Ready::Stopped);
        p.peer(peer).release_send(id);
    }
    assert_eq!(p.step(), 0, "a dropped link moves nothing");
    assert_idle(&mut p);
}

#[test]
fn lease_negotiated_on_the_pair_admits_exactly_the_grant() {
    let lease = |policy: Option<LeasePolicy>| Config {
        lease: Some(match policy {
            Some(policy) => LeaseConfig::new().policy(policy),
            None => LeaseConfig::new(),
        }),
        ..Config::default()
    };
    let mut config = PairConfig::both(lease(None));
    config.server = lease(Some(LeasePolicy::fixed(10 * SEC, 3)));
    let mut p = connected(config);
    assert!(p.setup().expect("setup").lease, "SETUP carries the L flag");
    let state = p.client().lease().expect("leasing is on");
    assert_eq!((state.remaining, state.allowed), (3, 3));
    for i in 0..3 {
        let r = p.client().open(
            Interaction::RequestResponse,
            Payload::from(format!("q{i}")),
            1,
            false,
        );
        assert!(r.is_ok(), "request {i}: {r:?}");
    }
    match p
        .client()
        .open(Interaction::RequestResponse, Payload::from("q3"), 1, false)
    {
        Err(RequestError::NoLease(NoLease::Exhausted)) => {}
        other => panic!("expected the lease to be used up, got {other:?}"),
    }
    p.settle();
    let events = p.events(Peer::Server);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(p.server().stats().lease_rejected, 0);
    // The policy grants again at the TTL.
    p.advance(10 * SEC);
    assert_eq!(p.client().lease().map(|s| s.remaining), Some(3));
    // A grant by hand replaces it.
    assert!(p.server().grant_lease(&Lease::new(5 * SEC, 1)));
    p.settle();
    assert_eq!(p.client().lease().map(|s| s.remaining), Some(1));
    assert!(p
        .client()
        .open(Interaction::FireAndForget, Payload::from("f"), 1, false)
        .is_ok());
    assert!(matches!(
        p.client()
            .open(Interaction::FireAndForget, Payload::from("g"), 1, false),
        Err(RequestError::NoLease(NoLease::Exhausted))
    ));
    p.settle();
    assert_eq!(
        p.events(Peer::Server),
        vec![Event::FireAndForget(Payload::from("f"))]
    );
    assert_eq!(p.server().stats().lease_dropped_fnf, 0);
}

#[test]
fn fragmented_requests_and_items_reassemble_across_the_link() {
    let config = Config {
        mtu: Some(64),
        ..Config::default()
    };
    let link = Link {
        step_bytes: 100,
        in_flight_bytes: 300,
    };
    let mut p = connected(PairConfig::both(config).link(link));
    let big = |tag: &str, n: usize| Payload::from(format!("{tag}-{}", "z".repeat(n)));
    let request = big("request", 500).with_metadata(Bytes::from(vec![b'm'; 200]));
    let id = p
        .client()
        .open(Interaction::RequestChannel, request.clone(), 8, false)
        .expect("open");
    p.settle();
    assert!(
        sent_by(
            &p,
            Peer::Client,
            |f| matches!(f, Frame::RequestChannel(r) if r.follows)
        ) == 1,
        "the request was not fragmented"
    );
    let (stream, _, payload) = the_request(&mut p, Peer::Server);
    assert_eq!((stream, payload), (id, request));
    let items: Vec<Payload> = (0..4).map(|i| big(&format!("item{i}"), 300 + i)).collect();
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(8));
    p.server().send(id, items.clone(), true);
    p.server().release_send(id);
    assert!(matches!(p.client().send_ready(id, true), Ready::Credit(0)));
    p.client().send(id, vec![], true);
    p.client().release_send(id);
    let mut got = Vec::new();
    for _ in 0..1_000 {
        p.step();
        match p.client().recv(id, 0, 8) {
            Recv::Items(v) => got.extend(v),
            Recv::End => break,
            Recv::Pending => {}
            Recv::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, items);
    assert!(matches!(p.server().recv(id, 0, 1), Recv::End));
    assert!(
        p.log().iter().all(|d| d.frame.encoded_len() <= 64),
        "a frame beyond the MTU"
    );
    assert_idle(&mut p);
}

#[test]
fn manual_credit_grants_only_what_the_consumer_asks_for() {
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 2, true)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(2));
    p.server().send(id, vec![item(0), item(1)], false);
    p.settle();
    assert!(matches!(p.client().recv(id, 0, 8), Recv::Items(v) if v.len() == 2));
    assert!(matches!(p.client().recv(id, 2, 8), Recv::Pending));
    p.settle();
    assert_eq!(
        p.server().send_ready(id, false),
        Ready::Pending,
        "no credit without asking"
    );
    p.client().request_credit(id, 3);
    p.settle();
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(3));
    p.server().send(id, (2..5).map(item).collect(), true);
    p.server().release_send(id);
    p.settle();
    match p.client().recv(id, 0, 8) {
        Recv::Items(v) => assert_eq!(v.iter().map(seq_of).collect::<Vec<_>>(), [2, 3, 4]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.client().recv(id, 3, 8), Recv::End));
    assert_idle(&mut p);
}

#[test]
fn a_cancel_crossing_the_answer_ends_quietly_on_both_sides() {
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestResponse, Payload::from("q"), 1, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    p.stall();
    p.client().release_recv(id);
    p.server().send(id, vec![Payload::from("a")], true);
    p.server().release_send(id);
    p.unstall();
    p.settle();
    for peer in Peer::BOTH {
        assert!(p.closed(peer).is_none(), "{peer:?}: {:?}", p.closed(peer));
    }
    assert_eq!(
        (
            sent_by(&p, Peer::Client, |f| matches!(f, Frame::Cancel(_))),
            sent_by(&p, Peer::Server, |f| matches!(f, Frame::Payload(_))),
        ),
        (1, 1)
    );
    assert_idle(&mut p);
}

#[test]
fn a_responder_cancelling_a_channel_input_keeps_its_output() {
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestChannel, Payload::from("c"), 4, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    assert!(matches!(p.server().recv(id, 0, 1), Recv::Pending));
    p.server().release_recv(id);
    p.settle();
    assert_eq!(p.client().send_ready(id, true), Ready::Stopped);
    p.client().release_send(id);
    p.settle();
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(4));
    p.server().send(id, vec![item(0)], true);
    p.server().release_send(id);
    p.settle();
    assert!(matches!(p.client().recv(id, 0, 4), Recv::Items(v) if v.len() == 1));
    assert!(matches!(p.client().recv(id, 1, 4), Recv::End));
    assert_idle(&mut p);
}

#[test]
fn a_request_crossing_the_close_of_an_idle_peer_fails_with_the_close() {
    let mut p = connected(PairConfig::default());
    p.stall();
    let rr = p
        .client()
        .open(
            Interaction::RequestResponse,
            Payload::from("late"),
            1,
            false,
        )
        .expect("open");
    p.server().start_drain(30 * SEC);
    assert!(matches!(
        p.closed(Peer::Server),
        Some(ConnectionError::LocallyClosed)
    ));
    p.unstall();
    p.settle();
    assert!(p.events(Peer::Server).is_empty());
    match p.client().recv(rr, 0, 1) {
        Recv::Failed(RequestError::Connection(ConnectionError::Remote { code, .. })) => {
            assert_eq!(code, ErrorCode::CONNECTION_CLOSE)
        }
        other => panic!("expected the close, got {other:?}"),
    }
    assert_idle(&mut p);
}

/// A side whose reading is paused by its own busy one-way handlers does not
/// declare its peer dead: the peer's frames wait unread, so its silence
/// proves nothing. The peer, whose KEEPALIVEs go unanswered all that time,
/// does close (an unresponsive side is dead to it), and the paused side
/// reads everything, the close included, once its handler finishes.
#[test]
fn busy_one_way_handlers_do_not_make_a_live_peer_look_dead() {
    let config = Config {
        max_concurrent_inbound_streams: 1,
        ..Config::default()
    };
    let mut p = connected(quick_keepalive(config));
    for f in ["f1", "f2"] {
        p.client()
            .open(Interaction::FireAndForget, Payload::from(f), 1, false)
            .expect("open");
    }
    p.settle();
    assert_eq!(
        p.events(Peer::Server),
        vec![Event::FireAndForget(Payload::from("f1"))]
    );
    assert!(
        !p.server().can_read(),
        "one handler running: reading pauses"
    );
    // The handler takes longer than the max lifetime. The client keeps
    // sending KEEPALIVE, which waits on the wire with f2.
    p.advance(10 * SEC);
    assert!(
        p.closed(Peer::Server).is_none(),
        "{:?}",
        p.closed(Peer::Server)
    );
    assert!(
        matches!(
            p.closed(Peer::Client),
            Some(ConnectionError::KeepaliveTimeout)
        ),
        "{:?}",
        p.closed(Peer::Client)
    );
    p.server().handler_done();
    p.settle();
    assert_eq!(
        p.events(Peer::Server),
        vec![Event::FireAndForget(Payload::from("f2"))]
    );
    // f2's handler pauses reading again; once it is done, the client's
    // close is read.
    assert!(p.closed(Peer::Server).is_none());
    p.server().handler_done();
    p.settle();
    assert!(
        matches!(
            p.closed(Peer::Server),
            Some(ConnectionError::Protocol { .. } | ConnectionError::Remote { .. })
        ),
        "{:?}",
        p.closed(Peer::Server)
    );
}

mod model {
    //! Arbitrary interleavings of both applications' operations (opens of
    //! every kind, consumes, credit, produces, cancels, errors, handlers
    //! finishing, metadata pushes, drains), link steps with random byte
    //! budgets, stalls and drops, and clock moves, with or without MTU
    //! fragmentation and leasing in both directions. After every step:
    //!
    //! * both connections' own bookkeeping recounts right;
    //! * every item a consumer got is the next one its producer sent (in
    //!   order, none duplicated, same size), and a stream that completed
    //!   delivered all of them;
    //! * no producer is told of credit beyond what its consumer granted,
    //!   and no consumer holds more than it granted;
    //! * only a cancelled, failed or rejected stream, or a closed
    //!   connection, fails a consumer or stops a producer, and neither
    //!   side ever sees a protocol violation;
    //! * reassembly, inbound streams and both queues stay within their
    //!   caps;
    //! * requests, fire-and-forgets and metadata pushes reach the other
    //!   side's responder once each, in order, with their payload.
    //!
    //! At the end the link is unstalled and both applications finish what
    //! they hold; every stream must then end on both sides, and the
    //! connections must hold nothing.
    //!
    //! `PROPTEST_CASES` raises the case count (default 128, about two seconds).

    use std::collections::{BTreeMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    const CAP: usize = 1024;
    const MAX_REASSEMBLY: usize = 2048;
    const MAX_INBOUND: usize = 4;
    const PREFETCH: u32 = 4;
    /// Items are 8..=ITEM_MAX bytes (an 8-byte sequence number first).
    const ITEM_MAX: usize = 100;
    const BATCH: u64 = 4;
    /// Paced pushes (requests, items) stop below the cap, and one push (a
    /// request, or a batch of items, fragments and all) may overshoot it;
    /// control frames and answers alone close the connection past twice
    /// the cap (see `tests/model.rs`).
    const OUT_BOUND: usize = 3 * CAP + 1024;
    const UNBOUNDED: u64 = MAX_U31 as u64;

    /// With `lease`, each side grants the other five requests every two
    /// seconds.
    fn config(mtu: bool, lease: bool) -> Config {
        Config {
            mtu: mtu.then_some(64),
            lease: lease
                .then(|| LeaseConfig::new().policy(LeasePolicy::fixed(Duration::from_secs(2), 5))),
            max_reassembly_bytes: MAX_REASSEMBLY,
            max_concurrent_inbound_streams: MAX_INBOUND,
            max_outbound_queue_bytes: CAP,
            default_prefetch: PREFETCH,
            outbound_stall_timeout: Duration::from_secs(3),
            close_timeout: Duration::from_secs(20),
            ..Config::default()
        }
    }

    fn peer() -> impl Strategy<Value = Peer> {
        any::<bool>().prop_map(|c| if c { Peer::Client } else { Peer::Server })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open {
            peer: Peer,
            kind: u8,
            /// 0: unbounded.
            window: u32,
            manual: bool,
            len: usize,
        },
        Recv {
            peer: Peer,
            which: usize,
            max: usize,
        },
        Credit {
            peer: Peer,
            which: usize,
            n: u32,
        },
        Produce {
            peer: Peer,
            which: usize,
            count: u64,
            complete: bool,
            zero_ok: bool,
            len: usize,
        },
        /// Drops a consumer (`recv`) or a producer.
        Release {
            peer: Peer,
            which: usize,
            recv: bool,
        },
        Error {
            peer: Peer,
            which: usize,
        },
        HandlerDone {
            peer: Peer,
        },
        Push {
            peer: Peer,
            len: usize,
        },
        Drain {
            peer: Peer,
        },
        Step {
            bytes: usize,
        },
        Settle,
        Jump {
            ms: u64,
        },
        Advance {
            ms: u64,
        },
        ToggleStall,
        DropLink,
        /// Nothing (where a rare operation was not drawn).
        Nothing,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (peer(), 0u8..4, prop_oneof![6 => 1u32..=6, 1 => Just(0u32)], prop::bool::weighted(0.2), 0usize..ITEM_MAX)
                .prop_map(|(peer, kind, window, manual, len)| Op::Open { peer, kind, window, manual, len }),
            10 => (peer(), any::<usize>(), 1usize..8).prop_map(|(peer, which, max)| Op::Recv { peer, which, max }),
            1 => (peer(), any::<usize>(), 1u32..4).prop_map(|(peer, which, n)| Op::Credit { peer, which, n }),
            12 => (peer(), any::<usize>(), 0u64..8, prop::bool::weighted(0.15), any::<bool>(), 8usize..=ITEM_MAX)
                .prop_map(|(peer, which, count, complete, zero_ok, len)| Op::Produce { peer, which, count, complete, zero_ok, len }),
            1 => prop_oneof![
                1 => (peer(), any::<usize>(), any::<bool>()).prop_map(|(peer, which, recv)| Op::Release { peer, which, recv }),
                1 => (peer(), any::<usize>()).prop_map(|(peer, which)| Op::Error { peer, which }),
            ],
            2 => peer().prop_map(|peer| Op::HandlerDone { peer }),
            1 => (peer(), 0usize..ITEM_MAX).prop_map(|(peer, len)| Op::Push { peer, len }),
            // Drains and drops are rare: they end the case's traffic.
            1 => (peer(), 0u8..30).prop_map(|(peer, r)| if r == 0 { Op::Drain { peer } } else { Op::Nothing }),
            10 => prop_oneof![1usize..64, 64usize..1024, Just(usize::MAX)].prop_map(|bytes| Op::Step { bytes }),
            1 => Just(Op::Settle),
            2 => (0u64..1500).prop_map(|ms| Op::Jump { ms }),
            1 => (0u64..3000).prop_map(|ms| Op::Advance { ms }),
            1 => Just(Op::ToggleStall),
            1 => (0u8..50).prop_map(|r| if r == 0 { Op::DropLink } else { Op::Nothing }),
        ]
    }

    fn link() -> impl Strategy<Value = Link> {
        prop_oneof![
            Just(Link::UNLIMITED),
            (
                prop_oneof![Just(256usize), Just(1024), Just(usize::MAX)],
                16usize..512
            )
                .prop_map(|(in_flight_bytes, step_bytes)| Link {
                    step_bytes,
                    in_flight_bytes,
                }),
        ]
    }

    // ----- the model -------------------------------------------------------

    /// One direction of a stream's items.
    #[derive(Debug, Default)]
    struct Flow {
        /// Items the producer sent, their sizes by sequence number.
        sizes: Vec<usize>,
        /// Items the consumer got, in order.
        received: u64,
        /// Credit the consumer granted (what it queued: initial request-n,
        /// REQUEST_N).
        granted: u64,
        /// The producer sent its COMPLETE.
        completed: bool,
        /// The halves are held by the applications.
        producer: bool,
        consumer: bool,
        /// Items the consumer got and has not reported yet.
        unreported: u32,
        /// Cancelled, failed or rejected: items may be missing.
        aborted: bool,
        /// The consumer saw the end (true: completed).
        end: Option<bool>,
    }

    impl Flow {
        fn sent(&self) -> u64 {
            self.sizes.len() as u64
        }
    }

    #[derive(Debug)]
    struct Stream {
        requester: Peer,
        interaction: Interaction,
        request: Payload,
        accepted: bool,
        /// Responder to requester.
        down: Flow,
        /// Requester to responder (channels).
        up: Option<Flow>,
    }

    impl Stream {
        fn abort(&mut self) {
            self.down.aborted = true;
            if let Some(up) = self.up.as_mut() {
                up.aborted = true;
            }
        }
    }

    /// Which flow of a stream.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Dir {
        Down,
        Up,
    }

    /// A fire-and-forget or metadata push on its way.
    #[derive(Debug)]
    struct OneWay {
        id: Option<StreamId>,
        body: Bytes,
        /// Fragmented: the responder may drop it while too many requests
        /// are in flight (by design).
        droppable: bool,
    }

    struct Model {
        p: Pair,
        streams: BTreeMap<u32, Stream>,
        /// Per sender (index 0 client, 1 server).
        fnf: [VecDeque<OneWay>; 2],
        pushes: [VecDeque<OneWay>; 2],
        /// Handlers running, per side.
        oneway: [usize; 2],
        opened: u64,
        drained: bool,
        closed: bool,
        /// Leasing: a request crossing an expiry is rejected, a
        /// fire-and-forget dropped.
        lease: bool,
    }

    fn ix(peer: Peer) -> usize {
        usize::from(peer == Peer::Server)
    }

    fn item_body(seq: u64, len: usize) -> Payload {
        let mut data = seq.to_be_bytes().to_vec();
        data.resize(len.max(8), b'x');
        Payload::from(data)
    }

    fn add(credit: u64, n: u64) -> u64 {
        (credit + n).min(UNBOUNDED)
    }

    impl Model {
        fn new(mtu: bool, lease: bool, link: Link) -> Self {
            let config = PairConfig::both(config(mtu, lease))
                .keepalive(SEC, 6 * SEC)
                .link(link);
            Self {
                p: Pair::new(config),
                streams: BTreeMap::new(),
                fnf: Default::default(),
                pushes: Default::default(),
                oneway: [0; 2],
                opened: 0,
                drained: false,
                closed: false,
                lease,
            }
        }

        fn flow(&mut self, id: u32, dir: Dir) -> &mut Flow {
            let st = self.streams.get_mut(&id).expect("stream");
            match dir {
                Dir::Down => &mut st.down,
                Dir::Up => st.up.as_mut().expect("a channel"),
            }
        }

        /// The flows whose consumer (`consumer` true) or producer is `peer`
        /// and whose half is held.
        fn halves(&self, peer: Peer, consumer: bool) -> Vec<(u32, Dir)> {
            let mut v = Vec::new();
            for (id, st) in &self.streams {
                let flows = [(Dir::Down, Some(&st.down)), (Dir::Up, st.up.as_ref())];
                for (dir, flow) in flows {
                    let Some(flow) = flow else { continue };
                    // The requester consumes down and produces up.
                    let requester_side = (dir == Dir::Down) == consumer;
                    let holder = if requester_side {
                        st.requester
                    } else {
                        st.requester.other()
                    };
                    let held = if consumer {
                        flow.consumer
                    } else {
                        flow.producer
                    };
                    if holder == peer && held {
                        v.push((*id, dir));
                    }
                }
            }
            v
        }

        fn pick(&self, peer: Peer, consumer: bool, which: usize) -> Option<(u32, Dir)> {
            let v = self.halves(peer, consumer);
            (!v.is_empty()).then(|| v[which % v.len()])
        }

        fn sid(id: u32) -> StreamId {
            StreamId::new(id).expect("stream id")
        }

        // ----- after every step ------------------------------------------

        /// Accounts the frames both sides queued, then the requests they
        /// were given.
        fn observe(&mut self) {
            for peer in Peer::BOTH {
                for f in self.p.peer(peer).new_frames() {
                    self.account(peer, &f);
                }
            }
            for peer in Peer::BOTH {
                for ev in self.p.events(peer) {
                    self.dispatch(peer, ev);
                }
            }
            if Peer::BOTH.iter().any(|&peer| self.p.closed(peer).is_some()) {
                self.closed = true;
            }
        }

        fn account(&mut self, from: Peer, f: &Frame) {
            let (id, n) = match f {
                Frame::RequestStream(r) => (r.stream_id, u64::from(r.initial_request_n.get())),
                Frame::RequestChannel(r) => (r.stream_id, u64::from(r.initial_request_n.get())),
                Frame::RequestN(r) => (r.stream_id, u64::from(r.request_n.get())),
                Frame::RequestFnf(r) if r.follows => {
                    for w in &mut self.fnf[ix(from)] {
                        if w.id == Some(r.stream_id) {
                            w.droppable = true;
                        }
                    }
                    return;
                }
                Frame::Error(e) if e.code == ErrorCode::REJECTED => {
                    let Some(id) = e.stream_id else { return };
                    if let Some(st) = self.streams.get_mut(&id.get()) {
                        assert_eq!(st.requester, from.other(), "REJECTED by the requester");
                        assert!(
                            !st.accepted,
                            "stream {id} rejected after its request was accepted"
                        );
                        st.abort();
                    }
                    return;
                }
                _ => return,
            };
            let Some(st) = self.streams.get_mut(&id.get()) else {
                return;
            };
            // `from` consumes the flow it grants credit on.
            let flow = if st.requester == from {
                Some(&mut st.down)
            } else {
                st.up.as_mut()
            };
            let flow = flow.unwrap_or_else(|| {
                panic!("credit from {from:?} on stream {id}, which it does not consume")
            });
            flow.granted = add(flow.granted, n);
        }

        fn dispatch(&mut self, at: Peer, ev: Event) {
            match ev {
                Event::Request {
                    stream,
                    interaction,
                    payload,
                } => {
                    let st = self.streams.get_mut(&stream.get()).unwrap_or_else(|| {
                        panic!("{at:?} given a request on unknown stream {stream}")
                    });
                    assert_eq!(
                        st.requester,
                        at.other(),
                        "request on {stream} at its own requester"
                    );
                    assert!(!st.accepted, "request on {stream} given twice");
                    assert_eq!(st.interaction, interaction, "stream {stream}");
                    assert_eq!(st.request, payload, "stream {stream}: request payload");
                    st.accepted = true;
                    st.down.producer = true;
                    if let Some(up) = st.up.as_mut() {
                        up.consumer = true;
                    }
                }
                Event::FireAndForget(p) => {
                    self.oneway[ix(at)] += 1;
                    let lossy = self.drained || self.closed || self.lease;
                    Self::arrived(
                        &mut self.fnf[ix(at.other())],
                        &p.data,
                        lossy,
                        "fire-and-forget",
                    );
                }
                Event::MetadataPush(m) => {
                    self.oneway[ix(at)] += 1;
                    Self::arrived(
                        &mut self.pushes[ix(at.other())],
                        &m,
                        self.closed,
                        "metadata push",
                    );
                }
            }
        }

        /// A one-way message arrived: the next one sent (droppable ones
        /// before it may have been dropped).
        fn arrived(queue: &mut VecDeque<OneWay>, body: &Bytes, lossy: bool, what: &str) {
            while let Some(w) = queue.pop_front() {
                if w.body == body {
                    return;
                }
                assert!(
                    w.droppable || lossy,
                    "{what} {:?} lost: {body:?} arrived instead",
                    w.body
                );
            }
            panic!("{what} {body:?} arrived, never sent (or twice)");
        }

        fn check(&mut self) {
            self.p.check_consistency().unwrap_or_else(|e| panic!("{e}"));
            for peer in Peer::BOTH {
                let s = self.p.peer(peer).stats();
                assert!(s.reassembly_bytes <= MAX_REASSEMBLY, "{peer:?}: {s:?}");
                assert!(s.inbound_streams <= MAX_INBOUND, "{peer:?}: {s:?}");
                assert!(s.queued_out_bytes <= OUT_BOUND, "{peer:?}: {s:?}");
                // Inbound queues hold no more than their consumers granted.
                let mut bound = 0u64;
                for (id, dir) in self.halves(peer, true) {
                    let f = self.flow(id, dir);
                    bound = bound.saturating_add(
                        f.granted
                            .saturating_sub(f.received)
                            .saturating_mul(ITEM_MAX as u64),
                    );
                }
                assert!(
                    s.queued_in_bytes as u64 <= bound,
                    "{peer:?}: {} bytes queued in, {bound} granted: {s:?}",
                    s.queued_in_bytes
                );
                if s.closed {
                    assert_eq!((s.reassembly_bytes, s.partial_requests), (0, 0), "{s:?}");
                }
                // Two correct peers never accuse each other.
                match self.p.closed(peer) {
                    Some(e @ ConnectionError::Protocol { .. }) => {
                        panic!("{peer:?} saw a protocol violation: {e}")
                    }
                    Some(ConnectionError::Remote { message, .. })
                        if message.contains("protocol violation") =>
                    {
                        panic!("{peer:?} was accused of a protocol violation: {message}")
                    }
                    _ => {}
                }
            }
            for (id, st) in &self.streams {
                for f in [Some(&st.down), st.up.as_ref()].into_iter().flatten() {
                    assert!(f.received <= f.sent(), "stream {id}: {f:?}");
                    if f.granted < UNBOUNDED {
                        assert!(
                            f.sent() <= f.granted,
                            "stream {id}: sent beyond credit: {f:?}"
                        );
                    }
                }
            }
        }

        // ----- operations ----------------------------------------------------

        fn step(&mut self, op: &Op) {
            match op.clone() {
                Op::Open {
                    peer,
                    kind,
                    window,
                    manual,
                    len,
                } => self.open(peer, kind, window, manual, len),
                Op::Recv { peer, which, max } => {
                    if let Some((id, dir)) = self.pick(peer, true, which) {
                        self.recv(peer, id, dir, max);
                    }
                }
                Op::Credit { peer, which, n } => {
                    let Some((id, dir)) = self.pick(peer, true, which) else {
                        return;
                    };
                    let st = &self.streams[&id];
                    if dir == Dir::Down && st.interaction != Interaction::RequestResponse {
                        self.p.peer(peer).request_credit(Self::sid(id), n);
                    }
                }
                Op::Produce {
                    peer,
                    which,
                    count,
                    complete,
                    zero_ok,
                    len,
                } => {
                    if let Some((id, dir)) = self.pick(peer, false, which) {
                        self.produce(peer, id, dir, count, complete, zero_ok, len);
                    }
                }
                Op::Release { peer, which, recv } => {
                    if let Some((id, dir)) = self.pick(peer, recv, which) {
                        self.release(peer, id, dir, recv);
                    }
                }
                Op::Error { peer, which } => {
                    if let Some((id, dir)) = self.pick(peer, false, which) {
                        self.p
                            .peer(peer)
                            .send_error(Self::sid(id), &StreamError::application("model"));
                        self.streams.get_mut(&id).expect("stream").abort();
                        self.release(peer, id, dir, false);
                    }
                }
                Op::HandlerDone { peer } => {
                    if self.oneway[ix(peer)] > 0 {
                        self.oneway[ix(peer)] -= 1;
                        self.p.peer(peer).handler_done();
                    }
                }
                Op::Push { peer, len } => {
                    self.opened += 1;
                    let mut body = format!("push-{}-", self.opened).into_bytes();
                    body.resize(body.len() + len, b'p');
                    let body = Bytes::from(body);
                    if let Some(Ok(())) = self.p.peer(peer).metadata_push(body.clone()) {
                        self.pushes[ix(peer)].push_back(OneWay {
                            id: None,
                            body,
                            droppable: false,
                        });
                    }
                }
                Op::Drain { peer } => {
                    self.p.peer(peer).start_drain(30 * SEC);
                    self.drained = true;
                }
                Op::Step { bytes } => {
                    self.p.step_with(bytes);
                }
                Op::Settle => {
                    self.p.settle();
                }
                Op::Jump { ms } => self.p.jump(Duration::from_millis(ms)),
                Op::Advance { ms } => self.p.advance(Duration::from_millis(ms)),
                Op::ToggleStall => {
                    if self.p.is_stalled() {
                        self.p.unstall();
                    } else {
                        self.p.stall();
                    }
                }
                Op::DropLink => self.p.drop_link(),
                Op::Nothing => {}
            }
            self.observe();
        }

        fn open(&mut self, peer: Peer, kind: u8, window: u32, manual: bool, len: usize) {
            if !self.p.peer(peer).can_open() {
                return;
            }
            let interaction = match kind {
                0 => Interaction::RequestResponse,
                1 => Interaction::FireAndForget,
                2 => Interaction::RequestStream,
                _ => Interaction::RequestChannel,
            };
            self.opened += 1;
            let mut body = format!("req-{}-", self.opened).into_bytes();
            body.resize(body.len() + len, b'r');
            let request = Payload::from(body);
            let window = if window == 0 { MAX_U31 } else { window };
            let Ok(id) = self
                .p
                .peer(peer)
                .open(interaction, request.clone(), window, manual)
            else {
                return;
            };
            if interaction == Interaction::FireAndForget {
                self.fnf[ix(peer)].push_back(OneWay {
                    id: Some(id),
                    body: request.data,
                    droppable: false,
                });
                return;
            }
            let channel = interaction == Interaction::RequestChannel;
            let prev = self.streams.insert(
                id.get(),
                Stream {
                    requester: peer,
                    interaction,
                    request,
                    accepted: false,
                    down: Flow {
                        consumer: true,
                        // A request/response asks for its one answer.
                        granted: u64::from(interaction == Interaction::RequestResponse),
                        ..Flow::default()
                    },
                    up: channel.then(|| Flow {
                        producer: true,
                        ..Flow::default()
                    }),
                },
            );
            assert!(prev.is_none(), "stream id {id} reused");
        }

        /// A consumer's turn.
        fn recv(&mut self, peer: Peer, id: u32, dir: Dir, max: usize) {
            let closed = self.closed || self.p.closed(peer).is_some();
            let consumed = std::mem::take(&mut self.flow(id, dir).unreported);
            let got = self.p.peer(peer).recv(Self::sid(id), consumed, max);
            let f = self.flow(id, dir);
            match got {
                Recv::Items(items) => {
                    assert!(items.len() <= max.max(1));
                    for it in &items {
                        let seq = u64::from_be_bytes(it.data[..8].try_into().expect("8 bytes"));
                        assert_eq!(
                            seq, f.received,
                            "stream {id} {dir:?}: out of order or duplicated"
                        );
                        assert!(seq < f.sent(), "stream {id} {dir:?}: item {seq} never sent");
                        assert_eq!(
                            it.data.len(),
                            f.sizes[seq as usize],
                            "stream {id}: item {seq}"
                        );
                        f.received += 1;
                    }
                    f.unreported += items.len() as u32;
                }
                Recv::End => {
                    assert!(
                        f.completed,
                        "stream {id} {dir:?}: ended without COMPLETE: {f:?}"
                    );
                    assert_eq!(
                        f.received,
                        f.sent(),
                        "stream {id} {dir:?}: items lost: {f:?}"
                    );
                    f.end = Some(true);
                    f.consumer = false;
                }
                Recv::Failed(e) => {
                    assert!(
                        !matches!(e, RequestError::Protocol(_)),
                        "stream {id} {dir:?}: a correct peer broke the protocol: {e}"
                    );
                    assert!(
                        f.aborted || closed,
                        "stream {id} {dir:?} failed with no cancel, error or close: {e}; {f:?}"
                    );
                    f.end = Some(false);
                    f.consumer = false;
                }
                Recv::Pending => {}
            }
        }

        /// A producer's turn: ask, then send what it may.
        #[allow(clippy::too_many_arguments)]
        fn produce(
            &mut self,
            peer: Peer,
            id: u32,
            dir: Dir,
            count: u64,
            complete: bool,
            zero_ok: bool,
            len: usize,
        ) {
            let rr = self.streams[&id].interaction == Interaction::RequestResponse;
            let closed = self.closed || self.p.closed(peer).is_some();
            let ready = self.p.peer(peer).send_ready(Self::sid(id), zero_ok);
            let f = self.flow(id, dir);
            match ready {
                Ready::Pending => {}
                Ready::Stopped => {
                    assert!(
                        f.aborted || closed,
                        "stream {id} {dir:?}: producer stopped with no cancel, error or close: {f:?}"
                    );
                    self.release(peer, id, dir, false);
                }
                Ready::Credit(c) => {
                    assert!(c > 0 || zero_ok, "stream {id}: Credit(0) unasked");
                    if c >= UNBOUNDED {
                        assert_eq!(
                            f.granted, UNBOUNDED,
                            "stream {id} {dir:?}: unbounded credit never granted"
                        );
                    } else if f.granted < UNBOUNDED {
                        assert!(
                            f.sent() + c <= f.granted,
                            "stream {id} {dir:?}: told of {c} after {} sent, {} granted",
                            f.sent(),
                            f.granted
                        );
                    }
                    let n = count.min(c).min(BATCH);
                    let complete = complete || (rr && n > 0);
                    if n == 0 && !complete {
                        return;
                    }
                    let items: Vec<Payload> = (f.sent()..f.sent() + n)
                        .map(|seq| item_body(seq, len))
                        .collect();
                    f.sizes.extend(items.iter().map(|p| p.data.len()));
                    self.p.peer(peer).send(Self::sid(id), items, complete);
                    if complete {
                        self.flow(id, dir).completed = true;
                        self.release(peer, id, dir, false);
                    }
                }
            }
        }

        /// The application drops a consumer (`recv`) or a producer.
        fn release(&mut self, peer: Peer, id: u32, dir: Dir, recv: bool) {
            let sid = Self::sid(id);
            let st = self.streams.get_mut(&id).expect("stream");
            if recv {
                self.p.peer(peer).release_recv(sid);
                let f = if dir == Dir::Down {
                    &mut st.down
                } else {
                    st.up.as_mut().expect("up")
                };
                f.consumer = false;
                if f.end.is_none() {
                    if dir == Dir::Down {
                        // The requester gives up: the whole stream ends.
                        st.abort();
                    } else {
                        // A responder's CANCEL ends only the requester's
                        // output.
                        f.aborted = true;
                    }
                }
            } else {
                self.p.peer(peer).release_send(sid);
                let f = if dir == Dir::Down {
                    &mut st.down
                } else {
                    st.up.as_mut().expect("up")
                };
                f.producer = false;
                if !f.completed {
                    // CANCEL (requester) or ERROR[CANCELED] (responder).
                    st.abort();
                }
            }
        }

        /// Unstalls the link and lets both applications finish what they
        /// hold; everything must then end, with nothing left behind.
        fn finish(&mut self) {
            self.p.unstall();
            for _round in 0..400 {
                let moved = self.p.settle();
                self.observe();
                let before = (
                    self.halves(Peer::Client, true).len() + self.halves(Peer::Server, true).len(),
                    self.halves(Peer::Client, false).len() + self.halves(Peer::Server, false).len(),
                );
                if before == (0, 0) && self.oneway == [0; 2] && moved == 0 {
                    break;
                }
                for peer in Peer::BOTH {
                    for (id, dir) in self.halves(peer, false) {
                        self.produce(peer, id, dir, 1, true, true, 8);
                        self.observe();
                    }
                    for (id, dir) in self.halves(peer, true) {
                        for _ in 0..64 {
                            self.recv(peer, id, dir, 64);
                            self.observe();
                            if !self.flow(id, dir).consumer {
                                break;
                            }
                        }
                    }
                    for _ in 0..self.oneway[ix(peer)] {
                        self.p.peer(peer).handler_done();
                    }
                    self.oneway[ix(peer)] = 0;
                }
                self.observe();
                self.check();
                let after = (
                    self.halves(Peer::Client, true).len() + self.halves(Peer::Server, true).len(),
                    self.halves(Peer::Client, false).len() + self.halves(Peer::Server, false).len(),
                );
                if moved == 0 && after == before {
                    // Stuck (both readers paused, say): let time pass.
                    self.p.fire_deadline();
                    self.observe();
                }
            }
            for peer in Peer::BOTH {
                assert_eq!(
                    (self.halves(peer, true), self.halves(peer, false)),
                    (vec![], vec![]),
                    "{peer:?} still holds halves: {:?}",
                    self.p.peer(peer).stats()
                );
            }
            self.p.settle();
            self.observe();
            self.check();
            for peer in Peer::BOTH {
                let s = self.p.peer(peer).stats();
                assert_eq!(
                    (
                        s.open_streams,
                        s.queued_in_bytes,
                        s.reassembly_bytes,
                        s.inbound_streams,
                        s.handlers_running
                    ),
                    (0, 0, 0, 0, 0),
                    "{peer:?} holds something after every stream ended: {s:?}"
                );
                if !self.closed && !self.p.is_down() {
                    assert_eq!(s.queued_out_bytes, 0, "{peer:?}: {s:?}");
                }
            }
            if !self.closed {
                for (id, st) in &self.streams {
                    for (dir, f) in [(Dir::Down, Some(&st.down)), (Dir::Up, st.up.as_ref())] {
                        let Some(f) = f else { continue };
                        assert!(
                            f.aborted || f.end == Some(true),
                            "stream {id} {dir:?} did not complete: {f:?}"
                        );
                    }
                }
                for peer in Peer::BOTH {
                    let lost: Vec<_> = self.fnf[ix(peer)]
                        .iter()
                        .chain(&self.pushes[ix(peer)])
                        .filter(|w| !w.droppable && !self.drained && !self.lease)
                        .collect();
                    assert!(lost.is_empty(), "sent by {peer:?}, never arrived: {lost:?}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn two_peers_deliver_everything_in_order_within_credit(
            mtu in any::<bool>(),
            lease in prop::bool::weighted(0.25),
            link in link(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut m = Model::new(mtu, lease, link);
            m.observe();
            m.check();
            for op in &ops {
                m.step(op);
                m.check();
            }
            m.finish();
        }
    }
}

#[test]
fn a_close_begun_by_both_sides_at_once_still_lets_open_streams_finish() {
    let mut p = connected(PairConfig::default());
    let rs = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 16, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    // Each side sends its CONNECTION_CLOSE before it sees the other's.
    p.stall();
    p.client().start_drain(30 * SEC);
    p.server().start_drain(30 * SEC);
    p.unstall();
    p.settle();
    for peer in Peer::BOTH {
        assert!(
            p.closed(peer).is_none(),
            "{peer:?} closed while a stream is open: {:?}",
            p.closed(peer)
        );
    }
    p.server().send(rs, (0..3).map(item).collect(), true);
    p.server().release_send(rs);
    p.settle();
    match p.client().recv(rs, 0, 16) {
        Recv::Items(v) => assert_eq!(v.iter().map(seq_of).collect::<Vec<_>>(), [0, 1, 2]),
        other => panic!("expected the items, got {other:?}"),
    }
    assert!(matches!(p.client().recv(rs, 3, 16), Recv::End));
    p.settle();
    for peer in Peer::BOTH {
        assert!(
            matches!(p.closed(peer), Some(ConnectionError::LocallyClosed)),
            "{peer:?}: {:?}",
            p.closed(peer)
        );
    }
    assert_idle(&mut p);
}

#[test]
fn request_n_while_a_request_stream_is_reassembled_adds_to_its_credit() {
    use rsocket_core::frame::{PayloadFrame, RequestCount, RequestN, RequestStream};
    let mut p = connected(PairConfig::default());
    let id = StreamId::new(1).expect("non-zero");
    let count = |n| RequestCount::new(n).expect("non-zero");
    let server = p.server();
    // The client's REQUEST_STREAM in two fragments, a REQUEST_N between
    // them (the requester may send REQUEST_N at any time).
    assert!(server.frame_in(Frame::RequestStream(RequestStream {
        stream_id: id,
        follows: true,
        initial_request_n: count(1),
        payload: Payload::from("a"),
    })));
    assert!(server.frame_in(Frame::RequestN(RequestN {
        stream_id: id,
        request_n: count(2),
    })));
    assert!(server.frame_in(Frame::Payload(PayloadFrame {
        stream_id: id,
        follows: false,
        complete: false,
        next: true,
        payload: Payload::from("b"),
    })));
    let (stream, interaction, payload) = the_request(&mut p, Peer::Server);
    assert_eq!(
        (stream, interaction, payload),
        (id, Interaction::RequestStream, Payload::from("ab"))
    );
    assert_eq!(p.server().send_ready(id, false), Ready::Credit(3));

    // The sum saturates at 2^31 - 1 (unbounded).
    let id = StreamId::new(3).expect("non-zero");
    let server = p.server();
    assert!(server.frame_in(Frame::RequestStream(RequestStream {
        stream_id: id,
        follows: true,
        initial_request_n: count(MAX_U31 - 1),
        payload: Payload::from("a"),
    })));
    assert!(server.frame_in(Frame::RequestN(RequestN {
        stream_id: id,
        request_n: count(MAX_U31),
    })));
    assert!(server.frame_in(Frame::Payload(PayloadFrame {
        stream_id: id,
        follows: false,
        complete: false,
        next: true,
        payload: Payload::from("b"),
    })));
    the_request(&mut p, Peer::Server);
    assert_eq!(
        p.server().send_ready(id, false),
        Ready::Credit(u64::from(MAX_U31))
    );
    p.check_consistency().expect("consistent");
}

#[test]
fn a_channel_requester_that_sends_beyond_credit_learns_that_its_stream_ended() {
    use rsocket_core::frame::PayloadFrame;
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestChannel, Payload::from("c"), 4, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    // The server's channel has granted nothing yet (its inbound grants on
    // the first poll): an item from the client now is beyond its credit.
    assert!(p
        .server()
        .frame_in(Frame::Payload(PayloadFrame::next(id, Payload::from("x")))));
    assert!(
        matches!(
            p.server().recv(id, 0, 4),
            Recv::Failed(RequestError::Protocol(_))
        ),
        "the server's handler sees the violation"
    );
    // The whole stream is over at the server: its handler stops.
    assert_eq!(p.server().send_ready(id, false), Ready::Stopped);
    p.server().release_send(id);
    p.settle();
    // ... and the client is told so: its inbound half does not wait for
    // items or a COMPLETE that will never come.
    match p.client().recv(id, 0, 4) {
        Recv::Failed(RequestError::Stream(e)) => assert_eq!(e.code, ErrorCode::CANCELED),
        other => panic!("expected the stream to fail, got {other:?}"),
    }
    assert_eq!(p.client().send_ready(id, true), Ready::Stopped);
    p.client().release_send(id);
    assert_idle(&mut p);
}

#[test]
fn a_stream_error_never_goes_out_with_a_connection_level_code() {
    for bad in [
        ErrorCode::CONNECTION_ERROR,
        ErrorCode(0),
        ErrorCode(u32::MAX),
    ] {
        a_stream_error_with(bad);
    }
}

/// A requester's channel and a responder's stream fail with `bad`: both go
/// out as APPLICATION_ERROR.
fn a_stream_error_with(bad: ErrorCode) {
    let mut p = connected(PairConfig::default());
    // Both fail with a code that may not go out on a stream (one forwarded
    // from elsewhere).
    let ch = p
        .client()
        .open(Interaction::RequestChannel, Payload::from("c"), 4, false)
        .expect("open");
    let rs = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 4, false)
        .expect("open");
    p.settle();
    assert_eq!(p.events(Peer::Server).len(), 2);
    let bad = StreamError::new(bad, "forwarded");
    p.client().send_error(ch, &bad);
    p.client().release_send(ch);
    p.server().send_error(rs, &bad);
    p.server().release_send(rs);
    p.settle();
    let codes: Vec<(Peer, ErrorCode)> = p
        .log()
        .iter()
        .filter_map(|d| match &d.frame {
            Frame::Error(e) if e.stream_id.is_some() => Some((d.from, e.code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        [
            (Peer::Client, ErrorCode::APPLICATION_ERROR),
            (Peer::Server, ErrorCode::APPLICATION_ERROR)
        ],
        "{bad:?}"
    );
}

#[test]
fn a_fragmented_item_whose_last_fragment_carries_only_c_is_delivered() {
    use rsocket_core::frame::PayloadFrame;
    let mut p = connected(PairConfig::default());
    let id = p
        .client()
        .open(Interaction::RequestStream, Payload::from("s"), 4, false)
        .expect("open");
    p.settle();
    the_request(&mut p, Peer::Server);
    // N (the item) comes from the first fragment, C from the last
    // (rsocket-protocol.md §8, reassembly): one item, then completion.
    let fragment = |follows, next, complete, data: &'static str| {
        Frame::Payload(PayloadFrame {
            stream_id: id,
            follows,
            complete,
            next,
            payload: Payload::from(data),
        })
    };
    assert!(p.client().frame_in(fragment(true, true, false, "ab")));
    assert!(p.client().frame_in(fragment(false, false, true, "cd")));
    match p.client().recv(id, 0, 4) {
        Recv::Items(v) => assert_eq!(v, vec![Payload::from("abcd")]),
        other => panic!("expected the reassembled item, got {other:?}"),
    }
    assert!(matches!(p.client().recv(id, 1, 4), Recv::End));
    p.check_consistency().expect("consistent");
}

#[test]
fn a_request_with_request_n_0_on_an_id_it_may_not_open_is_ignored() {
    use rsocket_core::frame::{PayloadFrame, RequestCount, RequestStream};
    let mut p = connected(PairConfig::default());
    let id = StreamId::new(1).expect("non-zero");
    let server = p.server();
    server.new_frames();
    assert!(server.frame_in(Frame::RequestStream(RequestStream {
        stream_id: id,
        follows: true,
        initial_request_n: RequestCount::ONE,
        payload: Payload::from("a"),
    })));
    // REQUEST_STREAM with request-n 0: on stream 1, whose request is still
    // arriving in fragments, then on stream 2, of the server's own parity.
    // Each is a request on an id it may not open: ignored, as any such
    // request is (rsocket-protocol.md §2.14), not answered ERROR[INVALID].
    for hex in [
        [0, 0, 0, 1, 0x18, 0, 0, 0, 0, 0],
        [0, 0, 0, 2, 0x18, 0, 0, 0, 0, 0],
    ] {
        assert!(server.bytes_in(Bytes::copy_from_slice(&hex)));
    }
    assert_eq!(server.new_frames(), Vec::<Frame>::new());
    assert!(server.frame_in(Frame::Payload(PayloadFrame {
        stream_id: id,
        follows: false,
        complete: false,
        next: true,
        payload: Payload::from("b"),
    })));
    let (stream, _, payload) = the_request(&mut p, Peer::Server);
    assert_eq!((stream, payload), (id, Payload::from("ab")));
    // On an id it may open, such a request is refused with ERROR[INVALID].
    let server = p.server();
    assert!(server.bytes_in(Bytes::from_static(&[0, 0, 0, 3, 0x18, 0, 0, 0, 0, 0])));
    match &server.new_frames()[..] {
        [Frame::Error(e)] => {
            assert_eq!(
                (e.stream_id, e.code),
                (StreamId::new(3), ErrorCode::INVALID)
            );
        }
        other => panic!("expected ERROR[INVALID] on stream 3, got {other:?}"),
    }
    p.check_consistency().expect("consistent");
}
