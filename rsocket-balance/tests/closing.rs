//! Closing the balancer with live members (`Balancer::close`, and dropping
//! the last clone), and when the balancer consults its strategy (not with
//! one ready member; again on a retry after a refusal for want of a lease).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{count, text, within, MemServer};
use futures::StreamExt;
use rsocket_balance::{
    BalanceError, Balancer, BoxError, Candidates, Connect, MemberState, Rng, Strategy, TokioClock,
};
use rsocket_core::{
    async_trait, memory_pair, ClientBuilder, ConnectionError, ErrorCode, LeaseConfig, LeasePolicy,
    MemoryTransport, Payload, PayloadStream, RSocket, RequestError, Requester, Server,
};
use tokio::sync::{mpsc, Notify};

/// A server whose streams send `"0"`, then wait for `release` before
/// sending `"1"` and completing. It keeps the server side of its last
/// connection, to see how the client closed it.
struct GateServer {
    release: Arc<Notify>,
    tx: mpsc::UnboundedSender<MemoryTransport>,
    conn: Arc<Mutex<Option<Requester>>>,
}

struct Gate {
    release: Arc<Notify>,
}

#[async_trait]
impl RSocket for Gate {
    fn request_stream(&self, _req: Payload) -> PayloadStream {
        let release = self.release.clone();
        let first = futures::stream::once(async { Ok(Payload::from("0")) });
        let second = futures::stream::once(async move {
            release.notified().await;
            Ok(Payload::from("1"))
        });
        first.chain(second).boxed()
    }
}

impl GateServer {
    fn start() -> Self {
        let release = Arc::new(Notify::new());
        let conn = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::unbounded_channel::<MemoryTransport>();
        let incoming = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|t| (Ok::<_, std::io::Error>(t), rx))
        });
        let (r, c) = (release.clone(), conn.clone());
        let server = Server::new(move |_setup, requester: Requester| {
            *c.lock().unwrap() = Some(requester);
            let gate = Gate { release: r.clone() };
            async move { Ok(gate) }
        });
        tokio::spawn(server.serve(incoming));
        Self { release, tx, conn }
    }

    fn connector(&self) -> impl Connect {
        let tx = self.tx.clone();
        move || {
            let tx = tx.clone();
            async move {
                let (client_end, server_end) = memory_pair(256 * 1024);
                tx.send(server_end)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
                Ok::<_, BoxError>(ClientBuilder::new().connect(client_end)?)
            }
        }
    }

    /// The server side of the last connection.
    fn conn(&self) -> Requester {
        self.conn.lock().unwrap().clone().expect("a connection")
    }
}

/// Reads the first item of a gated stream through `balancer`.
async fn gated_stream_open(
    server: &GateServer,
    balancer: &Balancer<&'static str>,
) -> PayloadStream {
    within(
        "ready",
        balancer.wait_until(|m| count(m, MemberState::Ready) == 1),
    )
    .await;
    let mut stream = balancer.request_stream(Payload::from("s"));
    let first = within("the first item", stream.next()).await;
    assert_eq!(text(Some(first.unwrap().unwrap())), "0");
    assert!(!server.conn().peer_closing());
    stream
}

