//! Hostile clients against a real TCP server (issue 9): each test attacks
//! one connection with raw frames and asserts the engine's own counters
//! (`Server::stats_handle`), never timing, while a well-behaved client on
//! the same server keeps getting answers.
//!
//! Timeouts only turn a hang into a failure; a few attacks are slow by
//! nature (a trickle of bytes), and those use short configured timeouts.

use rsocket_core::async_trait;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use rsocket_core::codec::FrameCodec;
use rsocket_core::frame::{
    Keepalive, MetadataPush, PayloadFrame, RequestChannel, RequestFnf, RequestResponse,
    RequestStream, Resume, Setup, Version,
};
use rsocket_core::runtime::ServerStatsHandle;
use rsocket_core::{
    ClientBuilder, Config, ConnectionError, ErrorCode, Frame, LeaseConfig, LeasePolicy, MimeType,
    Payload, PayloadStream, RSocket, RequestCount, RequestError, Requester, Server,
    ServerResumeOptions, ServerStats, StreamId,
};
use rsocket_tests::within;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;

type Raw = Framed<TcpStream, FrameCodec>;

/// Echo for request/response, an endless stream, gated one-way handlers.
#[derive(Clone)]
struct Target {
    gate: Arc<Semaphore>,
    handled: Arc<AtomicUsize>,
}

impl Target {
    fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            handled: Arc::default(),
        }
    }

    fn one_way(&self) -> BoxFuture<'static, Result<(), RequestError>> {
        let this = self.clone();
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

impl RSocket for Target {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Box::pin(async move { Ok(Some(req)) }).await
    }

    fn request_stream(&self, _req: Payload) -> PayloadStream {
        futures::stream::iter(0u64..)
            .map(|i| Ok(Payload::from(i.to_string())))
            .boxed()
    }

    async fn fire_and_forget(&self, _req: Payload) -> Result<(), RequestError> {
        self.one_way().await
    }

    async fn metadata_push(&self, _metadata: Bytes) -> Result<(), RequestError> {
        self.one_way().await
    }

    /// Echoes the first payload, polls the requester's items once (the
    /// first poll grants the window), then never reads them (it holds
    /// them, so the inbound half stays open) and never ends.
    fn request_channel(&self, first: Payload, mut rest: PayloadStream) -> PayloadStream {
        let mut polled = false;
        futures::stream::once(async move { Ok(first) })
            .chain(futures::stream::poll_fn(move |cx| {
                if !polled {
                    polled = true;
                    let nothing_yet = rest.poll_next_unpin(cx).is_pending();
                    assert!(nothing_yet, "no item before the window is granted");
                }
                std::task::Poll::Pending
            }))
            .boxed()
    }
}

/// A server under attack and a bystander connected to it.
struct Arena {
    addr: SocketAddr,
    stats: ServerStatsHandle,
    target: Target,
    bystander: Requester,
}

impl Arena {
    async fn start(config: Config) -> Self {
        Self::start_with(config, |l| l).await
    }

    async fn start_with(
        config: Config,
        listener: impl FnOnce(rsocket_transport_tcp::TcpListener) -> rsocket_transport_tcp::TcpListener,
    ) -> Self {
        Self::start_server(config, listener, |s| s).await
    }

    async fn start_server(
        config: Config,
        listener: impl FnOnce(rsocket_transport_tcp::TcpListener) -> rsocket_transport_tcp::TcpListener,
        customize: impl FnOnce(Server) -> Server,
    ) -> Self {
        let tcp = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let target = Target::new();
        let responder = target.clone();
        let server = Server::new(move |_setup, _requester| {
            let responder = responder.clone();
            async move { Ok(Arc::new(responder) as Arc<dyn RSocket>) }
        })
        .config(config);
        let server = customize(server);
        let stats = server.stats_handle();
        tokio::spawn(server.serve_with_shutdown(listener(tcp), futures::future::pending()));
        let bystander = ClientBuilder::new()
            .keepalive(Duration::from_secs(600), Duration::from_secs(1200))
            .connect(rsocket_transport_tcp::connect(addr).await.expect("connect"))
            .expect("client");
        let arena = Self {
            addr,
            stats,
            target,
            bystander,
        };
        arena.bystander_answers().await;
        arena
    }

    /// The well-behaved client gets its answers.
    async fn bystander_answers(&self) {
        for i in 0..5 {
            let req = Payload::from(format!("still here {i}"));
            let reply = within(
                "the bystander's answer",
                self.bystander.request_response(req),
            )
            .await
            .expect("the bystander is answered");
            assert_eq!(
                reply.map(|p| p.data),
                Some(Bytes::from(format!("still here {i}")))
            );
        }
    }

    /// A raw connection that has sent SETUP with the given lifetime.
    async fn attacker(&self, lifetime: Duration) -> Raw {
        let mut raw = self.connect_raw().await;
        send(&mut raw, setup(lifetime)).await;
        raw
    }

    async fn connect_raw(&self) -> Raw {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        Framed::new(tcp, FrameCodec::new())
    }

    async fn wait(&self, what: &str, cond: impl Fn(&ServerStats) -> bool) -> ServerStats {
        within(what, async {
            loop {
                let s = self.stats.snapshot();
                if cond(&s) {
                    return s;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
    }
}

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("stream id")
}

fn setup(lifetime: Duration) -> Frame {
    Frame::Setup(Box::new(Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 500,
        max_lifetime_ms: u32::try_from(lifetime.as_millis()).expect("lifetime"),
        resume_token: None,
        lease: false,
        metadata_mime_type: MimeType::OCTET_STREAM,
        data_mime_type: MimeType::OCTET_STREAM,
        payload: Payload::default(),
    }))
}

fn rr(id: u32, data: Bytes, follows: bool) -> Frame {
    Frame::RequestResponse(RequestResponse {
        stream_id: sid(id),
        follows,
        payload: Payload::new(data),
    })
}

const LONG: Duration = Duration::from_secs(600);

async fn send(raw: &mut Raw, frame: Frame) {
    within("send", SinkExt::<Frame>::send(raw, frame))
        .await
        .expect("send");
}

/// Reads and decodes frames until `pred` matches one; fails on EOF.
async fn read_until(raw: &mut Raw, what: &str, pred: impl Fn(&Frame) -> bool) -> Frame {
    within(what, async {
        loop {
            match raw.next().await {
                Some(Ok(b)) => {
                    let f = Frame::decode(b).expect("the server sends valid frames");
                    if pred(&f) {
                        return f;
                    }
                }
                other => panic!("connection ended while waiting for {what}: {other:?}"),
            }
        }
    })
    .await
}

/// Reads until the server closes the connection; returns the last frame.
async fn read_to_end(raw: &mut Raw, what: &str) -> Option<Frame> {
    within(what, async {
        let mut last = None;
        while let Some(Ok(b)) = raw.next().await {
            last = Frame::decode(b).ok();
        }
        last
    })
    .await
}

fn is_connection_error(f: &Frame) -> bool {
    matches!(f, Frame::Error(e) if e.stream_id.is_none() && e.code == ErrorCode::CONNECTION_ERROR)
}

/// Writes frames from `make(i)` for `i in 0..n` as fast as the socket
/// takes them; then flushes.
async fn flood(raw: &mut Raw, n: u32, make: impl Fn(u32) -> Frame) {
    within("the flood to be written", async {
        for i in 0..n {
            SinkExt::<Frame>::feed(raw, make(i)).await.expect("feed");
        }
        SinkExt::<Frame>::flush(raw).await.expect("flush");
    })
    .await;
}

// ----- the attacks -------------------------------------------------------------

/// Request/response pipelined by a peer that never reads the answers:
/// reading pauses once the answers fill the outbound cap, so TCP pushes
/// back on the peer, and the server holds no more than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_the_reader_stalled() {
    const CAP: usize = 64 << 10;
    const DATA: usize = 1 << 10;
    let config = Config {
        max_outbound_queue_bytes: CAP,
        ..Config::default()
    };
    let arena = Arena::start(config).await;
    let raw = arena.attacker(LONG).await;
    let (mut sink, unread) = raw.split();
    let writer = tokio::spawn(async move {
        let data = Bytes::from(vec![b'x'; DATA]);
        let mut id = 1u32;
        loop {
            if sink.send(rr(id, data.clone(), false)).await.is_err() {
                return id;
            }
            id += 2;
        }
    });
    let paused = arena
        .wait("the attacked connection to pause", |s| {
            s.paused_connections == 1
        })
        .await;
    assert!(
        paused.queued_out_bytes < CAP + DATA + 6,
        "answers past the cap: {paused:?}"
    );
    // The writer goes on draining the queue into the kernel's socket
    // buffers until they are full too; from then on, while the attacker
    // keeps writing, the bystander is answered and the server takes
    // nothing more from the attacker. The queue stays under its cap
    // throughout.
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 2_000, "the attacker was never pushed back");
        let before = arena.stats.snapshot();
        assert!(before.queued_out_bytes < CAP + DATA + 6, "{before:?}");
        arena.bystander_answers().await;
        let after = arena.stats.snapshot();
        assert!(after.queued_out_bytes < CAP + DATA + 6, "{after:?}");
        if after.frames_in - before.frames_in == 5 && after.paused_connections == 1 {
            break;
        }
    }
    assert!(!writer.is_finished());
    writer.abort();
    drop(unread);
}

