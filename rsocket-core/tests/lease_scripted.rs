//! Leasing through the tokio runtime, against a scripted peer that reads and
//! writes raw frames (as in `scripted.rs`), so the exact frames on the wire
//! are asserted: SETUP with L accepted or refused, the LEASE frames the
//! policies send (re-sent per TTL under tokio's paused clock), requests
//! beyond the lease rejected without running the handler, fire-and-forget
//! dropped and counted, and the requester failing fast, or waiting, without
//! a lease. Ordering never relies on sleeps: a KEEPALIVE round trip or a
//! sentinel METADATA_PUSH marks "everything before was handled / nothing
//! else was sent".

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rsocket_core::frame::{
    Keepalive, Lease as LeaseFrame, RequestFnf, RequestResponse, Setup, Version,
};
use rsocket_core::{
    accept, async_trait, ClientBuilder, Config, ConnectionError, ConnectionStats, ErrorCode, Frame,
    Lease, LeaseConfig, LeasePolicy, MimeType, NoLease, Payload, RSocket, RequestError, Requester,
    SetupInfo,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn setup(lease: bool) -> Frame {
    Frame::Setup(Box::new(Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: 90_000,
        resume_token: None,
        lease,
        metadata_mime_type: MimeType::OCTET_STREAM,
        data_mime_type: MimeType::OCTET_STREAM,
        payload: Payload::default(),
    }))
}

fn lease_frame(ttl_ms: u32, n: u32) -> Frame {
    Frame::Lease(LeaseFrame {
        ttl_ms,
        number_of_requests: n,
        metadata: None,
    })
}

fn rr(id: u32, data: &'static str) -> Frame {
    Frame::RequestResponse(RequestResponse {
        stream_id: sid(id),
        follows: false,
        payload: Payload::from(data),
    })
}

fn fnf(id: u32) -> Frame {
    Frame::RequestFnf(RequestFnf {
        stream_id: sid(id),
        follows: false,
        payload: Payload::from("f"),
    })
}

fn keepalive(data: &'static str) -> Frame {
    Frame::Keepalive(Keepalive {
        respond: true,
        last_received_position: 0,
        data: Bytes::from_static(data.as_bytes()),
    })
}

#[track_caller]
fn assert_answer(f: &Frame, id: u32, data: &str) {
    match f {
        Frame::Payload(p) if p.stream_id == sid(id) && p.next && p.payload.data == data => {}
        other => panic!("expected PAYLOAD {data:?} on stream {id}, got {other:?}"),
    }
}

#[track_caller]
fn assert_rejected(f: &Frame, id: u32) {
    match f {
        Frame::Error(e) if e.stream_id == Some(sid(id)) && e.code == ErrorCode::REJECTED => {}
        other => panic!("expected ERROR[REJECTED] on stream {id}, got {other:?}"),
    }
}

/// KEEPALIVE round trip: the engine has handled every frame sent before,
/// and sent nothing else in between.
async fn barrier(raw: &mut Raw, tag: &'static str) {
    send(raw, keepalive(tag)).await;
    match expect_frame(raw).await {
        Frame::Keepalive(k) if !k.respond && k.data == tag.as_bytes() => {}
        other => panic!("{tag}: expected only the KEEPALIVE answer, got {other:?}"),
    }
}

/// A metadata push the script expects as the very next frame: nothing else
/// was queued before it (and metadata push itself needs no lease).
async fn sentinel(requester: &Requester, raw: &mut Raw, what: &'static str) {
    requester
        .metadata_push(Bytes::from_static(what.as_bytes()))
        .await
        .expect("connection open");
    match expect_frame(raw).await {
        Frame::MetadataPush(m) if m.metadata == what.as_bytes() => {}
        other => panic!("{what}: expected only the sentinel METADATA_PUSH, got {other:?}"),
    }
}

#[track_caller]
fn assert_no_lease<T: std::fmt::Debug>(r: Result<T, RequestError>, why: NoLease) {
    match r {
        Err(RequestError::NoLease(w)) if w == why => {}
        other => panic!("expected RequestError::NoLease({why:?}), got {other:?}"),
    }
}

