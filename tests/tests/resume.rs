//! Session resumption end to end, through the fault-injection proxy
//! (`rsocket_tests::proxy`): TCP transports are cut, stalled and refused,
//! and WebSocket ones cut, while requests, streams and channels are open.
//!
//! No test orders events by sleeping: waits are on counters the responder
//! or the proxy update, each under a timeout that only turns a hang into a
//! failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rsocket_balance::{Balancer, MemberState, TcpConnector};
use rsocket_core::{
    async_trait, ClientBuilder, Config, ConnectionError, Lease, LeaseConfig, Payload,
    PayloadStream, RSocket, RejectAll, RequestError, Requester, ResumeFailure, ResumeOptions,
    Server, ServerResumeOptions,
};
use rsocket_tests::proxy::FaultProxy;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// Failure guard for every wait.
const GUARD: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {GUARD:?} waiting for {what}"),
    }
}

/// Polls `cond` until it holds (observing a state, not ordering events).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

fn item(i: u32) -> Payload {
    Payload::from(Bytes::copy_from_slice(&i.to_be_bytes()))
}

fn index(p: &Payload) -> u32 {
    let d: [u8; 4] = p.data[..4].try_into().expect("4-byte item");
    u32::from_be_bytes(d)
}

/// What the responder reports to the test.
#[derive(Debug, Default)]
struct Probe {
    /// request/response calls received.
    calls: AtomicUsize,
    /// Items produced by `forever` streams.
    produced: AtomicU64,
}

/// `count:N` streams N items (4-byte big-endian indexes), `big:N` streams
/// N items of 1 KiB, `forever` counts without end (the probe sees what was
/// produced), `bigforever` sends 1 KiB items without end;
/// request/response waits for a gate permit; channels echo.
struct Responder {
    probe: Arc<Probe>,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl RSocket for Responder {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.probe.calls.fetch_add(1, Ordering::SeqCst);
        let permit = self.gate.acquire().await.expect("gate open");
        permit.forget();
        Ok(Some(req))
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        let text = req.data_utf8().unwrap_or("").to_owned();
        if let Some(n) = text.strip_prefix("count:") {
            let n: u32 = n.parse().unwrap_or(0);
            return futures::stream::iter((0..n).map(|i| Ok(item(i)))).boxed();
        }
        if let Some(n) = text.strip_prefix("big:") {
            let n: u32 = n.parse().unwrap_or(0);
            return futures::stream::iter((0..n).map(|i| {
                let mut data = vec![0u8; 1024];
                data[..4].copy_from_slice(&i.to_be_bytes());
                Ok(Payload::from(Bytes::from(data)))
            }))
            .boxed();
        }
        if text == "bigforever" {
            return futures::stream::iter((0u32..).map(|i| {
                let mut data = vec![0u8; 1024];
                data[..4].copy_from_slice(&i.to_be_bytes());
                Ok(Payload::from(Bytes::from(data)))
            }))
            .boxed();
        }
        let probe = self.probe.clone();
        futures::stream::unfold(0u32, move |i| {
            let probe = probe.clone();
            async move {
                probe.produced.fetch_add(1, Ordering::SeqCst);
                Some((Ok(item(i)), i + 1))
            }
        })
        .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(async { Ok(first) })
            .chain(rest)
            .boxed()
    }
}

struct Fixture {
    proxy: FaultProxy,
    probe: Arc<Probe>,
    gate: Arc<Semaphore>,
    /// Server-side requesters of accepted connections.
    accepted: mpsc::UnboundedReceiver<Requester>,
    _server: JoinHandle<()>,
}

fn server(
    probe: Arc<Probe>,
    gate: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Requester>,
    options: ServerResumeOptions,
    config: Config,
) -> Server {
    Server::new(move |_setup, requester: Requester| {
        let _ = tx.send(requester);
        let responder = Responder {
            probe: probe.clone(),
            gate: gate.clone(),
        };
        async move { Ok(responder) }
    })
    .config(config)
    .resumption(options)
}

/// A resumable TCP server behind a proxy.
async fn tcp_fixture(options: ServerResumeOptions, config: Config) -> Fixture {
    let probe = Arc::new(Probe::default());
    let gate = Arc::new(Semaphore::new(0));
    let (tx, accepted) = mpsc::unbounded_channel();
    let listener = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let srv = server(probe.clone(), gate.clone(), tx, options, config);
    let task = tokio::spawn(async move {
        let _ = srv.serve(listener).await;
    });
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    Fixture {
        proxy,
        probe,
        gate,
        accepted,
        _server: task,
    }
}