/// PAYLOAD fragments on stream ids that were never opened are dropped,
/// not buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_on_invented_stream_ids() {
    let config = Config {
        max_reassembly_bytes: 1 << 20,
        ..Config::default()
    };
    let arena = Arena::start(config).await;
    let mut raw = arena.attacker(LONG).await;
    let chunk = Bytes::from(vec![b'f'; 1 << 10]);
    // 10 MiB of fragments, ten times the reassembly limit.
    flood(&mut raw, 10_000, |i| {
        Frame::Payload(PayloadFrame {
            stream_id: sid(1_001 + 2 * (i % 50)),
            follows: true,
            complete: false,
            next: true,
            payload: Payload::new(chunk.clone()),
        })
    })
    .await;
    send(&mut raw, rr(1, Bytes::from_static(b"alive?"), false)).await;
    read_until(
        &mut raw,
        "the attacker's own answer",
        |f| matches!(f, Frame::Payload(p) if p.stream_id == sid(1)),
    )
    .await;
    let s = arena.stats.snapshot();
    assert_eq!((s.reassembly_bytes, s.partial_requests), (0, 0), "{s:?}");
    arena.bystander_answers().await;
}

/// First fragments of requests, empty, on ever new ids: each takes a
/// stream slot, so at most `max_concurrent_inbound_streams` are held and
/// the rest are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_fragment_floods() {
    const LIMIT: usize = 100;
    let config = Config {
        max_concurrent_inbound_streams: LIMIT,
        ..Config::default()
    };
    let arena = Arena::start(config).await;
    let raw = arena.attacker(LONG).await;
    let (mut sink, mut stream) = raw.split();
    // Count the refusals as they come, so the answers never back up.
    let refusals = tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(Ok(b)) = stream.next().await {
            if matches!(Frame::decode(b), Ok(Frame::Error(e)) if e.code == ErrorCode::REJECTED) {
                n += 1;
                if n == 100_000 - LIMIT as u32 {
                    return n;
                }
            }
        }
        n
    });
    within("the flood to be written", async {
        for i in 0..100_000u32 {
            sink.feed(rr(2 * i + 1, Bytes::new(), true))
                .await
                .expect("feed");
        }
        sink.flush().await.expect("flush");
    })
    .await;
    let refused = within("every refusal", refusals).await.expect("reader");
    assert_eq!(refused, 100_000 - LIMIT as u32);
    let s = arena.stats.snapshot();
    assert_eq!(s.partial_requests, LIMIT, "{s:?}");
    assert_eq!(s.reassembly_bytes, 0, "{s:?}");
    arena.bystander_answers().await;
}

