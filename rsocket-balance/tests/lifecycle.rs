//! Member lifecycle: drain on removal, re-dial, backpressure, churn and
//! following a watch of lists.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{count, text, within, MemServer, TcpServer};
use futures::StreamExt;
use rsocket_balance::{
    Balancer, BoxError, Connect, MemberState, RoundRobin, TcpConnector, TokioClock,
};
use rsocket_core::{
    async_trait, memory_pair, ClientBuilder, Config, Initiator, MemoryTransport, Payload, RSocket,
    RequestError, Requester, Server, StreamError,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};

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
    let b = Balancer::builder().clock(TokioClock).build_from_watch(rx);
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
        .clock(TokioClock)
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

/// A connector that notes the (paused) time of each dial and then does
/// what `dial` does.
fn noting_dials<F, Fut>(dial: F) -> (Arc<Mutex<Vec<tokio::time::Instant>>>, impl Connect + Clone)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Requester, BoxError>> + Send + 'static,
{
    let dials: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let noted = dials.clone();
    let connector = move || {
        noted.lock().unwrap().push(tokio::time::Instant::now());
        dial()
    };
    (dials, connector)
}

/// The gaps between the dials are the re-dial delays of a 100–400 ms
/// back-off: each in the upper half of 100, 200, 400, 400, ... ms ("equal
/// jitter"), the timer rounding up to the millisecond.
fn assert_backoff_100_to_400(dials: &Mutex<Vec<tokio::time::Instant>>) {
    let times = dials.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        let top = Duration::from_millis(100 << i.min(2));
        let range = top / 2..=top;
        assert!(
            range.contains(gap),
            "delay {i}: {gap:?} not in {range:?}: {gaps:?}"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failed_dials_back_off_from_min_doubling_up_to_max() {
    // Every dial fails; the clock is paused, so the gaps are the delays.
    let (dials, connector) = noting_dials(|| async {
        Err::<Requester, BoxError>(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    });
    let b = Balancer::builder()
        .clock(TokioClock)
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .build_from_list([("x", connector)]);
    within(
        "seven failed dials",
        b.wait_until(|m| m.first().is_some_and(|m| m.failed_dials >= 7)),
    )
    .await;
    assert_backoff_100_to_400(&dials);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_server_that_accepts_and_drops_is_backed_off_further_each_time() {
    // Every dial succeeds, and every connection ends at once, having
    // served nothing: the delays grow as for failed dials.
    let (dials, connector) = noting_dials(|| async {
        let (client_end, server_end) = memory_pair(1024);
        drop(server_end);
        Ok::<_, BoxError>(ClientBuilder::new().connect(client_end)?)
    });
    let b = Balancer::builder()
        .clock(TokioClock)
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .build_from_list([("x", connector)]);
    within(
        "six connections dropped",
        b.wait_until(|m| m.first().is_some_and(|m| m.connects >= 6)),
    )
    .await;
    assert_backoff_100_to_400(&dials);
    let info = &b.members()[0];
    assert!(info.failed_dials >= 5, "{info:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_connector_that_panics_counts_as_a_failed_dial() {
    // The first dial panics in the call, the second in its future; the
    // third connects.
    let server = MemServer::start("a", Duration::ZERO);
    let good = server.connector();
    let dials = Arc::new(AtomicUsize::new(0));
    let counted = dials.clone();
    let connector = move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            panic!("a connector's bug, in the call");
        }
        let next = good.connect();
        async move {
            if n == 1 {
                panic!("a connector's bug, in its future");
            }
            next.await
        }
    };
    let b = Balancer::builder()
        .clock(TokioClock)
        .backoff(Duration::from_millis(10), Duration::from_millis(40))
        .build_from_list([("a", connector)]);
    within("ready after two panicking dials", async {
        b.wait_until(|m| count(m, MemberState::Ready) == 1).await;
    })
    .await;
    assert_eq!(dials.load(Ordering::SeqCst), 3);
    let reply = b.request_response(Payload::from("x")).await.unwrap();
    assert_eq!(text(reply), "a");
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
        .clock(TokioClock)
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
    let b = Balancer::builder().clock(TokioClock).build_from_watch(rx);
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
        .clock(TokioClock)
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

/// A server of another make: when its graceful close crosses a request, it
/// answers that request `ERROR[REJECTED]` with its own text ("going
/// away"), not rsocket-rs's. "hold" requests wait for `release`; others
/// answer the server's name.
struct ForeignServer {
    hits: Arc<AtomicUsize>,
    release: Arc<Notify>,
    tx: mpsc::UnboundedSender<MemoryTransport>,
    stop: Option<oneshot::Sender<()>>,
    /// The client end of the last connection dialled, to watch it.
    client: Arc<Mutex<Option<Requester>>>,
}

struct ForeignResponder {
    hits: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

#[async_trait]
impl RSocket for ForeignResponder {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        if req.data_utf8() == Some("hold") {
            self.release.notified().await;
            return Err(StreamError::rejected("going away").into());
        }
        Ok(Some(Payload::from("foreign")))
    }
}

impl ForeignServer {
    fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel::<MemoryTransport>();
        let incoming = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|t| (Ok::<_, std::io::Error>(t), rx))
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (h, r) = (hits.clone(), release.clone());
        let server = Server::new(move |_setup, _requester| {
            let responder = ForeignResponder {
                hits: h.clone(),
                release: r.clone(),
            };
            async move { Ok(responder) }
        })
        .grace_period(Duration::from_secs(30));
        tokio::spawn(server.serve_with_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Self {
            hits,
            release,
            tx,
            stop: Some(stop),
            client: Arc::new(Mutex::new(None)),
        }
    }

    fn connector(&self) -> Arc<dyn Connect> {
        let (tx, client) = (self.tx.clone(), self.client.clone());
        Arc::new(move || {
            let (tx, client) = (tx.clone(), client.clone());
            async move {
                let (client_end, server_end) = memory_pair(256 * 1024);
                tx.send(server_end)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
                let requester = ClientBuilder::new().connect(client_end)?;
                *client.lock().unwrap() = Some(requester.clone());
                Ok::<_, BoxError>(requester)
            }
        })
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rejection_after_the_servers_close_is_retried_whatever_its_text() {
    let mut x = ForeignServer::start();
    let y = MemServer::start("y", Duration::ZERO);
    let y_connector: Arc<dyn Connect> = Arc::new(y.connector());
    // Round robin over [x, y], in that order.
    let b = Balancer::builder()
        .clock(TokioClock)
        .strategy(RoundRobin::new())
        .build_from_list(vec![("x", x.connector()), ("y", y_connector)]);
    within(
        "both ready",
        b.wait_until(|m| count(m, MemberState::Ready) == 2),
    )
    .await;

    // A request in flight on x when x begins its graceful close.
    let held = tokio::spawn({
        let b = b.clone();
        async move { b.request_response(Payload::from("hold")).await }
    });
    within("the request at x", async {
        while x.hits() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let _ = x.stop.take().expect("running").send(());
    // The client has processed x's CONNECTION_CLOSE once its requests are
    // refused locally (a fire-and-forget that reaches a draining x is
    // dropped there, unanswered).
    let client = x.client.lock().unwrap().clone().expect("dialled");
    within("x's CONNECTION_CLOSE received", async {
        loop {
            match client.fire_and_forget(Payload::from("probe")).await {
                Err(RequestError::ConnectionClosing {
                    initiator: Initiator::Remote,
                }) => break,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    // The next two requests go to y, then to x, which refuses it locally:
    // the balancer now knows that x's connection is closing, and sends it
    // to y.
    for _ in 0..2 {
        let reply = b.request_response(Payload::from("x")).await.unwrap();
        assert_eq!(text(reply), "y");
    }
    assert_eq!(x.hits(), 1, "nothing more reached x");
    let members = b.members();
    assert_eq!(members[0].key, "x");
    // Out of use: it re-dials while its old connection drains.
    assert_eq!(members[0].state, MemberState::Connecting, "{members:?}");
    assert_eq!(b.ready_count(), 1);

    // x now rejects the request that crossed its close, with its own
    // text: retried on y, not handed to the caller.
    x.release.notify_one();
    let reply = within("the held request", held).await.unwrap();
    assert_eq!(text(reply.expect("retried on y")), "y");
    assert_eq!(x.hits(), 1);
    assert_eq!(y.hits(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_rejection_from_a_server_that_is_not_closing_reaches_the_caller() {
    let x = ForeignServer::start();
    let b = Balancer::builder()
        .clock(TokioClock)
        .build_from_list([("x", x.connector())]);
    within("ready", b.wait_until(|m| count(m, MemberState::Ready) == 1)).await;
    let held = tokio::spawn({
        let b = b.clone();
        async move { b.request_response(Payload::from("hold")).await }
    });
    within("the request at x", async {
        while x.hits() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    x.release.notify_one();
    let err = within("the held request", held).await.unwrap().unwrap_err();
    let err = err.as_stream_error().expect("the server's answer");
    assert_eq!(err.code, rsocket_core::ErrorCode::REJECTED);
    assert_eq!(err.message, "going away");
    assert_eq!(x.hits(), 1, "not sent again");
    assert_eq!(b.members()[0].state, MemberState::Ready);
}

/// Answers request/responses with "ok"; its streams send nothing and never
/// end.
struct Holding;

#[async_trait]
impl RSocket for Holding {
    async fn request_response(&self, _req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(Payload::from("ok")))
    }

    fn request_stream(&self, _req: Payload) -> rsocket_core::PayloadStream {
        futures::stream::pending().boxed()
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_connection_the_server_closes_is_replaced_while_it_drains() {
    // A server that stays up but closes one connection gracefully (as a
    // server rotating its connections does); it hands out its side of
    // each connection for that.
    let (tx, mut rx) = mpsc::unbounded_channel::<MemoryTransport>();
    let (sides_tx, mut sides) = mpsc::unbounded_channel::<Requester>();
    let incoming = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|t| t.map(Ok::<_, std::io::Error>))
    });
    tokio::spawn(
        Server::new(move |_setup, requester| {
            let _ = sides_tx.send(requester);
            async { Ok(Holding) }
        })
        .serve(incoming),
    );
    let dials = Arc::new(AtomicUsize::new(0));
    let counted = dials.clone();
    let connector = move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let (client_end, server_end) = memory_pair(64 * 1024);
        let sent = tx.send(server_end);
        async move {
            sent.map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
            Ok::<_, BoxError>(ClientBuilder::new().connect(client_end)?)
        }
    };
    // The old connection drains for its close timeout (30 s): far longer
    // than a request waits for a member.
    let b = Balancer::builder()
        .clock(TokioClock)
        .wait_for_member(Duration::from_secs(2))
        .build_from_list(vec![("only", connector)]);
    within("ready", b.wait_until(|m| count(m, MemberState::Ready) == 1)).await;
    // A stream open on the first connection keeps it open while it drains.
    let mut held = b.request_stream(Payload::from("hold"));
    assert!(futures::poll!(held.next()).is_pending());
    let reply = within("a round trip", b.request_response(Payload::from("x"))).await;
    assert_eq!(text(reply.expect("answered")), "ok");
    let server_side = within("the server's side", sides.recv())
        .await
        .expect("a connection");
    server_side.close();
    // Every request is answered: the ones that crossed the close or found
    // the connection closing are sent again, to a new connection.
    for i in 0..20 {
        let reply = within("a request", b.request_response(Payload::from("x"))).await;
        assert_eq!(
            text(reply.unwrap_or_else(|e| panic!("request {i}: {e}"))),
            "ok"
        );
    }
    assert_eq!(dials.load(Ordering::SeqCst), 2, "re-dialled once");
    let members = b.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].state, MemberState::Ready);
    // The stream on the old connection is still open.
    assert!(futures::poll!(held.next()).is_pending());
    drop(held);
}

#[test]
fn a_zero_back_off_does_not_starve_the_runtime() {
    // Every dial fails at once, and the back-off is zero: the member
    // re-dials at once, but must let the rest of the (one-thread) runtime
    // run. The runtime runs on its own thread so that a starved one fails
    // this test instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let result = rt.block_on(async {
            let refused = || async { Err::<Requester, BoxError>("refused".into()) };
            let b = Balancer::builder()
                .backoff(Duration::ZERO, Duration::ZERO)
                .wait_for_member(Duration::from_millis(100))
                .build_from_list([("x", refused)]);
            b.request_response(Payload::from("x")).await
        });
        let _ = done_tx.send(result.map(text).map_err(|e| e.to_string()));
    });
    let got = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the request ended (the runtime was starved)");
    let err = got.expect_err("no member can be ready");
    assert!(err.contains("no member was ready"), "{err}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_insert_for_a_present_key_replaces_its_connector_and_drains_the_old() {
    let a = MemServer::start("a", Duration::ZERO);
    let b_srv = MemServer::start("b", Duration::ZERO);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let changes = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let b = Balancer::builder().clock(TokioClock).build(changes);
    tx.send(rsocket_balance::Change::Insert("k", a.connector()))
        .unwrap();
    within(
        "a ready",
        b.wait_until(|m| count(m, MemberState::Ready) == 1),
    )
    .await;
    // A stream in flight on a when the key gets b's connector.
    let mut held = b.request_stream(Payload::from("3"));
    let first = within("a's first item", held.next()).await;
    assert_eq!(text(first.transpose().expect("ok")), "a:0");
    tx.send(rsocket_balance::Change::Insert("k", b_srv.connector()))
        .unwrap();
    within(
        "the new member ready, the old one out of use",
        b.wait_until(|m| {
            b_srv.open() == 1
                && m.iter()
                    .any(|m| m.is_target && m.state == MemberState::Ready)
                && m.iter()
                    .all(|m| m.is_target || m.state != MemberState::Ready)
        }),
    )
    .await;
    for _ in 0..4 {
        let reply = b.request_response(Payload::from("x")).await;
        assert_eq!(text(reply.expect("answered")), "b");
    }
    // The old stream runs to its end on a, then a's member goes.
    let rest: Vec<_> = within("the rest of the stream", held.collect::<Vec<_>>()).await;
    let rest: Vec<_> = rest
        .into_iter()
        .map(|r| text(Some(r.expect("ok"))))
        .collect();
    assert_eq!(rest, ["a:1", "a:2"]);
    within("a's member forgotten", b.wait_until(|m| m.len() == 1)).await;
    assert_eq!(b.members()[0].connects, 1);
    within("a's connection closed", async {
        while a.open() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
