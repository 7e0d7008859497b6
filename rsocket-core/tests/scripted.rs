//! Scripted-peer tests: one end of the transport is the real engine (a
//! client from `ClientBuilder` or a server from `accept` / `Server::serve`),
//! the other a test script that reads and writes raw frames through
//! `Framed<DuplexStream, FrameCodec>`, so the exact frames on the wire can be
//! asserted. Every wait has a timeout, so a bug fails a test instead of
//! hanging it; ordering never relies on sleeps (a sentinel frame, or a
//! request/response round trip, marks "nothing else was sent before this").

use rsocket_core::async_trait;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{poll, FutureExt, SinkExt, StreamExt};
use rsocket_core::codec::FrameCodec;
use rsocket_core::frame::{
    Cancel, ErrorFrame, Keepalive, PayloadFrame, RequestChannel, RequestN, RequestResponse,
    RequestStream, Resume, Setup, Version,
};
use rsocket_core::{
    accept, memory_pair, ClientBuilder, Config, ConnectionError, ErrorCode, Frame, Initiator,
    MemoryTransport, MimeType, Payload, PayloadStream, RSocket, RequestCount, RequestError,
    Requester, ResponseStream, Server, SetupInfo, SocketAcceptor, StreamError, StreamId,
    StreamTransport,
};
use tokio::io::DuplexStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::Framed;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Under a paused clock tokio timeouts fire only when the runtime is idle, so
/// an engine that spins would hang a test forever. This real-time watchdog
/// aborts the test binary instead; dropping it disarms it.
struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(test: &'static str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let limit = Duration::from_secs(60);
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{test}: still running after {limit:?} of real time; aborting");
                std::process::abort();
            }
        });
        Self { _disarm: tx }
    }
}

/// How long the script waits for anything before failing the test.
const WAIT: Duration = Duration::from_secs(5);

/// The script's end: raw frames with the 24-bit length prefix.
type Raw = Framed<DuplexStream, FrameCodec>;

/// A transport for the engine and the script's raw end of the same pipe.
fn raw_pair() -> (MemoryTransport, Raw) {
    let (engine, script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    (
        StreamTransport::new(r, w),
        Framed::new(script, FrameCodec::new()),
    )
}

/// The next frame's bytes (prefix stripped).
async fn expect_bytes(raw: &mut Raw) -> Bytes {
    match timeout(WAIT, raw.next()).await {
        Ok(Some(Ok(b))) => b,
        Ok(Some(Err(e))) => panic!("codec error while expecting a frame: {e}"),
        Ok(None) => panic!("transport closed while a frame was expected"),
        Err(_) => panic!("no frame within {WAIT:?}"),
    }
}

/// The next frame, decoded.
async fn expect_frame(raw: &mut Raw) -> Frame {
    let b = expect_bytes(raw).await;
    Frame::decode(b.clone())
        .unwrap_or_else(|e| panic!("engine sent an undecodable frame {b:02x?}: {e}"))
}

/// The engine closes the transport: the next read is end-of-stream.
async fn expect_closed(raw: &mut Raw) {
    match timeout(WAIT, raw.next()).await {
        Ok(None) => {}
        Ok(Some(Ok(b))) => panic!("expected close, got frame {:?}", Frame::decode(b)),
        Ok(Some(Err(e))) => panic!("expected a clean close, got {e}"),
        Err(_) => panic!("transport not closed within {WAIT:?}"),
    }
}

async fn send(raw: &mut Raw, frame: Frame) {
    timeout(WAIT, raw.send(frame))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// Sends hand-made frame bytes (the encoder cannot produce invalid frames).
async fn send_bytes(raw: &mut Raw, bytes: &'static [u8]) {
    timeout(WAIT, raw.send(Bytes::from_static(bytes)))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// Awaits a future that must finish promptly.
async fn prompt<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not finished within {WAIT:?}"))
}

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("valid stream id")
}

fn count(n: u32) -> RequestCount {
    RequestCount::new(n).expect("valid request-n")
}

fn mime(s: &'static str) -> MimeType {
    MimeType::from_static(s).expect("valid MIME type")
}

fn good_setup() -> Setup {
    Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: 90_000,
        resume_token: None,
        lease: false,
        metadata_mime_type: MimeType::OCTET_STREAM,
        data_mime_type: MimeType::OCTET_STREAM,
        payload: Payload::default(),
    }
}

fn request_response(id: u32, data: &'static str) -> Frame {
    Frame::RequestResponse(RequestResponse {
        stream_id: sid(id),
        follows: false,
        payload: Payload::from(data),
    })
}

fn request_stream(id: u32, n: u32, data: &'static str) -> Frame {
    Frame::RequestStream(RequestStream {
        stream_id: sid(id),
        follows: false,
        initial_request_n: count(n),
        payload: Payload::from(data),
    })
}

fn next(id: u32, payload: Payload) -> Frame {
    Frame::Payload(PayloadFrame::next(sid(id), payload))
}

fn next_complete(id: u32, payload: Payload) -> Frame {
    Frame::Payload(PayloadFrame::next_complete(sid(id), payload))
}

fn fragment(id: u32, payload: Payload, follows: bool) -> Frame {
    Frame::Payload(PayloadFrame {
        stream_id: sid(id),
        follows,
        complete: false,
        next: true,
        payload,
    })
}

fn request_n(id: u32, n: u32) -> Frame {
    Frame::RequestN(RequestN {
        stream_id: sid(id),
        request_n: count(n),
    })
}

fn cancel(id: u32) -> Frame {
    Frame::Cancel(Cancel { stream_id: sid(id) })
}

fn keepalive(respond: bool, data: &'static str) -> Frame {
    Frame::Keepalive(Keepalive {
        respond,
        last_received_position: 0,
        data: Bytes::from_static(data.as_bytes()),
    })
}

#[track_caller]
fn assert_payload(f: &Frame, id: u32, data: &str, next: bool, complete: bool) {
    let Frame::Payload(p) = f else {
        panic!("expected PAYLOAD on stream {id}, got {f:?}");
    };
    assert_eq!(p.stream_id, sid(id), "{f:?}");
    assert_eq!(p.payload.data, data.as_bytes(), "{f:?}");
    assert_eq!(
        (p.next, p.complete, p.follows),
        (next, complete, false),
        "N/C/F of {f:?}"
    );
}

#[track_caller]
fn assert_request_n(f: &Frame, id: u32, n: u32) {
    assert_eq!(
        f,
        &request_n(id, n),
        "expected REQUEST_N({n}) on stream {id}"
    );
}

#[track_caller]
fn assert_cancel(f: &Frame, id: u32) {
    assert_eq!(f, &cancel(id), "expected CANCEL on stream {id}");
}

/// An ERROR on stream 0 with this code; returns its message.
#[track_caller]
fn assert_connection_error(f: &Frame, code: ErrorCode) -> String {
    match f {
        Frame::Error(e) if e.stream_id.is_none() && e.code == code => e.message(),
        other => panic!("expected ERROR[{code}] on stream 0, got {other:?}"),
    }
}

#[track_caller]
fn assert_stream_error(f: &Frame, id: u32, code: ErrorCode) {
    match f {
        Frame::Error(e) if e.stream_id == Some(sid(id)) && e.code == code => {}
        other => panic!("expected ERROR[{code}] on stream {id}, got {other:?}"),
    }
}

#[track_caller]
fn assert_connection_failed<T: std::fmt::Debug>(r: Result<T, RequestError>) -> ConnectionError {
    match r {
        Err(RequestError::Connection(e)) => e,
        other => panic!("expected RequestError::Connection, got {other:?}"),
    }
}

/// A metadata push the script then expects as the very next frame: proves
/// that nothing else was queued by the engine before it.
async fn sentinel(requester: &Requester, raw: &mut Raw, what: &str) {
    let tag = Bytes::copy_from_slice(what.as_bytes());
    requester
        .metadata_push(tag.clone())
        .await
        .expect("connection still open");
    match expect_frame(raw).await {
        Frame::MetadataPush(m) if m.metadata == tag => {}
        other => panic!("{what}: expected only the sentinel METADATA_PUSH, got {other:?}"),
    }
}

