//! Quick end-to-end smoke test over the in-memory transport. Every wait is
//! guarded, so a bug fails a test instead of hanging it.
use rsocket_core::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rsocket_core::{
    memory_pair, ClientBuilder, Payload, PayloadStream, RSocket, RequestError, Server,
};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {WAIT:?}"))
}

struct Echo {
    fnf: mpsc::UnboundedSender<Payload>,
}
#[async_trait]
impl RSocket for Echo {
    async fn fire_and_forget(&self, req: Payload) -> Result<(), RequestError> {
        let _ = self.fnf.send(req);
        Box::pin(async { Ok(()) }).await
    }
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Box::pin(async move { Ok(Some(req)) }).await
    }
    fn request_stream(&self, req: Payload) -> PayloadStream {
        let n: usize = req.data_utf8().unwrap_or("0").parse().unwrap_or(0);
        futures::stream::iter((0..n).map(|i| Ok(Payload::from(i.to_string())))).boxed()
    }
    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed()
    }
}

#[tokio::test]
async fn smoke() {
    let (c, s) = memory_pair(64 * 1024);
    let (fnf_tx, mut fnf_rx) = mpsc::unbounded_channel();
    let server = Server::new(move |_s, _r| {
        let echo = Echo {
            fnf: fnf_tx.clone(),
        };
        async move { Ok(Arc::new(echo) as Arc<dyn RSocket>) }
    });
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let r = ClientBuilder::new().connect(c).unwrap();
    let reply = within("response", r.request_response(Payload::from("hi")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data, "hi");
    let items: Vec<_> = within(
        "stream",
        r.request_stream(Payload::from("1000")).collect::<Vec<_>>(),
    )
    .await;
    let items: Vec<String> = items
        .into_iter()
        .map(|i| i.expect("item").data_utf8().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(items, want);
    let rest = futures::stream::iter((0..10).map(|i| Ok(Payload::from(format!("c{i}"))))).boxed();
    let items: Vec<_> = within(
        "channel",
        r.request_channel_fallible(Payload::from("first"), rest)
            .collect::<Vec<_>>(),
    )
    .await;
    let items: Vec<String> = items
        .into_iter()
        .map(|i| i.expect("item").data_utf8().unwrap_or_default().to_owned())
        .collect();
    let mut want = vec!["first".to_owned()];
    want.extend((0..10).map(|i| format!("c{i}")));
    assert_eq!(items, want);
    // Resolving only means the frame was queued: the handler must get it.
    within(
        "fire-and-forget queued",
        r.fire_and_forget(Payload::from("x")),
    )
    .await
    .expect("queued");
    let got = within("fire-and-forget handled", fnf_rx.recv()).await;
    assert_eq!(got.map(|p| p.data), Some("x".into()));
}

struct Counting(Arc<std::sync::atomic::AtomicUsize>);
#[async_trait]
impl RSocket for Counting {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Box::pin(async move { Ok(Some(req)) }).await
    }
    fn request_stream(&self, _req: Payload) -> PayloadStream {
        let produced = self.0.clone();
        futures::stream::repeat_with(move || {
            let i = produced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Payload::from(i.to_string()))
        })
        .boxed()
    }
}