/// Echo responder counting every call that reached it.
#[derive(Default)]
struct Counting {
    rr: AtomicUsize,
    fnf: AtomicUsize,
}

#[async_trait]
impl RSocket for Counting {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.rr.fetch_add(1, SeqCst);
        Ok(Some(req))
    }

    async fn fire_and_forget(&self, _req: Payload) -> Result<(), RequestError> {
        self.fnf.fetch_add(1, SeqCst);
        Ok(())
    }
}

struct ScriptedServer {
    raw: Raw,
    requester: Requester,
    task: JoinHandle<Result<(), ConnectionError>>,
}

/// A real server (`accept` + driver) with `config`, after the script's
/// SETUP (with `lease` as its L flag). Its responder answers `lease?` with
/// whether the acceptor saw leasing on, and counts the rest.
async fn scripted_server(config: Config, lease: bool, responder: Arc<Counting>) -> ScriptedServer {
    let (t, mut raw) = raw_pair();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let acceptor = move |info: SetupInfo, _r: Requester| {
            let responder = responder.clone();
            async move { Ok(Arc::new(Wrapper(responder, info)) as Arc<dyn RSocket>) }
        };
        let (requester, driver) = accept(t, config, &acceptor).await?;
        let _ = tx.send(requester);
        driver.await
    });
    send(&mut raw, setup(lease)).await;
    let requester = prompt("accept", rx).await.expect("accepted");
    ScriptedServer {
        raw,
        requester,
        task,
    }
}

struct Wrapper(Arc<Counting>, SetupInfo);

#[async_trait]
impl RSocket for Wrapper {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        if req.data == "lease?" {
            return Ok(Some(Payload::from(self.1.lease.to_string())));
        }
        self.0.request_response(req).await
    }

    async fn fire_and_forget(&self, req: Payload) -> Result<(), RequestError> {
        self.0.fire_and_forget(req).await
    }
}

fn lease_config(policy: Option<LeasePolicy>) -> Config {
    let mut lease = LeaseConfig::new();
    if let Some(p) = policy {
        lease = lease.policy(p);
    }
    Config {
        lease: Some(lease),
        ..Config::default()
    }
}

fn stats(requester: &Requester) -> ConnectionStats {
    requester.stats()
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

#[tokio::test]
async fn server_without_lease_refuses_setup_with_l() {
    let (t, mut raw) = raw_pair();
    let acceptor = |_: SetupInfo, _: Requester| async { Ok(rsocket_core::RejectAll) };
    let task =
        tokio::spawn(async move { accept(t, Config::default(), &acceptor).await.map(|_| ()) });
    send(&mut raw, setup(true)).await;
    match expect_frame(&mut raw).await {
        Frame::Error(e) if e.stream_id.is_none() && e.code == ErrorCode::UNSUPPORTED_SETUP => {}
        other => panic!("expected ERROR[UNSUPPORTED_SETUP], got {other:?}"),
    }
    expect_closed(&mut raw).await;
    match prompt("accept", task).await.expect("join") {
        Err(ConnectionError::SetupRejected { code, .. })
            if code == ErrorCode::UNSUPPORTED_SETUP => {}
        other => panic!("expected SetupRejected(UNSUPPORTED_SETUP), got {other:?}"),
    }
}

#[tokio::test]
async fn server_with_fixed_policy_accepts_l_grants_and_rejects_beyond_the_lease() {
    let counting = Arc::new(Counting::default());
    let config = lease_config(Some(LeasePolicy::fixed(Duration::from_secs(60), 2)));
    let mut s = scripted_server(config, true, counting.clone()).await;
    // The first frame after an accepted SETUP(L) is the lease.
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(60_000, 2));
    send(&mut s.raw, rr(1, "lease?")).await;
    assert_answer(&expect_frame(&mut s.raw).await, 1, "true");
    send(&mut s.raw, rr(3, "b")).await;
    assert_answer(&expect_frame(&mut s.raw).await, 3, "b");
    // The third request is beyond the two granted.
    send(&mut s.raw, rr(5, "c")).await;
    assert_rejected(&expect_frame(&mut s.raw).await, 5);
    barrier(&mut s.raw, "after").await;
    assert_eq!(counting.rr.load(SeqCst), 1, "the handler ran for `b` only");
    assert_eq!(stats(&s.requester).lease_rejected, 1);
    s.task.abort();
}