/// A real client on a scripted transport; the script has read its SETUP.
async fn scripted_client(builder: ClientBuilder) -> (Requester, Raw) {
    let (t, mut raw) = raw_pair();
    let requester = builder.connect(t).expect("valid client config");
    match expect_frame(&mut raw).await {
        Frame::Setup(_) => {}
        other => panic!("expected SETUP first, got {other:?}"),
    }
    (requester, raw)
}

/// A real server (`accept` + driver) on a scripted transport. The task ends
/// with the connection, with `accept`'s error when the setup was refused.
fn spawn_accept(
    config: Config,
    acceptor: impl SocketAcceptor,
) -> (Raw, JoinHandle<Result<(), ConnectionError>>) {
    let (t, raw) = raw_pair();
    let task = tokio::spawn(async move {
        let (_requester, driver) = accept(t, config, &acceptor).await?;
        driver.await
    });
    (raw, task)
}

/// A real server that has accepted the script's SETUP.
async fn scripted_server(probe: &Arc<Probe>) -> (Raw, JoinHandle<Result<(), ConnectionError>>) {
    let (mut raw, task) = spawn_accept(Config::default(), probe_acceptor(probe));
    send(&mut raw, Frame::Setup(Box::new(good_setup()))).await;
    (raw, task)
}

/// Round trip on a scripted server: REQUEST_RESPONSE `id` must be answered
/// by the very next frame.
async fn server_barrier(raw: &mut Raw, id: u32) {
    send(raw, request_response(id, "barrier")).await;
    let f = expect_frame(raw).await;
    assert_payload(&f, id, "barrier", true, true);
}

/// Test responder: counts calls and items produced.
///
/// * request/response echoes; data `"wait"` first waits for a `gate` permit.
/// * request/stream is endless, counting every item it is polled for;
///   data `"three"` gives exactly three items (`t0`, `t1`, `t2`).
/// * request/channel echoes the first payload and the rest.
#[derive(Debug)]
struct Probe {
    rr_calls: AtomicUsize,
    stream_calls: AtomicUsize,
    metadata_pushes: AtomicUsize,
    produced: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            rr_calls: AtomicUsize::new(0),
            stream_calls: AtomicUsize::new(0),
            metadata_pushes: AtomicUsize::new(0),
            produced: Arc::new(AtomicU64::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        })
    }
}

#[async_trait]

impl RSocket for Probe {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.rr_calls.fetch_add(1, SeqCst);
        let gate = self.gate.clone();
        Box::pin(async move {
            if req.data == "wait" {
                gate.acquire()
                    .await
                    .map_err(|_| StreamError::application("gate closed"))?
                    .forget();
            }
            Ok(Some(req))
        })
        .await
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        self.stream_calls.fetch_add(1, SeqCst);
        let produced = self.produced.clone();
        if req.data == "three" {
            // Exactly three items, from an iterator (exact size hint).
            return futures::stream::iter(0..3)
                .map(move |i| {
                    produced.fetch_add(1, SeqCst);
                    Ok(Payload::from(format!("t{i}")))
                })
                .boxed();
        }
        futures::stream::repeat_with(move || {
            let n = produced.fetch_add(1, SeqCst);
            Ok(Payload::from(format!("item{n}")))
        })
        .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed()
    }

    async fn metadata_push(&self, _metadata: Bytes) -> Result<(), RequestError> {
        self.metadata_pushes.fetch_add(1, SeqCst);
        Ok(())
    }
}

fn probe_acceptor(probe: &Arc<Probe>) -> impl SocketAcceptor {
    let probe = probe.clone();
    move |_setup: SetupInfo, _requester: Requester| {
        let probe = probe.clone();
        async move { Ok(probe as Arc<dyn RSocket>) }
    }
}

// ---------------------------------------------------------------------------
// 1. SETUP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn client_sends_setup_first_with_configured_fields() {
    let (t, mut raw) = raw_pair();
    let requester = ClientBuilder::new()
        .metadata_mime_type(MimeType::COMPOSITE_METADATA)
        .data_mime_type(mime("application/json"))
        .keepalive(Duration::from_millis(1500), Duration::from_millis(4000))
        .setup_payload(Payload::new("hello").with_metadata("md"))
        .connect(t)
        .expect("valid config");
    // A request issued right away is pipelined behind SETUP, never before.
    let mut rr = requester.request_response(Payload::from("early"));
    assert!(poll!(&mut rr).is_pending());

    let bytes = expect_bytes(&mut raw).await;
    // Stream 0, type SETUP with only M (no R, no L): word 0x0500.
    assert_eq!(&bytes[..6], &[0, 0, 0, 0, 0x05, 0x00], "{bytes:02x?}");
    // Version 1.0.
    assert_eq!(&bytes[6..10], &[0, 1, 0, 0]);
    let Frame::Setup(s) = Frame::decode(bytes).expect("valid SETUP") else {
        panic!("first frame is not SETUP");
    };
    assert_eq!(s.version, Version::V1_0);
    assert_eq!(s.keepalive_interval_ms, 1500);
    assert_eq!(s.max_lifetime_ms, 4000);
    assert_eq!(s.resume_token, None);
    assert!(!s.lease);
    assert_eq!(s.metadata_mime_type, MimeType::COMPOSITE_METADATA);
    assert_eq!(s.data_mime_type, mime("application/json"));
    assert_eq!(s.payload, Payload::new("hello").with_metadata("md"));

    let f = expect_frame(&mut raw).await;
    assert_eq!(f, request_response(1, "early"));
    send(&mut raw, next_complete(1, Payload::from("late"))).await;
    let reply = prompt("response", rr).await.expect("reply");
    assert_eq!(reply, Some(Payload::from("late")));
}

#[tokio::test]
async fn a_default_client_sends_the_documented_setup() {
    let (t, mut raw) = raw_pair();
    let _requester = ClientBuilder::new().connect(t).expect("valid config");
    let bytes = expect_bytes(&mut raw).await;
    // Stream 0, type SETUP, no flags (no metadata, resume token or lease).
    assert_eq!(&bytes[..6], &[0, 0, 0, 0, 0x04, 0x00], "{bytes:02x?}");
    let Frame::Setup(s) = Frame::decode(bytes).expect("valid SETUP") else {
        panic!("first frame is not SETUP");
    };
    // `ClientBuilder::new`: octet-stream MIME types, 20 s keepalive, 90 s
    // lifetime; protocol 1.0 and an empty setup payload.
    assert_eq!(s.version, Version::V1_0);
    assert_eq!(s.keepalive_interval_ms, 20_000);
    assert_eq!(s.max_lifetime_ms, 90_000);
    assert_eq!(s.metadata_mime_type, mime("application/octet-stream"));
    assert_eq!(s.data_mime_type, mime("application/octet-stream"));
    assert_eq!(s.resume_token, None);
    assert!(!s.lease);
    assert_eq!(s.payload, Payload::default());
}

// ---------------------------------------------------------------------------
// 2. Requester credit: the half-window rule
// ---------------------------------------------------------------------------

#[tokio::test]
async fn with_prefetch_takes_0_as_1_and_u32_max_as_everything() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let mut one = requester
        .with_prefetch(0)
        .request_stream(Payload::from("a"));
    assert!(poll!(one.next()).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_stream(1, 1, "a"));
    let mut all = requester
        .with_prefetch(u32::MAX)
        .request_stream(Payload::from("b"));
    assert!(poll!(all.next()).is_pending());
    assert_eq!(
        expect_frame(&mut raw).await,
        request_stream(3, 0x7FFF_FFFF, "b")
    );
}

#[tokio::test]
async fn requester_stream_replenishes_half_window() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let mut s = requester
        .with_prefetch(8)
        .request_stream(Payload::from("q"));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_stream(1, 8, "q"));

    for i in 0..4 {
        send(&mut raw, next(1, Payload::from(format!("a{i}")))).await;
    }
    for i in 0..3 {
        let p = prompt("item", s.next()).await.expect("item").expect("ok");
        assert_eq!(p.data, format!("a{i}"));
    }
    // Three of eight consumed: below half the window, no REQUEST_N.
    sentinel(&requester, &mut raw, "after 3 items").await;

    let p = prompt("item", s.next()).await.expect("item").expect("ok");
    assert_eq!(p.data, "a3");
    assert_request_n(&expect_frame(&mut raw).await, 1, 4);
    // Exactly one REQUEST_N.
    sentinel(&requester, &mut raw, "after 4 items").await;

    // Outstanding credit is back at 8: another 4 items, another REQUEST_N(4).
    for i in 4..8 {
        send(&mut raw, next(1, Payload::from(format!("a{i}")))).await;
    }
    for i in 4..8 {
        let p = prompt("item", s.next()).await.expect("item").expect("ok");
        assert_eq!(p.data, format!("a{i}"));
    }
    assert_request_n(&expect_frame(&mut raw).await, 1, 4);
    sentinel(&requester, &mut raw, "after 8 items").await;

    send(&mut raw, Frame::Payload(PayloadFrame::complete(sid(1)))).await;
    assert!(prompt("end", s.next()).await.is_none());
    drop(s);
    // A stream that ended normally is not cancelled on drop.
    sentinel(&requester, &mut raw, "after completion").await;
}

