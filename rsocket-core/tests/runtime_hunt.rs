//! Probes of the tokio runtime layer: futures and streams dropped mid-way,
//! channels whose outbound half fails, credit extremes, many streams opened
//! and cancelled. Every wait is guarded, so a bug fails a test instead of
//! hanging it.
use rsocket_core::async_trait;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use rsocket_core::runtime::ServerStatsHandle;
use rsocket_core::{
    memory_pair, ClientBuilder, Payload, PayloadStream, RSocket, RequestError, Requester, Server,
};

const WAIT: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {WAIT:?}"))
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Counts live handler futures and streams.
struct Live(Arc<AtomicUsize>);
impl Live {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n.clone())
    }
}
impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Probe {
    live: Arc<AtomicUsize>,
}

#[async_trait]
impl RSocket for Probe {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        let live = Live::new(&self.live);
        if req.data == "never" {
            futures::future::pending::<()>().await;
        }
        drop(live);
        Ok(Some(req))
    }
    fn request_stream(&self, req: Payload) -> PayloadStream {
        let live = Live::new(&self.live);
        match req.data_utf8().unwrap_or("") {
            "forever" => futures::stream::repeat_with(move || {
                let _ = &live;
                Ok(Payload::from("x"))
            })
            .boxed(),
            "silent" => futures::stream::pending()
                .chain(futures::stream::poll_fn(move |_| {
                    let _ = &live;
                    std::task::Poll::Ready(None)
                }))
                .boxed(),
            "err-after-3" => {
                futures::stream::iter((0..3).map(|i| Ok(Payload::from(i.to_string()))).chain(
                    std::iter::once(Err(RequestError::Stream(
                        rsocket_core::StreamError::application("boom"),
                    ))),
                ))
                .chain(futures::stream::poll_fn(move |_| {
                    let _ = &live;
                    std::task::Poll::Ready(None)
                }))
                .boxed()
            }
            n => {
                let n: usize = n.parse().unwrap_or(0);
                futures::stream::iter((0..n).map(|i| Ok(Payload::from(i.to_string())))).boxed()
            }
        }
    }
    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        let live = Live::new(&self.live);
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .chain(futures::stream::poll_fn(move |_| {
                let _ = &live;
                std::task::Poll::Ready(None)
            }))
            .boxed()
    }
}

struct Fixture {
    client: Requester,
    stats: ServerStatsHandle,
    live: Arc<AtomicUsize>,
}

fn start() -> Fixture {
    let live = Arc::new(AtomicUsize::new(0));
    let (c, s) = memory_pair(64 * 1024);
    let l = live.clone();
    let server = Server::new(move |_s, _r| {
        let live = l.clone();
        async move { Ok(Arc::new(Probe { live }) as Arc<dyn RSocket>) }
    });
    let stats = server.stats_handle();
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let client = ClientBuilder::new().connect(c).unwrap();
    Fixture {
        client,
        stats,
        live,
    }
}

impl Fixture {
    async fn settled(&self, what: &str) {
        until(what, || {
            self.client.open_streams() == 0
                && self.stats.snapshot().open_streams == 0
                && self.live.load(Ordering::SeqCst) == 0
        })
        .await;
        // And the connection still works.
        let r = within("round trip", self.client.request_response("ok".into())).await;
        assert_eq!(r.unwrap().unwrap().data, "ok");
    }
}

#[tokio::test]
async fn a_response_future_dropped_after_its_request_was_queued_cancels() {
    let f = start();
    let mut fut = f.client.request_response("never".into());
    // Queued, not yet written (the driver has not run).
    assert!(futures::poll!(&mut fut).is_pending());
    assert!(fut.stream_id().is_some());
    drop(fut);
    f.settled("a dropped request/response").await;
}

#[tokio::test]
async fn a_response_stream_dropped_after_request_n_cancels() {
    let f = start();
    let mut s = f.client.request_stream_with_credit("forever".into(), 1);
    let first = within("first", s.next()).await;
    assert!(first.unwrap().is_ok());
    s.request(u32::MAX);
    s.request(u32::MAX);
    drop(s);
    f.settled("a dropped stream").await;
}

