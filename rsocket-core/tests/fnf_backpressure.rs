//! Fire-and-forget and metadata push under load: with
//! `max_concurrent_inbound_streams` handlers running, the server stops
//! reading (checked before every frame, so never one handler more), and
//! nothing is dropped: every request is handled once the handlers catch up.
//! Handlers done at once and handlers that finish later, mixed, each see
//! their own request (fire-and-forget) and give their own answer
//! (request/response).

use rsocket_core::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rsocket_core::runtime::ServerStatsHandle;
use rsocket_core::{
    memory_pair, ClientBuilder, Config, Payload, RSocket, RequestError, Server, ServerStats,
};
use tokio::sync::Semaphore;

const LIMIT: usize = 4;
const SENT: usize = 50;
const WAIT: Duration = Duration::from_secs(5);

/// Each handler counts itself as started, waits for a permit, then counts
/// itself as handled.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    started: Arc<AtomicUsize>,
    handled: Arc<AtomicUsize>,
}

impl Gated {
    fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::default(),
            handled: Arc::default(),
        }
    }

    fn run(&self) -> BoxFuture<'static, Result<(), RequestError>> {
        let this = self.clone();
        this.started.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let permit = this
                .gate
                .acquire()
                .await
                .map_err(|_| RequestError::Cancelled)?;
            permit.forget();
            this.handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[async_trait]

impl RSocket for Gated {
    async fn fire_and_forget(&self, _req: Payload) -> Result<(), RequestError> {
        self.run().await
    }

    async fn metadata_push(&self, _metadata: Bytes) -> Result<(), RequestError> {
        self.run().await
    }
}

/// Serves `responder` with `config` over an in-memory pair; the client's
/// requester and the server's counters.
fn serve<R>(responder: R, config: Config) -> (rsocket_core::Requester, ServerStatsHandle)
where
    R: RSocket + Clone + 'static,
{
    let (c, s) = memory_pair(64 * 1024);
    let server = Server::new(move |_s, _r| {
        let responder = responder.clone();
        async move { Ok(Arc::new(responder) as Arc<dyn RSocket>) }
    })
    .config(config);
    let stats = server.stats_handle();
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let requester = ClientBuilder::new().connect(c).expect("connect");
    (requester, stats)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Serves `gated` with a handler limit of [`LIMIT`]; sends [`SENT`]
/// requests through `send`; checks that exactly [`LIMIT`] handlers ran
/// while the gate was closed, then that all were handled.
async fn flood(send: impl Fn(&rsocket_core::Requester, usize) -> BoxFuture<'static, ()>) {
    let gated = Gated::new();
    let config = Config {
        max_concurrent_inbound_streams: LIMIT,
        ..Config::default()
    };
    let (requester, stats) = serve(gated.clone(), config);
    for i in 0..SENT {
        tokio::time::timeout(WAIT, send(&requester, i))
            .await
            .expect("request queued in time");
    }
    // Every handler the engine dispatched has started, and reading paused.
    let mut last = ServerStats::default();
    wait_until("the server to pause with its handlers started", || {
        last = stats.snapshot();
        last.paused_connections == 1
            && gated.started.load(Ordering::SeqCst) == last.handlers_running
    })
    .await;
    assert_eq!(
        gated.started.load(Ordering::SeqCst),
        LIMIT,
        "handlers started past the limit: {last:?}"
    );
    assert_eq!(last.handlers_running, LIMIT, "{last:?}");
    // Let every handler through, then wait until all were handled.
    gated.gate.add_permits(SENT);
    wait_until("every request to be handled", || {
        gated.handled.load(Ordering::SeqCst) == SENT
    })
    .await;
    wait_until("the handlers to be counted out", || {
        stats.snapshot().handlers_running == 0
    })
    .await;
}

#[tokio::test]
async fn fire_and_forget_beyond_the_handler_limit_waits_and_is_not_dropped() {
    flood(|requester, i| {
        let fut = requester.fire_and_forget(Payload::from(format!("m{i}")));
        Box::pin(async move { fut.await.expect("queued") })
    })
    .await;
}

#[tokio::test]
async fn metadata_push_beyond_the_handler_limit_waits_and_is_not_dropped() {
    flood(|requester, i| {
        let fut = requester.metadata_push(Bytes::from(format!("md{i}")));
        Box::pin(async move { fut.await.expect("queued") })
    })
    .await;
}

/// Records each request's data; every third one waits for a yield before
/// it is done, so that handlers done at once and handlers that run on a
/// task of their own alternate.
#[derive(Clone, Default)]
struct Mixed {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl RSocket for Mixed {
    async fn fire_and_forget(&self, req: Payload) -> Result<(), RequestError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 1 {
            tokio::task::yield_now().await;
        }
        let data = String::from_utf8_lossy(&req.data).into_owned();
        self.seen.lock().expect("not poisoned").push(data);
        Ok(())
    }

    /// Echoes the request, every third one after a yield (so it finishes
    /// in a task of its own, and the next one gets a new box).
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 1 {
            tokio::task::yield_now().await;
        }
        Ok(Some(req))
    }
}

/// The same for request/response, whose handlers' futures are run the
/// same way: each concurrent request gets its own answer.
#[tokio::test]
async fn request_response_handlers_done_at_once_or_later_each_answer_their_request() {
    let (requester, _stats) = serve(Mixed::default(), Config::default());
    let calls = (0..SENT).map(|i| {
        let requester = requester.clone();
        async move {
            let want = format!("r{i}");
            let got = requester
                .request_response(Payload::from(want.clone()))
                .await
                .expect("answered")
                .expect("a payload");
            assert_eq!(got.data, want.as_bytes(), "request {i}");
        }
    });
    tokio::time::timeout(WAIT, futures::future::join_all(calls))
        .await
        .expect("all answered in time");
}

#[tokio::test]
async fn fire_and_forget_handlers_done_at_once_or_later_each_see_their_request() {
    let mixed = Mixed::default();
    let (requester, stats) = serve(mixed.clone(), Config::default());
    for i in 0..SENT {
        tokio::time::timeout(
            WAIT,
            requester.fire_and_forget(Payload::from(format!("m{i}"))),
        )
        .await
        .expect("queued in time")
        .expect("queued");
    }
    wait_until("every request to be handled", || {
        mixed.seen.lock().expect("not poisoned").len() == SENT
    })
    .await;
    wait_until("the handlers to be counted out", || {
        stats.snapshot().handlers_running == 0
    })
    .await;
    let mut seen = mixed.seen.lock().expect("not poisoned").clone();
    seen.sort();
    let mut want: Vec<String> = (0..SENT).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
}