/// Sends `items` payloads of `len` bytes on stream 1, then takes them from
/// `s` in order.
async fn feed(raw: &mut Raw, s: &mut ResponseStream, range: std::ops::Range<u32>, len: usize) {
    for i in range.clone() {
        let mut data = format!("a{i}").into_bytes();
        data.resize(len.max(data.len()), b'.');
        send(raw, next(1, Payload::new(data))).await;
    }
    for i in range {
        let p = prompt("item", s.next()).await.expect("item").expect("ok");
        assert!(p.data.starts_with(format!("a{i}").as_bytes()), "{p:?}");
    }
}

#[tokio::test]
async fn default_window_grows_while_items_are_small() {
    let config = Config {
        default_prefetch: 4,
        max_prefetch: 16,
        prefetch_bytes: 1024,
        ..Config::default()
    };
    let (requester, mut raw) = scripted_client(ClientBuilder::new().config(config)).await;
    let mut s = requester.request_stream(Payload::from("q"));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_stream(1, 4, "q"));

    // Half of 4 consumed: the 2 consumed plus 4 more (the window doubles).
    feed(&mut raw, &mut s, 0..2, 2).await;
    assert_request_n(&expect_frame(&mut raw).await, 1, 6);
    sentinel(&requester, &mut raw, "window 8").await;
    // Half of 8: 4 back plus 8 more.
    feed(&mut raw, &mut s, 2..6, 2).await;
    assert_request_n(&expect_frame(&mut raw).await, 1, 12);
    sentinel(&requester, &mut raw, "window 16").await;
    // At max_prefetch it stays: half of 16, 8 back.
    feed(&mut raw, &mut s, 6..14, 2).await;
    assert_request_n(&expect_frame(&mut raw).await, 1, 8);
    sentinel(&requester, &mut raw, "still 16").await;
}

#[tokio::test]
async fn default_window_stays_for_large_items_and_fixed_windows() {
    let config = Config {
        default_prefetch: 4,
        max_prefetch: 16,
        prefetch_bytes: 1024,
        ..Config::default()
    };
    // 600-byte items: 1024 / 600 fits one, so the window stays at 4.
    let (requester, mut raw) = scripted_client(ClientBuilder::new().config(config.clone())).await;
    let mut s = requester.request_stream(Payload::from("q"));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_stream(1, 4, "q"));
    for round in 0..3 {
        feed(&mut raw, &mut s, round * 2..round * 2 + 2, 600).await;
        assert_request_n(&expect_frame(&mut raw).await, 1, 2);
        sentinel(&requester, &mut raw, "large items").await;
    }

    // A window set with `with_prefetch` is fixed, even at the default size.
    let (requester, mut raw) = scripted_client(ClientBuilder::new().config(config)).await;
    let mut s = requester
        .with_prefetch(4)
        .request_stream(Payload::from("q"));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_stream(1, 4, "q"));
    for round in 0..3 {
        feed(&mut raw, &mut s, round * 2..round * 2 + 2, 2).await;
        assert_request_n(&expect_frame(&mut raw).await, 1, 2);
        sentinel(&requester, &mut raw, "fixed window").await;
    }
}

// ---------------------------------------------------------------------------
// 3. CANCEL on drop
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dropping_requests_sends_cancel() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;

    // A stream dropped after one item.
    let mut s = requester.request_stream(Payload::from("s1"));
    assert!(poll!(s.next()).is_pending());
    let f = expect_frame(&mut raw).await;
    assert!(
        matches!(&f, Frame::RequestStream(r) if r.stream_id == sid(1)),
        "{f:?}"
    );
    send(&mut raw, next(1, Payload::from("x"))).await;
    prompt("item", s.next()).await.expect("item").expect("ok");
    drop(s);
    assert_cancel(&expect_frame(&mut raw).await, 1);

    // A stream dropped before any item.
    let mut s = requester.request_stream(Payload::from("s2"));
    assert!(poll!(s.next()).is_pending());
    let f = expect_frame(&mut raw).await;
    assert!(
        matches!(&f, Frame::RequestStream(r) if r.stream_id == sid(3)),
        "{f:?}"
    );
    drop(s);
    assert_cancel(&expect_frame(&mut raw).await, 3);

    // A pending request/response future.
    let mut rr = requester.request_response(Payload::from("r"));
    assert!(poll!(&mut rr).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_response(5, "r"));
    drop(rr);
    assert_cancel(&expect_frame(&mut raw).await, 5);

    // Late frames for the cancelled streams are ignored, and the connection
    // still works.
    send(&mut raw, next(1, Payload::from("late"))).await;
    send(&mut raw, next_complete(5, Payload::from("late"))).await;
    let rr = requester.request_response(Payload::from("ok?"));
    let task = tokio::spawn(rr);
    assert_eq!(expect_frame(&mut raw).await, request_response(7, "ok?"));
    send(&mut raw, next_complete(7, Payload::from("ok"))).await;
    let reply = prompt("reply", task).await.expect("join").expect("reply");
    assert_eq!(reply, Some(Payload::from("ok")));
    // A request/response that completed is not cancelled.
    sentinel(&requester, &mut raw, "after response").await;
}

// ---------------------------------------------------------------------------
// 4. Keepalive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn client_answers_keepalive_with_same_data() {
    let (_requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    send(&mut raw, keepalive(true, "abc")).await;
    let b = expect_bytes(&mut raw).await;
    // KEEPALIVE without R, position 0, data "abc".
    assert_eq!(
        &b[..],
        &[0, 0, 0, 0, 0x0c, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c'],
    );
    assert_eq!(Frame::decode(b).expect("valid"), keepalive(false, "abc"));
}

#[tokio::test]
async fn server_answers_keepalive_with_same_data() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    send(&mut raw, keepalive(true, "xyz")).await;
    assert_eq!(expect_frame(&mut raw).await, keepalive(false, "xyz"));
    // A KEEPALIVE without R is not answered.
    send(&mut raw, keepalive(false, "no")).await;
    server_barrier(&mut raw, 1).await;
}

#[tokio::test(start_paused = true)]
async fn client_sends_keepalive_every_interval() {
    let _watchdog = Watchdog::arm("client_sends_keepalive_every_interval");
    let (requester, mut raw) = scripted_client(
        ClientBuilder::new().keepalive(Duration::from_secs(1), Duration::from_secs(60)),
    )
    .await;
    tokio::time::advance(Duration::from_millis(999)).await;
    sentinel(&requester, &mut raw, "before the interval").await;
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(expect_frame(&mut raw).await, keepalive(true, ""));
    sentinel(&requester, &mut raw, "one keepalive per interval").await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(expect_frame(&mut raw).await, keepalive(true, ""));
    // The server's answer is not answered again.
    send(&mut raw, keepalive(false, "")).await;
    sentinel(&requester, &mut raw, "after the answer").await;
}

// ---------------------------------------------------------------------------
// 5. Keepalive timeout
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn keepalive_timeout_fails_requests_and_sends_connection_error() {
    let _watchdog = Watchdog::arm("keepalive_timeout_fails_requests_and_sends_connection_error");
    let (requester, mut raw) = scripted_client(
        ClientBuilder::new().keepalive(Duration::from_secs(1), Duration::from_secs(3)),
    )
    .await;
    let mut rr = requester.request_response(Payload::from("r"));
    assert!(poll!(&mut rr).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_response(1, "r"));

    // The script never answers.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(expect_frame(&mut raw).await, keepalive(true, ""));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(expect_frame(&mut raw).await, keepalive(true, ""));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(
        poll!(&mut rr).is_pending(),
        "failed before the max lifetime"
    );
    sentinel(&requester, &mut raw, "just before the max lifetime").await;

    tokio::time::advance(Duration::from_millis(1)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_ERROR);
    expect_closed(&mut raw).await;
    let err = assert_connection_failed(prompt("pending request", rr).await);
    assert!(matches!(err, ConnectionError::KeepaliveTimeout), "{err:?}");
    assert!(matches!(
        requester.closed_reason(),
        Some(ConnectionError::KeepaliveTimeout)
    ));
}