/// One-way floods against handlers that do not finish: exactly the limit
/// of handlers runs, reading pauses, nothing is dropped.
async fn one_way_flood(make: impl Fn(u32) -> Frame) {
    const LIMIT: usize = 16;
    const SENT: u32 = 10_000;
    let config = Config {
        max_concurrent_inbound_streams: LIMIT,
        ..Config::default()
    };
    let arena = Arena::start(config).await;
    let mut raw = arena.attacker(LONG).await;
    let attack = async {
        flood(&mut raw, SENT, &make).await;
    };
    // The flood cannot finish while the handlers hang (TCP pushes back), so
    // it runs beside the checks.
    let checks = async {
        let s = arena
            .wait("the handler limit to pause reading", |s| {
                s.paused_connections == 1
            })
            .await;
        assert_eq!(s.handlers_running, LIMIT, "{s:?}");
        arena.bystander_answers().await;
        let s = arena.stats.snapshot();
        assert_eq!(s.handlers_running, LIMIT, "{s:?}");
        arena.target.gate.add_permits(SENT as usize);
    };
    futures::join!(attack, checks);
    within("every request to be handled", async {
        while arena.target.handled.load(Ordering::SeqCst) < SENT as usize {
            tokio::task::yield_now().await;
        }
    })
    .await;
    arena
        .wait("the handlers to be counted out", |s| {
            s.handlers_running == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_push_floods() {
    one_way_flood(|i| {
        Frame::MetadataPush(MetadataPush {
            metadata: Bytes::from(format!("md{i}")),
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_floods_past_the_handler_limit() {
    one_way_flood(|i| {
        Frame::RequestFnf(RequestFnf {
            stream_id: sid(2 * i + 1),
            follows: false,
            payload: Payload::from("fnf"),
        })
    })
    .await;
}

/// A frame one byte over the limit, announced by its length prefix, ends
/// the connection with `ERROR[CONNECTION_ERROR]` before its body arrives.
async fn just_over(arena: Arena, max: usize) {
    let mut raw = arena.attacker(LONG).await;
    // Exactly at the limit: answered.
    let data = Bytes::from(vec![b'm'; max - 6]);
    send(&mut raw, rr(1, data, false)).await;
    read_until(
        &mut raw,
        "the answer at the limit",
        |f| matches!(f, Frame::Payload(p) if p.stream_id == sid(1)),
    )
    .await;
    let mut over = BytesMut::new();
    over.put_uint(max as u64 + 1, 3);
    over.put_u32(3);
    within("write", raw.get_mut().write_all_buf(&mut over))
        .await
        .expect("write");
    let last = read_to_end(&mut raw, "the server to close").await;
    assert!(last.as_ref().is_some_and(is_connection_error), "{last:?}");
    arena
        .wait("the connection to be gone", |s| s.connections == 1)
        .await;
    arena.bystander_answers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_just_over_config_max_frame_len() {
    let config = Config {
        max_frame_len: 4096,
        ..Config::default()
    };
    just_over(Arena::start(config).await, 4096).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_just_over_the_listener_max_frame_len() {
    let arena = Arena::start_with(Config::default(), |l| l.with_max_frame_len(4096)).await;
    just_over(arena, 4096).await;
}

/// SETUP, then nothing: closed when the lifetime it announced passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_then_silence() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(Duration::from_millis(500)).await;
    arena
        .wait("the attacker to be served", |s| s.connections == 2)
        .await;
    let last = read_to_end(&mut raw, "the keepalive lifetime to close it").await;
    assert!(last.as_ref().is_some_and(is_connection_error), "{last:?}");
    arena
        .wait("the connection to be gone", |s| s.connections == 1)
        .await;
    arena.bystander_answers().await;
}

/// Writes `bytes` one at a time, every `every`, until the peer closes.
async fn trickle(raw: &mut Raw, bytes: Bytes, every: Duration) {
    let mut tick = tokio::time::interval(every);
    for b in bytes.iter().cycle() {
        tick.tick().await;
        if raw.get_mut().write_all(&[*b]).await.is_err() {
            return;
        }
        // A read of EOF means the server gave up on us.
        if let Some(None) = futures::FutureExt::now_or_never(raw.next()) {
            return;
        }
    }
}

/// A slowloris before SETUP: closed by `setup_timeout` although bytes keep
/// arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_before_setup() {
    let config = Config {
        setup_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let arena = Arena::start(config).await;
    let mut raw = arena.connect_raw().await;
    let mut whole = BytesMut::new();
    let setup = setup(LONG);
    whole.put_uint(setup.encoded_len() as u64, 3);
    setup.encode(&mut whole);
    arena
        .wait("the attacker to await its SETUP", |s| s.pending_setup == 1)
        .await;
    within(
        "setup_timeout to close the slowloris",
        trickle(&mut raw, whole.freeze(), Duration::from_millis(50)),
    )
    .await;
    let s = arena
        .wait("no connection left waiting", |s| s.pending_setup == 0)
        .await;
    assert_eq!(s.connections, 1, "{s:?}");
    arena.bystander_answers().await;
}

/// A slowloris after SETUP: a frame that never completes is not a sign of
/// life, so the lifetime closes it; nothing of it is counted in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_after_setup() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(Duration::from_millis(500)).await;
    let before = arena
        .wait("the attacker to be served", |s| s.connections == 2)
        .await;
    // A length prefix announcing 60,000 bytes, then a trickle of its body.
    let mut body = BytesMut::new();
    body.put_uint(60_000, 3);
    body.put_bytes(b's', 60_000);
    within(
        "the lifetime to close the slowloris",
        trickle(&mut raw, body.freeze(), Duration::from_millis(50)),
    )
    .await;
    let s = arena
        .wait("the connection to be gone", |s| s.connections == 1)
        .await;
    // Only the bystander's traffic and the attacker's SETUP were counted.
    assert!(s.bytes_in - before.bytes_in < 1_000, "{before:?} {s:?}");
    arena.bystander_answers().await;
}

/// 10,000 streams opened with credit 1 and then left alone: the server
/// holds them (each producer parked, no buffering), refuses the next, and
/// frees everything when the peer goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_opened_and_abandoned() {
    const N: u32 = 10_000;
    let arena = Arena::start(Config::default()).await;
    let raw = arena.attacker(LONG).await;
    let (mut sink, mut stream) = raw.split();
    // The attacker reads (and drops) what it is sent.
    let reader = tokio::spawn(async move {
        let mut refused = 0;
        while let Some(Ok(b)) = stream.next().await {
            if matches!(Frame::decode(b), Ok(Frame::Error(e)) if e.code == ErrorCode::REJECTED) {
                refused += 1;
            }
        }
        refused
    });
    within("the streams to be opened", async {
        for i in 0..=N {
            let frame = Frame::RequestStream(RequestStream {
                stream_id: sid(2 * i + 1),
                follows: false,
                initial_request_n: RequestCount::ONE,
                payload: Payload::from("go"),
            });
            sink.feed(frame).await.expect("feed");
        }
        sink.flush().await.expect("flush");
    })
    .await;
    let s = arena
        .wait("every producer to use its credit", |s| {
            s.producers_awaiting_credit == N as usize
        })
        .await;
    assert_eq!(s.inbound_streams, N as usize, "{s:?}");
    assert_eq!(s.queued_in_bytes, 0, "{s:?}");
    arena.bystander_answers().await;
    // Half-close: the server sees the end of the stream.
    within("close", sink.close()).await.expect("close");
    let refused = within("the attacker's reader", reader).await;
    // The stream past the limit was refused; the writer's half-close ends
    // the connection.
    assert_eq!(refused.expect("reader"), 1);
    let s = arena
        .wait("the abandoned streams to be freed", |s| s.connections == 1)
        .await;
    assert_eq!((s.open_streams, s.handlers_running), (0, 0), "{s:?}");
    arena.bystander_answers().await;
}

// ----- invalid frames (rsocket-protocol.md §2.14, §4.4, §4.5, §11) ------------
//
// Each test sends frames the encoder cannot produce, as raw bytes behind
// their length prefix, and asserts the exact outcome: silently ignored
// (the next frame the attacker gets is the answer to a request sent after
// them), or `ERROR[code]` on stream 0 and the connection closed. Either
// way the bystander and a brand-new connection are served afterwards.

/// Writes one hand-made frame (no prefix in `frame`) behind its 24-bit
/// length prefix.
async fn send_bytes(raw: &mut Raw, frame: &[u8]) {
    let mut buf = BytesMut::new();
    buf.put_uint(frame.len() as u64, 3);
    buf.put_slice(frame);
    within("write", raw.get_mut().write_all_buf(&mut buf))
        .await
        .expect("write");
}

/// The next frame the server sends other than its own keepalive requests.
/// Opens stream `id` with a credit of one and reads its first item: a
/// stream that stays open, parked on its credit.
async fn open_with_one_credit(raw: &mut Raw, id: u32) {
    send(
        raw,
        Frame::RequestStream(RequestStream {
            stream_id: sid(id),
            follows: false,
            initial_request_n: RequestCount::ONE,
            payload: Payload::from("go"),
        }),
    )
    .await;
    match next_frame(raw, "the first item").await {
        Frame::Payload(p) if p.stream_id == sid(id) && p.next && !p.complete => {}
        other => panic!("expected an item on stream {id}, got {other:?}"),
    }
}

async fn next_frame(raw: &mut Raw, what: &str) -> Frame {
    read_until(
        raw,
        what,
        |f| !matches!(f, Frame::Keepalive(k) if k.respond),
    )
    .await
}

/// Request/response on `id`: the very next frame must be its answer, so
/// nothing (no ERROR, no answer to an ignored request) was sent before it.
async fn ping(raw: &mut Raw, id: u32) {
    let data = Bytes::from(format!("ping {id}"));
    send(raw, rr(id, data.clone(), false)).await;
    match next_frame(raw, "the answer to the ping").await {
        Frame::Payload(p) if p.stream_id == sid(id) && p.next && p.complete => {
            assert_eq!(p.payload.data, data);
        }
        other => panic!("expected the answer on stream {id}, got {other:?}"),
    }
}

/// The next frame is `ERROR[code]` on stream 0, then the server closes the
/// connection; the bystander and a new connection are still served.
async fn expect_closed_with(arena: &Arena, mut raw: Raw, code: ErrorCode) {
    match next_frame(&mut raw, "the connection-level ERROR").await {
        Frame::Error(e) => {
            assert_eq!((e.stream_id, e.code), (None, code), "{e:?}");
        }
        other => panic!("expected ERROR[{code}] on stream 0, got {other:?}"),
    }
    let rest = read_to_end(&mut raw, "the server to close").await;
    assert!(
        rest.is_none() || matches!(rest, Some(Frame::Keepalive(_))),
        "{rest:?}"
    );
    others_still_served(arena).await;
}

/// The bystander is answered, the attacker's connection is gone, and a new
/// connection to the same server is served.
async fn others_still_served(arena: &Arena) {
    arena
        .wait("only the bystander left", |s| s.connections == 1)
        .await;
    arena.bystander_answers().await;
    let mut fresh = arena.attacker(LONG).await;
    ping(&mut fresh, 1).await;
}

/// Waits until the server holds no stream and runs no handler: nothing the
/// attacker sent opened one.
async fn nothing_opened(arena: &Arena) {
    arena
        .wait("no stream or handler left", |s| {
            s.open_streams == 0 && s.handlers_running == 0 && s.partial_requests == 0
        })
        .await;
}

/// Stream frames on stream 0, and METADATA_PUSH on a stream, are ignored
/// (§2.14, §4.5): no ERROR, no handler, the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_frames_on_stream_0_are_ignored() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    ping(&mut raw, 1).await;
    let frames: [&[u8]; 9] = [
        &[0, 0, 0, 0, 0x10, 0x00, b'r'],             // REQUEST_RESPONSE
        &[0, 0, 0, 0, 0x14, 0x00, b'f'],             // REQUEST_FNF
        &[0, 0, 0, 0, 0x18, 0x00, 0, 0, 0, 1, b's'], // REQUEST_STREAM n=1
        &[0, 0, 0, 0, 0x1C, 0x00, 0, 0, 0, 1, b'c'], // REQUEST_CHANNEL n=1
        &[0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 5],       // REQUEST_N 5
        &[0, 0, 0, 0, 0x24, 0x00],                   // CANCEL
        &[0, 0, 0, 0, 0x28, 0x60, b'p'],             // PAYLOAD N|C
        &[0, 0, 0, 0, 0x28, 0xA0, b'p'],             // PAYLOAD N|F
        &[0, 0, 0, 1, 0x31, 0x00, b'm'],             // METADATA_PUSH on 1
    ];
    for f in frames {
        send_bytes(&mut raw, f).await;
    }
    ping(&mut raw, 3).await;
    nothing_opened(&arena).await;
    assert_eq!(arena.target.handled.load(Ordering::SeqCst), 0);
    drop(raw);
    others_still_served(&arena).await;
}

/// A request on an id of the server's own parity (even) is ignored: the
/// server's requester owns those ids (§4.1, §4.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_the_servers_parity_are_ignored() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    send(&mut raw, rr(2, Bytes::from_static(b"even"), false)).await;
    send(
        &mut raw,
        Frame::RequestStream(RequestStream {
            stream_id: sid(4),
            follows: false,
            initial_request_n: RequestCount::ONE,
            payload: Payload::from("even"),
        }),
    )
    .await;
    send(
        &mut raw,
        Frame::RequestFnf(RequestFnf {
            stream_id: sid(6),
            follows: false,
            payload: Payload::from("even"),
        }),
    )
    .await;
    // The first fragment of a request on an even id takes no reassembly.
    send(&mut raw, rr(8, Bytes::from_static(b"ev"), true)).await;
    ping(&mut raw, 1).await;
    nothing_opened(&arena).await;
    drop(raw);
    others_still_served(&arena).await;
}

/// REQUEST_N, CANCEL, PAYLOAD and ERROR for ids that are not open (never
/// opened, of either parity, or already finished) are ignored (§4.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_unknown_streams_are_ignored() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    ping(&mut raw, 1).await;
    let frames: [&[u8]; 8] = [
        &[0, 0, 0, 101, 0x20, 0x00, 0, 0, 0, 5], // REQUEST_N on 101
        &[0, 0, 0, 103, 0x24, 0x00],             // CANCEL on 103
        &[0, 0, 0, 105, 0x28, 0x60, b'p'],       // PAYLOAD N|C on 105
        &[0, 0, 0, 107, 0x2C, 0x00, 0, 0, 2, 1, b'e'], // ERROR[APPLICATION] on 107
        &[0, 0, 0, 2, 0x28, 0x20, b'p'],         // PAYLOAD N on 2 (server's parity, never issued)
        &[0, 0, 0, 4, 0x20, 0x00, 0, 0, 0, 1],   // REQUEST_N on 4
        &[0, 0, 0, 6, 0x2C, 0x00, 0, 0, 2, 3, b'e'], // ERROR[CANCELED] on 6
        &[0, 0, 0, 1, 0x20, 0x00, 0, 0, 0, 9],   // REQUEST_N on 1 (finished)
    ];
    for f in frames {
        send_bytes(&mut raw, f).await;
    }
    ping(&mut raw, 3).await;
    // Late frames after a CANCEL: the stream is gone, they are ignored.
    open_with_one_credit(&mut raw, 5).await;
    send_bytes(&mut raw, &[0, 0, 0, 5, 0x24, 0x00]).await;
    send_bytes(&mut raw, &[0, 0, 0, 5, 0x24, 0x00]).await;
    send_bytes(&mut raw, &[0, 0, 0, 5, 0x20, 0x00, 0, 0, 0, 7]).await;
    ping(&mut raw, 7).await;
    nothing_opened(&arena).await;
    drop(raw);
    others_still_served(&arena).await;
}

/// Unknown frame types and EXT frames: dropped with the I flag (also when
/// their body is malformed), ERROR[CONNECTION_ERROR] without it (§4.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_and_ext_honour_the_ignore_flag() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    let ignored: [&[u8]; 5] = [
        &[0, 0, 0, 0, 0x82, 0x00, 1, 2, 3], // type 0x20 + I, stream 0
        &[0, 0, 0, 1, 0x82, 0x00],          // type 0x20 + I, stream 1
        &[0, 0, 0, 1, 0xFE, 0x00, 0, 0, 0, 7, b'x'], // EXT type 7 + I
        &[0, 0, 0, 0, 0xFE, 0x00, 0, 0, 0, 0], // EXT type 0 (invalid) + I
        &[0, 0, 0, 3, 0xFE, 0x00, 0, 0],    // EXT + I, truncated
    ];
    for f in ignored {
        send_bytes(&mut raw, f).await;
    }
    ping(&mut raw, 1).await;
    nothing_opened(&arena).await;
    // EXT without I: not understood, so the connection ends.
    send_bytes(&mut raw, &[0, 0, 0, 3, 0xFC, 0x00, 0, 0, 0, 7, b'x']).await;
    expect_closed_with(&arena, raw, ErrorCode::CONNECTION_ERROR).await;
    // An unknown type without I likewise.
    let mut raw = arena.attacker(LONG).await;
    ping(&mut raw, 1).await;
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x80, 0x00, 1, 2, 3]).await;
    expect_closed_with(&arena, raw, ErrorCode::CONNECTION_ERROR).await;
}