#[tokio::test]
async fn server_configured_for_lease_serves_clients_that_do_not_ask() {
    let counting = Arc::new(Counting::default());
    let config = lease_config(Some(LeasePolicy::fixed(Duration::from_secs(60), 1)));
    let mut s = scripted_server(config, false, counting.clone()).await;
    for id in [1, 3, 5] {
        send(&mut s.raw, rr(id, "lease?")).await;
        // No LEASE frame first, and no limit.
        assert_answer(&expect_frame(&mut s.raw).await, id, "false");
    }
    assert!(s.requester.lease().is_none());
    s.task.abort();
}

#[tokio::test(start_paused = true)]
async fn fixed_policy_re_grants_every_ttl() {
    let counting = Arc::new(Counting::default());
    let config = lease_config(Some(LeasePolicy::fixed(Duration::from_secs(10), 1)));
    let mut s = scripted_server(config, true, counting.clone()).await;
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(10_000, 1));
    send(&mut s.raw, rr(1, "a")).await;
    assert_answer(&expect_frame(&mut s.raw).await, 1, "a");
    send(&mut s.raw, rr(3, "b")).await;
    assert_rejected(&expect_frame(&mut s.raw).await, 3);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    barrier(&mut s.raw, "before the ttl").await;
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(10_000, 1));
    send(&mut s.raw, rr(5, "c")).await;
    assert_answer(&expect_frame(&mut s.raw).await, 5, "c");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(10_000, 1));
    assert_eq!(counting.rr.load(SeqCst), 2);
    s.task.abort();
}

#[tokio::test(start_paused = true)]
async fn expired_lease_rejects_requests() {
    let counting = Arc::new(Counting::default());
    let mut s = scripted_server(lease_config(None), true, counting.clone()).await;
    assert!(s
        .requester
        .send_lease(&Lease::new(Duration::from_secs(3), 100)));
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(3_000, 100));
    send(&mut s.raw, rr(1, "a")).await;
    assert_answer(&expect_frame(&mut s.raw).await, 1, "a");
    tokio::time::advance(Duration::from_secs(3)).await;
    send(&mut s.raw, rr(3, "late")).await;
    assert_rejected(&expect_frame(&mut s.raw).await, 3);
    assert_eq!(counting.rr.load(SeqCst), 1);
    s.task.abort();
}

#[tokio::test]
async fn fire_and_forget_beyond_the_lease_is_dropped_and_counted() {
    let counting = Arc::new(Counting::default());
    let config = lease_config(Some(LeasePolicy::fixed(Duration::from_secs(60), 1)));
    let mut s = scripted_server(config, true, counting.clone()).await;
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(60_000, 1));
    send(&mut s.raw, fnf(1)).await;
    send(&mut s.raw, fnf(3)).await;
    send(&mut s.raw, fnf(5)).await;
    // Nothing comes back for any of them.
    barrier(&mut s.raw, "after the fire-and-forgets").await;
    let st = stats(&s.requester);
    assert_eq!((st.lease_dropped_fnf, st.lease_rejected), (2, 0));
    // The one within the lease reached the handler (it runs on its own
    // task: wait for it without a sleep).
    prompt("the admitted fire-and-forget", async {
        while counting.fnf.load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    send(&mut s.raw, rr(7, "x")).await;
    assert_rejected(&expect_frame(&mut s.raw).await, 7);
    assert_eq!(counting.fnf.load(SeqCst), 1);
    s.task.abort();
}

#[tokio::test]
async fn watch_policy_sends_the_current_grant_then_each_change() {
    let counting = Arc::new(Counting::default());
    let (tx, rx) = tokio::sync::watch::channel(Lease::new(Duration::from_secs(5), 3));
    let config = lease_config(Some(LeasePolicy::watch(rx)));
    let mut s = scripted_server(config, true, counting).await;
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(5_000, 3));
    tx.send(Lease::new(Duration::from_secs(7), 9).with_metadata("load=0.1"))
        .expect("receiver alive");
    assert_eq!(
        expect_frame(&mut s.raw).await,
        Frame::Lease(LeaseFrame {
            ttl_ms: 7_000,
            number_of_requests: 9,
            metadata: Some(Bytes::from_static(b"load=0.1")),
        })
    );
    s.task.abort();
}