/// The rest of a gated stream, once the server has seen the client's
/// CONNECTION_CLOSE: the stream finishes normally, and the connection
/// ends with that graceful close, not an error.
async fn finishes_after_a_graceful_close(server: &GateServer, mut stream: PayloadStream) {
    let conn = server.conn();
    // Polled on the paused clock (a yield alone would keep the runtime
    // busy, so `within` could never time out if the close never came).
    within("the client's CONNECTION_CLOSE at the server", async {
        while !conn.peer_closing() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(!conn.is_closed(), "the stream keeps the connection open");
    server.release.notify_one();
    let second = within("the second item", stream.next()).await;
    assert_eq!(text(Some(second.unwrap().unwrap())), "1");
    assert!(within("the stream's end", stream.next()).await.is_none());
    let reason = within("the connection's end", conn.closed()).await;
    assert!(
        matches!(
            reason,
            ConnectionError::Remote {
                code: ErrorCode::CONNECTION_CLOSE,
                ..
            }
        ),
        "{reason:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn close_lets_a_stream_in_flight_finish_and_refuses_new_requests() {
    let server = GateServer::start();
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .build_from_list([("g", server.connector())]);
    let stream = gated_stream_open(&server, &balancer).await;

    let closing = balancer.clone();
    let close = tokio::spawn(async move { closing.close().await });
    within(
        "draining",
        balancer.wait_until(|m| count(m, MemberState::Draining) == 1),
    )
    .await;
    let refused = balancer.request_response(Payload::from("x")).await;
    assert_eq!(
        refused.as_ref().err().and_then(BalanceError::of),
        Some(&BalanceError::Closed),
        "{refused:?}"
    );
    assert!(!close.is_finished(), "close waits for the stream");

    finishes_after_a_graceful_close(&server, stream).await;
    within("close returns", close).await.unwrap();
    assert!(balancer.members().is_empty());
    let refused = balancer.request_stream(Payload::from("1")).next().await;
    assert!(
        matches!(
            refused
                .as_ref()
                .and_then(|r| r.as_ref().err())
                .and_then(BalanceError::of),
            Some(&BalanceError::Closed)
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_the_last_clone_lets_a_stream_in_flight_finish() {
    let server = GateServer::start();
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .build_from_list([("g", server.connector())]);
    let stream = gated_stream_open(&server, &balancer).await;
    let clone = balancer.clone();
    drop(balancer);
    // Not the last clone yet: the member stays.
    assert_eq!(count(&clone.members(), MemberState::Ready), 1);
    drop(clone);
    finishes_after_a_graceful_close(&server, stream).await;
}

/// Counts its calls; picks `pick` (which may be out of range).
#[derive(Debug)]
struct Counting {
    calls: Arc<AtomicUsize>,
    pick: usize,
}

impl Strategy for Counting {
    fn select(&mut self, _candidates: &Candidates<'_>, _rng: &mut Rng) -> usize {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.pick
    }
}

async fn counted_requests(servers: &[MemServer], pick: usize) -> (usize, Vec<String>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .strategy(Counting {
            calls: calls.clone(),
            pick,
        })
        .build_from_list(common::targets(servers));
    within(
        "all ready",
        balancer.wait_until(|m| count(m, MemberState::Ready) == servers.len()),
    )
    .await;
    let mut replies = Vec::new();
    for _ in 0..10 {
        let reply = balancer.request_response(Payload::from("x")).await;
        replies.push(text(reply.unwrap()));
    }
    (calls.load(Ordering::SeqCst), replies)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_strategy_is_skipped_with_one_ready_member_and_asked_with_two() {
    let one = [MemServer::start("a", Duration::ZERO)];
    let (calls, replies) = counted_requests(&one, 0).await;
    assert_eq!(calls, 0, "one ready member: used without asking");
    assert!(replies.iter().all(|r| r == "a"), "{replies:?}");

    let two = [
        MemServer::start("a", Duration::ZERO),
        MemServer::start("b", Duration::ZERO),
    ];
    let (calls, replies) = counted_requests(&two, 1).await;
    assert_eq!(calls, 10, "two ready members: asked once per request");
    assert!(replies.iter().all(|r| r == "b"), "{replies:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_index_out_of_range_picks_the_first_candidate() {
    let servers = [
        MemServer::start("a", Duration::ZERO),
        MemServer::start("b", Duration::ZERO),
        MemServer::start("c", Duration::ZERO),
    ];
    for pick in [3, usize::MAX] {
        let (calls, replies) = counted_requests(&servers, pick).await;
        assert_eq!(calls, 10);
        assert!(replies.iter().all(|r| r == "a"), "{pick}: {replies:?}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_refused_for_want_of_a_lease_may_be_retried_on_the_same_member() {
    // a leases no request at all; b would answer anything.
    let a = MemServer::start_with(
        "a",
        Duration::ZERO,
        Some(LeaseConfig::new().policy(LeasePolicy::fixed(Duration::from_secs(3600), 0))),
    );
    let b = MemServer::start("b", Duration::ZERO);
    let leasing = ClientBuilder::new()
        .keepalive(Duration::from_secs(3600), Duration::from_secs(7200))
        .lease(LeaseConfig::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let balancer = Balancer::builder()
        .clock(TokioClock)
        .max_retries(2)
        .strategy(Counting {
            calls: calls.clone(),
            pick: 0,
        })
        .build_from_list([
            ("a", a.connector_with(leasing)),
            ("b", b.connector_with(ClientBuilder::new())),
        ]);
    within(
        "both ready",
        balancer.wait_until(|m| count(m, MemberState::Ready) == 2),
    )
    .await;
    // The strategy picks a every time, and a stays ready after each
    // refusal: three attempts, all on a.
    let reply = balancer.request_response(Payload::from("x")).await;
    assert!(matches!(reply, Err(RequestError::NoLease(_))), "{reply:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!((a.hits(), b.hits()), (0, 0));
    assert_eq!(count(&balancer.members(), MemberState::Ready), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_the_last_clone_fails_the_streams_waiting_for_a_member() {
    // No target will ever be ready: the stream and channel wait for a
    // member when the last clone goes.
    let b = Balancer::builder()
        .clock(TokioClock)
        .wait_for_member(Duration::from_secs(3600))
        .build(futures::stream::pending::<
            rsocket_balance::Change<String, MemServerless>,
        >());
    let mut stream = b.request_stream(Payload::from("1"));
    let mut channel =
        RSocket::request_channel(&b, Payload::from("1"), futures::stream::empty().boxed());
    assert!(futures::poll!(stream.next()).is_pending());
    assert!(futures::poll!(channel.next()).is_pending());
    drop(b);
    for s in [&mut stream, &mut channel] {
        let err = within("the waiting stream to fail", s.next())
            .await
            .expect("an error")
            .expect_err("no member");
        assert_eq!(BalanceError::of(&err), Some(&BalanceError::Closed), "{err}");
        assert!(s.next().await.is_none());
    }
}

/// A connector type for a balancer that never gets a target.
type MemServerless = fn() -> futures::future::Ready<Result<Requester, BoxError>>;