/// Malformed frames after SETUP: ERROR[CONNECTION_ERROR] on stream 0 and
/// the connection closed (§2.14); the server and its other connections go
/// on. With the I flag, the same malformed body is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_end_only_their_connection() {
    let arena = Arena::start(Config::default()).await;
    let cases: [(&str, &[u8]); 9] = [
        ("empty frame", &[]),
        ("truncated header", &[0, 0, 0, 1, 0x10]),
        (
            "metadata length overrun",
            &[0, 0, 0, 1, 0x11, 0x00, 0, 0, 0x10, b'a', b'b'],
        ),
        (
            "metadata length field truncated",
            &[0, 0, 0, 1, 0x29, 0x20, 0, 1],
        ),
        ("REQUEST_N body of 2 bytes", &[0, 0, 0, 1, 0x20, 0x00, 0, 1]),
        (
            "reserved bit in the stream id",
            &[0x80, 0, 0, 1, 0x10, 0x00, b'x'],
        ),
        (
            "KEEPALIVE on stream 1",
            &[0, 0, 0, 1, 0x0C, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "PAYLOAD with neither N nor C",
            &[0, 0, 0, 1, 0x28, 0x00, b'p'],
        ),
        ("ERROR with a 2-byte code", &[0, 0, 0, 1, 0x2C, 0x00, 0, 1]),
    ];
    for (what, bytes) in cases {
        let mut raw = arena.attacker(LONG).await;
        ping(&mut raw, 1).await;
        send_bytes(&mut raw, bytes).await;
        eprintln!("case: {what}");
        expect_closed_with(&arena, raw, ErrorCode::CONNECTION_ERROR).await;
    }
    // With I, a malformed request is dropped and the connection stays.
    let mut raw = arena.attacker(LONG).await;
    send_bytes(&mut raw, &[0, 0, 0, 1, 0x13, 0x00, 0, 0, 0x10, b'a', b'b']).await;
    send_bytes(&mut raw, &[0, 0, 0, 3, 0x22, 0x00, 0, 1]).await;
    ping(&mut raw, 5).await;
    nothing_opened(&arena).await;
}