#[tokio::test]
async fn stream_policy_sends_every_grant_of_its_stream() {
    let counting = Arc::new(Counting::default());
    let policy = LeasePolicy::stream(|| {
        futures::stream::iter([
            Lease::new(Duration::from_secs(1), 1),
            Lease::new(Duration::from_secs(2), 2),
        ])
    });
    let mut s = scripted_server(lease_config(Some(policy)), true, counting).await;
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(1_000, 1));
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(2_000, 2));
    barrier(&mut s.raw, "stream ended").await;
    s.task.abort();
}

/// A policy stream with more grants ready at once than the driver takes
/// in one go: the rest (the newest among them) still go out without
/// waiting for some other event to wake the connection.
#[tokio::test]
async fn a_stream_policy_with_many_grants_ready_sends_them_all() {
    let counting = Arc::new(Counting::default());
    let policy = LeasePolicy::stream(|| {
        futures::stream::iter((1..=40).map(|n| Lease::new(Duration::from_secs(60), n)))
            .chain(futures::stream::pending())
    });
    let mut s = scripted_server(lease_config(Some(policy)), true, counting).await;
    for n in 1..=40 {
        assert_eq!(
            expect_frame(&mut s.raw).await,
            lease_frame(60_000, n),
            "grant {n}"
        );
    }
    barrier(&mut s.raw, "all grants sent").await;
    s.task.abort();
}

