//! Leasing end to end, real client against real server: over the in-memory
//! pair with tokio's paused clock (the fixed policy's re-grant per TTL), and
//! over in-memory, TCP and WebSocket in both directions: the server's
//! grants to the client sent by the application (`Requester::send_lease`),
//! the client's to the server by its fixed policy.

use std::sync::Arc;
use std::time::Duration;

use rsocket_core::{
    request_response_fn, ClientBuilder, Config, Lease, LeaseConfig, LeasePolicy, NoLease, Payload,
    RSocket, RequestError, Requester,
};
use rsocket_tests::{within, Memory, Tcp, TestServer, TransportKind, Ws};

fn echo() -> Arc<dyn RSocket> {
    Arc::new(request_response_fn(|p: Payload| async move { Ok(Some(p)) }))
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

#[track_caller]
fn assert_no_lease<T: std::fmt::Debug>(r: Result<T, RequestError>, why: NoLease) {
    match r {
        Err(RequestError::NoLease(w)) if w == why => {}
        other => panic!("expected RequestError::NoLease({why:?}), got {other:?}"),
    }
}

async fn call(requester: &Requester, data: &'static str) -> Result<String, RequestError> {
    let reply = within(data, requester.request_response(Payload::from(data))).await?;
    Ok(reply
        .and_then(|p| p.data_utf8().map(str::to_owned))
        .unwrap_or_default())
}

/// A requester that waits (up to 5 s) for the next lease instead of
/// failing: the test's way to wait for a grant without sleeping.
fn patient(r: &Requester) -> Requester {
    r.with_lease_wait(Duration::from_secs(5))
}

#[tokio::test(start_paused = true)]
async fn fixed_policy_n_requests_then_fail_fast_then_again_after_the_ttl() {
    let t0 = tokio::time::Instant::now();
    let server = TestServer::<Memory>::start(
        echo(),
        leasing(Some(LeasePolicy::fixed(Duration::from_secs(4), 3))),
        Duration::from_secs(1),
    )
    .await;
    let client = server
        .connect(
            ClientBuilder::new()
                .keepalive(Duration::from_secs(3600), Duration::from_secs(7200))
                .lease(LeaseConfig::new()),
        )
        .await;
    assert_eq!(call(&patient(&client), "1").await.expect("first"), "1");
    assert_eq!(call(&client, "2").await.expect("second"), "2");
    assert_eq!(call(&client, "3").await.expect("third"), "3");
    assert_no_lease(call(&client, "4").await, NoLease::Exhausted);
    let state = client.lease().expect("leasing on");
    assert_eq!((state.remaining, state.allowed), (0, 3));
    assert_eq!(state.availability(), 0.0);

    // The server grants again 4 s after its first grant (the paused clock
    // jumps there while the request waits).
    assert_eq!(call(&patient(&client), "5").await.expect("re-granted"), "5");
    assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(4));
    assert_eq!(client.lease().map(|s| s.remaining), Some(2));
    assert_eq!(call(&client, "6").await.expect("within"), "6");
    assert_eq!(call(&client, "7").await.expect("within"), "7");
    assert_no_lease(call(&client, "8").await, NoLease::Exhausted);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_lease_is_bounded() {
    let server = TestServer::<Memory>::start(echo(), leasing(None), Duration::from_secs(1)).await;
    let client = server
        .connect(
            ClientBuilder::new()
                .keepalive(Duration::from_secs(3600), Duration::from_secs(7200))
                .lease(LeaseConfig::new().wait(Duration::from_secs(2))),
        )
        .await;
    let start = tokio::time::Instant::now();
    assert_no_lease(call(&client, "never").await, NoLease::NotGranted);
    assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(2));
}

async fn application_grants<K: TransportKind>() {
    let mut server = TestServer::<K>::start(echo(), leasing(None), Duration::from_secs(1)).await;
    let client = server
        .connect(
            ClientBuilder::new()
                .lease(LeaseConfig::new().policy(LeasePolicy::fixed(Duration::from_secs(60), 1)))
                .responder(request_response_fn(|_p: Payload| async move {
                    Ok(Some(Payload::from("from the client")))
                })),
        )
        .await;
    let server_side = server.accepted().await;

    // Client -> server: what the server's application grants.
    assert_no_lease(call(&client, "early").await, NoLease::NotGranted);
    assert!(server_side.send_lease(&Lease::new(Duration::from_secs(60), 2)));
    assert_eq!(call(&patient(&client), "a").await.expect("a"), "a");
    assert_eq!(call(&client, "b").await.expect("b"), "b");
    assert_no_lease(call(&client, "c").await, NoLease::Exhausted);
    assert!(server_side.send_lease(&Lease::new(Duration::from_secs(60), 1)));
    assert_eq!(call(&patient(&client), "d").await.expect("d"), "d");

    // Server -> client: the client's fixed policy grants one per minute.
    assert_eq!(
        call(&patient(&server_side), "x").await.expect("x"),
        "from the client"
    );
    assert_no_lease(call(&server_side, "y").await, NoLease::Exhausted);

    // Neither requester ever sent beyond its lease.
    assert_eq!(server_side.stats().lease_rejected, 0);
    assert_eq!(client.stats().lease_rejected, 0);
    client.close();
}

#[tokio::test]
async fn application_grants_over_memory() {
    application_grants::<Memory>().await;
}

#[tokio::test]
async fn application_grants_over_tcp() {
    application_grants::<Tcp>().await;
}

#[tokio::test]
async fn application_grants_over_websocket() {
    application_grants::<Ws>().await;
}
