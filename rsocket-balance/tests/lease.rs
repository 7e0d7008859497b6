//! Leasing members: a member's availability follows its connection's
//! lease, so weighted p2c stops sending to a member out of lease, and a
//! request refused locally for want of a lease (`RequestError::NoLease`,
//! nothing sent) is retried elsewhere without taking the member out of use.

mod common;

use std::time::Duration;

use common::{count, text, within, MemServer};
use futures::StreamExt;
use rsocket_balance::{Balancer, MemberState, TokioClock};
use rsocket_core::{
    ClientBuilder, LeaseConfig, LeasePolicy, NoLease, Payload, RSocket, RequestError,
};

fn leasing_server(name: &str, requests: u32) -> MemServer {
    MemServer::start_with(
        name,
        Duration::ZERO,
        Some(LeaseConfig::new().policy(LeasePolicy::fixed(Duration::from_secs(3600), requests))),
    )
}

fn leasing_client() -> ClientBuilder {
    ClientBuilder::new()
        .keepalive(Duration::from_secs(3600), Duration::from_secs(7200))
        .lease(LeaseConfig::new())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_out_of_lease_gets_no_requests_and_stays_ready() {
    let a = leasing_server("a", 3);
    // b answers slowly, so that p2c prefers a while a has lease left.
    let b = MemServer::start("b", Duration::from_millis(50));
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .seed(7)
        .build_from_list([
            ("a", a.connector_with(leasing_client())),
            ("b", b.connector_with(ClientBuilder::new())),
        ]);
    within(
        "both ready",
        balancer.wait_until(|m| count(m, MemberState::Ready) == 2),
    )
    .await;
    within(
        "a's lease granted",
        balancer.wait_until(|m| m.iter().any(|m| m.key == "a" && m.weight > 0.0)),
    )
    .await;
    for _ in 0..40 {
        let reply = balancer
            .request_response(Payload::from("x"))
            .await
            .expect("no error reaches the caller");
        assert!(["a", "b"].contains(&text(reply).as_str()));
    }
    assert_eq!(a.hits(), 3, "a serves exactly its lease of 3");
    assert_eq!(a.hits() + b.hits(), 40);
    let members = balancer.members();
    let a_info = members.iter().find(|m| m.key == "a").expect("a listed");
    assert_eq!(
        a_info.state,
        MemberState::Ready,
        "out of lease is not broken"
    );
    assert_eq!(a_info.weight, 0.0, "no lease left: weight 0");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lone_member_out_of_lease_fails_with_no_lease() {
    let a = leasing_server("a", 2);
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .max_retries(1)
        .build_from_list([("a", a.connector_with(leasing_client()))]);
    within(
        "ready",
        balancer.wait_until(|m| count(m, MemberState::Ready) == 1),
    )
    .await;
    // The first request may precede the lease: it is retried on the same
    // member, so wait for the grant by the member's weight instead.
    within(
        "lease granted",
        balancer.wait_until(|m| m.first().is_some_and(|m| m.weight > 0.0)),
    )
    .await;
    for _ in 0..2 {
        balancer
            .request_response(Payload::from("x"))
            .await
            .expect("within the lease");
    }
    match balancer.request_response(Payload::from("y")).await {
        Err(RequestError::NoLease(NoLease::Exhausted)) => {}
        other => panic!("expected NoLease(Exhausted), got {other:?}"),
    }
    assert_eq!(a.hits(), 2);
    assert_eq!(count(&balancer.members(), MemberState::Ready), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_channel_refused_for_want_of_a_lease_is_retried_elsewhere() {
    // a never grants a request; round robin still picks it every other
    // time, and the channel, refused before anything is sent, goes to b.
    let a = leasing_server("a", 0);
    let b = MemServer::start("b", Duration::ZERO);
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .strategy(rsocket_balance::RoundRobin::new())
        .build_from_list([
            ("a", a.connector_with(leasing_client())),
            ("b", b.connector_with(ClientBuilder::new())),
        ]);
    within(
        "both ready",
        balancer.wait_until(|m| count(m, MemberState::Ready) == 2),
    )
    .await;
    for i in 0..4 {
        let first = Payload::from(format!("x{i}"));
        let rest = futures::stream::iter([Payload::from("y")]);
        let echoed: Vec<String> = balancer
            .request_channel(first, rest)
            .map(|p| text(Some(p.expect("no error reaches the caller"))))
            .collect()
            .await;
        assert_eq!(echoed, [format!("b:x{i}"), "b:y".to_owned()]);
    }
    assert_eq!(a.hits(), 0, "nothing reached a");
    assert_eq!(b.hits(), 4);
    let refused = balancer
        .members()
        .iter()
        .find(|m| m.key == "a")
        .map(|m| m.state);
    assert_eq!(
        refused,
        Some(MemberState::Ready),
        "a refusal is not a failure"
    );
}
