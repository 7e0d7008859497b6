//! Member lifecycle: drain on removal, re-dial, backpressure, churn and
//! following a watch of lists.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{count, text, within, MemServer, TcpServer};
use futures::StreamExt;
use rsocket_balance::{Balancer, MemberState, RoundRobin, TcpConnector};
use rsocket_core::{ClientBuilder, Config, Payload, RSocket};
use tokio::sync::watch;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn removed_target_finishes_its_stream_while_new_requests_go_elsewhere() {
    let a = MemServer::start("a", Duration::ZERO);
    let b_srv = MemServer::start("b", Duration::ZERO);
    // A small fixed window, so the stream needs many REQUEST_N round trips.
    let config = Config {
        default_prefetch: 8,
        max_prefetch: 8,
        ..Config::default()
    };
    let builder = ClientBuilder::new().config(config);
    let (tx, rx) = watch::channel(vec![("a", a.connector_with(builder.clone()))]);
    let b = Balancer::builder().build_from_watch(rx);
    within(
        "a ready",
        b.wait_until(|m| count(m, MemberState::Ready) == 1),
    )
    .await;

    let mut stream = b.request_stream(Payload::from("100"));
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(stream.next().await.unwrap().unwrap());
    }
    // Replace a by b: a drains.
    tx.send(vec![("b", b_srv.connector_with(builder))]).unwrap();
    within(
        "a draining, b ready",
        b.wait_until(|m| {
            m.iter()
                .any(|m| m.key == "a" && !m.is_target && m.state == MemberState::Draining)
                && m.iter()
                    .any(|m| m.key == "b" && m.state == MemberState::Ready)
        }),
    )
    .await;
    for _ in 0..20 {
        let reply = b.request_response(Payload::from("x")).await.unwrap();
        assert_eq!(text(reply), "b");
    }
    // The stream on a still runs to its end.
    while let Some(item) = stream.next().await {
        got.push(item.unwrap());
    }
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|p| p.data_utf8().unwrap().starts_with("a:")));
    // Then a closes and is forgotten.
    within("a gone", b.wait_until(|m| m.len() == 1 && m[0].key == "b")).await;
    within("a's connection closed", async {
        while a.open() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_at_the_same_address_is_redialled() {
    let first = TcpServer::start("one", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr: SocketAddr = first.addr;
    let b = Balancer::builder()
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .build_from_list([(addr, TcpConnector::new(addr))]);
    within("ready", b.wait_until(|m| count(m, MemberState::Ready) == 1)).await;
    b.request_response(Payload::from("x")).await.unwrap();
    assert_eq!(first.hits(), 1);

    first.kill();
    within(
        "member leaves ready",
        b.wait_until(|m| m[0].state != MemberState::Ready),
    )
    .await;
    // It keeps dialling (and failing) on its own.
    within("failed dials", b.wait_until(|m| m[0].failed_dials >= 2)).await;

    let second = TcpServer::start("two", addr).await.unwrap();
    within(
        "re-dialled",
        b.wait_until(|m| m[0].state == MemberState::Ready && m[0].connects == 2),
    )
    .await;
    let reply = b.request_response(Payload::from("x")).await.unwrap();
    assert_eq!(text(reply), "two");
    assert_eq!(second.hits(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn backpressure_holds_through_the_balancer() {
    let servers = [
        MemServer::start("a", Duration::ZERO),
        MemServer::start("b", Duration::ZERO),
    ];
    // A fixed window, so that the bound below is exact.
    let config = Config {
        default_prefetch: 16,
        max_prefetch: 16,
        ..Config::default()
    };
    let builder = ClientBuilder::new().config(config);
    let b = Balancer::builder()
        .strategy(RoundRobin::new())
        .build_from_list(
            servers
                .iter()
                .map(|s| (s.name.clone(), s.connector_with(builder.clone())))
                .collect::<Vec<_>>(),
        );
    within("ready", b.wait_until(|m| count(m, MemberState::Ready) == 2)).await;
    let mut stream = b.request_stream(Payload::from("100000"));
    for _ in 0..10 {
        stream.next().await.unwrap().unwrap();
    }
    // Let everything run until nothing can move (the paused clock only
    // advances once every task is idle).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let produced: usize = servers
        .iter()
        .map(|s| s.counters.produced.load(Ordering::SeqCst))
        .sum();
    // 16 granted at first, 8 more once 8 were consumed: 24 in all.
    assert!(
        produced <= 24,
        "producer ran ahead of its credit: {produced}"
    );
    assert!(produced >= 16, "{produced}");
    drop(stream);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn churn_of_100_targets_twenty_times_leaves_nothing_behind() {
    let server = MemServer::start("s", Duration::ZERO);
    let (tx, rx) = watch::channel(Vec::new());
    let b = Balancer::builder().build_from_watch(rx);
    tokio::task::yield_now().await;
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for round in 0..20u32 {
        let list: Vec<_> = (0..100u32)
            .map(|i| (round * 1000 + i, server.connector()))
            .collect();
        tx.send(list).unwrap();
        within(
            "100 ready",
            b.wait_until(|m| count(m, MemberState::Ready) == 100),
        )
        .await;
        b.request_response(Payload::from("x")).await.unwrap();
        tx.send(Vec::new()).unwrap();
        within("all gone", b.wait_until(|m| m.is_empty())).await;
    }
    within("server connections closed", async {
        while server.open() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(server.counters.accepted.load(Ordering::SeqCst), 2000);
    // Member tasks, connection drivers and the server's watchers are gone.
    within("tasks ended", async {
        while tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            > tasks_before
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(b.ready_count(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn watch_helper_follows_additions_removals_and_replacements() {
    let servers: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| MemServer::start(n, Duration::ZERO))
        .collect();
    let list = |names: &[usize]| -> Vec<_> {
        names
            .iter()
            .map(|&i| (servers[i].name.clone(), servers[i].connector()))
            .collect()
    };
    let (tx, rx) = watch::channel(list(&[0, 1]));
    let b = Balancer::builder()
        .strategy(RoundRobin::new())
        .build_from_watch(rx);
    let keys = |b: &Balancer<String>| -> Vec<String> {
        let mut k: Vec<_> = b
            .members()
            .into_iter()
            .filter(|m| m.is_target)
            .map(|m| m.key)
            .collect();
        k.sort();
        k
    };
    within("a, b", b.wait_until(|m| count(m, MemberState::Ready) == 2)).await;
    assert_eq!(keys(&b), ["a", "b"]);
    // Addition.
    tx.send(list(&[0, 1, 2])).unwrap();
    within(
        "a, b, c",
        b.wait_until(|m| count(m, MemberState::Ready) == 3),
    )
    .await;
    // Removal.
    tx.send(list(&[0, 2])).unwrap();
    within("a, c", b.wait_until(|m| m.len() == 2)).await;
    assert_eq!(keys(&b), ["a", "c"]);
    // Replacement: c by d.
    tx.send(list(&[0, 3])).unwrap();
    within(
        "a, d",
        b.wait_until(|m| {
            m.len() == 2 && count(m, MemberState::Ready) == 2 && m.iter().any(|m| m.key == "d")
        }),
    )
    .await;
    assert_eq!(keys(&b), ["a", "d"]);
    let before = servers[3].hits();
    for _ in 0..10 {
        b.request_response(Payload::from("x")).await.unwrap();
    }
    assert_eq!(servers[3].hits() - before, 5);
    within("b and c connections closed", async {
        while servers[1].open() + servers[2].open() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
