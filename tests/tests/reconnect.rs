//! The reconnecting client (`ClientBuilder::connect_reconnecting`) against
//! a server without resumption, through the fault-injection proxy: after a
//! cut, what was open fails with the connection error and new requests go
//! over a new connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rsocket_core::{
    async_trait, ClientBuilder, ConnectionError, Payload, PayloadStream, RSocket, ReconnectOptions,
    RequestError, Server,
};
use rsocket_tests::proxy::FaultProxy;

const GUARD: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {GUARD:?} waiting for {what}"),
    }
}

struct Echo;

#[async_trait]
impl RSocket for Echo {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }

    fn request_stream(&self, _req: Payload) -> PayloadStream {
        futures::stream::iter((0u32..).map(|i| Ok(Payload::from(i.to_string())))).boxed()
    }
}

async fn plain_server_behind_proxy() -> FaultProxy {
    let listener = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(Server::new(|_setup, _requester| async { Ok(Echo) }).serve(listener));
    FaultProxy::start(upstream).await.expect("proxy")
}

fn fast() -> ReconnectOptions {
    ReconnectOptions {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_wait: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_fails_open_requests_and_new_ones_reconnect() {
    let proxy = plain_server_behind_proxy().await;
    let addr = proxy.addr();
    let client = within(
        "connect",
        ClientBuilder::new()
            .connect_reconnecting(move || rsocket_transport_tcp::connect(addr), fast()),
    )
    .await
    .expect("connected");
    let first = client.current().expect("a connection");
    let mut stream = first.request_stream_with_credit(Payload::from("s"), 1);
    within("first item", stream.next())
        .await
        .expect("item")
        .expect("ok");
    proxy.cut();
    stream.request(1);
    // The open stream fails with the connection's error (no resumption).
    let err = loop {
        match within("stream to fail", stream.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("stream completed instead of failing"),
        }
    };
    assert!(
        matches!(err, RequestError::Connection(ref e) if !matches!(e, ConnectionError::ResumeFailed { .. })),
        "{err}"
    );
    within("old connection closed", first.closed()).await;
    // A new request opens a new connection.
    let reply = within(
        "request after the cut",
        client.request_response(Payload::from("again")),
    )
    .await
    .expect("answered");
    assert_eq!(reply.expect("payload").data, "again");
    assert_eq!(proxy.accepted(), 2);
    let items: Vec<_> = within(
        "stream on the new connection",
        client.request_stream(Payload::from("s")).take(3).collect(),
    )
    .await;
    assert_eq!(items.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_with_backoff_and_gives_up_after_max_wait() {
    let proxy = plain_server_behind_proxy().await;
    let addr = proxy.addr();
    // The transport factory fails while `failing` is above zero.
    let failing = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let connect = {
        let (failing, attempts) = (failing.clone(), attempts.clone());
        move || {
            attempts.fetch_add(1, Ordering::SeqCst);
            let fail = failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            async move {
                if fail {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "down",
                    ));
                }
                rsocket_transport_tcp::connect(addr).await
            }
        }
    };
    let options = ReconnectOptions {
        max_wait: Duration::from_millis(300),
        ..fast()
    };
    let client = within(
        "connect",
        ClientBuilder::new().connect_reconnecting(connect, options),
    )
    .await
    .expect("connected");
    let first = client.current().expect("a connection");
    // A round trip: the proxy relays this connection now.
    within("first call", client.request_response(Payload::from("hi")))
        .await
        .expect("answered");
    // Three failed attempts, then the server is reachable again.
    failing.store(3, Ordering::SeqCst);
    proxy.cut();
    within("old connection closed", first.closed()).await;
    let reply = within(
        "request after retries",
        client.request_response(Payload::from("back")),
    )
    .await
    .expect("answered");
    assert_eq!(reply.expect("payload").data, "back");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1 + 4,
        "three failures, then success"
    );
    // Down for good: the request fails with the connection error once
    // max_wait has passed.
    failing.store(usize::MAX, Ordering::SeqCst);
    proxy.cut();
    let second = client.current().expect("a connection");
    within("second connection closed", second.closed()).await;
    let err = within(
        "request to fail",
        client.request_response(Payload::from("x")),
    )
    .await
    .expect_err("no server");
    match err {
        RequestError::Connection(ConnectionError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("unexpected error {other}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn max_wait_bounds_each_request_even_when_connecting_hangs() {
    // The first connection ends at once; every later connect hangs.
    let dials = Arc::new(AtomicUsize::new(0));
    let counted = dials.clone();
    let client = ClientBuilder::new()
        .connect_reconnecting(
            move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n > 0 {
                        std::future::pending::<()>().await;
                    }
                    let (client_end, server_end) = rsocket_core::memory_pair(1024);
                    drop(server_end);
                    Ok(client_end)
                }
            },
            ReconnectOptions {
                min_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
                max_wait: Duration::from_secs(1),
            },
        )
        .await
        .expect("first connection");
    let first = client.current().expect("the first connection");
    within("the first connection's end", first.closed()).await;
    // Two requests at once: the second waits for the first's attempt, and
    // both fail within their own bound, not one after the other.
    let started = tokio::time::Instant::now();
    let (a, b) = within("both requests", async {
        tokio::join!(
            client.request_response(Payload::from("a")),
            client.request_response(Payload::from("b"))
        )
    })
    .await;
    assert!(matches!(a, Err(RequestError::Connection(_))), "{a:?}");
    assert!(matches!(b, Err(RequestError::Connection(_))), "{b:?}");
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(1100), "{took:?}");
    // The first connection, then the hanging attempt (the second caller
    // may start one too, as its own deadline is reached).
    let n = dials.load(Ordering::SeqCst);
    assert!((2..=3).contains(&n), "{n} dials");
}

/// Answers request/responses; its streams never send anything nor end.
struct Holding;

#[async_trait]
impl RSocket for Holding {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }

    fn request_stream(&self, _req: Payload) -> PayloadStream {
        futures::stream::pending().boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_is_closing_is_replaced_at_once() {
    // An in-memory server that hands out its side of each connection, so
    // that the test can close one gracefully.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rsocket_core::MemoryTransport>();
    let (sides_tx, mut sides) = tokio::sync::mpsc::unbounded_channel();
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
    let client = within(
        "connect",
        ClientBuilder::new().connect_reconnecting(
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let (client_end, server_end) = rsocket_core::memory_pair(64 * 1024);
                let sent = tx.send(server_end);
                async move {
                    sent.map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
                    Ok(client_end)
                }
            },
            fast(),
        ),
    )
    .await
    .expect("connected");
    let first = client.current().expect("a connection");
    // A stream open on the first connection keeps it open while it drains.
    let mut held = first.request_stream(Payload::from("hold"));
    assert!(futures::poll!(held.next()).is_pending());
    within("a round trip", client.request_response(Payload::from("x")))
        .await
        .expect("answered");
    let server_side = within("the server's side", sides.recv())
        .await
        .expect("a connection");
    server_side.close();
    // Once the server's CONNECTION_CLOSE has arrived, the first connection
    // takes no new request ...
    let mut refused = None;
    for _ in 0..10_000 {
        match within("a request", first.request_response(Payload::from("y"))).await {
            // Answered, or refused by the server for crossing its close.
            Ok(_) | Err(RequestError::Stream(_)) => continue,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(RequestError::ConnectionClosing { .. })),
        "{refused:?}"
    );
    assert!(!first.is_closed(), "the held stream keeps it open");
    // ... so the client opens a new one instead of refusing every request
    // until the old one has drained.
    let reply = within("a request", client.request_response(Payload::from("z")))
        .await
        .expect("answered on a new connection");
    assert_eq!(reply.expect("payload").data, "z");
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    // The stream on the old connection is still open.
    assert!(futures::poll!(held.next()).is_pending());
    assert!(!first.is_closed());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_server_that_accepts_and_drops_is_backed_off_further_each_time() {
    // Every connection ends at once, having received nothing: each request
    // fails, but the reconnects are paced as failed attempts are (5 ms,
    // doubling up to 50 ms, each in the upper half of its range), not one
    // at once per request.
    let dials: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let noted = dials.clone();
    let client = ClientBuilder::new()
        .connect_reconnecting(
            move || {
                noted.lock().unwrap().push(tokio::time::Instant::now());
                async move {
                    let (client_end, server_end) = rsocket_core::memory_pair(1024);
                    drop(server_end);
                    Ok(client_end)
                }
            },
            fast(),
        )
        .await
        .expect("first connection");
    for _ in 0..8 {
        let err = client
            .request_response(Payload::from("a"))
            .await
            .expect_err("dropped");
        assert!(matches!(err, RequestError::Connection(_)), "{err}");
    }
    let times = dials.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 6, "{gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        let top = Duration::from_millis(5 << i.min(4)).min(Duration::from_millis(50));
        assert!(
            (top / 2..=top + Duration::from_millis(1)).contains(gap),
            "gap {i}: {gap:?}: {gaps:?}"
        );
    }
}