// ---------------------------------------------------------------------------
// 6. Fragmentation and reassembly
// ---------------------------------------------------------------------------

#[tokio::test]
async fn outbound_fragments_follow_spec_layout() {
    let config = Config {
        mtu: Some(64),
        ..Config::default()
    };
    let (requester, mut raw) = scripted_client(ClientBuilder::new().config(config)).await;
    let md: Bytes = (0..100u8).collect::<Vec<_>>().into();
    let data: Bytes = (100..200u8).collect::<Vec<_>>().into();
    let request = Payload {
        metadata: Some(md.clone()),
        data: data.clone(),
    };
    let task = tokio::spawn(requester.request_response(request.clone()));

    // (header word, metadata bytes, data bytes, frame size)
    let expected: [(u16, Option<usize>, usize, usize); 4] = [
        (0x1180, Some(55), 0, 64),  // REQUEST_RESPONSE M F
        (0x29A0, Some(45), 10, 64), // PAYLOAD M F N
        (0x28A0, None, 58, 64),     // PAYLOAD F N
        (0x2820, None, 32, 38),     // PAYLOAD N (last, no F)
    ];
    let mut got_md = Vec::new();
    let mut got_data = Vec::new();
    for (i, (word, md_len, data_len, size)) in expected.into_iter().enumerate() {
        let b = expect_bytes(&mut raw).await;
        assert!(b.len() <= 64, "fragment {i} is {} bytes", b.len());
        assert_eq!(b.len(), size, "size of fragment {i}");
        assert_eq!(&b[..4], &[0, 0, 0, 1], "stream id of fragment {i}");
        assert_eq!(
            u16::from_be_bytes([b[4], b[5]]),
            word,
            "flags of fragment {i}"
        );
        let payload = match Frame::decode(b).expect("valid fragment") {
            Frame::RequestResponse(r) if i == 0 => r.payload,
            Frame::Payload(p) if i > 0 => p.payload,
            other => panic!("unexpected fragment {i}: {other:?}"),
        };
        assert_eq!(payload.metadata.as_ref().map(Bytes::len), md_len);
        assert_eq!(payload.data.len(), data_len);
        got_md.extend_from_slice(payload.metadata.as_deref().unwrap_or_default());
        got_data.extend_from_slice(&payload.data);
    }
    assert_eq!(got_md, md);
    assert_eq!(got_data, data);

    send(&mut raw, next_complete(1, Payload::from("ok"))).await;
    let reply = prompt("reply", task).await.expect("join").expect("reply");
    assert_eq!(reply, Some(Payload::from("ok")));
}

#[tokio::test]
async fn inbound_fragments_are_reassembled() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let task = tokio::spawn(requester.request_response(Payload::from("r")));
    assert_eq!(expect_frame(&mut raw).await, request_response(1, "r"));
    let part = |md: Option<&'static str>, data: &'static str| Payload {
        metadata: md.map(|m| Bytes::from_static(m.as_bytes())),
        data: Bytes::from_static(data.as_bytes()),
    };
    send(&mut raw, fragment(1, part(Some("m1"), ""), true)).await;
    send(&mut raw, fragment(1, part(Some("m2"), "d1"), true)).await;
    send(&mut raw, fragment(1, part(None, "d2"), true)).await;
    let last = Frame::Payload(PayloadFrame {
        stream_id: sid(1),
        follows: false,
        complete: true,
        next: true,
        payload: part(None, "d3"),
    });
    send(&mut raw, last).await;
    let reply = prompt("reply", task).await.expect("join").expect("reply");
    assert_eq!(reply, Some(Payload::new("d1d2d3").with_metadata("m1m2")));
}

#[tokio::test]
async fn error_or_cancel_mid_reassembly_discards_the_fragments() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;

    // ERROR in the middle of a fragmented element: the stream fails with it,
    // and the partial element is never delivered.
    let mut s = requester.request_stream(Payload::from("s"));
    assert!(poll!(s.next()).is_pending());
    assert!(matches!(
        expect_frame(&mut raw).await,
        Frame::RequestStream(_)
    ));
    send(&mut raw, fragment(1, Payload::from("partial"), true)).await;
    let err = ErrorFrame::new(Some(sid(1)), ErrorCode::APPLICATION_ERROR, "boom");
    send(&mut raw, Frame::Error(err)).await;
    match prompt("stream error", s.next()).await {
        Some(Err(RequestError::Stream(e))) => {
            assert_eq!(e, StreamError::application("boom"));
        }
        other => panic!("expected the stream error, got {other:?}"),
    }
    assert!(s.next().await.is_none());
    drop(s);

    // CANCEL from the sender abandons its fragment sequence: the next
    // element starts from scratch.
    let mut s = requester.request_stream(Payload::from("s"));
    assert!(poll!(s.next()).is_pending());
    assert!(matches!(
        expect_frame(&mut raw).await,
        Frame::RequestStream(_)
    ));
    send(&mut raw, fragment(3, Payload::from("stale"), true)).await;
    send(&mut raw, cancel(3)).await;
    send(&mut raw, next_complete(3, Payload::from("fresh"))).await;
    let p = prompt("item", s.next()).await.expect("item").expect("ok");
    assert_eq!(p, Payload::from("fresh"));
    assert!(prompt("end", s.next()).await.is_none());
    drop(s);
    sentinel(&requester, &mut raw, "after the streams").await;
}

#[tokio::test]
async fn responder_discards_request_cancelled_mid_reassembly() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    let first = Frame::RequestResponse(RequestResponse {
        stream_id: sid(1),
        follows: true,
        payload: Payload::from("part1"),
    });
    send(&mut raw, first).await;
    send(&mut raw, cancel(1)).await;
    // The would-be last fragment now belongs to no stream and is ignored.
    send(&mut raw, next(1, Payload::from("part2"))).await;
    server_barrier(&mut raw, 3).await;
    assert_eq!(
        probe.rr_calls.load(SeqCst),
        1,
        "only the barrier was handled"
    );
}

#[tokio::test]
async fn exceeding_max_reassembly_bytes_is_a_connection_error() {
    let config = Config {
        max_reassembly_bytes: 100,
        ..Config::default()
    };
    let (requester, mut raw) = scripted_client(ClientBuilder::new().config(config)).await;
    let first = tokio::spawn(requester.request_response(Payload::from("a")));
    assert_eq!(expect_frame(&mut raw).await, request_response(1, "a"));
    let second = tokio::spawn(requester.request_response(Payload::from("b")));
    assert_eq!(expect_frame(&mut raw).await, request_response(3, "b"));

    send(&mut raw, fragment(1, Payload::from(vec![1u8; 80]), true)).await;
    // 80 + 30 bytes buffered would exceed the 100-byte cap.
    send(&mut raw, fragment(3, Payload::from(vec![2u8; 30]), true)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_ERROR);
    expect_closed(&mut raw).await;
    for task in [first, second] {
        let r = prompt("pending request", task).await.expect("join");
        let err = assert_connection_failed(r);
        assert!(matches!(err, ConnectionError::LimitExceeded(_)), "{err:?}");
    }
}

// ---------------------------------------------------------------------------
// 7. Server setup handling
// ---------------------------------------------------------------------------

/// Sends `first` to a fresh server and checks the ERROR it answers with,
/// that the transport is closed after it, and what `accept` returns.
async fn expect_setup_rejected(first: Frame, code: ErrorCode) -> String {
    let probe = Probe::new();
    let (mut raw, task) = spawn_accept(Config::default(), probe_acceptor(&probe));
    send(&mut raw, first).await;
    let message = assert_connection_error(&expect_frame(&mut raw).await, code);
    expect_closed(&mut raw).await;
    match prompt("accept", task).await.expect("join") {
        Err(ConnectionError::SetupRejected {
            code: c,
            initiator: Initiator::Local,
            ..
        }) if c == code => {}
        other => panic!("accept should fail with SetupRejected({code}), got {other:?}"),
    }
    assert_eq!(probe.rr_calls.load(SeqCst), 0);
    message
}