#[tokio::test]
async fn huge_credit_before_and_after_the_first_poll() {
    let f = start();
    let mut s = f.client.request_stream_with_credit("100".into(), 1);
    s.request(u32::MAX);
    s.request(u32::MAX);
    s.request(0);
    let items: Vec<_> = within("all items", (&mut s).collect::<Vec<_>>()).await;
    assert_eq!(items.len(), 100);
    let mut s = f
        .client
        .with_prefetch(u32::MAX)
        .request_stream("100".into());
    let items: Vec<_> = within("all items", (&mut s).collect::<Vec<_>>()).await;
    assert_eq!(items.len(), 100);
    let mut s = f.client.with_prefetch(0).request_stream("10".into());
    let items: Vec<_> = within("all items", (&mut s).collect::<Vec<_>>()).await;
    assert_eq!(items.len(), 10);
    f.settled("after huge credit").await;
}

#[tokio::test]
async fn a_responder_stream_that_fails_after_items() {
    let f = start();
    let s = f.client.request_stream("err-after-3".into());
    let items: Vec<_> = within("items then error", s.collect::<Vec<_>>()).await;
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(items[..3].iter().all(Result::is_ok));
    assert!(items[3].is_err());
    f.settled("after a failed stream").await;
}

#[tokio::test]
async fn a_channel_whose_outbound_fails_ends() {
    let f = start();
    let rest = futures::stream::iter([
        Ok(Payload::from("a")),
        Err(RequestError::Stream(
            rsocket_core::StreamError::application("out failed"),
        )),
    ]);
    let s = f.client.request_channel_fallible("first".into(), rest);
    let items: Vec<_> = within("channel ends", s.collect::<Vec<_>>()).await;
    assert!(!items.is_empty());
    f.settled("after a failed channel").await;
}

#[tokio::test]
async fn a_channel_whose_outbound_panics_ends() {
    let f = start();
    let rest = futures::stream::iter([Ok(Payload::from("a"))]).chain(futures::stream::poll_fn(
        |_| -> std::task::Poll<Option<Result<Payload, RequestError>>> { panic!("outbound") },
    ));
    let s = f.client.request_channel_fallible("first".into(), rest);
    let items: Vec<_> = within("channel ends", s.collect::<Vec<_>>()).await;
    assert!(!items.is_empty());
    f.settled("after a panicked channel").await;
}

#[tokio::test]
async fn a_channel_whose_outbound_never_ends_is_cancelled_on_drop() {
    let f = start();
    let rest = futures::stream::iter([Ok(Payload::from("a"))]).chain(futures::stream::pending());
    let mut s = f.client.request_channel_fallible("first".into(), rest);
    let one = within("first", s.next()).await;
    assert!(one.unwrap().is_ok());
    let two = within("second", s.next()).await;
    assert!(two.unwrap().is_ok());
    drop(s);
    f.settled("after dropping a never-ending channel").await;
}

#[tokio::test]
async fn thousands_of_streams_opened_and_cancelled() {
    let f = start();
    for round in 0..3 {
        let mut streams = Vec::new();
        for _ in 0..2000 {
            let mut s = f.client.request_stream("forever".into());
            let _ = futures::poll!(s.next());
            streams.push(s);
        }
        for s in streams.iter_mut().take(10) {
            assert!(within("an item", s.next()).await.unwrap().is_ok());
        }
        drop(streams);
        let mut futs = Vec::new();
        for _ in 0..2000 {
            let mut r = f.client.request_response("never".into());
            let _ = futures::poll!(&mut r);
            futs.push(r);
        }
        drop(futs);
        f.settled(&format!("round {round}")).await;
    }
}

#[tokio::test]
async fn closed_resolves_when_racing_the_end() {
    for _ in 0..200 {
        let f = start();
        let c = f.client.clone();
        let waiter = tokio::spawn(async move { c.closed().await });
        f.client.abort();
        within("closed", waiter).await.unwrap();
        within("closed again", f.client.closed()).await;
        let _ = f.client.closed().now_or_never();
    }
}

