//! The limits a peer cannot get around (issue 9): a server over the
//! in-memory transport, driven by a script that writes raw frames, with the
//! engine's own counters asserted. Every wait has a timeout that only turns
//! a hang into a failure; nothing is ordered by sleeping.

use rsocket_core::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rsocket_core::codec::FrameCodec;
use rsocket_core::frame::{PayloadFrame, RequestFnf, RequestResponse, Setup, Version};
use rsocket_core::runtime::ServerStatsHandle;
use rsocket_core::{
    Config, ErrorCode, Frame, MimeType, Payload, RSocket, RequestError, Server, ServerStats,
    StreamId, StreamTransport,
};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(5);

type Raw = Framed<DuplexStream, FrameCodec>;

/// Under a paused clock, tokio timeouts fire only when the runtime is idle,
/// so an engine that keeps reading would hang the test. This real-time
/// watchdog aborts the test binary instead; dropping it disarms it.
struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(test: &'static str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let limit = Duration::from_secs(30);
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{test}: still running after {limit:?} of real time; aborting");
                std::process::abort();
            }
        });
        Self { _disarm: tx }
    }
}

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {WAIT:?}"))
}

/// Answers request/response with the request itself, at once.
struct Echo;

#[async_trait]

impl RSocket for Echo {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Box::pin(async move { Ok(Some(req)) }).await
    }
}

/// A running server on one in-memory connection whose other end is `Raw`,
/// with a pipe of `pipe` bytes per direction.
struct Scripted {
    raw: Raw,
    stats: ServerStatsHandle,
    shutdown: Option<oneshot::Sender<()>>,
}

fn start(config: Config, pipe: usize, grace: Duration) -> Scripted {
    let (engine, script) = tokio::io::duplex(pipe);
    let (r, w) = tokio::io::split(engine);
    let server = Server::new(|_setup, _requester| async { Ok(Arc::new(Echo) as Arc<dyn RSocket>) })
        .config(config)
        .grace_period(grace);
    let stats = server.stats_handle();
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = futures::stream::iter([Ok::<_, std::io::Error>(StreamTransport::new(r, w))])
        .chain(futures::stream::pending());
    tokio::spawn(server.serve_with_shutdown(incoming, async {
        let _ = rx.await;
    }));
    Scripted {
        raw: Framed::new(script, FrameCodec::new()),
        stats,
        shutdown: Some(tx),
    }
}

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("stream id")
}