#[tokio::test]
async fn explicit_credit_is_exact() {
    let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (c, s) = memory_pair(64 * 1024);
    let p = produced.clone();
    let server = Server::new(move |_s, _r| {
        let p = p.clone();
        async move { Ok(Arc::new(Counting(p)) as Arc<dyn RSocket>) }
    });
    let stats = server.stats_handle();
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let r = ClientBuilder::new().connect(c).unwrap();
    let mut stream = r.request_stream_with_credit(Payload::from("go"), 2);
    for expected in ["0", "1"] {
        let item = within("item", stream.next()).await;
        assert_eq!(item.unwrap().unwrap().data, expected);
    }
    stream.request(3);
    for expected in ["2", "3", "4"] {
        let item = within("item", stream.next()).await;
        assert_eq!(item.unwrap().unwrap().data, expected);
    }
    // The producer runs on its own task: wait until the engine has parked
    // it for lack of credit. Only then can nothing more be produced, so
    // only then does the count prove the credit was honoured.
    within("the producer to wait for credit", async {
        while stats.snapshot().producers_awaiting_credit != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(produced.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(r.open_streams(), 1);
    drop(stream);
    within("the stream to end at the server", async {
        while stats.snapshot().open_streams != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(r.open_streams(), 0);
}

/// `request_response_lent`: the caller keeps the request, and can send it
/// again; a request too big for one frame (here, over a 64-byte MTU) is
/// written in fragments from a copy, with the same answer.
#[tokio::test]
async fn a_lent_request_is_sent_and_stays_with_the_caller() {
    let (c, s) = memory_pair(64 * 1024);
    let (fnf, _fnf_rx) = mpsc::unbounded_channel();
    let server = Server::new(move |_s, _r| {
        let echo = Echo { fnf: fnf.clone() };
        async move { Ok(Arc::new(echo) as Arc<dyn RSocket>) }
    });
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let config = rsocket_core::Config {
        mtu: Some(64),
        ..rsocket_core::Config::default()
    };
    let r = ClientBuilder::new().config(config).connect(c).unwrap();
    let small = Payload::from("lent");
    let big = Payload::from("b".repeat(1_000)).with_metadata(bytes::Bytes::from("m".repeat(100)));
    for request in [&small, &big, &small] {
        let mut response = r.request_response_lent();
        let reply = within(
            "lent response",
            futures::future::poll_fn(|cx| response.poll_lent(cx, request)),
        )
        .await
        .expect("answered");
        assert_eq!(reply.as_ref(), Some(request));
        assert!(response.stream_id().is_some());
    }
    // Polled as a plain future, a lent request sends an empty payload.
    let reply = within("empty response", r.request_response_lent())
        .await
        .expect("answered");
    assert_eq!(reply, Some(Payload::default()));
}

/// Panics at every point a handler can: at once (polled on the
/// connection's task), after an await (on a task of its own), while
/// building a stream or channel, and in the middle of a stream.
struct Panicky;

#[async_trait]
impl RSocket for Panicky {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        match req.data_utf8() {
            Some("now") => panic!("a handler's bug, at once"),
            Some("later") => {
                tokio::task::yield_now().await;
                panic!("a handler's bug, after an await")
            }
            _ => Ok(Some(req)),
        }
    }
    async fn fire_and_forget(&self, _req: Payload) -> Result<(), RequestError> {
        panic!("a fire-and-forget handler's bug")
    }
    async fn metadata_push(&self, _metadata: bytes::Bytes) -> Result<(), RequestError> {
        panic!("a metadata-push handler's bug")
    }
    fn request_stream(&self, req: Payload) -> PayloadStream {
        if req.data_utf8() == Some("build") {
            panic!("a bug while building the stream");
        }
        futures::stream::iter(0..3)
            .map(|i| {
                if i == 2 {
                    panic!("a bug in the middle of the stream");
                }
                Ok(Payload::from(i.to_string()))
            })
            .boxed()
    }
    fn request_channel(&self, _first: Payload, _rest: PayloadStream) -> PayloadStream {
        panic!("a bug while building the channel")
    }
}

fn panicked(r: &Result<Option<Payload>, RequestError>) -> bool {
    matches!(r, Err(RequestError::Stream(e))
        if e.code == rsocket_core::ErrorCode::APPLICATION_ERROR && e.message == "the handler panicked")
}

#[tokio::test]
async fn a_panicking_handler_fails_its_own_request_only() {
    let (c, s) = memory_pair(64 * 1024);
    let server = Server::new(|_s, _r| async { Ok(Arc::new(Panicky) as Arc<dyn RSocket>) });
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let r = ClientBuilder::new().connect(c).unwrap();
    let alive = || async {
        let ok = within(
            "a request after the panic",
            r.request_response(Payload::from("ok")),
        )
        .await;
        assert_eq!(ok.expect("served").expect("an answer").data, "ok");
    };
    for when in ["now", "later"] {
        let out = within(when, r.request_response(Payload::from(when))).await;
        assert!(panicked(&out), "{when}: {out:?}");
        alive().await;
    }
    r.fire_and_forget(Payload::from("f")).await.expect("queued");
    r.metadata_push(bytes::Bytes::from_static(b"m"))
        .await
        .expect("queued");
    alive().await;
    let built: Vec<_> = within("stream", r.request_stream(Payload::from("build")).collect()).await;
    assert!(
        matches!(&built[..], [e] if panicked(&e.clone().map(Some))),
        "{built:?}"
    );
    alive().await;
    let midway: Vec<_> = within("stream", r.request_stream(Payload::from("mid")).collect()).await;
    let last = midway.last().cloned().map(|e| e.map(Some));
    assert!(last.as_ref().is_some_and(panicked), "{midway:?}");
    assert!(
        midway[..midway.len() - 1].iter().all(Result::is_ok),
        "{midway:?}"
    );
    alive().await;
    let channel: Vec<_> = within(
        "channel",
        r.request_channel(Payload::from("a"), futures::stream::empty())
            .collect(),
    )
    .await;
    assert!(
        matches!(&channel[..], [e] if panicked(&e.clone().map(Some))),
        "{channel:?}"
    );
    alive().await;
    assert!(!r.is_closed());
}

#[tokio::test]
async fn a_panicking_acceptor_refuses_that_setup_only() {
    let (tx, rx) = mpsc::unbounded_channel();
    let incoming = futures::stream::unfold(rx, |mut rx: mpsc::UnboundedReceiver<_>| async move {
        rx.recv().await.map(|t| (Ok::<_, std::io::Error>(t), rx))
    });
    let server = Server::new(|setup: rsocket_core::SetupInfo, _r| {
        // A panic in the acceptor itself, or in the future it returns.
        if setup.payload.data.as_ref() == b"at once" {
            panic!("an acceptor's bug, at once");
        }
        async move {
            if setup.payload.data.as_ref() == b"later" {
                panic!("an acceptor's bug, in its future");
            }
            Ok(Arc::new(Panicky) as Arc<dyn RSocket>)
        }
    });
    tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));
    for when in ["at once", "later"] {
        let (c, s) = memory_pair(4096);
        tx.send(s).unwrap();
        let r = ClientBuilder::new()
            .setup_payload(Payload::from(when))
            .connect(c)
            .unwrap();
        let refused = within(when, r.closed()).await;
        assert!(
            matches!(&refused, rsocket_core::ConnectionError::SetupRejected { code, message, .. }
                if *code == rsocket_core::ErrorCode::REJECTED_SETUP && message == "the acceptor panicked"),
            "{when}: {refused:?}"
        );
    }
    // The server goes on accepting.
    let (c, s) = memory_pair(4096);
    tx.send(s).unwrap();
    let r = ClientBuilder::new().connect(c).unwrap();
    let ok = within(
        "a later connection",
        r.request_response(Payload::from("ok")),
    )
    .await;
    assert_eq!(ok.expect("served").expect("an answer").data, "ok");
}
