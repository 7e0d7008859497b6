//! Picking, retries and the raw API over in-memory servers.

mod common;

use std::time::Duration;

use common::{count, targets, text, within, MemServer};
use futures::StreamExt;
use rsocket_balance::{
    BalanceError, Balancer, CallOptions, MemberState, RoundRobin, TokioClock, WeightedP2c,
};
use rsocket_core::{ErrorCode, Payload, RSocket, RequestError};

async fn all_ready<K: rsocket_balance::Key>(b: &Balancer<K>, n: usize) {
    within(
        "members ready",
        b.wait_until(|m| count(m, MemberState::Ready) == n),
    )
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn round_robin_spreads_exactly_evenly() {
    let servers: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| MemServer::start(n, Duration::ZERO))
        .collect();
    let b = Balancer::builder()
        .clock(TokioClock)
        .strategy(RoundRobin::new())
        .build_from_list(targets(&servers));
    all_ready(&b, 3).await;
    for _ in 0..3000 {
        b.request_response(Payload::from("x")).await.unwrap();
    }
    let hits: Vec<_> = servers.iter().map(MemServer::hits).collect();
    assert_eq!(hits, [1000, 1000, 1000]);
}

/// Runs `total` requests, `in_flight` at a time, over two servers answering
/// in 1 ms and one in 21 ms (on the paused clock); returns each server's
/// share.
async fn slow_server_run(seed: u64, total: usize, in_flight: usize) -> Vec<usize> {
    let servers = [
        MemServer::start("fast1", Duration::from_millis(1)),
        MemServer::start("slow", Duration::from_millis(21)),
        MemServer::start("fast2", Duration::from_millis(1)),
    ];
    let b = Balancer::builder()
        .clock(TokioClock)
        .strategy(WeightedP2c::new())
        .seed(seed)
        .build_from_list(targets(&servers));
    all_ready(&b, 3).await;
    let replies: Vec<_> = futures::stream::iter(0..total)
        .map(|_| b.request_response(Payload::from("x")))
        .buffer_unordered(in_flight)
        .collect()
        .await;
    assert!(replies.iter().all(Result::is_ok));
    let info = b.members();
    let slow = info.iter().find(|m| m.key == "slow").unwrap();
    let fast = info.iter().find(|m| m.key == "fast1").unwrap();
    assert!(slow.latency > fast.latency * 5, "{info:?}");
    assert!(fast.weight > slow.weight, "{info:?}");
    servers.iter().map(MemServer::hits).collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn weighted_p2c_starves_the_slow_server_exactly() {
    let hits = slow_server_run(42, 2000, 8).await;
    eprintln!("p2c shares (fast1, slow, fast2): {hits:?}");
    assert_eq!(hits.iter().sum::<usize>(), 2000);
    assert!(
        hits[1] < 200,
        "slow server got {} of 2000: {hits:?}",
        hits[1]
    );
    assert!(hits[0] > 600 && hits[2] > 600, "{hits:?}");
    // Same seed, same clock: the same split, request for request.
    assert_eq!(slow_server_run(42, 2000, 8).await, hits);
}

/// At 256 in flight on 1 ms servers the balancer starts far more than
/// 50,000 requests a second (of the paused clock), so only one in eight is
/// timed (see the `clock` module): the slow server must still be starved,
/// as well as when every request is timed (1.5 % above; the run is exact,
/// so the bound is tight: recording a round trip for untimed requests, from
/// their stale times, gives the slow server 1.8 %).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn weighted_p2c_starves_the_slow_server_while_sampling() {
    let hits = slow_server_run(7, 40_000, 256).await;
    eprintln!("p2c shares at 256 in flight (fast1, slow, fast2): {hits:?}");
    assert_eq!(hits.iter().sum::<usize>(), 40_000);
    assert!(
        hits[1] < 600,
        "slow server got {} of 40000: {hits:?}",
        hits[1]
    );
    assert!(hits[0] > 12_000 && hits[2] > 12_000, "{hits:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn killed_server_mid_run_fails_no_idempotent_request() {
    // b answers in 3 ms, so that it is still working while a and c reply.
    let servers: Vec<_> = [("a", 1), ("b", 3), ("c", 1)]
        .iter()
        .map(|(n, ms)| MemServer::start(n, Duration::from_millis(*ms)))
        .collect();
    let b = Balancer::builder()
        .clock(TokioClock)
        .seed(7)
        .build_from_list(targets(&servers));
    all_ready(&b, 3).await;
    let idempotent = CallOptions::new().idempotent(true);
    let mut replies = futures::stream::iter(0..2000)
        .map(|_| b.request_response_with(Payload::from("x"), idempotent))
        .buffer_unordered(32);
    let mut done = 0;
    let mut answered_by_b = 0;
    let mut in_flight_at_kill = None;
    while let Some(r) = replies.next().await {
        let name = text(r.expect("no request may fail"));
        done += 1;
        if name == "b" {
            answered_by_b += 1;
        }
        // Kill b after 500 replies, at a moment when it is working on
        // requests it has received but not answered.
        let in_flight = servers[1].hits() - answered_by_b;
        if done >= 500 && in_flight_at_kill.is_none() && in_flight > 0 {
            in_flight_at_kill = Some(in_flight);
            servers[1].kill();
        }
    }
    assert_eq!(done, 2000);
    assert!(in_flight_at_kill.is_some(), "b never had work in flight");
    // Requests in flight on the killed server were sent again elsewhere.
    let total: usize = servers.iter().map(MemServer::hits).sum();
    assert!(total > 2000, "no retry happened: {total}");
    let info = b.members();
    assert_ne!(info[1].state, MemberState::Ready, "{info:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn graceful_shutdown_moves_traffic_without_errors() {
    let mut servers: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| MemServer::start(n, Duration::from_millis(1)))
        .collect();
    let b = Balancer::builder()
        .clock(TokioClock)
        .seed(9)
        .build_from_list(targets(&servers));
    all_ready(&b, 3).await;
    // Not idempotent: only refusals may be retried, and that suffices.
    let mut replies = futures::stream::iter(0..2000)
        .map(|_| b.request_response(Payload::from("x")))
        .buffer_unordered(32);
    let mut done = 0;
    let mut hits_at_stop = 0;
    while let Some(r) = replies.next().await {
        r.expect("no request may fail");
        done += 1;
        if done == 500 {
            hits_at_stop = servers[0].hits();
            servers[0].shutdown();
        }
    }
    drop(replies);
    assert_eq!(done, 2000);
    // Nothing was processed twice: retries happened only for refusals.
    let total: usize = servers.iter().map(MemServer::hits).sum();
    assert_eq!(total, 2000);
    assert!(servers[0].hits() >= hits_at_stop && servers[0].hits() < hits_at_stop + 40);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn in_flight_request_is_retried_only_when_idempotent() {
    let a = MemServer::start("a", Duration::ZERO);
    let b_srv = MemServer::start("b", Duration::ZERO);
    // One member first, so both requests land on "a".
    let (tx, rx) = tokio::sync::watch::channel(vec![("a".to_owned(), a.connector())]);
    let b = Balancer::builder()
        .clock(TokioClock)
        .seed(1)
        .build_from_watch(rx);
    all_ready(&b, 1).await;
    let plain = tokio::spawn({
        let b = b.clone();
        async move { b.request_response(Payload::from("hang")).await }
    });
    let marked = tokio::spawn({
        let b = b.idempotent();
        async move { b.request_response(Payload::from("hang")).await }
    });
    within("both requests at a", async {
        while a.hits() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    tx.send(vec![
        ("a".to_owned(), a.connector()),
        ("b".to_owned(), b_srv.connector()),
    ])
    .unwrap();
    all_ready(&b, 2).await;
    a.kill();
    let plain = within("plain request", plain).await.unwrap();
    assert!(
        matches!(plain, Err(RequestError::Connection(_))),
        "{plain:?}"
    );
    // The idempotent one went to b, where it hangs too: it was re-sent.
    within("retry reaches b", async {
        while b_srv.hits() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    marked.abort();
}

/// Servers `a` and `b`, a balancer that knows only `a` until the returned
/// function adds `b`.
fn a_then_b() -> (MemServer, MemServer, Balancer<String>, impl FnOnce()) {
    let a = MemServer::start("a", Duration::ZERO);
    let b_srv = MemServer::start("b", Duration::ZERO);
    let (tx, rx) = tokio::sync::watch::channel(vec![("a".to_owned(), a.connector())]);
    let both = vec![
        ("a".to_owned(), a.connector()),
        ("b".to_owned(), b_srv.connector()),
    ];
    let add_b = move || tx.send(both).expect("the balancer watches");
    let b = Balancer::builder()
        .clock(TokioClock)
        .seed(1)
        .build_from_watch(rx);
    (a, b_srv, b, add_b)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_idempotent_stream_is_retried_only_before_its_first_item() {
    let (a, b_srv, b, add_b) = a_then_b();
    all_ready(&b, 1).await;
    let view = b.idempotent();
    // Both streams land on a: one has had its first item, one has none.
    let mut begun = view.request_stream(Payload::from("hang1"));
    let first = within("the first item", begun.next()).await;
    assert_eq!(text(first.transpose().expect("ok")), "a:0");
    let waiting = tokio::spawn({
        let view = view.clone();
        async move {
            let mut s = view.request_stream(Payload::from("hang"));
            s.next().await
        }
    });
    within("both streams at a", async {
        while a.hits() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    add_b();
    all_ready(&b, 2).await;
    a.kill();
    // Past its first item: the error is the caller's.
    let after = within("the begun stream's end", begun.next()).await;
    assert!(
        matches!(after, Some(Err(RequestError::Connection(_)))),
        "{after:?}"
    );
    // Before its first item: sent again, to b, where it waits (no error).
    within("the waiting stream re-sent to b", async {
        while b_srv.hits() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(!waiting.is_finished(), "the retried stream waits at b");
    assert_eq!(b_srv.hits(), 1, "only the stream without items is re-sent");
    waiting.abort();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_sent_channel_is_not_retried_even_before_its_first_item() {
    let (a, b_srv, b, add_b) = a_then_b();
    all_ready(&b, 1).await;
    let waiting = tokio::spawn({
        let view = b.idempotent();
        async move {
            let rest = futures::stream::pending();
            let mut c = view.request_channel(Payload::from("hang"), rest);
            c.next().await
        }
    });
    within("the channel at a", async {
        while a.hits() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    add_b();
    all_ready(&b, 2).await;
    a.kill();
    let end = within("the channel's end", waiting).await.unwrap();
    assert!(
        matches!(end, Some(Err(RequestError::Connection(_)))),
        "{end:?}"
    );
    assert_eq!(b_srv.hits(), 0, "a channel once sent is never re-sent");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reading_the_members_changes_no_estimate() {
    let a = MemServer::start("a", Duration::from_millis(10));
    let b = Balancer::builder()
        .clock(TokioClock)
        .build_from_list(targets(std::slice::from_ref(&a)));
    all_ready(&b, 1).await;
    for _ in 0..20 {
        b.request_response(Payload::from("x")).await.unwrap();
    }
    // Idle for long: an estimate read for a pick would decay now.
    tokio::time::advance(Duration::from_secs(60)).await;
    let first = b.members()[0].clone();
    for _ in 0..10 {
        let again = b.members()[0].clone();
        assert_eq!(again.latency, first.latency);
        assert_eq!(again.weight, first.weight);
        assert_eq!(again.availability, first.availability);
    }
    assert!(first.latency > Duration::ZERO, "{first:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_refusing_for_its_close_leaves_the_ready_list_at_once() {
    let mut a = MemServer::start("a", Duration::ZERO);
    let b_srv = MemServer::start("b", Duration::ZERO);
    let (tx, rx) = tokio::sync::watch::channel(vec![("a".to_owned(), a.connector())]);
    let both = vec![
        ("a".to_owned(), a.connector()),
        ("b".to_owned(), b_srv.connector()),
    ];
    // Round robin: requests go to a every other time, whatever its load.
    let b = Balancer::builder()
        .clock(TokioClock)
        .strategy(RoundRobin::new())
        .build_from_watch(rx);
    all_ready(&b, 1).await;
    // A stream in flight keeps a's connection open while a closes.
    let mut held = b.request_stream(Payload::from("hang1"));
    let first = within("the first item", held.next()).await;
    assert_eq!(text(first.transpose().expect("ok")), "a:0");
    tx.send(both).expect("the balancer watches");
    all_ready(&b, 2).await;
    let mut changes = b.state_changes();
    changes.borrow_and_update();
    a.shutdown();
    // Requests go on; once a's CONNECTION_CLOSE has arrived, the first one
    // routed to a is refused there and sent to b, and a is out of the
    // ready list right then, while its connection is still open.
    let a_state = |b: &Balancer<String>| b.members().iter().find(|m| m.key == "a").map(|m| m.state);
    let mut sent = 0;
    while a_state(&b) == Some(MemberState::Ready) && sent < 1000 {
        let reply = b.request_response(Payload::from("x")).await;
        assert!(reply.is_ok(), "{reply:?}");
        sent += 1;
    }
    // Right after the request that a refused: out of use (draining, or
    // already re-dialling while its old connection drains).
    assert!(
        matches!(
            a_state(&b),
            Some(MemberState::Draining | MemberState::Connecting)
        ),
        "after {sent}: {:?}",
        a_state(&b)
    );
    assert_eq!(b.ready_count(), 1, "a left the ready list with its refusal");
    assert!(changes.has_changed().unwrap(), "state_changes was bumped");
    assert_eq!(a.open(), 1, "a's connection is still open (draining)");
    assert!(b_srv.hits() >= 1);
    drop(held);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn raw_requester_api_through_the_balancer() {
    let servers: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| MemServer::start(n, Duration::ZERO))
        .collect();
    let b = Balancer::builder()
        .clock(TokioClock)
        .strategy(RoundRobin::new())
        .build_from_list(targets(&servers));
    all_ready(&b, 2).await;

    // Request/response, through the trait object as generated clients hold it.
    let as_trait: std::sync::Arc<dyn RSocket> = std::sync::Arc::new(b.clone());
    let r1 = text(as_trait.request_response(Payload::from("x")).await.unwrap());
    let r2 = text(b.request_response(Payload::from("x")).await.unwrap());
    assert_eq!([r1.as_str(), r2.as_str()], ["a", "b"]);

    // An application error is the caller's answer: not retried.
    let before: usize = servers.iter().map(MemServer::hits).sum();
    let err = b
        .request_response_with(Payload::from("fail"), CallOptions::new().idempotent(true))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_stream_error().unwrap().code,
        ErrorCode::APPLICATION_ERROR
    );
    assert_eq!(
        servers.iter().map(MemServer::hits).sum::<usize>(),
        before + 1
    );

    // Request/stream and channel.
    let items: Vec<_> = b.request_stream(Payload::from("5")).collect().await;
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(Result::is_ok));
    let rest = futures::stream::iter(["b", "c"].map(Payload::from));
    let echoed: Vec<_> = b
        .request_channel(Payload::from("a"), rest)
        .map(|p| p.unwrap().data_utf8().unwrap_or_default().to_owned())
        .collect()
        .await;
    assert_eq!(echoed.len(), 3);
    assert!(
        echoed[0].ends_with(":a") && echoed[2].ends_with(":c"),
        "{echoed:?}"
    );

    // Fire-and-forget and metadata push reach a server.
    let before: usize = servers.iter().map(MemServer::hits).sum();
    b.fire_and_forget(Payload::from("f")).await.unwrap();
    b.metadata_push(bytes::Bytes::from_static(b"m"))
        .await
        .unwrap();
    within("fnf and metadata push", async {
        while servers.iter().map(MemServer::hits).sum::<usize>() < before + 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(b.members().iter().map(|m| m.pending).sum::<u32>(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_ready_member_fails_with_a_typed_error_in_time() {
    let b: Balancer<String> = Balancer::builder()
        .clock(TokioClock)
        .wait_for_member(Duration::from_millis(250))
        .build_from_list(
            Vec::<(String, MemServer)>::new()
                .into_iter()
                .map(|(k, s)| (k, s.connector())),
        );
    let started = tokio::time::Instant::now();
    let err = b.request_response(Payload::from("x")).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    match BalanceError::of(&err) {
        Some(BalanceError::NoReadyMember { members: 0, .. }) => {}
        other => panic!("{other:?} from {err:?}"),
    }
    // Streams fail the same way, as their first item.
    let first = b.request_stream(Payload::from("1")).next().await.unwrap();
    assert!(matches!(
        BalanceError::of(&first.unwrap_err()),
        Some(BalanceError::NoReadyMember { .. })
    ));
    b.close().await;
    let err = b.request_response(Payload::from("x")).await.unwrap_err();
    assert_eq!(BalanceError::of(&err), Some(&BalanceError::Closed));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiting_request_is_served_when_a_member_comes() {
    let s = MemServer::start("late", Duration::ZERO);
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let b = Balancer::builder().clock(TokioClock).build_from_watch(rx);
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.request_response(Payload::from("x")).await }
    });
    tokio::task::yield_now().await;
    tx.send(vec![("late", s.connector())]).unwrap();
    let reply = within("the late member", waiting).await.unwrap().unwrap();
    assert_eq!(text(reply), "late");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unbounded_wait_for_a_member_waits_instead_of_panicking() {
    // `Duration::MAX`: wait as long as it takes (no deadline to overflow).
    let s = MemServer::start("late", Duration::ZERO);
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let b = Balancer::builder()
        .clock(TokioClock)
        .wait_for_member(Duration::MAX)
        .build_from_watch(rx);
    let request = {
        let b = b.clone();
        async move { b.request_response(Payload::from("x")).await }
    };
    let stream = b.request_stream(Payload::from("2")).collect::<Vec<_>>();
    let waiting = tokio::spawn(async move { tokio::join!(request, stream) });
    // A day of waiting: still waiting.
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert!(!waiting.is_finished());
    tx.send(vec![("late", s.connector())]).unwrap();
    let (reply, items) = within("the late member", waiting).await.expect("no panic");
    assert_eq!(text(reply.expect("answered")), "late");
    assert_eq!(items.len(), 2);
}