#[tokio::test]
async fn a_stream_policy_that_panics_ends_the_grants_not_the_connection() {
    let counting = Arc::new(Counting::default());
    let policy = LeasePolicy::stream(|| {
        futures::stream::iter(0..2).map(|i| {
            if i == 1 {
                panic!("a lease policy's bug");
            }
            Lease::new(Duration::from_secs(1), 1)
        })
    });
    let mut s = scripted_server(lease_config(Some(policy)), true, counting).await;
    assert_eq!(expect_frame(&mut s.raw).await, lease_frame(1_000, 1));
    // The connection goes on: it answers what comes next.
    barrier(&mut s.raw, "after the policy's panic").await;
    s.task.abort();
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// A real client with `lease` on a scripted transport; the script has read
/// its SETUP and checked the L flag.
async fn leasing_client(lease: LeaseConfig) -> (Requester, Raw) {
    let (t, mut raw) = raw_pair();
    // Keepalive far off: paused-clock tests advance time.
    let requester = ClientBuilder::new()
        .keepalive(Duration::from_secs(3600), Duration::from_secs(7200))
        .lease(lease)
        .connect(t)
        .expect("valid client config");
    match expect_frame(&mut raw).await {
        Frame::Setup(s) if s.lease => {}
        other => panic!("expected SETUP with the L flag, got {other:?}"),
    }
    (requester, raw)
}

#[tokio::test]
async fn client_without_lease_fails_fast_and_sends_nothing() {
    let (requester, mut raw) = leasing_client(LeaseConfig::new()).await;
    assert_no_lease(
        requester.request_response(Payload::from("a")).await,
        NoLease::NotGranted,
    );
    assert_no_lease(
        requester.fire_and_forget(Payload::from("b")).await,
        NoLease::NotGranted,
    );
    let first = requester.request_stream(Payload::from("c")).next().await;
    assert_no_lease(first.expect("an item"), NoLease::NotGranted);
    let first = requester
        .request_channel(Payload::from("d"), futures::stream::empty())
        .next()
        .await;
    assert_no_lease(first.expect("an item"), NoLease::NotGranted);
    sentinel(&requester, &mut raw, "nothing before me").await;

    // One request granted: one goes out, the next fails fast.
    send(&mut raw, lease_frame(60_000, 1)).await;
    barrier(&mut raw, "lease handled").await;
    let state = requester.lease().expect("leasing on");
    assert_eq!((state.remaining, state.allowed), (1, 1));
    let call = tokio::spawn({
        let r = requester.clone();
        async move { r.request_response(Payload::from("e")).await }
    });
    assert_eq!(expect_frame(&mut raw).await, rr(1, "e"));
    assert_no_lease(
        requester.request_response(Payload::from("f")).await,
        NoLease::Exhausted,
    );
    assert_eq!(requester.lease().map(|s| s.remaining), Some(0));
    sentinel(&requester, &mut raw, "nothing for f").await;
    send(
        &mut raw,
        Frame::Payload(rsocket_core::frame::PayloadFrame::next_complete(
            sid(1),
            Payload::from("E"),
        )),
    )
    .await;
    let reply = prompt("reply", call)
        .await
        .expect("join")
        .expect("answered");
    assert_eq!(reply.map(|p| p.data), Some(Bytes::from_static(b"E")));
    // This client has no lease policy: it never granted the server
    // anything, so the server's requests are rejected.
    send(&mut raw, rr(2, "from the server")).await;
    assert_rejected(&expect_frame(&mut raw).await, 2);
    assert_eq!(requester.stats().lease_rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn client_lease_expires_after_its_ttl_from_receipt() {
    let (requester, mut raw) = leasing_client(LeaseConfig::new()).await;
    send(&mut raw, lease_frame(2_000, 10)).await;
    barrier(&mut raw, "lease handled").await;
    let expires = requester
        .lease()
        .and_then(|s| s.expires_at)
        .expect("granted");
    tokio::time::advance(Duration::from_millis(1_999)).await;
    assert_eq!(requester.lease().map(|s| s.remaining), Some(10));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(tokio::time::Instant::now().into_std() >= expires);
    assert_eq!(requester.lease().map(|s| s.remaining), Some(0));
    assert_no_lease(
        requester.request_response(Payload::from("late")).await,
        NoLease::Expired,
    );
    sentinel(&requester, &mut raw, "nothing for late").await;
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_sent_when_a_lease_arrives_or_fail_after_the_bound() {
    let (requester, mut raw) =
        leasing_client(LeaseConfig::new().wait(Duration::from_secs(30))).await;
    let waiting = requester.clone();
    let call = tokio::spawn(async move { waiting.request_response(Payload::from("w")).await });
    let fnf_handle = requester.clone();
    let fire = tokio::spawn(async move { fnf_handle.fire_and_forget(Payload::from("x")).await });
    barrier(&mut raw, "both waiting").await;
    tokio::time::advance(Duration::from_secs(10)).await;
    // One lease unit: exactly one of the two is sent.
    send(&mut raw, lease_frame(60_000, 1)).await;
    let sent = expect_frame(&mut raw).await;
    let rr_went = match &sent {
        Frame::RequestResponse(r) => {
            assert_eq!(r.payload.data, "w");
            true
        }
        Frame::RequestFnf(r) => {
            assert_eq!(r.payload.data, "x");
            false
        }
        other => panic!("expected one of the waiting requests, got {other:?}"),
    };
    barrier(&mut raw, "only one sent").await;
    // The other still waits; a second lease releases it.
    send(&mut raw, lease_frame(60_000, 1)).await;
    match (rr_went, expect_frame(&mut raw).await) {
        (true, Frame::RequestFnf(_)) | (false, Frame::RequestResponse(_)) => {}
        (_, other) => panic!("expected the other waiting request, got {other:?}"),
    }
    prompt("fnf", fire).await.expect("join").expect("queued");
    send(
        &mut raw,
        Frame::Payload(rsocket_core::frame::PayloadFrame::next_complete(
            sid(1),
            Payload::from("W"),
        )),
    )
    .await;
    prompt("rr", call).await.expect("join").expect("answered");

    // The bound: a request that gets no lease within it fails, unsent.
    let waiting = requester.clone();
    let call = tokio::spawn(async move { waiting.request_response(Payload::from("v")).await });
    barrier(&mut raw, "waiting again").await;
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_no_lease(
        prompt("bounded wait", call).await.expect("join"),
        NoLease::Exhausted,
    );
    // A fail-fast handle on the same connection does not wait at all.
    assert_no_lease(
        requester
            .with_lease_wait(Duration::ZERO)
            .request_response(Payload::from("u"))
            .await,
        NoLease::Exhausted,
    );
    sentinel(&requester, &mut raw, "nothing for v or u").await;
}

#[tokio::test]
async fn client_grants_the_server_and_rejects_its_requests_beyond_the_grant() {
    let (t, mut raw) = raw_pair();
    let counting = Arc::new(Counting::default());
    let requester = ClientBuilder::new()
        .lease(LeaseConfig::new().policy(LeasePolicy::fixed(Duration::from_secs(30), 1)))
        .responder(counting.clone() as Arc<dyn RSocket>)
        .connect(t)
        .expect("valid config");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Setup(s) if s.lease));
    // The client's responder grants right after SETUP.
    assert_eq!(expect_frame(&mut raw).await, lease_frame(30_000, 1));
    send(&mut raw, lease_frame(30_000, 5)).await;
    send(&mut raw, rr(2, "s1")).await;
    assert_answer(&expect_frame(&mut raw).await, 2, "s1");
    send(&mut raw, rr(4, "s2")).await;
    assert_rejected(&expect_frame(&mut raw).await, 4);
    assert_eq!(counting.rr.load(SeqCst), 1);
    assert_eq!(requester.stats().lease_rejected, 1);
    // The server's lease to the client is separate.
    assert_eq!(requester.lease().map(|s| s.remaining), Some(5));
}

#[tokio::test]
async fn client_refused_by_a_server_without_lease_sees_the_setup_error() {
    let (t, mut raw) = raw_pair();
    let requester = ClientBuilder::new()
        .lease(LeaseConfig::new())
        .connect(t)
        .expect("valid config");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Setup(s) if s.lease));
    send(
        &mut raw,
        Frame::Error(rsocket_core::frame::ErrorFrame::new(
            None,
            ErrorCode::UNSUPPORTED_SETUP,
            "lease is not supported",
        )),
    )
    .await;
    match prompt("closed", requester.closed()).await {
        ConnectionError::SetupRejected { code, .. } => {
            assert_eq!(code, ErrorCode::UNSUPPORTED_SETUP)
        }
        other => panic!("expected SetupRejected, got {other:?}"),
    }
}

#[tokio::test]
async fn a_later_config_call_keeps_the_lease() {
    let (t, mut raw) = raw_pair();
    let _requester = ClientBuilder::new()
        .lease(LeaseConfig::new())
        .config(Config::default())
        .connect(t)
        .expect("valid config");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Setup(s) if s.lease));

    let (t, mut raw) = raw_pair();
    let server = rsocket_core::Server::new(|_: SetupInfo, _: Requester| async {
        Ok(rsocket_core::RejectAll)
    })
    .lease(LeaseConfig::new().policy(LeasePolicy::fixed(Duration::from_secs(5), 1)))
    .config(Config::default());
    let serving = tokio::spawn(server.serve(futures::stream::iter([Ok::<_, std::io::Error>(t)])));
    send(&mut raw, setup(true)).await;
    assert_eq!(expect_frame(&mut raw).await, lease_frame(5_000, 1));
    serving.abort();
}