#[tokio::test]
async fn first_frame_must_be_setup() {
    expect_setup_rejected(keepalive(true, ""), ErrorCode::INVALID_SETUP).await;
    expect_setup_rejected(request_response(1, "x"), ErrorCode::INVALID_SETUP).await;
}

#[tokio::test]
async fn setup_with_unsupported_version_is_invalid() {
    let setup = Setup {
        version: Version { major: 2, minor: 0 },
        ..good_setup()
    };
    expect_setup_rejected(Frame::Setup(Box::new(setup)), ErrorCode::INVALID_SETUP).await;
}

#[tokio::test]
async fn setup_with_lease_is_unsupported() {
    let setup = Setup {
        lease: true,
        ..good_setup()
    };
    expect_setup_rejected(Frame::Setup(Box::new(setup)), ErrorCode::UNSUPPORTED_SETUP).await;
}

#[tokio::test]
async fn setup_with_resume_token_is_rejected() {
    let setup = Setup {
        resume_token: Some(Bytes::from_static(b"token")),
        ..good_setup()
    };
    expect_setup_rejected(Frame::Setup(Box::new(setup)), ErrorCode::REJECTED_SETUP).await;
}

#[tokio::test]
async fn resume_is_rejected() {
    let resume = Resume {
        version: Version::V1_0,
        resume_token: Bytes::from_static(b"token"),
        last_received_server_position: 0,
        first_available_client_position: 0,
    };
    expect_setup_rejected(Frame::Resume(resume), ErrorCode::REJECTED_RESUME).await;
}

#[tokio::test]
async fn setup_with_zero_keepalive_is_invalid() {
    let probe = Probe::new();
    let (mut raw, task) = spawn_accept(Config::default(), probe_acceptor(&probe));
    // SETUP v1.0, keepalive 0 ms, lifetime 1000 ms, empty MIME types.
    send_bytes(
        &mut raw,
        &[
            0, 0, 0, 0, 0x04, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x03, 0xe8, 0, 0,
        ],
    )
    .await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::INVALID_SETUP);
    expect_closed(&mut raw).await;
    assert!(prompt("accept", task).await.expect("join").is_err());
}

#[tokio::test]
async fn acceptor_rejection_is_flushed_before_close() {
    let (t, mut raw) = raw_pair();
    let server = Server::new(|_s: SetupInfo, _r: Requester| async {
        Err::<Arc<dyn RSocket>, _>(StreamError::rejected("not welcome"))
    });
    let incoming = futures::stream::iter([Ok::<_, io::Error>(t)]);
    let serving = tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));
    send(&mut raw, Frame::Setup(Box::new(good_setup()))).await;
    let message = assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_SETUP);
    assert_eq!(message, "not welcome");
    expect_closed(&mut raw).await;
    // The listener ended and its only connection is gone: serve returns.
    prompt("serve", serving)
        .await
        .expect("join")
        .expect("serve");
}

// ---------------------------------------------------------------------------
// 8. Protocol violations close one connection, not the server
// ---------------------------------------------------------------------------

#[tokio::test]
async fn protocol_violation_closes_only_that_connection() {
    let probe = Probe::new();
    let server = Server::new(probe_acceptor(&probe));
    let (mut tx, incoming) = futures::channel::mpsc::channel::<io::Result<MemoryTransport>>(1);
    let serving = tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));

    let (t1, mut bad) = raw_pair();
    tx.send(Ok(t1)).await.expect("server listening");
    let (t2, mut good) = raw_pair();
    tx.send(Ok(t2)).await.expect("server listening");
    send(&mut bad, Frame::Setup(Box::new(good_setup()))).await;
    send(&mut good, Frame::Setup(Box::new(good_setup()))).await;
    server_barrier(&mut bad, 1).await;

    // PAYLOAD with neither N nor C is a protocol violation.
    let invalid = Frame::Payload(PayloadFrame {
        stream_id: sid(3),
        follows: false,
        complete: false,
        next: false,
        payload: Payload::from("?"),
    });
    send(&mut bad, invalid).await;
    assert_connection_error(&expect_frame(&mut bad).await, ErrorCode::CONNECTION_ERROR);
    expect_closed(&mut bad).await;

    // The other connection keeps working.
    server_barrier(&mut good, 1).await;
    server_barrier(&mut good, 3).await;

    // And the server still accepts new ones.
    let (t3, mut third) = raw_pair();
    tx.send(Ok(t3)).await.expect("server listening");
    send(&mut third, Frame::Setup(Box::new(good_setup()))).await;
    server_barrier(&mut third, 1).await;
    assert!(!serving.is_finished());
}

// ---------------------------------------------------------------------------
// 9. Frames that must be ignored
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stray_frames_are_ignored() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    send(&mut raw, request_n(101, 5)).await;
    send(&mut raw, cancel(103)).await;
    send(&mut raw, next(105, Payload::from("?"))).await;
    send(&mut raw, next_complete(2, Payload::from("?"))).await;
    let err = ErrorFrame::new(Some(sid(107)), ErrorCode::APPLICATION_ERROR, "?");
    send(&mut raw, Frame::Error(err)).await;
    // Stream frames on stream 0: REQUEST_N(5) and CANCEL.
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 5]).await;
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x24, 0x00]).await;
    // METADATA_PUSH on a stream.
    send_bytes(&mut raw, &[0, 0, 0, 1, 0x31, 0x00, b'm']).await;
    // A second SETUP, and a LEASE (leasing is off).
    send(&mut raw, Frame::Setup(Box::new(good_setup()))).await;
    send_bytes(
        &mut raw,
        &[0, 0, 0, 0, 0x08, 0x00, 0, 0, 0x03, 0xe8, 0, 0, 0, 10],
    )
    .await;
    server_barrier(&mut raw, 1).await;
    assert_eq!(probe.rr_calls.load(SeqCst), 1);
    assert_eq!(probe.metadata_pushes.load(SeqCst), 0);
    // A METADATA_PUSH on stream 0 does reach the responder.
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x31, 0x00, b'm']).await;
    server_barrier(&mut raw, 3).await;
    assert_eq!(probe.metadata_pushes.load(SeqCst), 1);
}

#[tokio::test]
async fn duplicate_request_on_live_stream_is_ignored() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    send(&mut raw, request_response(1, "wait")).await;
    send(&mut raw, request_response(1, "wait")).await;
    // Barrier while stream 1 is still live: the duplicate was not answered.
    server_barrier(&mut raw, 3).await;
    assert_eq!(
        probe.rr_calls.load(SeqCst),
        2,
        "stream 1 once, stream 3 once"
    );
    // Let every handler that might be waiting finish.
    probe.gate.add_permits(2);
    let f = expect_frame(&mut raw).await;
    assert_payload(&f, 1, "wait", true, true);
    // Exactly one answer on stream 1.
    server_barrier(&mut raw, 5).await;
}

#[tokio::test]
async fn request_n_zero_is_ignored() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    send(&mut raw, request_stream(1, 1, "s")).await;
    assert_payload(&expect_frame(&mut raw).await, 1, "item0", true, false);
    // REQUEST_N(0) on the live stream.
    send_bytes(&mut raw, &[0, 0, 0, 1, 0x20, 0x00, 0, 0, 0, 0]).await;
    server_barrier(&mut raw, 3).await;
    // The stream is intact: one more credit, one more item.
    send(&mut raw, request_n(1, 1)).await;
    assert_payload(&expect_frame(&mut raw).await, 1, "item1", true, false);
    server_barrier(&mut raw, 5).await;
    assert_eq!(probe.produced.load(SeqCst), 2);
    send(&mut raw, cancel(1)).await;
    server_barrier(&mut raw, 7).await;
}

#[tokio::test]
async fn request_stream_with_zero_initial_n_is_invalid() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    // REQUEST_STREAM on stream 1, initial n 0, data "x".
    send_bytes(&mut raw, &[0, 0, 0, 1, 0x18, 0x00, 0, 0, 0, 0, b'x']).await;
    assert_stream_error(&expect_frame(&mut raw).await, 1, ErrorCode::INVALID);
    server_barrier(&mut raw, 3).await;
    assert_eq!(probe.stream_calls.load(SeqCst), 0);
}