/// Shutdown with a connection whose SETUP has not come: nothing is open on
/// it, so the server does not wait the grace period (and more) for it, and
/// a SETUP that comes once shutdown has begun is not accepted.
#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_connections_still_in_setup() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    let server = Server::new(move |_s, _r| {
        a.fetch_add(1, Ordering::SeqCst);
        let live = Arc::new(AtomicUsize::new(0));
        async move { Ok(Arc::new(Probe { live }) as Arc<dyn RSocket>) }
    })
    .grace_period(Duration::from_secs(10));
    let stats = server.stats_handle();
    let (silent, s) = memory_pair(64 * 1024);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]).chain(futures::stream::pending()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    until("the connection is pending setup", || {
        stats.snapshot().pending_setup == 1
    })
    .await;
    let started = tokio::time::Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), serve)
        .await
        .expect("the server returns without waiting for a connection in setup")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    // The silent client's SETUP comes too late.
    let late = ClientBuilder::new().connect(silent).unwrap();
    let r = within("refused", late.request_response("x".into())).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

/// A transport whose reader waits for ever and whose writer takes every
/// frame but never finishes closing.
struct StuckClose;
struct NeverRead;
struct CloseNever;

impl Stream for NeverRead {
    type Item = Result<rsocket_core::Frame, rsocket_core::TransportError>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Pending
    }
}

impl futures::Sink<rsocket_core::Frame> for CloseNever {
    type Error = rsocket_core::TransportError;
    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn start_send(
        self: std::pin::Pin<&mut Self>,
        _item: rsocket_core::Frame,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Pending
    }
}

impl rsocket_core::Transport for StuckClose {
    type Reader = NeverRead;
    type Writer = CloseNever;
    fn split(self) -> (Self::Reader, Self::Writer) {
        (NeverRead, CloseNever)
    }
}

/// A writer that never finishes closing does not keep the driver (and
/// `closed()`) waiting past `Config::outbound_stall_timeout`.
#[tokio::test(start_paused = true)]
async fn a_writer_that_never_closes_is_dropped_after_the_stall_timeout() {
    let client = ClientBuilder::new().connect(StuckClose).unwrap();
    client.abort();
    let started = tokio::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(300), client.closed()).await;
    assert!(closed.is_ok(), "closed() did not resolve");
    assert!(started.elapsed() <= Duration::from_secs(31));
}

/// Reads keep coming (a KEEPALIVE asking for an answer, over and over)
/// while every write fails: the connection ends, requests fail.
struct WriteFails;
struct Chatty;
struct FailingWriter;

impl Stream for Chatty {
    type Item = Result<rsocket_core::Frame, rsocket_core::TransportError>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(Some(Ok(rsocket_core::Frame::Keepalive(
            rsocket_core::frame::Keepalive {
                respond: true,
                last_received_position: 0,
                data: bytes::Bytes::from_static(b"ping"),
            },
        ))))
    }
}

impl futures::Sink<rsocket_core::Frame> for FailingWriter {
    type Error = rsocket_core::TransportError;
    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Err(std::io::Error::other("write side broken").into()))
    }
    fn start_send(
        self: std::pin::Pin<&mut Self>,
        _item: rsocket_core::Frame,
    ) -> Result<(), Self::Error> {
        Err(std::io::Error::other("write side broken").into())
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Err(std::io::Error::other("write side broken").into()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Err(std::io::Error::other("write side broken").into()))
    }
}

impl rsocket_core::Transport for WriteFails {
    type Reader = Chatty;
    type Writer = FailingWriter;
    fn split(self) -> (Self::Reader, Self::Writer) {
        (Chatty, FailingWriter)
    }
}