fn fast_resume() -> ResumeOptions {
    ResumeOptions {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..ResumeOptions::default()
    }
}

async fn tcp_client(addr: SocketAddr, options: ResumeOptions, config: Config) -> Requester {
    within(
        "connect",
        ClientBuilder::new()
            .config(config)
            .resume(options)
            .connect_resumable(move || rsocket_transport_tcp::connect(addr)),
    )
    .await
    .expect("connected")
}

/// Collects a stream of indexed items, checking order and completeness.
async fn expect_sequence(
    mut stream: impl Stream<Item = Result<Payload, RequestError>> + Unpin,
    n: u32,
) {
    let mut next = 0u32;
    while let Some(item) = within("next item", stream.next()).await {
        let item = item.unwrap_or_else(|e| panic!("stream failed after {next} items: {e}"));
        assert_eq!(index(&item), next, "item out of order or duplicated");
        next += 1;
    }
    assert_eq!(next, n, "stream ended early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_of_100k_survives_ten_cuts() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    // Every one of the first ten connections is cut after 100 KB (1.3 MB
    // flow in all), in the middle of a frame.
    fx.proxy.cut_each(100_000, 10);
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    let stream = client.request_stream(Payload::from("count:100000"));
    expect_sequence(stream, 100_000).await;
    assert_eq!(fx.proxy.cuts(), 10, "the proxy cut ten connections");
    assert_eq!(fx.proxy.accepted(), 11);
    // The session is still usable afterwards.
    fx.gate.add_permits(1);
    let reply = within(
        "call after the cuts",
        client.request_response(Payload::from("after")),
    )
    .await
    .expect("answered");
    assert_eq!(reply.expect("payload").data, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_during_a_cut_are_answered() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(
                async move { c.request_response(Payload::from(format!("call {i}"))).await },
            )
        })
        .collect();
    let probe = fx.probe.clone();
    until("ten calls at the server", || {
        probe.calls.load(Ordering::SeqCst) == 10
    })
    .await;
    fx.proxy.cut();
    // Answer while the transport is gone or being replaced: the answers
    // are kept and replayed.
    fx.gate.add_permits(10);
    for (i, call) in calls.into_iter().enumerate() {
        let reply = within("answer", call)
            .await
            .expect("task")
            .expect("answered");
        assert_eq!(
            reply.expect("payload").data_utf8(),
            Some(format!("call {i}").as_str())
        );
    }
    assert!(fx.proxy.accepted() >= 2, "a new transport was used");
    assert_eq!(
        fx.probe.calls.load(Ordering::SeqCst),
        10,
        "no call was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_continues_in_both_directions() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    let (tx, rx) = mpsc::unbounded_channel::<Payload>();
    let rx = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    let mut echoed = client.request_channel(item(0), rx);
    for i in 1..5 {
        tx.send(item(i)).expect("send");
    }
    for i in 0..5 {
        let got = within("echo before the cut", echoed.next())
            .await
            .expect("item")
            .expect("ok");
        assert_eq!(index(&got), i);
    }
    fx.proxy.cut();
    for i in 5..10 {
        tx.send(item(i)).expect("send");
    }
    for i in 5..10 {
        let got = within("echo after the cut", echoed.next())
            .await
            .expect("item")
            .expect("ok");
        assert_eq!(index(&got), i);
    }
    drop(tx);
    assert!(within("completion", echoed.next()).await.is_none());
    assert!(fx.proxy.accepted() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_longer_than_the_session_timeout_fails_every_pending_request() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    let options = ResumeOptions {
        session_timeout: Duration::from_millis(300),
        ..fast_resume()
    };
    let client = tcp_client(fx.proxy.addr(), options, Config::default()).await;
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(
                async move { c.request_response(Payload::from(format!("call {i}"))).await },
            )
        })
        .collect();
    let mut stream = client.request_stream_with_credit(Payload::from("forever"), 1);
    within("first item", stream.next())
        .await
        .expect("item")
        .expect("ok");
    let probe = fx.probe.clone();
    until("calls at the server", || {
        probe.calls.load(Ordering::SeqCst) == 3
    })
    .await;
    // The server stays unreachable: every reconnect attempt is refused.
    fx.proxy.refuse(true);
    fx.proxy.cut();
    let is_timeout = |e: &RequestError| {
        matches!(
            e,
            RequestError::Connection(ConnectionError::ResumeFailed {
                reason: ResumeFailure::SessionTimeout(_)
            })
        )
    };
    for call in calls {
        let err = within("call to fail", call)
            .await
            .expect("task")
            .expect_err("must fail");
        assert!(is_timeout(&err), "unexpected error: {err}");
    }
    stream.request(1);
    let err = within("stream to fail", stream.next())
        .await
        .expect("an error item")
        .expect_err("must fail");
    assert!(is_timeout(&err), "unexpected error: {err}");
    let closed = within("closed", client.closed()).await;
    assert!(
        matches!(closed, ConnectionError::ResumeFailed { .. }),
        "{closed}"
    );
    assert!(fx.proxy.accepted() >= 2, "the client tried to reconnect");
    // New requests fail the same way, at once.
    let err = client
        .request_response(Payload::from("late"))
        .await
        .expect_err("closed session");
    assert!(is_timeout(&err), "unexpected error: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_pauses_the_producer_instead_of_growing() {
    const CAP: usize = 16 << 10;
    let config = Config {
        resume_store_bytes: CAP,
        ..Config::default()
    };
    let mut fx = tcp_fixture(ServerResumeOptions::default(), config.clone()).await;
    let client = tcp_client(fx.proxy.addr(), fast_resume(), config).await;
    let server_side = within("accepted", fx.accepted.recv())
        .await
        .expect("requester");
    // An endless stream of 1 KiB items with unbounded credit (so that no
    // REQUEST_N is needed), consumed as fast as they come.
    let mut stream = client
        .with_prefetch(rsocket_core::frame::MAX_U31)
        .request_stream(Payload::from("bigforever"));
    let first = within("first item", stream.next())
        .await
        .expect("item")
        .expect("ok");
    assert_eq!(index(&first), 0);
    let consumer = tokio::spawn(async move {
        let mut next = 1u32;
        while let Some(item) = stream.next().await {
            let item = item.expect("item");
            assert_eq!(index(&item), next, "out of order or duplicated");
            next += 1;
            if next == 3000 {
                break;
            }
        }
        next
    });
    // The client's acknowledgements no longer reach the server.
    fx.proxy.stall_upstream();
    // The store fills to its cap (a 1 KiB item's frame is 1,030 bytes)...
    // ...and stays there: the producer is paused, the queue behind the
    // store holds what it produced, and the session goes on. Frames the
    // proxy had already passed on before the stall (acknowledgements) can
    // still reach the server and free room in the store, which lets the
    // producer go on legitimately; so the check counts only a window in
    // which the server received nothing.
    let mut windows = 0;
    let (before, got) = loop {
        windows += 1;
        assert!(
            windows <= 100,
            "the server kept receiving through the stall"
        );
        until("store full", || {
            server_side.stats().resume_store_bytes + 1030 > CAP
        })
        .await;
        let frames_in = server_side.stats().frames_in;
        // Counted where the client's connection receives them: items it
        // has received but its consumer has not taken yet were
        // acknowledged before the stall and are no longer in the store.
        let before = client.stats().frames_in;
        for _ in 0..50 {
            tokio::task::yield_now().await;
            let s = server_side.stats();
            assert!(
                s.resume_store_bytes <= CAP,
                "store grew past its cap: {s:?}"
            );
            assert!(!s.closed, "a full store must not end the session");
        }
        let s = server_side.stats();
        // The outbound queue keeps its own bound (its cap plus one batch of
        // 64 items that a producer hands over at once).
        assert!(
            s.queued_out_bytes <= Config::default().max_outbound_queue_bytes + 64 * 1030,
            "{s:?}"
        );
        let got = client.stats().frames_in;
        if s.frames_in == frames_in {
            break (before, got);
        }
    };
    // Every item the client received in that window was in the store
    // (sent, not acknowledged) when it began; one more frame is allowed for
    // the server's own keepalive.
    assert!(
        (got - before) * 1030 <= CAP as u64 + 2 * 1030,
        "the client received {} frames while the store was full",
        got - before
    );
    fx.proxy.unstall();
    let n = within("the rest of the stream", consumer)
        .await
        .expect("consumer");
    assert_eq!(n, 3000);
    assert!(server_side.stats().resume_store_bytes <= CAP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_holds_across_a_resume() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    let mut stream = client.request_stream_with_credit(Payload::from("forever"), 5);
    for i in 0..5 {
        let got = within("item", stream.next())
            .await
            .expect("item")
            .expect("ok");
        assert_eq!(index(&got), i);
    }
    let produced = fx.probe.produced.load(Ordering::SeqCst);
    assert!(produced <= 5, "produced {produced} items for a credit of 5");
    fx.proxy.cut();
    // The relay drops its sockets asynchronously: wait for the client's
    // new transport, so that the credit below cannot slip through the old
    // one before it closes.
    until("the client reconnects", || fx.proxy.accepted() >= 2).await;
    stream.request(5);
    for i in 5..10 {
        let got = within("item after the cut", stream.next())
            .await
            .expect("item")
            .expect("ok");
        assert_eq!(index(&got), i);
    }
    let produced = fx.probe.produced.load(Ordering::SeqCst);
    assert!(
        produced <= 10,
        "produced {produced} items for a credit of 10"
    );
    assert!(fx.proxy.accepted() >= 2, "a new transport was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_is_replaced_after_the_keepalive_timeout() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    let client = within(
        "connect",
        ClientBuilder::new()
            .keepalive(Duration::from_millis(50), Duration::from_millis(300))
            .resume(fast_resume())
            .connect_resumable({
                let addr = fx.proxy.addr();
                move || rsocket_transport_tcp::connect(addr)
            }),
    )
    .await
    .expect("connected");
    let call = {
        let c = client.clone();
        tokio::spawn(async move { c.request_response(Payload::from("stalled")).await })
    };
    let probe = fx.probe.clone();
    until("call at the server", || {
        probe.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    // The link goes silent; only the keepalive timeout can notice.
    fx.proxy.stall();
    fx.gate.add_permits(1);
    until("a new connection", || fx.proxy.accepted() >= 2).await;
    let reply = within("answer", call)
        .await
        .expect("task")
        .expect("answered");
    assert_eq!(reply.expect("payload").data, "stalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_writes_and_a_cut_keep_the_stream_whole() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    fx.proxy.split_writes(7);
    fx.proxy.cut_each(20_000, 3);
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    expect_sequence(client.request_stream(Payload::from("count:10000")), 10_000).await;
    assert_eq!(fx.proxy.cuts(), 3, "accepted {}", fx.proxy.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_stream_survives_cuts() {
    let probe = Arc::new(Probe::default());
    let gate = Arc::new(Semaphore::new(0));
    let (tx, _accepted) = mpsc::unbounded_channel();
    let listener = rsocket_transport_ws::WsListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .with_path("/rsocket");
    let upstream = listener.local_addr().expect("addr");
    let srv = server(
        probe,
        gate,
        tx,
        ServerResumeOptions::default(),
        Config::default(),
    );
    let _server = tokio::spawn(async move {
        let _ = srv.serve(listener).await;
    });
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    proxy.cut_each(60_000, 5);
    let url = format!("ws://{}/rsocket", proxy.addr());
    let client = within(
        "connect",
        ClientBuilder::new()
            .resume(fast_resume())
            .connect_resumable(move || {
                let url = url.clone();
                async move {
                    rsocket_transport_ws::connect(&url)
                        .await
                        .map_err(std::io::Error::other)
                }
            }),
    )
    .await
    .expect("connected");
    expect_sequence(client.request_stream(Payload::from("count:30000")), 30_000).await;
    assert_eq!(proxy.cuts(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_resumption_refuses_a_resumable_client() {
    let listener = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let probe = Arc::new(Probe::default());
    let gate = Arc::new(Semaphore::new(1));
    let server = Server::new(move |_setup, _requester| {
        let responder = Responder {
            probe: probe.clone(),
            gate: gate.clone(),
        };
        async move { Ok(responder) }
    });
    tokio::spawn(server.serve(listener));
    let connects = Arc::new(AtomicUsize::new(0));
    let client = within(
        "connect",
        ClientBuilder::new()
            .resume(fast_resume())
            .connect_resumable({
                let connects = connects.clone();
                move || {
                    connects.fetch_add(1, Ordering::SeqCst);
                    rsocket_transport_tcp::connect(addr)
                }
            }),
    )
    .await
    .expect("transport opened");
    let err = within("the request", client.request_response(Payload::from("x")))
        .await
        .expect_err("refused");
    match err {
        RequestError::Connection(ConnectionError::SetupRejected { code, .. }) => {
            assert_eq!(code, rsocket_core::ErrorCode::REJECTED_SETUP)
        }
        other => panic!("unexpected error {other}"),
    }
    // A refused SETUP is final: no reconnect.
    within("closed", client.closed()).await;
    assert_eq!(connects.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_made_while_detached_go_out_after_the_resume() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    fx.gate.add_permits(20);
    within("warm up", client.request_response(Payload::from("warm")))
        .await
        .expect("answered");
    // Unreachable for a while: requests made now wait for the resume.
    fx.proxy.refuse(true);
    fx.proxy.cut();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(
                async move { c.request_response(Payload::from(format!("late {i}"))).await },
            )
        })
        .collect();
    let accepted = fx.proxy.accepted();
    until("a refused reconnect attempt", || {
        fx.proxy.accepted() > accepted
    })
    .await;
    fx.proxy.refuse(false);
    for (i, call) in calls.into_iter().enumerate() {
        let reply = within("answer", call)
            .await
            .expect("task")
            .expect("answered");
        assert_eq!(
            reply.expect("payload").data_utf8(),
            Some(format!("late {i}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_session_is_not_resumed() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    let mut stream = client.request_stream_with_credit(Payload::from("forever"), 1);
    within("first item", stream.next())
        .await
        .expect("item")
        .expect("ok");
    // Graceful close begins (CONNECTION_CLOSE sent); the stream stays open.
    client.close();
    fx.proxy.cut();
    let err = loop {
        match within("stream to end", stream.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("completed instead of failing"),
        }
    };
    assert!(
        !matches!(
            err,
            RequestError::Connection(ConnectionError::ResumeFailed { .. })
        ),
        "{err}"
    );
    within("closed", client.closed()).await;
    assert_eq!(fx.proxy.accepted(), 1, "no reconnect while closing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_items_survive_cuts() {
    // 1 KiB items, several per read and write.
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    fx.proxy.cut_each(150_000, 3);
    let client = tcp_client(fx.proxy.addr(), fast_resume(), Config::default()).await;
    expect_sequence(client.request_stream(Payload::from("big:1000")), 1000).await;
    assert_eq!(fx.proxy.cuts(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_member_resumes_instead_of_failing() {
    let fx = tcp_fixture(ServerResumeOptions::default(), Config::default()).await;
    // The first three connections are cut after 100 KB each.
    fx.proxy.cut_each(100_000, 3);
    let connector = TcpConnector::new(fx.proxy.addr()).resumable(fast_resume());
    let balancer = Balancer::builder()
        .wait_for_member(GUARD)
        .build_from_list([(0, connector)]);
    let stream = balancer.request_stream(Payload::from("count:50000"));
    expect_sequence(stream, 50_000).await;
    assert_eq!(fx.proxy.cuts(), 3, "the proxy cut three connections");
    // One session throughout: the stream went on over new transports and
    // the member never failed, so it never re-dialled.
    let member = &balancer.members()[0];
    assert_eq!(member.connects, 1, "{member:?}");
    assert_eq!(member.state, MemberState::Ready);
    assert_eq!(fx.proxy.accepted(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_with_the_transport_is_granted_again_after_the_resume() {
    let listener = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let (tx, mut accepted) = mpsc::unbounded_channel();
    let server = Server::new(move |_setup, requester: Requester| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(requester);
            Ok(RejectAll)
        }
    })
    .lease(LeaseConfig::new())
    .resumption(ServerResumeOptions::default());
    let _server = tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    let addr = proxy.addr();
    let client = within(
        "connect",
        ClientBuilder::new()
            .lease(LeaseConfig::new())
            .resume(fast_resume())
            .connect_resumable(move || rsocket_transport_tcp::connect(addr)),
    )
    .await
    .expect("connected");
    let server_side = within("accepted", accepted.recv())
        .await
        .expect("requester");
    assert!(server_side.send_lease(&Lease::new(Duration::from_secs(60), 5)));
    until("the first grant arrives", || {
        client.lease().is_some_and(|l| l.allowed == 5)
    })
    .await;
    // The next grant goes to a transport that never delivers it: LEASE has
    // no position, so the replay cannot bring it back.
    proxy.stall();
    let written = server_side.stats().frames_out;
    assert!(server_side.send_lease(&Lease::new(Duration::from_secs(60), 7)));
    until("the second grant is written", || {
        server_side.stats().frames_out > written
    })
    .await;
    proxy.cut();
    // After the resume the server grants again what is left of it.
    until("the second grant arrives after the resume", || {
        client.lease().is_some_and(|l| l.allowed == 7)
    })
    .await;
    assert!(proxy.accepted() >= 2, "a new transport was used");
}