/// KEEPALIVE with R from the client is answered with R clear and the same
/// data; without R it is not answered (§2.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_answered_only_with_the_respond_flag() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    // R clear, then R set with data "hb".
    send_bytes(
        &mut raw,
        &[0, 0, 0, 0, 0x0C, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, b'n', b'o'],
    )
    .await;
    send_bytes(
        &mut raw,
        &[0, 0, 0, 0, 0x0C, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, b'h', b'b'],
    )
    .await;
    match next_frame(&mut raw, "the keepalive answer").await {
        Frame::Keepalive(k) => {
            assert!(!k.respond, "{k:?}");
            assert_eq!(k.data, Bytes::from_static(b"hb"));
            assert_eq!(k.last_received_position, 0);
        }
        other => panic!("expected the KEEPALIVE answer, got {other:?}"),
    }
    ping(&mut raw, 1).await;
    drop(raw);
    others_still_served(&arena).await;
}

/// After SETUP: a second SETUP, a LEASE (not negotiated) and the setup
/// error codes on stream 0 are ignored (§11.5); RESUME is a
/// CONNECTION_ERROR (§11.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_twice_lease_and_resume_after_setup() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    ping(&mut raw, 1).await;
    send(&mut raw, setup(Duration::from_millis(1))).await;
    // LEASE ttl 1000 ms, 0 requests: it would refuse every request.
    send_bytes(
        &mut raw,
        &[0, 0, 0, 0, 0x08, 0x00, 0, 0, 0x03, 0xe8, 0, 0, 0, 0],
    )
    .await;
    for code in 1..=4u8 {
        send_bytes(&mut raw, &[0, 0, 0, 0, 0x2C, 0x00, 0, 0, 0, code, b'?']).await;
    }
    ping(&mut raw, 3).await;
    nothing_opened(&arena).await;
    // RESUME v1.0, token "t", positions 0.
    let mut resume = vec![0, 0, 0, 0, 0x34, 0x00, 0, 1, 0, 0, 0, 1, b't'];
    resume.extend_from_slice(&[0; 16]);
    send_bytes(&mut raw, &resume).await;
    expect_closed_with(&arena, raw, ErrorCode::CONNECTION_ERROR).await;
}

/// Before SETUP: a first frame that is not SETUP or RESUME, a SETUP on a
/// stream, or a SETUP that does not decode, gets ERROR[INVALID_SETUP] on
/// stream 0 and the connection closed (§11.1, §11.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_first_frames_are_invalid_setup() {
    let arena = Arena::start(Config::default()).await;
    let mut good = BytesMut::new();
    setup(LONG).encode(&mut good);
    let mut on_stream_1 = good.to_vec();
    on_stream_1[3] = 1;
    let truncated = good[..good.len() - 3].to_vec();
    let cases: [(&str, Vec<u8>); 6] = [
        ("REQUEST_RESPONSE first", vec![0, 0, 0, 1, 0x10, 0x00, b'x']),
        (
            "KEEPALIVE first",
            vec![0, 0, 0, 0, 0x0C, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("unknown type with I first", vec![0, 0, 0, 0, 0x82, 0x00]),
        ("SETUP on stream 1", on_stream_1),
        ("truncated SETUP", truncated),
        ("truncated header", vec![0, 0, 0]),
    ];
    for (what, bytes) in cases {
        eprintln!("case: {what}");
        let mut raw = arena.connect_raw().await;
        send_bytes(&mut raw, &bytes).await;
        expect_closed_with(&arena, raw, ErrorCode::INVALID_SETUP).await;
    }
}

/// A fragmented request whose follow-ups arrive on another stream: those
/// are PAYLOADs for an unknown stream (ignored), a REQUEST on the id being
/// reassembled is a request on an id in use (ignored), and the request is
/// completed by its own follow-up (§8, §4.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_follow_ups_on_another_stream_are_ignored() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    send(&mut raw, rr(1, Bytes::from_static(b"he"), true)).await;
    let follow_up = |id: u32, data: &'static [u8], follows: bool| {
        Frame::Payload(PayloadFrame {
            stream_id: sid(id),
            follows,
            complete: false,
            next: true,
            payload: Payload::new(Bytes::from_static(data)),
        })
    };
    send(&mut raw, follow_up(3, b"XX", true)).await;
    send(&mut raw, follow_up(3, b"YY", false)).await;
    send(&mut raw, rr(1, Bytes::from_static(b"ZZ"), false)).await;
    ping(&mut raw, 5).await;
    // Only stream 1's first fragment is held.
    arena
        .wait("stream 1's fragment alone to be held", |s| {
            (s.partial_requests, s.reassembly_bytes) == (1, 2)
        })
        .await;
    send(&mut raw, follow_up(1, b"llo", false)).await;
    match next_frame(&mut raw, "the reassembled answer").await {
        Frame::Payload(p) if p.stream_id == sid(1) => {
            assert_eq!(p.payload.data, Bytes::from_static(b"hello"));
        }
        other => panic!("expected the answer on stream 1, got {other:?}"),
    }
    ping(&mut raw, 7).await;
    nothing_opened(&arena).await;
    drop(raw);
    others_still_served(&arena).await;
}

// ----- a live client attacked by a raw server ------------------------------------
//
// A real `ClientBuilder` connection over TCP to a listener the test
// controls: the script is the server, reads the client's frames and writes
// raw ones. The client's own requests, answered by the script, show the
// connection still works; the next frame the script reads after an attack
// being the client's request shows nothing was sent in between.

/// A real client connected to the script, which has read its SETUP.
async fn attacked_client() -> (Requester, Raw) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (transport, accepted) = within("the client to connect", async {
        tokio::join!(rsocket_transport_tcp::connect(addr), listener.accept())
    })
    .await;
    let client = ClientBuilder::new()
        .keepalive(Duration::from_secs(600), Duration::from_secs(1200))
        .connect(transport.expect("connect"))
        .expect("client");
    let mut raw = Framed::new(accepted.expect("accept").0, FrameCodec::new());
    match next_frame(&mut raw, "the client's SETUP").await {
        Frame::Setup(_) => {}
        other => panic!("expected SETUP first, got {other:?}"),
    }
    (client, raw)
}

/// The client's request/response, answered by the script with its own
/// data: the next frame the client sends must be that request.
async fn client_round_trip(client: &Requester, raw: &mut Raw, text: &str) {
    let data = Bytes::from(text.to_owned());
    let request = within(
        "the client's answer",
        client.request_response(Payload::new(data.clone())),
    );
    let script = async {
        match next_frame(raw, "the client's request").await {
            Frame::RequestResponse(r) if !r.follows => {
                assert_eq!(r.payload.data, data);
                send(
                    raw,
                    Frame::Payload(PayloadFrame {
                        stream_id: r.stream_id,
                        follows: false,
                        complete: true,
                        next: true,
                        payload: r.payload,
                    }),
                )
                .await;
            }
            other => panic!("expected the client's REQUEST_RESPONSE, got {other:?}"),
        }
    };
    let (reply, ()) = tokio::join!(request, script);
    assert_eq!(reply.expect("answered").map(|p| p.data), Some(data));
}