fn setup() -> Frame {
    Frame::Setup(Box::new(Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: 90_000,
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

fn fragment(id: u32, data: Bytes, follows: bool) -> Frame {
    Frame::Payload(PayloadFrame {
        stream_id: sid(id),
        follows,
        complete: false,
        next: true,
        payload: Payload::new(data),
    })
}

async fn send(raw: &mut Raw, frame: Frame) {
    within("send", raw.send(frame)).await.expect("send");
}

async fn expect_frame(raw: &mut Raw) -> Frame {
    match within("a frame from the server", raw.next()).await {
        Some(Ok(b)) => Frame::decode(b).expect("server sent a valid frame"),
        other => panic!("expected a frame, got {other:?}"),
    }
}

async fn expect_answer(raw: &mut Raw, id: u32, data: &[u8]) {
    match expect_frame(raw).await {
        Frame::Payload(p) if p.stream_id == sid(id) => assert_eq!(&p.payload.data[..], data),
        other => panic!("expected the answer on stream {id}, got {other:?}"),
    }
}

async fn expect_error(raw: &mut Raw, stream: Option<u32>, code: ErrorCode) {
    match expect_frame(raw).await {
        Frame::Error(e) if e.stream_id == stream.map(sid) && e.code == code => {}
        other => panic!("expected {code} on {stream:?}, got {other:?}"),
    }
}

async fn expect_closed(raw: &mut Raw) {
    match within("the server to close", raw.next()).await {
        None => {}
        other => panic!("expected the transport to close, got {other:?}"),
    }
}

/// Waits (guarded) until the server's counters satisfy `cond`.
async fn wait_stats(
    stats: &ServerStatsHandle,
    what: &str,
    cond: impl Fn(&ServerStats) -> bool,
) -> ServerStats {
    within(what, async {
        loop {
            let s = stats.snapshot();
            if cond(&s) {
                return s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

// ----- 1. answers count against max_outbound_queue_bytes --------------------

const CAP: usize = 16 << 10;
const REQUEST_DATA: usize = 1 << 10;
/// An answer: PAYLOAD header (6 bytes) + the echoed data.
const ANSWER_LEN: usize = 6 + REQUEST_DATA;

/// Writes request/response frames on odd ids forever; never reads.
fn pipeline(raw: Raw) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let (mut sink, read_half) = raw.split();
    tokio::spawn(async move {
        let _keep_unread = read_half;
        let data = Bytes::from(vec![7u8; REQUEST_DATA]);
        let mut id = 1u32;
        loop {
            sink.send(rr(id, data.clone(), false))
                .await
                .map_err(std::io::Error::other)?;
            id += 2;
        }
    })
}

#[tokio::test]
async fn pipelined_requests_from_a_peer_that_never_reads_pause_reading() {
    let config = Config {
        max_outbound_queue_bytes: CAP,
        ..Config::default()
    };
    let mut s = start(config, 8 << 10, Duration::from_secs(1));
    send(&mut s.raw, setup()).await;
    let writer = pipeline(s.raw);
    let paused = wait_stats(&s.stats, "reading to pause", |st| {
        st.paused_connections == 1
    })
    .await;
    assert!(
        paused.queued_out_bytes < CAP + ANSWER_LEN,
        "answers queued past the cap before reading paused: {paused:?}"
    );
    // Reading stays paused: no frame is taken from the wire while the peer
    // reads nothing, and the queue does not grow.
    for _ in 0..200 {
        tokio::task::yield_now().await;
        let now = s.stats.snapshot();
        assert_eq!(
            now.frames_in, paused.frames_in,
            "a frame was read while paused"
        );
        assert_eq!(now.queued_out_bytes, paused.queued_out_bytes);
        assert_eq!(now.paused_connections, 1);
    }
    assert!(!writer.is_finished(), "the peer's writes must be held back");
    writer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_is_dropped_after_the_stall_timeout() {
    let _watchdog = Watchdog::arm("a_peer_that_never_reads_is_dropped_after_the_stall_timeout");
    let config = Config {
        max_outbound_queue_bytes: CAP,
        outbound_stall_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mut s = start(config, 8 << 10, Duration::from_secs(1));
    send(&mut s.raw, setup()).await;
    let writer = pipeline(s.raw);
    wait_stats(&s.stats, "reading to pause", |st| {
        st.paused_connections == 1
    })
    .await;
    // With the clock paused, time moves only when every task is idle: the
    // stall timeout is the only timer left before the guard's.
    let written = within("the server to drop the connection", writer).await;
    assert!(
        matches!(written, Ok(Err(_))),
        "the peer's writes fail once the connection is dropped: {written:?}"
    );
    let st = s.stats.snapshot();
    assert_eq!((st.connections, st.queued_out_bytes), (0, 0), "{st:?}");
}

// ----- 2. reassembly only for streams that exist, within the stream limit ---

#[tokio::test]
async fn fragments_for_streams_never_opened_are_not_buffered() {
    let config = Config {
        max_reassembly_bytes: 1024,
        ..Config::default()
    };
    let mut s = start(config, 64 << 10, Duration::from_secs(1));
    send(&mut s.raw, setup()).await;
    for id in [101, 103, 105, 2, 4] {
        send(&mut s.raw, fragment(id, Bytes::from(vec![1u8; 600]), true)).await;
    }
    // 3,000 bytes of fragments did not count against the 1,024-byte limit:
    // the connection still answers.
    send(&mut s.raw, rr(1, Bytes::from_static(b"ping"), false)).await;
    expect_answer(&mut s.raw, 1, b"ping").await;
    let st = s.stats.snapshot();
    assert_eq!((st.reassembly_bytes, st.partial_requests), (0, 0), "{st:?}");
}

#[tokio::test]
async fn partial_requests_count_against_the_stream_limit() {
    let config = Config {
        max_concurrent_inbound_streams: 2,
        ..Config::default()
    };
    let mut s = start(config, 64 << 10, Duration::from_secs(1));
    send(&mut s.raw, setup()).await;
    // Two requests whose first (empty) fragment arrived take both slots.
    send(&mut s.raw, rr(1, Bytes::new(), true)).await;
    send(&mut s.raw, rr(3, Bytes::new(), true)).await;
    send(&mut s.raw, rr(5, Bytes::new(), true)).await;
    expect_error(&mut s.raw, Some(5), ErrorCode::REJECTED).await;
    send(&mut s.raw, rr(7, Bytes::from_static(b"whole"), false)).await;
    expect_error(&mut s.raw, Some(7), ErrorCode::REJECTED).await;
    // The refused request's follow-up is dropped; finishing stream 1 frees
    // its slot.
    send(&mut s.raw, fragment(5, Bytes::from_static(b"late"), false)).await;
    send(&mut s.raw, fragment(1, Bytes::from_static(b"one"), false)).await;
    expect_answer(&mut s.raw, 1, b"one").await;
    send(&mut s.raw, rr(9, Bytes::from_static(b"nine"), false)).await;
    expect_answer(&mut s.raw, 9, b"nine").await;
    let st = s.stats.snapshot();
    assert_eq!((st.partial_requests, st.inbound_streams), (1, 1), "{st:?}");
}

#[tokio::test]
async fn zero_length_fragment_floods_hold_nothing() {
    const LIMIT: usize = 8;
    let config = Config {
        max_concurrent_inbound_streams: LIMIT,
        ..Config::default()
    };
    let mut s = start(config, 64 << 10, Duration::from_secs(1));
    send(&mut s.raw, setup()).await;
    for i in 0..10_000u32 {
        let frame = Frame::RequestFnf(RequestFnf {
            stream_id: sid(2 * i + 1),
            follows: true,
            payload: Payload::default(),
        });
        SinkExt::<Frame>::feed(&mut s.raw, frame)
            .await
            .expect("feed");
    }
    within("flush", SinkExt::<Frame>::flush(&mut s.raw))
        .await
        .expect("flush");
    send(&mut s.raw, rr(30_001, Bytes::from_static(b"after"), false)).await;
    // Refused (every slot holds a partial fire-and-forget), but answered.
    expect_error(&mut s.raw, Some(30_001), ErrorCode::REJECTED).await;
    let st = s.stats.snapshot();
    assert_eq!(st.partial_requests, LIMIT, "{st:?}");
    assert_eq!(st.reassembly_bytes, 0, "{st:?}");
}

#[tokio::test]
async fn a_partial_request_does_not_hold_up_graceful_shutdown() {
    // The grace period is far longer than the test's guard.
    let mut s = start(Config::default(), 64 << 10, Duration::from_secs(60));
    send(&mut s.raw, setup()).await;
    send(&mut s.raw, rr(1, Bytes::from_static(b"half"), true)).await;
    send(&mut s.raw, rr(3, Bytes::from_static(b"ping"), false)).await;
    expect_answer(&mut s.raw, 3, b"ping").await;
    assert_eq!(s.stats.snapshot().partial_requests, 1);
    if let Some(tx) = s.shutdown.take() {
        let _ = tx.send(());
    }
    // Draining begins with CONNECTION_CLOSE; the partial request is refused
    // at once, and nothing else is open, so the connection then closes.
    expect_error(&mut s.raw, None, ErrorCode::CONNECTION_CLOSE).await;
    expect_error(&mut s.raw, Some(1), ErrorCode::REJECTED).await;
    expect_closed(&mut s.raw).await;
}

// ----- 3. Config::max_frame_len applies to inbound frames -------------------

#[tokio::test]
async fn frames_over_max_frame_len_are_refused_from_their_length() {
    const MAX: usize = 1024;
    let config = Config {
        max_frame_len: MAX,
        ..Config::default()
    };
    let mut s = start(config, 64 << 10, Duration::from_secs(1));
    send(&mut s.raw, setup()).await;
    // Exactly at the limit: a 6-byte header and MAX - 6 bytes of data.
    let data = Bytes::from(vec![3u8; MAX - 6]);
    send(&mut s.raw, rr(1, data.clone(), false)).await;
    expect_answer(&mut s.raw, 1, &data).await;
    // One byte over, announced by the length prefix and never sent: a
    // server that waited for the frame before checking would hang.
    let mut prefix = BytesMut::new();
    prefix.put_uint(MAX as u64 + 1, 3);
    prefix.put_u32(3);
    within("send", s.raw.get_mut().write_all_buf(&mut prefix))
        .await
        .expect("write");
    expect_error(&mut s.raw, None, ErrorCode::CONNECTION_ERROR).await;
    expect_closed(&mut s.raw).await;
}

// ----- 3b. Outbound frames that cannot be fragmented ----------------------
//
// METADATA_PUSH, LEASE and ERROR frames have no fragments: one longer than
// `max_frame_len` must neither close the connection nor go out.

/// A client with `config` (and `responder`) on an in-memory pipe whose
/// other end is the script's; the script has read the SETUP.
async fn scripted_client(
    config: Config,
    responder: Option<Arc<dyn RSocket>>,
) -> (rsocket_core::Requester, Raw) {
    let (engine, script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    let mut builder = rsocket_core::ClientBuilder::new().config(config);
    if let Some(responder) = responder {
        builder = builder.responder(responder);
    }
    let requester = builder
        .connect(StreamTransport::new(r, w))
        .expect("valid config");
    let mut raw = Framed::new(script, FrameCodec::new());
    assert!(matches!(expect_frame(&mut raw).await, Frame::Setup(_)));
    (requester, raw)
}

#[tokio::test]
async fn a_metadata_push_over_max_frame_len_fails_and_the_connection_goes_on() {
    const MAX: usize = 1024;
    let config = Config {
        max_frame_len: MAX,
        ..Config::default()
    };
    let (requester, mut raw) = scripted_client(config, None).await;
    match requester
        .metadata_push(Bytes::from(vec![b'm'; MAX - 6 + 1]))
        .await
    {
        Err(RequestError::FrameTooLarge { len, max }) => assert_eq!((len, max), (MAX + 1, MAX)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // Exactly at the limit it goes, and it is the next frame: the one
    // over it was not sent, and the connection is still open.
    let fits = Bytes::from(vec![b'k'; MAX - 6]);
    within("push", requester.metadata_push(fits.clone()))
        .await
        .expect("sent");
    match expect_frame(&mut raw).await {
        Frame::MetadataPush(m) => assert_eq!(m.metadata, fits),
        other => panic!("expected the METADATA_PUSH that fits, got {other:?}"),
    }
    assert!(!requester.is_closed());
}

struct LongError;

#[async_trait]
impl RSocket for LongError {
    async fn request_response(&self, _req: Payload) -> Result<Option<Payload>, RequestError> {
        // Two bytes a character: the cut must fall on a boundary.
        Err(rsocket_core::StreamError::application("é".repeat(4000)).into())
    }
}

#[tokio::test]
async fn an_error_message_longer_than_max_frame_len_is_cut_to_fit() {
    const MAX: usize = 1025;
    let config = Config {
        max_frame_len: MAX,
        ..Config::default()
    };
    let (requester, mut raw) =
        scripted_client(config, Some(Arc::new(LongError) as Arc<dyn RSocket>)).await;
    send(&mut raw, rr(2, Bytes::from_static(b"q"), false)).await;
    let bytes = match within("the ERROR", raw.next()).await {
        Some(Ok(b)) => b,
        other => panic!("expected a frame, got {other:?}"),
    };
    assert!(
        bytes.len() <= MAX,
        "an ERROR frame of {} bytes",
        bytes.len()
    );
    match Frame::decode(bytes).expect("valid frame") {
        Frame::Error(e) => {
            assert_eq!(e.stream_id, Some(sid(2)));
            assert_eq!(e.code, ErrorCode::APPLICATION_ERROR);
            let message = std::str::from_utf8(&e.data).expect("UTF-8");
            // 1025 - 10 bytes of room hold 507 two-byte characters.
            assert_eq!(message, "é".repeat(507));
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    within(
        "push",
        requester.metadata_push(Bytes::from_static(b"after")),
    )
    .await
    .expect("still open");
    assert!(matches!(
        expect_frame(&mut raw).await,
        Frame::MetadataPush(_)
    ));
}

#[tokio::test]
async fn a_lease_over_max_frame_len_is_not_granted() {
    const MAX: usize = 1024;
    let config = Config {
        max_frame_len: MAX,
        lease: Some(rsocket_core::LeaseConfig::new()),
        ..Config::default()
    };
    let (requester, mut raw) = scripted_client(config, None).await;
    let ttl = Duration::from_secs(60);
    let too_long = rsocket_core::Lease::new(ttl, 1).with_metadata(vec![0u8; MAX - 14 + 1]);
    assert!(!requester.send_lease(&too_long));
    let fits = rsocket_core::Lease::new(ttl, 2).with_metadata(vec![0u8; MAX - 14]);
    assert!(requester.send_lease(&fits));
    match expect_frame(&mut raw).await {
        Frame::Lease(l) => assert_eq!(l.number_of_requests, 2),
        other => panic!("expected the LEASE that fits, got {other:?}"),
    }
    assert!(!requester.is_closed());
}

// ----- 4. Accept errors -----------------------------------------------------

/// Serves a listener whose accepts fail three times with `err`, then that
/// ends: how long (on the paused clock) the server took.
async fn serve_three_failed_accepts(err: fn() -> std::io::Error) -> Duration {
    let server = Server::new(|_setup, _requester| async { Ok(Arc::new(Echo) as Arc<dyn RSocket>) });
    let incoming =
        futures::stream::iter((0..3).map(move |_| Err::<rsocket_core::MemoryTransport, _>(err())));
    let started = tokio::time::Instant::now();
    within("serve", server.serve(incoming))
        .await
        .expect("served");
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn accept_errors_that_are_not_about_one_connection_pause_accepting() {
    let _watchdog =
        Watchdog::arm("accept_errors_that_are_not_about_one_connection_pause_accepting");
    // Out of file descriptors (EMFILE): the listener fails again at once
    // for as long as it lasts, so accepting again at once would spin.
    let emfile = serve_three_failed_accepts(|| std::io::Error::from_raw_os_error(24)).await;
    assert!(emfile >= Duration::from_millis(5), "paused {emfile:?}");
    // A connection reset before it was accepted concerns that one only.
    let reset =
        serve_three_failed_accepts(|| std::io::Error::from(std::io::ErrorKind::ConnectionAborted))
            .await;
    assert_eq!(reset, Duration::ZERO);
}

#[tokio::test]
async fn a_setup_over_max_frame_len_is_refused_before_connecting() {
    const MAX: usize = 1024;
    let (engine, _script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    let result = rsocket_core::ClientBuilder::new()
        .config(Config {
            max_frame_len: MAX,
            ..Config::default()
        })
        .setup_payload(Payload::new(Bytes::from(vec![0u8; MAX])))
        .connect(StreamTransport::new(r, w));
    match result {
        Err(rsocket_core::ConfigError::SetupFrameTooLong { len, max }) => {
            assert!(len > MAX);
            assert_eq!(max, MAX);
        }
        Err(other) => panic!("expected SetupFrameTooLong, got {other:?}"),
        Ok(_) => panic!("a SETUP longer than max_frame_len was accepted"),
    }
}

#[tokio::test]
async fn a_keepalive_interval_or_lifetime_below_one_millisecond_is_refused() {
    for (interval, lifetime) in [
        (Duration::ZERO, Duration::from_secs(90)),
        (Duration::from_micros(999), Duration::from_secs(90)),
        (Duration::from_secs(20), Duration::ZERO),
    ] {
        let (engine, _script) = tokio::io::duplex(64 << 10);
        let (r, w) = tokio::io::split(engine);
        let result = rsocket_core::ClientBuilder::new()
            .keepalive(interval, lifetime)
            .connect(StreamTransport::new(r, w));
        assert!(
            matches!(result, Err(rsocket_core::ConfigError::Zero(_))),
            "keepalive({interval:?}, {lifetime:?}) was accepted"
        );
    }
    // One millisecond is the least SETUP carries.
    let (engine, _script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    assert!(rsocket_core::ClientBuilder::new()
        .keepalive(Duration::from_millis(1), Duration::from_millis(2))
        .connect(StreamTransport::new(r, w))
        .is_ok());
}

/// A max lifetime not longer than the keepalive interval would have both
/// sides judge an idle connection dead between two KEEPALIVEs.
#[tokio::test]
async fn a_keepalive_lifetime_not_longer_than_the_interval_is_refused() {
    for (interval, lifetime) in [
        (Duration::from_secs(20), Duration::from_secs(5)),
        (Duration::from_secs(20), Duration::from_secs(20)),
        // Equal in the whole milliseconds SETUP carries.
        (Duration::from_millis(20), Duration::from_micros(20_900)),
    ] {
        let (engine, _script) = tokio::io::duplex(64 << 10);
        let (r, w) = tokio::io::split(engine);
        let result = rsocket_core::ClientBuilder::new()
            .keepalive(interval, lifetime)
            .connect(StreamTransport::new(r, w));
        assert!(
            matches!(
                result,
                Err(rsocket_core::ConfigError::KeepaliveLifetime { .. })
            ),
            "keepalive({interval:?}, {lifetime:?}) was accepted"
        );
    }
}