#[tokio::test]
async fn unknown_frame_type_honours_the_ignore_flag() {
    let probe = Probe::new();
    let (mut raw, task) = scripted_server(&probe).await;
    // Type 0x20 with I: (0x20 << 10) | 0x200 = 0x8200, plus a body.
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x82, 0x00, 1, 2, 3]).await;
    server_barrier(&mut raw, 1).await;
    // The same type without I is a connection error.
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x80, 0x00, 1, 2, 3]).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_ERROR);
    expect_closed(&mut raw).await;
    let r = prompt("driver", task).await.expect("join");
    assert!(matches!(r, Err(ConnectionError::Protocol { .. })), "{r:?}");
}

// ---------------------------------------------------------------------------
// 10. Slow consumers: credit bounds what is produced
// ---------------------------------------------------------------------------

#[tokio::test]
async fn slow_requester_bounds_what_the_responder_produces() {
    let probe = Probe::new();
    let (c, s) = memory_pair(64 << 10);
    let server = Server::new(probe_acceptor(&probe));
    let incoming = futures::stream::iter([Ok::<_, io::Error>(s)]);
    tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));
    let requester = ClientBuilder::new().connect(c).expect("valid config");

    let mut stream = requester
        .with_prefetch(16)
        .request_stream(Payload::from("endless"));
    for i in 0..10 {
        let p = prompt("item", stream.next())
            .await
            .expect("item")
            .expect("ok");
        assert_eq!(p.data, format!("item{i}"));
    }
    // Stop polling (the stream stays alive) and let frames flow: two round
    // trips on the same connection.
    for _ in 0..2 {
        let reply = prompt("barrier", requester.request_response(Payload::from("b")))
            .await
            .expect("reply");
        assert_eq!(reply, Some(Payload::from("b")));
    }
    // Window 16: REQUEST_STREAM(16), then one REQUEST_N(8) when the 8th item
    // was consumed; items 9 and 10 bring the consumed count to 2 of the 8
    // needed for the next one. So at most 16 + 8 were granted, and the
    // responder is polled only for granted items.
    let produced = probe.produced.load(SeqCst);
    assert!(
        (10..=24).contains(&produced),
        "responder produced {produced} items for a consumer that took 10 with a window of 16"
    );
    drop(stream);
}

#[tokio::test]
async fn responder_never_produces_beyond_credit() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    send(&mut raw, request_stream(1, 10, "endless")).await;
    for i in 0..10 {
        let f = expect_frame(&mut raw).await;
        assert_payload(&f, 1, &format!("item{i}"), true, false);
    }
    // No REQUEST_N: the barrier's answer is the next frame, not an 11th item.
    server_barrier(&mut raw, 3).await;
    server_barrier(&mut raw, 5).await;
    assert_eq!(probe.produced.load(SeqCst), 10);
    assert_eq!(probe.stream_calls.load(SeqCst), 1);
}

// ---------------------------------------------------------------------------
// 11. Dead peer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dead_peer_fails_everything_promptly() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;

    let mut rr = requester.request_response(Payload::from("rr"));
    assert!(poll!(&mut rr).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_response(1, "rr"));

    let mut stream = requester.request_stream(Payload::from("s"));
    assert!(poll!(stream.next()).is_pending());
    assert!(matches!(
        expect_frame(&mut raw).await,
        Frame::RequestStream(_)
    ));
    send(&mut raw, next(3, Payload::from("one"))).await;
    prompt("item", stream.next())
        .await
        .expect("item")
        .expect("ok");

    let rest = futures::stream::pending().boxed();
    let mut channel = requester.request_channel_fallible(Payload::from("c"), rest);
    assert!(poll!(channel.next()).is_pending());
    let f = expect_frame(&mut raw).await;
    assert!(
        matches!(&f, Frame::RequestChannel(RequestChannel { stream_id, complete: false, .. }) if *stream_id == sid(5)),
        "{f:?}"
    );

    drop(raw);

    assert_connection_failed(prompt("request/response", rr).await);
    match prompt("stream", stream.next()).await {
        Some(Err(RequestError::Connection(_))) => {}
        other => panic!("stream: expected a connection error, got {other:?}"),
    }
    match prompt("channel", channel.next()).await {
        Some(Err(RequestError::Connection(_))) => {}
        other => panic!("channel: expected a connection error, got {other:?}"),
    }
    assert!(requester.closed_reason().is_some());

    // New requests fail on their first poll.
    let r = requester
        .request_response(Payload::from("late"))
        .now_or_never()
        .expect("fails immediately");
    assert_connection_failed(r);
    let r = requester
        .fire_and_forget(Payload::from("late"))
        .now_or_never()
        .expect("fails immediately");
    assert_connection_failed(r);
    match requester
        .request_stream(Payload::from("late"))
        .next()
        .now_or_never()
    {
        Some(Some(Err(RequestError::Connection(_)))) => {}
        other => panic!("stream after close: {other:?}"),
    }
    assert!(requester
        .metadata_push(Bytes::from_static(b"m"))
        .now_or_never()
        .expect("fails at once")
        .is_err());
}

// ---------------------------------------------------------------------------
// 12. The server calls the client
// ---------------------------------------------------------------------------

/// The client's own responder.
#[derive(Debug)]
struct ClientSide;

#[async_trait]

impl RSocket for ClientSide {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Box::pin(async move {
            let text = req.data_utf8().unwrap_or("?").to_owned();
            Ok(Some(Payload::from(format!("client got {text}"))))
        })
        .await
    }
}

/// An acceptor that hands the server-side requester to the test.
fn capturing_acceptor(tx: tokio::sync::mpsc::Sender<Requester>) -> impl SocketAcceptor {
    move |_setup: SetupInfo, requester: Requester| {
        let tx = tx.clone();
        async move {
            tx.send(requester)
                .await
                .map_err(|_| StreamError::rejected("test gone"))?;
            Ok(Arc::new(Probe::new()) as Arc<dyn RSocket>)
        }
    }
}

#[tokio::test]
async fn server_requests_client_over_memory_pair() {
    let (c, s) = memory_pair(64 << 10);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let server = Server::new(capturing_acceptor(tx));
    let incoming = futures::stream::iter([Ok::<_, io::Error>(s)]);
    tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));
    let client = ClientBuilder::new()
        .responder(Arc::new(ClientSide))
        .connect(c)
        .expect("valid config");
    let to_client = prompt("acceptor", rx.recv()).await.expect("requester");
    let reply = prompt(
        "server -> client",
        to_client.request_response(Payload::from("ping")),
    )
    .await
    .expect("reply");
    assert_eq!(reply, Some(Payload::from("client got ping")));
    // And the other way round on the same connection.
    let reply = prompt(
        "client -> server",
        client.request_response(Payload::from("echo")),
    )
    .await
    .expect("reply");
    assert_eq!(reply, Some(Payload::from("echo")));
}

#[tokio::test]
async fn server_requester_uses_even_stream_ids() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let (mut raw, _task) = spawn_accept(Config::default(), capturing_acceptor(tx));
    send(&mut raw, Frame::Setup(Box::new(good_setup()))).await;
    let to_client = prompt("acceptor", rx.recv()).await.expect("requester");
    let first = tokio::spawn(to_client.request_response(Payload::from("one")));
    assert_eq!(expect_frame(&mut raw).await, request_response(2, "one"));
    let second = tokio::spawn(to_client.request_response(Payload::from("two")));
    assert_eq!(expect_frame(&mut raw).await, request_response(4, "two"));
    send(&mut raw, next_complete(4, Payload::from("r4"))).await;
    send(&mut raw, next_complete(2, Payload::from("r2"))).await;
    let r2 = prompt("first", first).await.expect("join").expect("reply");
    let r4 = prompt("second", second)
        .await
        .expect("join")
        .expect("reply");
    assert_eq!(r2, Some(Payload::from("r2")));
    assert_eq!(r4, Some(Payload::from("r4")));
}