/// At a client, a SETUP is ignored (§11.5), a request on the client's own
/// parity (odd) is ignored (§4.1, §4.3), and PAYLOAD, REQUEST_N, CANCEL
/// and ERROR for streams the client never opened are ignored (§4.5):
/// nothing is sent back and the client's requests keep working. A
/// KEEPALIVE with R is answered with R clear and the same data (§2.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ignores_setup_its_own_parity_and_unknown_streams() {
    let (client, mut raw) = attacked_client().await;
    client_round_trip(&client, &mut raw, "first").await;
    send(&mut raw, setup(Duration::from_millis(1))).await;
    // Requests on odd ids the client has not issued.
    send(&mut raw, rr(101, Bytes::from_static(b"odd"), false)).await;
    send(
        &mut raw,
        Frame::RequestStream(RequestStream {
            stream_id: sid(103),
            follows: false,
            initial_request_n: RequestCount::ONE,
            payload: Payload::from("odd"),
        }),
    )
    .await;
    send(
        &mut raw,
        Frame::RequestFnf(RequestFnf {
            stream_id: sid(105),
            follows: false,
            payload: Payload::from("odd"),
        }),
    )
    .await;
    let frames: [&[u8]; 7] = [
        &[0, 0, 0, 1, 0x28, 0x60, b'p'],        // PAYLOAD N|C on 1 (finished)
        &[0, 0, 0, 99, 0x28, 0x60, b'p'],       // PAYLOAD N|C on 99 (never issued)
        &[0, 0, 0, 99, 0x28, 0xA0, b'p'],       // PAYLOAD N|F on 99 (a fragment)
        &[0, 0, 0, 2, 0x28, 0x20, b'p'],        // PAYLOAD N on 2 (server's parity)
        &[0, 0, 0, 97, 0x20, 0x00, 0, 0, 0, 5], // REQUEST_N on 97
        &[0, 0, 0, 95, 0x24, 0x00],             // CANCEL on 95
        &[0, 0, 0, 93, 0x2C, 0x00, 0, 0, 2, 1, b'e'], // ERROR[APPLICATION] on 93
    ];
    for f in frames {
        send_bytes(&mut raw, f).await;
    }
    client_round_trip(&client, &mut raw, "second").await;
    // KEEPALIVE R with data "hb": answered at once, R clear, same data.
    send_bytes(
        &mut raw,
        &[0, 0, 0, 0, 0x0C, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, b'h', b'b'],
    )
    .await;
    match next_frame(&mut raw, "the client's keepalive answer").await {
        Frame::Keepalive(k) => {
            assert!(!k.respond, "{k:?}");
            assert_eq!(k.data, Bytes::from_static(b"hb"));
            assert_eq!(k.last_received_position, 0);
        }
        other => panic!("expected the KEEPALIVE answer, got {other:?}"),
    }
    client_round_trip(&client, &mut raw, "third").await;
    assert!(!client.is_closed());
    assert_eq!(client.open_streams(), 0);
}

/// An unknown frame type without the I flag from the server ends the
/// client's connection with ERROR[CONNECTION_ERROR] on stream 0 (§4.4);
/// a request pending at that moment fails, and later ones fail at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ends_the_connection_on_an_unknown_type_without_ignore() {
    let (client, mut raw) = attacked_client().await;
    client_round_trip(&client, &mut raw, "first").await;
    // With I: dropped.
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x82, 0x00, 1, 2, 3]).await;
    client_round_trip(&client, &mut raw, "second").await;
    // A request the script reads but never answers.
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.request_response(Payload::from("pending")).await }
    });
    match next_frame(&mut raw, "the pending request").await {
        Frame::RequestResponse(_) => {}
        other => panic!("expected the pending REQUEST_RESPONSE, got {other:?}"),
    }
    send_bytes(&mut raw, &[0, 0, 0, 0, 0x80, 0x00, 1, 2, 3]).await;
    match next_frame(&mut raw, "the client's connection ERROR").await {
        Frame::Error(e) => {
            assert_eq!(
                (e.stream_id, e.code),
                (None, ErrorCode::CONNECTION_ERROR),
                "{e:?}"
            );
        }
        other => panic!("expected ERROR[CONNECTION_ERROR] on stream 0, got {other:?}"),
    }
    let rest = read_to_end(&mut raw, "the client to close").await;
    assert!(rest.is_none(), "{rest:?}");
    let reason = within("the client to close", client.closed()).await;
    assert!(
        matches!(reason, ConnectionError::Protocol { .. }),
        "{reason:?}"
    );
    let failed = within("the pending request to fail", pending)
        .await
        .expect("join");
    assert!(
        matches!(failed, Err(RequestError::Connection(_))),
        "{failed:?}"
    );
    let later = within(
        "a later request to fail",
        client.request_response(Payload::from("later")),
    )
    .await;
    assert!(
        matches!(later, Err(RequestError::Connection(_))),
        "{later:?}"
    );
}

// ----- connection-level ERROR from the client ----------------------------------

/// An ERROR on stream 0 after SETUP that is not a setup error ends the
/// connection (§3, §2.14: any stream-0 ERROR is connection termination,
/// APPLICATION_ERROR included although it is invalid there): the server
/// sends nothing back, closes, and frees the attacker's open streams;
/// the bystander and a new connection are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_level_errors_from_the_client_end_the_connection() {
    let arena = Arena::start(Config::default()).await;
    // The code's third byte: 0x0101 and 0x0201.
    for (what, hi) in [("CONNECTION_ERROR", 1u8), ("APPLICATION_ERROR", 2)] {
        eprintln!("case: {what}");
        let mut raw = arena.attacker(LONG).await;
        // An open stream, parked on its credit.
        open_with_one_credit(&mut raw, 1).await;
        arena
            .wait("the stream to be open", |s| s.open_streams == 1)
            .await;
        send_bytes(&mut raw, &[0, 0, 0, 0, 0x2C, 0x00, 0, 0, hi, 1, b'x']).await;
        let rest = read_to_end(&mut raw, "the server to close").await;
        assert!(
            rest.is_none() || matches!(rest, Some(Frame::Keepalive(_))),
            "nothing but keepalives after the peer's ERROR: {rest:?}"
        );
        nothing_opened(&arena).await;
        others_still_served(&arena).await;
    }
}

// ----- a requester channel past the credit it was granted -----------------------

fn channel_item(id: u32, data: &'static [u8]) -> Frame {
    Frame::Payload(PayloadFrame {
        stream_id: sid(id),
        follows: false,
        complete: false,
        next: true,
        payload: Payload::new(Bytes::from_static(data)),
    })
}