#[tokio::test]
async fn a_broken_write_side_ends_the_connection_while_reads_go_on() {
    let client = ClientBuilder::new().connect(WriteFails).unwrap();
    let r = within("request fails", client.request_response("x".into())).await;
    assert!(r.is_err(), "{r:?}");
    let e = within("closed", client.closed()).await;
    assert!(
        e.to_string().contains("broken") || client.is_closed(),
        "{e}"
    );
}

struct Counted;
impl futures::task::ArcWake for Counted {
    fn wake_by_ref(_arc_self: &Arc<Self>) {}
}

/// A handle dropped while it waits leaves no waker behind in the
/// connection (one per cancelled stream would pile up for the
/// connection's life).
#[tokio::test]
async fn dropped_handles_leave_no_wakers_behind() {
    let f = start();
    let w = Arc::new(Counted);
    let waker = futures::task::waker(w.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let base = Arc::strong_count(&w);
    {
        let mut s = f.client.request_stream_with_credit("silent".into(), 1);
        let _ = std::pin::Pin::new(&mut s).poll_next(&mut cx);
        let mut r = f.client.request_response("never".into());
        let _ = std::pin::Pin::new(&mut r).poll(&mut cx);
        let _ = std::pin::Pin::new(&mut r).poll(&mut cx);
        assert!(Arc::strong_count(&w) > base);
    }
    f.settled("both cancelled").await;
    assert_eq!(Arc::strong_count(&w), base, "wakers left behind");
}

/// Many tasks on two workers share a connection whose outbound queue is
/// tiny (everyone waits for room) and whose pipe is small: no task may
/// sleep for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_on_a_tiny_queue_never_stalls() {
    for _ in 0..3 {
        let live = Arc::new(AtomicUsize::new(0));
        let (c, s) = memory_pair(2048);
        let l = live.clone();
        let config = rsocket_core::Config {
            max_outbound_queue_bytes: 700,
            ..Default::default()
        };
        let server = Server::new(move |_s, _r| {
            let live = l.clone();
            async move { Ok(Arc::new(Probe { live }) as Arc<dyn RSocket>) }
        })
        .config(config.clone());
        tokio::spawn(server.serve_with_shutdown(
            futures::stream::iter([Ok::<_, std::io::Error>(s)]),
            futures::future::pending(),
        ));
        let client = ClientBuilder::new().config(config).connect(c).unwrap();
        let mut tasks = Vec::new();
        for t in 0..48 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let body = Payload::from(vec![b'a' + (t % 26) as u8; 300 + t * 7]);
                for i in 0..60 {
                    match (t + i) % 4 {
                        0 => {
                            let r = client.request_response(body.clone()).await.unwrap();
                            assert_eq!(r.unwrap().data, body.data);
                        }
                        1 => {
                            let n = client
                                .with_prefetch(((t + i) % 5) as u32)
                                .request_stream("37".into())
                                .count()
                                .await;
                            assert_eq!(n, 37);
                        }
                        2 => {
                            client.fire_and_forget(body.clone()).await.unwrap();
                        }
                        _ => {
                            let rest = futures::stream::iter(
                                (0..9).map(|_| Ok(body.clone())).collect::<Vec<_>>(),
                            );
                            let n = client
                                .with_prefetch(2)
                                .request_channel_fallible(body.clone(), rest)
                                .count()
                                .await;
                            assert_eq!(n, 10);
                        }
                    }
                }
            }));
        }
        within("the crowd", async {
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await;
    }
}

/// The requester an acceptor receives is for calling the client back: a
/// call the acceptor awaits before it answers is answered.
#[tokio::test(start_paused = true)]
async fn an_acceptor_that_awaits_a_call_to_the_client() {
    let (c, s) = memory_pair(64 * 1024);
    let server = Server::new(move |_s, requester: Requester| async move {
        let who = tokio::time::timeout(WAIT, requester.request_response("who?".into()))
            .await
            .map_err(|_| rsocket_core::StreamError::rejected("no answer to who?"))?
            .map_err(|e| rsocket_core::StreamError::rejected(e.to_string()))?;
        let live = Arc::new(AtomicUsize::new(0));
        let _ = who;
        Ok(Arc::new(Probe { live }) as Arc<dyn RSocket>)
    });
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let client = ClientBuilder::new()
        .responder(rsocket_core::request_response_fn(|_req| async move {
            Ok(Some(Payload::from("me")))
        }))
        .connect(c)
        .unwrap();
    let r = tokio::time::timeout(2 * WAIT, client.request_response("hi".into()))
        .await
        .expect("answered");
    assert_eq!(r.unwrap().unwrap().data, "hi");
}