#[tokio::test]
async fn client_responder_answers_server_request() {
    let (_requester, mut raw) =
        scripted_client(ClientBuilder::new().responder(Arc::new(ClientSide))).await;
    send(&mut raw, request_response(2, "hello")).await;
    assert_payload(
        &expect_frame(&mut raw).await,
        2,
        "client got hello",
        true,
        true,
    );
    // A client without a responder rejects: ERROR[REJECTED] on the stream.
    let (_requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    send(&mut raw, request_response(2, "hello")).await;
    assert_stream_error(&expect_frame(&mut raw).await, 2, ErrorCode::REJECTED);
}

// ---------------------------------------------------------------------------
// More credit, channel and lifecycle cases
// ---------------------------------------------------------------------------

#[tokio::test]
async fn responder_completes_finite_stream_without_extra_credit() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    // Exactly as many credits as the stream has items: COMPLETE needs no
    // credit, so it must follow the last item without a REQUEST_N.
    send(&mut raw, request_stream(1, 3, "three")).await;
    assert_payload(&expect_frame(&mut raw).await, 1, "t0", true, false);
    assert_payload(&expect_frame(&mut raw).await, 1, "t1", true, false);
    let Frame::Payload(last) = expect_frame(&mut raw).await else {
        panic!("expected the third PAYLOAD");
    };
    assert_eq!((last.stream_id, last.next), (sid(1), true));
    assert_eq!(last.payload.data, "t2");
    if !last.complete {
        // COMPLETE as its own frame, queued right behind the last item.
        let f = expect_frame(&mut raw).await;
        assert_eq!(f, Frame::Payload(PayloadFrame::complete(sid(1))));
    }
    server_barrier(&mut raw, 3).await;
    assert_eq!(probe.produced.load(SeqCst), 3);
}

#[tokio::test]
async fn requester_cancels_stream_when_peer_exceeds_credit() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let mut s = requester
        .with_prefetch(2)
        .request_stream(Payload::from("s"));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(expect_frame(&mut raw).await, request_stream(1, 2, "s"));
    for i in 0..3 {
        send(&mut raw, next(1, Payload::from(format!("x{i}")))).await;
    }
    // The third item was never granted: CANCEL, before anything is consumed.
    assert_cancel(&expect_frame(&mut raw).await, 1);
    for i in 0..2 {
        let p = prompt("item", s.next()).await.expect("item").expect("ok");
        assert_eq!(p.data, format!("x{i}"));
    }
    match prompt("error", s.next()).await {
        Some(Err(RequestError::Protocol(_))) => {}
        other => panic!("expected a local protocol error, got {other:?}"),
    }
    drop(s);
    sentinel(&requester, &mut raw, "after the protocol error").await;
}

#[tokio::test]
async fn requester_channel_sends_only_with_credit() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let rest = futures::stream::iter(["c1", "c2", "c3"].map(|d| Ok(Payload::from(d)))).boxed();
    let mut ch = requester
        .with_prefetch(4)
        .request_channel_fallible(Payload::from("c0"), rest);
    assert!(poll!(ch.next()).is_pending());
    let expected = Frame::RequestChannel(RequestChannel {
        stream_id: sid(1),
        follows: false,
        complete: false,
        initial_request_n: count(4),
        payload: Payload::from("c0"),
    });
    assert_eq!(expect_frame(&mut raw).await, expected);
    // No PAYLOAD before the responder grants credit.
    sentinel(&requester, &mut raw, "before REQUEST_N").await;

    send(&mut raw, request_n(1, 2)).await;
    assert_payload(&expect_frame(&mut raw).await, 1, "c1", true, false);
    assert_payload(&expect_frame(&mut raw).await, 1, "c2", true, false);
    sentinel(&requester, &mut raw, "credit used up").await;

    send(&mut raw, request_n(1, 1)).await;
    let Frame::Payload(last) = expect_frame(&mut raw).await else {
        panic!("expected PAYLOAD c3");
    };
    assert_eq!((last.stream_id, last.next), (sid(1), true));
    assert_eq!(last.payload.data, "c3");
    if !last.complete {
        // COMPLETE needs no credit.
        let f = expect_frame(&mut raw).await;
        assert_eq!(f, Frame::Payload(PayloadFrame::complete(sid(1))));
    }

    // The responder's half: one item and completion.
    send(&mut raw, next_complete(1, Payload::from("r"))).await;
    let p = prompt("item", ch.next()).await.expect("item").expect("ok");
    assert_eq!(p.data, "r");
    assert!(prompt("end", ch.next()).await.is_none());
    drop(ch);
    // Both halves completed: no CANCEL.
    sentinel(&requester, &mut raw, "after the channel").await;
}

#[tokio::test]
async fn responder_cancel_closes_only_the_requester_outbound_half() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let rest = futures::stream::repeat_with(move || {
        let n = counter.fetch_add(1, SeqCst);
        Ok(Payload::from(format!("out{n}")))
    })
    .boxed();
    let mut ch = requester.request_channel_fallible(Payload::from("first"), rest);
    assert!(poll!(ch.next()).is_pending());
    assert!(matches!(
        expect_frame(&mut raw).await,
        Frame::RequestChannel(_)
    ));
    send(&mut raw, request_n(1, 1)).await;
    assert_payload(&expect_frame(&mut raw).await, 1, "out0", true, false);

    // The responder stops consuming: the requester stops sending, even when
    // (late) credit arrives, but keeps receiving.
    send(&mut raw, cancel(1)).await;
    send(&mut raw, request_n(1, 5)).await;
    send(&mut raw, next(1, Payload::from("r1"))).await;
    let p = prompt("item", ch.next()).await.expect("item").expect("ok");
    assert_eq!(p.data, "r1");
    sentinel(&requester, &mut raw, "after the responder's CANCEL").await;
    send(&mut raw, next_complete(1, Payload::from("r2"))).await;
    let p = prompt("item", ch.next()).await.expect("item").expect("ok");
    assert_eq!(p.data, "r2");
    assert!(prompt("end", ch.next()).await.is_none());
    drop(ch);
    sentinel(&requester, &mut raw, "after the channel").await;
    // One item sent, at most one more held by the look-ahead.
    assert!(produced.load(SeqCst) <= 2, "{}", produced.load(SeqCst));
}

#[tokio::test]
async fn client_fails_everything_on_setup_rejection() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let task = tokio::spawn(requester.request_response(Payload::from("r")));
    assert_eq!(expect_frame(&mut raw).await, request_response(1, "r"));
    let reject = ErrorFrame::new(None, ErrorCode::REJECTED_SETUP, "nope");
    send(&mut raw, Frame::Error(reject)).await;
    // The client closes without answering.
    expect_closed(&mut raw).await;
    let err = assert_connection_failed(prompt("pending", task).await.expect("join"));
    match err {
        ConnectionError::SetupRejected {
            code,
            message,
            initiator: Initiator::Remote,
        } => {
            assert_eq!(code, ErrorCode::REJECTED_SETUP);
            assert_eq!(message, "nope");
        }
        other => panic!("expected SetupRejected, got {other:?}"),
    }
    let r = requester
        .request_response(Payload::from("late"))
        .now_or_never()
        .expect("fails immediately");
    assert_connection_failed(r);
}