/// A requester channel whose responder never reads: the server grants the
/// window (`default_prefetch`) and no more; items within it are taken, the
/// first item beyond it is a protocol violation of that stream only: the
/// server ends it (rsocket-protocol.md §5.5, §2.14; proto/mod.rs
/// "Credit") with ERROR[CANCELED], which ends both halves (a CANCEL from a
/// responder would end only the requester's), frees it, and the
/// connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_past_its_credit_is_cancelled() {
    const WINDOW: u32 = 4;
    let config = Config {
        default_prefetch: WINDOW,
        max_prefetch: WINDOW,
        ..Config::default()
    };
    let arena = Arena::start(config).await;
    let mut raw = arena.attacker(LONG).await;
    send(
        &mut raw,
        Frame::RequestChannel(RequestChannel {
            stream_id: sid(1),
            follows: false,
            complete: false,
            initial_request_n: RequestCount::ONE,
            payload: Payload::from("first"),
        }),
    )
    .await;
    let mut granted = 0;
    let mut echoed = false;
    while granted == 0 || !echoed {
        match next_frame(&mut raw, "the grant and the echo").await {
            Frame::RequestN(n) if n.stream_id == sid(1) => granted += n.request_n.get(),
            Frame::Payload(p) if p.stream_id == sid(1) && p.next && !p.complete && !echoed => {
                assert_eq!(p.payload.data, Bytes::from_static(b"first"));
                echoed = true;
            }
            other => panic!("expected REQUEST_N or the echo on stream 1, got {other:?}"),
        }
    }
    assert_eq!(granted, WINDOW);
    for _ in 0..WINDOW {
        send(&mut raw, channel_item(1, b"item")).await;
    }
    // Within credit: nothing is sent back, the stream stays open.
    ping(&mut raw, 3).await;
    let s = arena
        .wait("the items to be held", |s| s.open_streams == 1)
        .await;
    assert_eq!(s.queued_in_bytes, 4 * WINDOW as usize, "{s:?}");
    // One beyond: the stream ends, and nothing else is sent.
    send(&mut raw, channel_item(1, b"over")).await;
    match next_frame(&mut raw, "the ERROR").await {
        Frame::Error(e) if e.stream_id == Some(sid(1)) => {
            assert_eq!(e.code, ErrorCode::CANCELED);
        }
        other => panic!("expected ERROR[CANCELED] on stream 1, got {other:?}"),
    }
    // Late items on the cancelled stream are ignored.
    send(&mut raw, channel_item(1, b"late")).await;
    ping(&mut raw, 5).await;
    nothing_opened(&arena).await;
    assert_eq!(arena.stats.snapshot().queued_in_bytes, 0);
    drop(raw);
    others_still_served(&arena).await;
}

// ----- resumption on a live server ---------------------------------------------

/// A server with resumption on, its bystander, and raw resumable sessions.
async fn resumable_arena() -> Arena {
    Arena::start_server(
        Config::default(),
        |l| l,
        |s| s.resumption(ServerResumeOptions::default()),
    )
    .await
}

/// SETUP with a resume token (R flag).
fn resumable_setup(token: &'static [u8]) -> Frame {
    let Frame::Setup(mut s) = setup(LONG) else {
        unreachable!()
    };
    s.resume_token = Some(Bytes::from_static(token));
    Frame::Setup(s)
}

fn resume(token: &'static [u8], last_received_server: u64, first_available_client: u64) -> Frame {
    Frame::Resume(Resume {
        version: Version::V1_0,
        resume_token: Bytes::from_static(token),
        last_received_server_position: last_received_server,
        first_available_client_position: first_available_client,
    })
}

fn position(frames: &[&Frame]) -> u64 {
    frames.iter().map(|f| f.encoded_len() as u64).sum()
}

/// The answer `ping` gets on `id`, as the server encodes it.
fn pong(id: u32) -> Frame {
    Frame::Payload(PayloadFrame {
        stream_id: sid(id),
        follows: false,
        complete: true,
        next: true,
        payload: Payload::from(format!("ping {id}")),
    })
}

fn ping_request(id: u32) -> Frame {
    rr(id, Bytes::from(format!("ping {id}")), false)
}

/// A resumable session `token` whose first transport was answered two
/// pings (streams 1 and 3); returns that transport, still open.
async fn session_with_two_answers(arena: &Arena, token: &'static [u8]) -> Raw {
    let mut raw = arena.connect_raw().await;
    send(&mut raw, resumable_setup(token)).await;
    ping(&mut raw, 1).await;
    ping(&mut raw, 3).await;
    raw
}

/// A new transport resumes `token`, having received nothing: RESUME_OK
/// with the server's received position, then the server's whole store
/// replayed (`expected`).
async fn resume_and_expect_replay(
    arena: &Arena,
    token: &'static [u8],
    client_sent: u64,
    expected: &[Frame],
) -> Raw {
    let mut raw = arena.connect_raw().await;
    send(&mut raw, resume(token, 0, 0)).await;
    match next_frame(&mut raw, "RESUME_OK").await {
        Frame::ResumeOk(ok) => assert_eq!(ok.last_received_client_position, client_sent),
        other => panic!("expected RESUME_OK, got {other:?}"),
    }
    for want in expected {
        assert_eq!(&next_frame(&mut raw, "the replay").await, want);
    }
    raw
}

/// Over TCP, with a bystander: a RESUME on a connection that already
/// resumed is ERROR[CONNECTION_ERROR] (§9.3, §2.14); a RESUME for a token
/// that was never set up is ERROR[REJECTED_RESUME] (§9.3). Each closes
/// only its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_resume_and_an_unknown_token_on_a_live_server() {
    let arena = resumable_arena().await;
    let first = session_with_two_answers(&arena, b"twice").await;
    drop(first);
    let sent = position(&[&ping_request(1), &ping_request(3)]);
    let mut raw = resume_and_expect_replay(&arena, b"twice", sent, &[pong(1), pong(3)]).await;
    // The resumed session serves.
    ping(&mut raw, 5).await;
    // The same RESUME again, on the connection that resumed.
    let sent = sent + position(&[&ping_request(5)]);
    let received = position(&[&pong(1), &pong(3), &pong(5)]);
    send(&mut raw, resume(b"twice", received, sent)).await;
    expect_closed_with(&arena, raw, ErrorCode::CONNECTION_ERROR).await;
    // A token nobody set up, as the first frame of a new connection.
    let mut raw = arena.connect_raw().await;
    send(&mut raw, resume(b"never set up", 0, 0)).await;
    expect_closed_with(&arena, raw, ErrorCode::REJECTED_RESUME).await;
}

/// On a resumable connection, a KEEPALIVE acknowledging more than the
/// server ever sent is ignored (proto/resume.rs `release`: "a position
/// beyond what was sent is ignored"; rsocket-protocol.md §9.2 lets the
/// receiver trim only up to a position it sent): the connection goes on
/// serving and nothing is released from the store, so a later resume from
/// position 0 still gets every answer replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_position_beyond_what_was_sent_releases_nothing() {
    let arena = resumable_arena().await;
    let mut raw = session_with_two_answers(&arena, b"beyond").await;
    let beyond = position(&[&pong(1), &pong(3)]) + 1;
    for last_received_position in [beyond, 1 << 40, (1 << 63) - 1] {
        send(
            &mut raw,
            Frame::Keepalive(Keepalive {
                respond: false,
                last_received_position,
                data: Bytes::new(),
            }),
        )
        .await;
    }
    ping(&mut raw, 5).await;
    drop(raw);
    let sent = position(&[&ping_request(1), &ping_request(3), &ping_request(5)]);
    let mut raw =
        resume_and_expect_replay(&arena, b"beyond", sent, &[pong(1), pong(3), pong(5)]).await;
    ping(&mut raw, 7).await;
    drop(raw);
    arena.bystander_answers().await;
}

// ----- leasing, credit overflow, metadata length at the frame end --------------