/// Requests that come while the acceptor decides wait for its responder
/// (fire-and-forgets up to the handler limit, then reading pauses), and
/// are all handled once it is given.
#[tokio::test(start_paused = true)]
async fn requests_sent_while_the_acceptor_decides_are_handled_after() {
    let (c, s) = memory_pair(64 * 1024);
    let (fnf_tx, mut fnf_rx) = tokio::sync::mpsc::unbounded_channel::<Payload>();
    let config = rsocket_core::Config {
        max_concurrent_inbound_streams: 4,
        ..Default::default()
    };
    let server = Server::new(move |_s, requester: Requester| {
        let fnf_tx = fnf_tx.clone();
        async move {
            // Held: counted as running, and reading paused at the limit.
            while requester.stats().handlers_running < 4 {
                tokio::task::yield_now().await;
            }
            assert!(requester.stats().read_paused);
            let responder = rsocket_core::fire_and_forget_fn(move |p| {
                let _ = fnf_tx.send(p);
                async {}
            });
            Ok(responder)
        }
    })
    .config(config);
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let client = ClientBuilder::new().connect(c).unwrap();
    for i in 0..10 {
        within("queued", client.fire_and_forget(i.to_string().into()))
            .await
            .unwrap();
    }
    for i in 0..10 {
        let got = within("handled", fnf_rx.recv()).await.unwrap();
        assert_eq!(got.data, i.to_string());
    }
    // A request held as well: answered (rejected: this responder has no
    // request/response) once the responder is there.
    let r = within("answered", client.request_response("x".into())).await;
    assert!(r.is_err());
}

/// `closed()` awaited from other workers while the connection ends
/// (aborted, or its transport dropped) always resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_resolves_on_every_worker_when_racing_the_end() {
    for i in 0..300 {
        let f = start();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let c = f.client.clone();
                tokio::spawn(async move { c.closed().await })
            })
            .collect();
        let c = f.client.clone();
        let ender = tokio::spawn(async move {
            if i % 2 == 0 {
                c.abort();
            } else {
                c.close();
            }
        });
        within("closed", f.client.closed()).await;
        for w in waiters {
            within("closed on a worker", w).await.unwrap();
        }
        ender.await.unwrap();
    }
}

/// The grace period ends with a stream still running (its handler never
/// finishes) and a request/response handler that never answers: the
/// server returns at the end of the grace period, and the handlers are
/// dropped.
#[tokio::test(start_paused = true)]
async fn the_grace_period_ends_handlers_that_never_finish() {
    let live = Arc::new(AtomicUsize::new(0));
    let (c, s) = memory_pair(64 * 1024);
    let l = live.clone();
    let server = Server::new(move |_s, _r| {
        let live = l.clone();
        async move { Ok(Arc::new(Probe { live }) as Arc<dyn RSocket>) }
    })
    .grace_period(Duration::from_secs(10));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]).chain(futures::stream::pending()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let client = ClientBuilder::new().connect(c).unwrap();
    let mut stream = client.request_stream("silent".into());
    let mut rr = client.request_response("never".into());
    assert!(futures::poll!(stream.next()).is_pending());
    assert!(futures::poll!(&mut rr).is_pending());
    until("both handlers run", || live.load(Ordering::SeqCst) == 2).await;
    let started = tokio::time::Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), serve)
        .await
        .expect("the server returns")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
    assert!(within("stream fails", stream.next())
        .await
        .unwrap()
        .is_err());
    assert!(within("request fails", rr).await.is_err());
    until("handlers dropped", || live.load(Ordering::SeqCst) == 0).await;
}