#[tokio::test]
async fn client_ignores_setup_errors_after_establishment() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let task = tokio::spawn(requester.request_response(Payload::from("r")));
    assert_eq!(expect_frame(&mut raw).await, request_response(1, "r"));
    send(&mut raw, next_complete(1, Payload::from("ok"))).await;
    prompt("reply", task).await.expect("join").expect("reply");

    let late = ErrorFrame::new(None, ErrorCode::INVALID_SETUP, "too late");
    send(&mut raw, Frame::Error(late)).await;
    sentinel(&requester, &mut raw, "after a late setup error").await;
    assert!(requester.closed_reason().is_none());

    // Any other stream-0 ERROR ends the connection.
    let task = tokio::spawn(requester.request_response(Payload::from("r2")));
    assert_eq!(expect_frame(&mut raw).await, request_response(3, "r2"));
    let fatal = ErrorFrame::new(None, ErrorCode::CONNECTION_ERROR, "bye");
    send(&mut raw, Frame::Error(fatal)).await;
    expect_closed(&mut raw).await;
    let err = assert_connection_failed(prompt("pending", task).await.expect("join"));
    assert!(
        matches!(&err, ConnectionError::Remote { code, .. } if *code == ErrorCode::CONNECTION_ERROR),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn server_times_out_a_silent_client() {
    let _watchdog = Watchdog::arm("server_times_out_a_silent_client");
    let probe = Probe::new();
    let (mut raw, task) = spawn_accept(Config::default(), probe_acceptor(&probe));
    let setup = Setup {
        keepalive_interval_ms: 1000,
        max_lifetime_ms: 3000,
        ..good_setup()
    };
    send(&mut raw, Frame::Setup(Box::new(setup))).await;
    server_barrier(&mut raw, 1).await;
    tokio::time::advance(Duration::from_millis(2999)).await;
    tokio::task::yield_now().await;
    assert!(!task.is_finished(), "closed before the max lifetime");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_ERROR);
    expect_closed(&mut raw).await;
    let r = prompt("driver", task).await.expect("join");
    assert!(matches!(r, Err(ConnectionError::KeepaliveTimeout)), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn server_closes_silently_without_setup() {
    let _watchdog = Watchdog::arm("server_closes_silently_without_setup");
    let probe = Probe::new();
    let config = Config {
        setup_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let (mut raw, task) = spawn_accept(config, probe_acceptor(&probe));
    tokio::time::advance(Duration::from_millis(1999)).await;
    tokio::task::yield_now().await;
    assert!(!task.is_finished(), "gave up before the setup timeout");
    tokio::time::advance(Duration::from_millis(1)).await;
    // No ERROR frame: the transport is just closed.
    expect_closed(&mut raw).await;
    assert!(prompt("accept", task).await.expect("join").is_err());
}

#[tokio::test]
async fn requests_beyond_the_inbound_stream_limit_are_rejected() {
    let probe = Probe::new();
    let config = Config {
        max_concurrent_inbound_streams: 1,
        ..Config::default()
    };
    let (mut raw, _task) = spawn_accept(config, probe_acceptor(&probe));
    send(&mut raw, Frame::Setup(Box::new(good_setup()))).await;
    send(&mut raw, request_response(1, "wait")).await;
    send(&mut raw, request_response(3, "x")).await;
    assert_stream_error(&expect_frame(&mut raw).await, 3, ErrorCode::REJECTED);
    probe.gate.add_permits(1);
    assert_payload(&expect_frame(&mut raw).await, 1, "wait", true, true);
    // The slot is free again.
    server_barrier(&mut raw, 5).await;
    assert_eq!(probe.rr_calls.load(SeqCst), 2);
}

#[tokio::test]
async fn graceful_shutdown_finishes_streams_then_closes() {
    let probe = Probe::new();
    let (t, mut raw) = raw_pair();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::new(probe_acceptor(&probe));
    let incoming = futures::stream::iter([Ok::<_, io::Error>(t)]).chain(futures::stream::pending());
    let serving = tokio::spawn(server.serve_with_shutdown(incoming, async move {
        let _ = stop_rx.await;
    }));
    send(&mut raw, Frame::Setup(Box::new(good_setup()))).await;
    send(&mut raw, request_response(1, "wait")).await;
    server_barrier(&mut raw, 3).await;
    stop_tx.send(()).expect("server running");

    // Draining begins with ERROR[CONNECTION_CLOSE], before the open stream
    // has finished; requests sent after it are refused.
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_CLOSE);
    send(&mut raw, request_response(5, "probe")).await;
    assert_stream_error(&expect_frame(&mut raw).await, 5, ErrorCode::REJECTED);
    // The open stream still finishes, then the connection closes without
    // another frame.
    probe.gate.add_permits(1);
    assert_payload(&expect_frame(&mut raw).await, 1, "wait", true, true);
    expect_closed(&mut raw).await;
    prompt("serve", serving)
        .await
        .expect("join")
        .expect("serve");
}

#[tokio::test]
async fn malformed_frames_honour_the_ignore_flag() {
    let probe = Probe::new();
    let (mut raw, task) = scripted_server(&probe).await;
    // REQUEST_RESPONSE with I whose metadata length (16) overruns the frame:
    // dropped.
    send_bytes(&mut raw, &[0, 0, 0, 1, 0x13, 0x00, 0, 0, 0x10, b'a', b'b']).await;
    server_barrier(&mut raw, 3).await;
    assert_eq!(
        probe.rr_calls.load(SeqCst),
        1,
        "only the barrier was handled"
    );
    // REQUEST_N with a 2-byte body, no I: malformed, connection error.
    send_bytes(&mut raw, &[0, 0, 0, 3, 0x20, 0x00, 0, 1]).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_ERROR);
    expect_closed(&mut raw).await;
    let r = prompt("driver", task).await.expect("join");
    assert!(matches!(r, Err(ConnectionError::Protocol { .. })), "{r:?}");
}

#[tokio::test]
async fn resume_after_setup_is_a_connection_error() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    server_barrier(&mut raw, 1).await;
    let resume = Resume {
        version: Version::V1_0,
        resume_token: Bytes::from_static(b"token"),
        last_received_server_position: 0,
        first_available_client_position: 0,
    };
    send(&mut raw, Frame::Resume(resume)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_ERROR);
    expect_closed(&mut raw).await;
}

#[tokio::test]
async fn payload_with_follows_and_complete_is_not_a_fragment() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    let mut s = requester.request_stream(Payload::from("s"));
    assert!(poll!(s.next()).is_pending());
    assert!(matches!(
        expect_frame(&mut raw).await,
        Frame::RequestStream(_)
    ));
    // F together with C: F is ignored, the element is whole.
    let f = Frame::Payload(PayloadFrame {
        stream_id: sid(1),
        follows: true,
        complete: true,
        next: true,
        payload: Payload::from("whole"),
    });
    send(&mut raw, f).await;
    let p = prompt("item", s.next()).await.expect("item").expect("ok");
    assert_eq!(p, Payload::from("whole"));
    assert!(prompt("end", s.next()).await.is_none());
}

#[tokio::test]
async fn responder_channel_grants_credit_and_completes_without_extra_credit() {
    let probe = Probe::new();
    let (mut raw, _task) = scripted_server(&probe).await;
    let open = Frame::RequestChannel(RequestChannel {
        stream_id: sid(1),
        follows: false,
        complete: false,
        initial_request_n: count(2),
        payload: Payload::from("first"),
    });
    send(&mut raw, open).await;
    // The responder answers with REQUEST_N and echoes the first payload, in
    // either order.
    let mut granted = None;
    let mut echoed = false;
    while granted.is_none() || !echoed {
        match expect_frame(&mut raw).await {
            Frame::RequestN(n) if n.stream_id == sid(1) && granted.is_none() => {
                granted = Some(n.request_n.get());
            }
            f if !echoed => {
                assert_payload(&f, 1, "first", true, false);
                echoed = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(granted >= Some(1));
    send(&mut raw, next(1, Payload::from("x"))).await;
    assert_payload(&expect_frame(&mut raw).await, 1, "x", true, false);
    // Both credits are used; the requester completes its half, and the echo
    // completes too: COMPLETE needs no credit.
    send(&mut raw, Frame::Payload(PayloadFrame::complete(sid(1)))).await;
    let f = expect_frame(&mut raw).await;
    assert_eq!(f, Frame::Payload(PayloadFrame::complete(sid(1))));
    server_barrier(&mut raw, 3).await;
}

#[tokio::test]
async fn peer_closing_is_set_by_the_peers_connection_close_and_stays() {
    let (requester, mut raw) = scripted_client(ClientBuilder::new()).await;
    sentinel(&requester, &mut raw, "open").await;
    assert!(!requester.peer_closing());
    send(
        &mut raw,
        Frame::Error(ErrorFrame::new(None, ErrorCode::CONNECTION_CLOSE, "bye")),
    )
    .await;
    // The peer closes the transport after its close: the graceful end.
    drop(raw);
    prompt("closed", requester.closed()).await;
    assert!(matches!(
        requester.closed_reason(),
        Some(ConnectionError::Remote {
            code: ErrorCode::CONNECTION_CLOSE,
            ..
        })
    ));
    assert!(requester.peer_closing());

    // A connection that ends otherwise never says so.
    let (requester, raw) = scripted_client(ClientBuilder::new()).await;
    drop(raw);
    prompt("closed", requester.closed()).await;
    assert!(!requester.peer_closing());
}