/// KEEPALIVE with R and `data`, then its answer: everything the server
/// does with frames sent before it has been done (one connection, in
/// order), without relying on a request that a lease could refuse.
async fn keepalive_barrier(raw: &mut Raw, data: &'static [u8]) {
    let mut frame = vec![0, 0, 0, 0, 0x0C, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(data);
    send_bytes(raw, &frame).await;
    read_until(
        raw,
        "the keepalive answer",
        |f| matches!(f, Frame::Keepalive(k) if !k.respond && k.data == data),
    )
    .await;
}

fn assert_rejected(f: &Frame, id: u32) {
    match f {
        Frame::Error(e) if e.stream_id == Some(sid(id)) && e.code == ErrorCode::REJECTED => {}
        other => panic!("expected ERROR[REJECTED] on stream {id}, got {other:?}"),
    }
}

/// A live server leasing 2 requests per minute to clients that ask for
/// leasing (SETUP with L): a raw client's requests beyond the lease get
/// ERROR[REJECTED] on their stream and run no handler, a fire-and-forget
/// beyond it is dropped and counted (rsocket-protocol.md §7, §5.2); the
/// connection keeps serving (its
/// keepalives are answered), and the bystander, which did not ask for
/// leasing, is served without limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_lease_are_rejected_on_a_live_server() {
    let lease = LeaseConfig::new().policy(LeasePolicy::fixed(Duration::from_secs(60), 2));
    let arena = Arena::start_server(Config::default(), |l| l, |s| s.lease(lease)).await;
    let mut raw = arena.connect_raw().await;
    let Frame::Setup(mut s) = setup(LONG) else {
        unreachable!()
    };
    s.lease = true;
    send(&mut raw, Frame::Setup(s)).await;
    match next_frame(&mut raw, "the lease").await {
        Frame::Lease(l) => assert_eq!((l.ttl_ms, l.number_of_requests), (60_000, 2)),
        other => panic!("expected the LEASE first, got {other:?}"),
    }
    // Within the lease: a request/response and a fire-and-forget.
    ping(&mut raw, 1).await;
    send(
        &mut raw,
        Frame::RequestFnf(RequestFnf {
            stream_id: sid(3),
            follows: false,
            payload: Payload::from("admitted"),
        }),
    )
    .await;
    // Beyond it: every kind of request.
    send(&mut raw, rr(5, Bytes::from_static(b"over"), false)).await;
    assert_rejected(&next_frame(&mut raw, "the rejection").await, 5);
    send(
        &mut raw,
        Frame::RequestStream(RequestStream {
            stream_id: sid(7),
            follows: false,
            initial_request_n: RequestCount::ONE,
            payload: Payload::from("over"),
        }),
    )
    .await;
    assert_rejected(&next_frame(&mut raw, "the rejection").await, 7);
    send(
        &mut raw,
        Frame::RequestChannel(RequestChannel {
            stream_id: sid(9),
            follows: false,
            complete: false,
            initial_request_n: RequestCount::ONE,
            payload: Payload::from("over"),
        }),
    )
    .await;
    assert_rejected(&next_frame(&mut raw, "the rejection").await, 9);
    send(
        &mut raw,
        Frame::RequestFnf(RequestFnf {
            stream_id: sid(11),
            follows: false,
            payload: Payload::from("dropped"),
        }),
    )
    .await;
    keepalive_barrier(&mut raw, b"after").await;
    let stats = arena
        .wait("the admitted fire-and-forget's handler", |s| {
            s.handlers_running == 1
        })
        .await;
    assert_eq!((stats.lease_rejected, stats.lease_dropped_fnf), (3, 1));
    assert_eq!(stats.open_streams, 0, "{stats:?}");
    // The admitted one completes; nothing else reached a handler.
    arena.target.gate.add_permits(10);
    arena
        .wait("the handler to finish", |s| s.handlers_running == 0)
        .await;
    assert_eq!(arena.target.handled.load(Ordering::SeqCst), 1);
    // The attacker's connection is still up, and the bystander is served
    // without limit.
    keepalive_barrier(&mut raw, b"still up").await;
    assert_eq!(arena.stats.snapshot().connections, 2);
    arena.bystander_answers().await;
    arena.bystander_answers().await;
}

/// REQUEST_N of 2^31 − 1, repeated, on a live stream (rsocket-protocol.md
/// §5.5: keep credits saturating, an accumulated 2^31 − 1 is unbounded): the credit saturates, nothing panics, the
/// stream keeps flowing past any finite window, and the connection and
/// the bystander are served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_n_overflow_saturates_on_a_live_stream() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    open_with_one_credit(&mut raw, 1).await;
    let max_n: &[u8] = &[0, 0, 0, 1, 0x20, 0x00, 0x7F, 0xFF, 0xFF, 0xFF];
    for _ in 0..3 {
        send_bytes(&mut raw, max_n).await;
    }
    // Far more items than a wrapped (or ignored) credit would allow.
    for i in 1..=5000u64 {
        match next_frame(&mut raw, "the next item").await {
            Frame::Payload(p) if p.stream_id == sid(1) && p.next && !p.complete => {
                assert_eq!(p.payload.data, Bytes::from(i.to_string()));
            }
            other => panic!("expected item {i} on stream 1, got {other:?}"),
        }
    }
    send_bytes(&mut raw, max_n).await;
    send_bytes(&mut raw, &[0, 0, 0, 1, 0x24, 0x00]).await; // CANCEL
    send(&mut raw, rr(3, Bytes::from_static(b"after"), false)).await;
    read_until(
        &mut raw,
        "the answer after the cancel",
        |f| matches!(f, Frame::Payload(p) if p.stream_id == sid(3) && p.complete),
    )
    .await;
    nothing_opened(&arena).await;
    drop(raw);
    others_still_served(&arena).await;
}

/// The metadata length field against the frame end (rsocket-protocol.md
/// §1.6, §2.14): equal to what
/// is left is valid (all metadata, empty data), one past it is
/// ERROR[CONNECTION_ERROR]; a PAYLOAD with M and a zero metadata length
/// carries present-but-empty metadata (not "no metadata").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_length_at_and_past_the_frame_end() {
    let arena = Arena::start(Config::default()).await;
    let mut raw = arena.attacker(LONG).await;
    // REQUEST_RESPONSE M, metadata length 3 = exactly what is left.
    send_bytes(
        &mut raw,
        &[0, 0, 0, 1, 0x11, 0x00, 0, 0, 3, b'a', b'b', b'c'],
    )
    .await;
    match next_frame(&mut raw, "the echo").await {
        Frame::Payload(p) if p.stream_id == sid(1) && p.complete => {
            assert_eq!(p.payload.metadata, Some(Bytes::from_static(b"abc")));
            assert!(p.payload.data.is_empty(), "{p:?}");
        }
        other => panic!("expected the echo on stream 1, got {other:?}"),
    }
    // A fragmented request completed by a PAYLOAD with M and metadata
    // length 0: reassembled with present, empty metadata.
    send(&mut raw, rr(3, Bytes::from_static(b"ab"), true)).await;
    send_bytes(&mut raw, &[0, 0, 0, 3, 0x29, 0x20, 0, 0, 0, b'c', b'd']).await;
    match next_frame(&mut raw, "the echo").await {
        Frame::Payload(p) if p.stream_id == sid(3) && p.complete => {
            assert_eq!(p.payload.metadata, Some(Bytes::new()), "{p:?}");
            assert_eq!(p.payload.data, Bytes::from_static(b"abcd"));
        }
        other => panic!("expected the echo on stream 3, got {other:?}"),
    }
    nothing_opened(&arena).await;
    // Metadata length 4 with 3 bytes left: one past the frame end.
    send_bytes(
        &mut raw,
        &[0, 0, 0, 5, 0x11, 0x00, 0, 0, 4, b'a', b'b', b'c'],
    )
    .await;
    expect_closed_with(&arena, raw, ErrorCode::CONNECTION_ERROR).await;
    // The same on a PAYLOAD (of an open stream).
    let mut raw = arena.attacker(LONG).await;
    send(&mut raw, rr(1, Bytes::from_static(b"ab"), true)).await;
    send_bytes(&mut raw, &[0, 0, 0, 1, 0x29, 0x20, 0, 0, 1]).await;
    expect_closed_with(&arena, raw, ErrorCode::CONNECTION_ERROR).await;
}
