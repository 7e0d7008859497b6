//! Scripted-peer tests for session resumption: one end is the real engine
//! (a resumable client from `ClientBuilder::connect_resumable`, or a
//! `Server` with `resumption`), the other a script reading and writing raw
//! frames, so the exact RESUME, RESUME_OK, KEEPALIVE and ERROR frames and
//! their positions are asserted (rsocket-protocol.md §9).
//!
//! Positions are computed here independently, from the encoded length of
//! each resumable frame the script sent or received. Every wait has a
//! timeout; nothing is ordered by sleeping.

mod common;
use common::*;

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rsocket_core::frame::{
    Keepalive, PayloadFrame, RequestN, RequestStream, Resume, Setup, Version,
};
use rsocket_core::{
    request_stream_fn, ClientBuilder, Config, ConnectionError, ErrorCode, Frame, MemoryTransport,
    MimeType, Payload, RequestError, Requester, ResumeFailure, ResumeOptions, Server,
    ServerResumeOptions,
};
use tokio::sync::mpsc;

/// The next frame that is not a KEEPALIVE.
async fn expect_non_keepalive(raw: &mut Raw) -> Frame {
    loop {
        let f = expect_frame(raw).await;
        if !matches!(f, Frame::Keepalive(_)) {
            return f;
        }
    }
}

fn next(id: u32, data: &'static str) -> Frame {
    Frame::Payload(PayloadFrame::next(sid(id), Payload::from(data)))
}

fn len(f: &Frame) -> u64 {
    f.encoded_len() as u64
}

fn setup_with_token(token: &'static [u8]) -> Setup {
    Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: 90_000,
        resume_token: Some(Bytes::from_static(token)),
        lease: false,
        metadata_mime_type: MimeType::OCTET_STREAM,
        data_mime_type: MimeType::OCTET_STREAM,
        payload: Payload::default(),
    }
}

fn resume(token: &'static [u8], last_received_server: u64, first_available_client: u64) -> Frame {
    Frame::Resume(Resume {
        version: Version::V1_0,
        resume_token: Bytes::from_static(token),
        last_received_server_position: last_received_server,
        first_available_client_position: first_available_client,
    })
}

fn assert_connection_error(f: &Frame, code: ErrorCode) {
    match f {
        Frame::Error(e) if e.stream_id.is_none() && e.code == code => {}
        other => panic!("expected ERROR[{code}] on stream 0, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// A resumable client whose transports are raw pipes: each time it
/// connects, the script gets the other end from the returned receiver.
async fn resumable_client(builder: ClientBuilder) -> (Requester, mpsc::UnboundedReceiver<Raw>) {
    resumable_client_with(builder, |_| {}).await
}

/// [`resumable_client`], with `before` called with the number of the
/// connection (0 for the first) before it is made.
async fn resumable_client_with(
    builder: ClientBuilder,
    before: impl Fn(usize) + Send + Sync + 'static,
) -> (Requester, mpsc::UnboundedReceiver<Raw>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let requester = prompt(
        "connect",
        builder.connect_resumable(move || {
            before(calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            let tx = tx.clone();
            async move {
                let (engine, script) = raw_pair();
                tx.send(script)
                    .map_err(|_| std::io::Error::other("script gone"))?;
                Ok(engine)
            }
        }),
    )
    .await
    .expect("connected");
    (requester, rx)
}

/// Reads the first transport's SETUP, opens a stream with a credit of 10
/// on it and reads its request: the stream, the request and the transport.
async fn stream_on_first_transport(
    requester: &Requester,
    conns: &mut mpsc::UnboundedReceiver<Raw>,
) -> (rsocket_core::ResponseStream, Frame, Raw) {
    let mut raw = prompt("first transport", conns.recv())
        .await
        .expect("transport");
    let _setup = expect_frame(&mut raw).await;
    let mut stream = requester.request_stream_with_credit(Payload::from("s"), 10);
    // The request goes out when the stream is first polled.
    assert!(futures::poll!(stream.next()).is_pending());
    let request = expect_non_keepalive(&mut raw).await;
    (stream, request, raw)
}

#[tokio::test]
async fn a_reconnect_function_that_panics_is_a_failed_attempt() {
    // The second call (the first reconnect) panics; the third connects.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let (requester, mut conns) =
        resumable_client_with(ClientBuilder::new().resume(fast()), move |n| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 1 {
                panic!("a reconnect function's bug");
            }
        })
        .await;
    let (_stream, _request, raw) = stream_on_first_transport(&requester, &mut conns).await;
    drop(raw);
    let mut raw = prompt("the transport after the failed attempt", conns.recv())
        .await
        .expect("transport");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Resume(_)));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(!requester.is_closed(), "the session waits to be resumed");
}

fn fast() -> ResumeOptions {
    ResumeOptions {
        token: Some(Bytes::from_static(b"token-1")),
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        ..ResumeOptions::default()
    }
}

#[tokio::test]
async fn client_sends_setup_with_token_then_resume_with_positions() {
    let (requester, mut conns) = resumable_client(ClientBuilder::new().resume(fast())).await;
    let mut raw = prompt("first transport", conns.recv())
        .await
        .expect("transport");
    match expect_frame(&mut raw).await {
        Frame::Setup(s) => {
            assert_eq!(
                s.resume_token.as_deref(),
                Some(&b"token-1"[..]),
                "R flag and token"
            );
        }
        other => panic!("expected SETUP, got {other:?}"),
    }
    let mut stream = requester.request_stream_with_credit(Payload::from("s"), 10);
    // The request goes out when the stream is first polled.
    assert!(futures::poll!(stream.next()).is_pending());
    let request = expect_non_keepalive(&mut raw).await;
    assert!(matches!(&request, Frame::RequestStream(r) if r.stream_id == sid(1)));
    let client_sent = len(&request);
    let a = next(1, "a");
    let bb = next(1, "bb");
    send(&mut raw, a.clone()).await;
    send(&mut raw, bb.clone()).await;
    for want in ["a", "bb"] {
        let got = prompt("item", stream.next())
            .await
            .expect("item")
            .expect("ok");
        assert_eq!(got.data, want);
    }
    // Cut.
    drop(raw);
    let mut raw = prompt("second transport", conns.recv())
        .await
        .expect("transport");
    match expect_frame(&mut raw).await {
        Frame::Resume(r) => {
            assert_eq!(r.version, Version::V1_0);
            assert_eq!(&r.resume_token[..], b"token-1");
            assert_eq!(r.last_received_server_position, len(&a) + len(&bb));
            assert_eq!(
                r.first_available_client_position, 0,
                "nothing acknowledged yet"
            );
        }
        other => panic!("expected RESUME, got {other:?}"),
    }
    // The server says it never got the request: the client sends it again,
    // byte for byte, before anything else.
    send(
        &mut raw,
        Frame::ResumeOk(rsocket_core::frame::ResumeOk {
            last_received_client_position: 0,
        }),
    )
    .await;
    let replayed = expect_non_keepalive(&mut raw).await;
    assert_eq!(replayed, request);
    // The stream goes on over the new transport.
    send(
        &mut raw,
        Frame::Payload(PayloadFrame::next_complete(sid(1), Payload::from("c"))),
    )
    .await;
    let got = prompt("item", stream.next())
        .await
        .expect("item")
        .expect("ok");
    assert_eq!(got.data, "c");
    assert!(prompt("end", stream.next()).await.is_none());
    assert_eq!(client_sent, len(&replayed));
}

#[tokio::test]
async fn client_replays_nothing_the_server_already_has() {
    let (requester, mut conns) = resumable_client(ClientBuilder::new().resume(fast())).await;
    let (mut stream, request, raw) = stream_on_first_transport(&requester, &mut conns).await;
    drop(raw);
    let mut raw = prompt("second transport", conns.recv())
        .await
        .expect("transport");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Resume(_)));
    send(
        &mut raw,
        Frame::ResumeOk(rsocket_core::frame::ResumeOk {
            last_received_client_position: len(&request),
        }),
    )
    .await;
    // The next frame the client sends is new (a REQUEST_N), not a replay.
    stream.request(3);
    let f = expect_non_keepalive(&mut raw).await;
    match f {
        Frame::RequestN(RequestN {
            stream_id,
            request_n,
        }) => {
            assert_eq!(stream_id, sid(1));
            assert_eq!(request_n.get(), 3);
        }
        other => panic!("expected REQUEST_N, got {other:?}"),
    }
}

#[tokio::test]
async fn client_fails_pending_requests_when_resume_is_rejected() {
    let (requester, mut conns) = resumable_client(ClientBuilder::new().resume(fast())).await;
    let (mut stream, _request, raw) = stream_on_first_transport(&requester, &mut conns).await;
    drop(raw);
    let mut raw = prompt("second transport", conns.recv())
        .await
        .expect("transport");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Resume(_)));
    send(
        &mut raw,
        Frame::Error(rsocket_core::frame::ErrorFrame::new(
            None,
            ErrorCode::REJECTED_RESUME,
            "who are you",
        )),
    )
    .await;
    let err = prompt("stream fails", stream.next())
        .await
        .expect("error item")
        .expect_err("must fail");
    match err {
        RequestError::Connection(ConnectionError::ResumeFailed {
            reason: ResumeFailure::Rejected { code, message },
        }) => {
            assert_eq!(code, ErrorCode::REJECTED_RESUME);
            assert_eq!(message, "who are you");
        }
        other => panic!("unexpected error {other}"),
    }
    // REJECTED_RESUME is final: no third transport is opened.
    assert!(matches!(
        prompt("closed", requester.closed()).await,
        ConnectionError::ResumeFailed { .. }
    ));
    assert!(
        conns.try_recv().is_err(),
        "no new attempt after a rejection"
    );
}

#[tokio::test]
async fn client_refuses_a_resume_ok_position_it_cannot_honour() {
    let (requester, mut conns) = resumable_client(ClientBuilder::new().resume(fast())).await;
    let (mut stream, request, raw) = stream_on_first_transport(&requester, &mut conns).await;
    drop(raw);
    let mut raw = prompt("second transport", conns.recv())
        .await
        .expect("transport");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Resume(_)));
    // A position past everything the client sent.
    send(
        &mut raw,
        Frame::ResumeOk(rsocket_core::frame::ResumeOk {
            last_received_client_position: len(&request) + 1,
        }),
    )
    .await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::CONNECTION_ERROR);
    let err = prompt("stream fails", stream.next())
        .await
        .expect("error item")
        .expect_err("must fail");
    assert!(
        matches!(
            err,
            RequestError::Connection(ConnectionError::ResumeFailed {
                reason: ResumeFailure::Positions(_)
            })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn client_keepalive_carries_its_received_position_and_acks_early() {
    // A store of 400 bytes: the client reports its position after every
    // 100 bytes it receives, without waiting for the keepalive interval.
    let config = Config {
        resume_store_bytes: 400,
        ..Config::default()
    };
    let (requester, mut conns) =
        resumable_client(ClientBuilder::new().config(config).resume(fast())).await;
    let mut raw = prompt("first transport", conns.recv())
        .await
        .expect("transport");
    let _setup = expect_frame(&mut raw).await;
    let mut stream = requester.request_stream_with_credit(Payload::from("s"), 100);
    assert!(futures::poll!(stream.next()).is_pending());
    let _request = expect_non_keepalive(&mut raw).await;
    let item = next(1, "0123456789012345678901234567890123456789"); // 46 bytes
    let mut received = 0;
    for _ in 0..3 {
        send(&mut raw, item.clone()).await;
        received += len(&item);
    }
    for _ in 0..3 {
        prompt("item", stream.next())
            .await
            .expect("item")
            .expect("ok");
    }
    // 138 bytes received: one report, at the frame that crossed 100.
    match expect_frame(&mut raw).await {
        Frame::Keepalive(k) => {
            assert!(!k.respond, "an acknowledgement needs no answer");
            assert_eq!(k.last_received_position, 3 * len(&item));
            assert_eq!(k.last_received_position, received);
        }
        other => panic!("expected KEEPALIVE, got {other:?}"),
    }
    // A KEEPALIVE(R) from the peer is answered with the position too.
    send(
        &mut raw,
        Frame::Keepalive(Keepalive {
            respond: true,
            last_received_position: 0,
            data: Bytes::from_static(b"ping"),
        }),
    )
    .await;
    match expect_frame(&mut raw).await {
        Frame::Keepalive(k) => {
            assert!(!k.respond);
            assert_eq!(&k.data[..], b"ping");
            assert_eq!(k.last_received_position, received);
        }
        other => panic!("expected KEEPALIVE, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_n_of_zero_counts_in_the_received_position() {
    let (requester, mut conns) = resumable_client(ClientBuilder::new().resume(fast())).await;
    let mut raw = prompt("first transport", conns.recv())
        .await
        .expect("transport");
    let _setup = expect_frame(&mut raw).await;
    let mut stream = requester.request_stream(Payload::from("s"));
    assert!(futures::poll!(stream.next()).is_pending());
    let _request = expect_non_keepalive(&mut raw).await;
    let item = next(1, "x");
    send(&mut raw, item.clone()).await;
    prompt("item", stream.next())
        .await
        .expect("item")
        .expect("ok");
    // REQUEST_N(0) on stream 1: ignored, but resumable, so it counts (10
    // bytes) like any REQUEST_N the peer counted as sent.
    raw.send(Bytes::from_static(&[0, 0, 0, 1, 0x20, 0, 0, 0, 0, 0]))
        .await
        .expect("send");
    send(
        &mut raw,
        Frame::Keepalive(Keepalive {
            respond: true,
            last_received_position: 0,
            data: Bytes::new(),
        }),
    )
    .await;
    match expect_frame(&mut raw).await {
        Frame::Keepalive(k) => assert_eq!(k.last_received_position, len(&item) + 10),
        other => panic!("expected KEEPALIVE, got {other:?}"),
    }
}

#[tokio::test]
async fn peer_keepalive_position_releases_the_store() {
    let (requester, mut conns) = resumable_client(ClientBuilder::new().resume(fast())).await;
    let (_stream, request, mut raw) = stream_on_first_transport(&requester, &mut conns).await;
    assert_eq!(requester.stats().resume_store_bytes as u64, len(&request));
    // Acknowledge the request; a sentinel round trip shows it was handled.
    send(
        &mut raw,
        Frame::Keepalive(Keepalive {
            respond: true,
            last_received_position: len(&request),
            data: Bytes::from_static(b"s"),
        }),
    )
    .await;
    assert!(matches!(expect_frame(&mut raw).await, Frame::Keepalive(_)));
    assert_eq!(requester.stats().resume_store_bytes, 0);
    // After a cut the first available position has moved on.
    drop(raw);
    let mut raw = prompt("second transport", conns.recv())
        .await
        .expect("transport");
    match expect_frame(&mut raw).await {
        Frame::Resume(r) => assert_eq!(r.first_available_client_position, len(&request)),
        other => panic!("expected RESUME, got {other:?}"),
    }
}

// The clock is paused: the handshake timeout passes at once, and the
// instants below are exact.
#[tokio::test(start_paused = true)]
async fn client_gives_up_an_unanswered_resume_after_the_handshake_timeout_and_retries() {
    let options = ResumeOptions {
        handshake_timeout: Duration::from_secs(3),
        ..fast()
    };
    let (requester, mut conns) = resumable_client(ClientBuilder::new().resume(options)).await;
    let (mut stream, request, raw) = stream_on_first_transport(&requester, &mut conns).await;
    drop(raw);
    // The script reads the RESUME and never answers.
    let mut silent = prompt("second transport", conns.recv())
        .await
        .expect("transport");
    assert!(matches!(expect_frame(&mut silent).await, Frame::Resume(_)));
    let asked = tokio::time::Instant::now();
    expect_closed(&mut silent).await;
    let given_up = tokio::time::Instant::now();
    assert_eq!(
        given_up - asked,
        Duration::from_secs(3),
        "dropped at the timeout"
    );
    // A failed attempt: the next one follows after the back-off (at most
    // `max_backoff`), and it can still resume the session.
    let mut raw = prompt("third transport", conns.recv())
        .await
        .expect("transport");
    assert!(tokio::time::Instant::now() - given_up <= Duration::from_millis(10));
    assert!(matches!(expect_frame(&mut raw).await, Frame::Resume(_)));
    send(
        &mut raw,
        Frame::ResumeOk(rsocket_core::frame::ResumeOk {
            last_received_client_position: len(&request),
        }),
    )
    .await;
    send(&mut raw, next(1, "after")).await;
    let item = prompt("item", stream.next()).await.expect("item");
    assert_eq!(item.expect("payload"), Payload::from("after"));
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/// A resumable server fed raw pipes by the script; its responder streams
/// "x0", "x1", ... up to the number the request names.
fn resumable_server(options: ServerResumeOptions) -> mpsc::UnboundedSender<MemoryTransport> {
    let (tx, mut rx) = mpsc::unbounded_channel::<MemoryTransport>();
    let incoming = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|t| t.map(Ok)));
    let server = Server::new(|_setup, _requester| async {
        Ok(request_stream_fn(|req: Payload| {
            let n: usize = req.data_utf8().and_then(|s| s.parse().ok()).unwrap_or(0);
            futures::stream::iter((0..n).map(|i| Ok(Payload::from(format!("x{i}"))))).boxed()
        }))
    })
    .resumption(options);
    tokio::spawn(server.serve(incoming));
    tx
}

fn connect_raw(server: &mpsc::UnboundedSender<MemoryTransport>) -> Raw {
    let (engine, script) = raw_pair();
    server.send(engine).expect("server running");
    script
}

/// SETUP with `token`, REQUEST_STREAM for 3 items with credit 2; returns
/// the raw end, the request and the two items received.
async fn session_with_two_items(
    server: &mpsc::UnboundedSender<MemoryTransport>,
    token: &'static [u8],
) -> (Raw, Frame, Frame, Frame) {
    let mut raw = connect_raw(server);
    send(&mut raw, Frame::Setup(Box::new(setup_with_token(token)))).await;
    let request = Frame::RequestStream(RequestStream {
        stream_id: sid(1),
        follows: false,
        initial_request_n: count(2),
        payload: Payload::from("3"),
    });
    send(&mut raw, request.clone()).await;
    let x0 = expect_non_keepalive(&mut raw).await;
    let x1 = expect_non_keepalive(&mut raw).await;
    assert_eq!(x0, next(1, "x0"));
    assert_eq!(x1, next(1, "x1"));
    (raw, request, x0, x1)
}

#[tokio::test]
async fn server_answers_resume_ok_and_replays_what_the_client_lacks() {
    let server = resumable_server(ServerResumeOptions::default());
    let (raw, request, x0, x1) = session_with_two_items(&server, b"abc").await;
    drop(raw);
    // The client got x0 only.
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"abc", len(&x0), 0)).await;
    match expect_frame(&mut raw).await {
        Frame::ResumeOk(ok) => assert_eq!(ok.last_received_client_position, len(&request)),
        other => panic!("expected RESUME_OK, got {other:?}"),
    }
    assert_eq!(expect_non_keepalive(&mut raw).await, x1, "x1 replayed");
    // The stream continues: one more credit, the last item and COMPLETE.
    send(
        &mut raw,
        Frame::RequestN(RequestN {
            stream_id: sid(1),
            request_n: count(1),
        }),
    )
    .await;
    assert_eq!(
        expect_non_keepalive(&mut raw).await,
        Frame::Payload(PayloadFrame::next_complete(sid(1), Payload::from("x2")))
    );
}

#[tokio::test]
async fn server_rejects_resume_with_an_unknown_token() {
    let server = resumable_server(ServerResumeOptions::default());
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"nobody", 0, 0)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_RESUME);
    expect_closed(&mut raw).await;
}

#[tokio::test]
async fn server_rejects_resume_from_a_position_it_cannot_honour() {
    let server = resumable_server(ServerResumeOptions::default());
    let (raw, _request, x0, x1) = session_with_two_items(&server, b"tok").await;
    drop(raw);
    // The client claims more than the server ever sent.
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"tok", len(&x0) + len(&x1) + 1, 0)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_RESUME);
    expect_closed(&mut raw).await;
    // That rejection ended the session: the token is unknown now.
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"tok", len(&x0), 0)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_RESUME);
}

#[tokio::test]
async fn server_rejects_resume_when_the_client_cannot_resend_what_it_lacks() {
    let server = resumable_server(ServerResumeOptions::default());
    let (raw, request, _x0, _x1) = session_with_two_items(&server, b"tok2").await;
    drop(raw);
    // The server received the request (position len(request)); a client
    // that can resend only from beyond it would leave a gap.
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"tok2", 0, len(&request) + 10)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_RESUME);
}

#[tokio::test]
async fn server_rejects_a_position_inside_a_frame() {
    let server = resumable_server(ServerResumeOptions::default());
    let (raw, _request, x0, _x1) = session_with_two_items(&server, b"tok3").await;
    drop(raw);
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"tok3", len(&x0) + 1, 0)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_RESUME);
}

#[tokio::test]
async fn server_accepts_resume_version_0_1_from_rsocket_js() {
    let server = resumable_server(ServerResumeOptions::default());
    let (raw, request, x0, x1) = session_with_two_items(&server, b"js").await;
    drop(raw);
    let mut raw = connect_raw(&server);
    send(
        &mut raw,
        Frame::Resume(Resume {
            version: Version { major: 0, minor: 1 },
            resume_token: Bytes::from_static(b"js"),
            last_received_server_position: len(&x0) + len(&x1),
            first_available_client_position: 0,
        }),
    )
    .await;
    match expect_frame(&mut raw).await {
        Frame::ResumeOk(ok) => assert_eq!(ok.last_received_client_position, len(&request)),
        other => panic!("expected RESUME_OK, got {other:?}"),
    }
}

#[tokio::test]
async fn server_rejects_other_resume_versions() {
    let server = resumable_server(ServerResumeOptions::default());
    let (raw, _request, x0, _x1) = session_with_two_items(&server, b"v2").await;
    drop(raw);
    let mut raw = connect_raw(&server);
    send(
        &mut raw,
        Frame::Resume(Resume {
            version: Version { major: 2, minor: 0 },
            resume_token: Bytes::from_static(b"v2"),
            last_received_server_position: len(&x0),
            first_available_client_position: 0,
        }),
    )
    .await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_RESUME);
}

#[tokio::test]
async fn a_second_resume_takes_over_a_live_session() {
    let server = resumable_server(ServerResumeOptions::default());
    let (mut old, request, x0, x1) = session_with_two_items(&server, b"live").await;
    // The old transport is still open when the new one resumes.
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"live", len(&x0) + len(&x1), 0)).await;
    match expect_frame(&mut raw).await {
        Frame::ResumeOk(ok) => assert_eq!(ok.last_received_client_position, len(&request)),
        other => panic!("expected RESUME_OK, got {other:?}"),
    }
    // The old transport is dropped.
    expect_closed(&mut old).await;
    send(
        &mut raw,
        Frame::RequestN(RequestN {
            stream_id: sid(1),
            request_n: count(1),
        }),
    )
    .await;
    assert_eq!(
        expect_non_keepalive(&mut raw).await,
        Frame::Payload(PayloadFrame::next_complete(sid(1), Payload::from("x2")))
    );
}

#[tokio::test]
async fn server_refuses_a_setup_whose_token_is_in_use() {
    let server = resumable_server(ServerResumeOptions::default());
    let (_raw, _request, _x0, _x1) = session_with_two_items(&server, b"dup").await;
    let mut raw = connect_raw(&server);
    send(&mut raw, Frame::Setup(Box::new(setup_with_token(b"dup")))).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_SETUP);
}

// The clock is paused: it moves only when every task is idle, so the
// server has handled the end of the transport (and armed its session timer)
// before the sleep below lets the simulated time pass.
#[tokio::test(start_paused = true)]
async fn detached_session_expires_after_the_session_timeout() {
    let server = resumable_server(ServerResumeOptions {
        session_timeout: Duration::from_millis(50),
        ..ServerResumeOptions::default()
    });
    let (raw, _request, x0, _x1) = session_with_two_items(&server, b"exp").await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Expired: the token is unknown.
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"exp", len(&x0), 0)).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_RESUME);
}

/// Resumes `token` from `position` until the server refuses it (each
/// success re-attaches the session, and dropping the transport detaches
/// it again).
async fn resume_until_rejected(
    server: &mpsc::UnboundedSender<MemoryTransport>,
    token: &'static [u8],
    position: u64,
) {
    prompt("the session to go", async {
        loop {
            let mut raw = connect_raw(server);
            send(&mut raw, resume(token, position, 0)).await;
            match expect_frame(&mut raw).await {
                Frame::Error(e) if e.code == ErrorCode::REJECTED_RESUME => break,
                Frame::ResumeOk(_) => {
                    drop(raw);
                    tokio::task::yield_now().await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn detached_sessions_over_the_byte_limit_are_evicted() {
    // A detached session holding more than one byte is over the limit.
    let server = resumable_server(ServerResumeOptions {
        max_detached_bytes: 1,
        ..ServerResumeOptions::default()
    });
    let (raw, _request, x0, _x1) = session_with_two_items(&server, b"big").await;
    drop(raw);
    resume_until_rejected(&server, b"big", len(&x0)).await;
}

#[tokio::test]
async fn detached_sessions_over_the_count_limit_are_evicted() {
    let server = resumable_server(ServerResumeOptions {
        max_detached_sessions: 0,
        ..ServerResumeOptions::default()
    });
    let (raw, _request, x0, _x1) = session_with_two_items(&server, b"many").await;
    drop(raw);
    resume_until_rejected(&server, b"many", len(&x0)).await;
}

/// Two sessions with two items each, detached one after the other; the
/// clock is paused, so each sleep ends only once the server has handled
/// the end of the transport, and the second detaches later than the first.
async fn two_sessions_detached_in_turn(
    server: &mpsc::UnboundedSender<MemoryTransport>,
) -> (Frame, Frame) {
    let (first, _, x0, _) = session_with_two_items(server, b"first").await;
    let (second, _, y0, _) = session_with_two_items(server, b"second").await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(second);
    tokio::time::sleep(Duration::from_millis(1)).await;
    (x0, y0)
}

/// The session detached first is gone: its RESUME is refused as for an
/// unknown token. The one detached last resumes, and gets its second item.
async fn first_evicted_second_resumes(
    server: &mpsc::UnboundedSender<MemoryTransport>,
    x0: &Frame,
    y0: &Frame,
) {
    let mut raw = connect_raw(server);
    send(&mut raw, resume(b"first", len(x0), 0)).await;
    let refused = expect_frame(&mut raw).await;
    assert_connection_error(&refused, ErrorCode::REJECTED_RESUME);
    let Frame::Error(e) = refused else {
        unreachable!()
    };
    assert_eq!(e.message(), "unknown or expired resume token");
    let mut raw = connect_raw(server);
    send(&mut raw, resume(b"second", len(y0), 0)).await;
    assert!(matches!(expect_frame(&mut raw).await, Frame::ResumeOk(_)));
    assert_eq!(expect_non_keepalive(&mut raw).await, next(1, "x1"));
}

#[tokio::test(start_paused = true)]
async fn over_the_count_limit_the_session_detached_longest_is_evicted() {
    let server = resumable_server(ServerResumeOptions {
        max_detached_sessions: 1,
        ..ServerResumeOptions::default()
    });
    let (x0, y0) = two_sessions_detached_in_turn(&server).await;
    first_evicted_second_resumes(&server, &x0, &y0).await;
}

#[tokio::test(start_paused = true)]
async fn over_the_byte_limit_the_sessions_detached_longest_are_evicted() {
    // Each session's store holds its two items: room for one session.
    let one = 2 * len(&next(1, "x0")) as usize;
    let server = resumable_server(ServerResumeOptions {
        max_detached_bytes: one,
        ..ServerResumeOptions::default()
    });
    let (x0, y0) = two_sessions_detached_in_turn(&server).await;
    first_evicted_second_resumes(&server, &x0, &y0).await;
}

#[tokio::test]
async fn server_refuses_an_empty_resume_token() {
    let server = resumable_server(ServerResumeOptions::default());
    let mut raw = connect_raw(&server);
    send(&mut raw, Frame::Setup(Box::new(setup_with_token(b"")))).await;
    assert_connection_error(&expect_frame(&mut raw).await, ErrorCode::REJECTED_SETUP);
}

// The clock is paused: the keepalive interval passes as soon as every task
// is idle.
#[tokio::test(start_paused = true)]
async fn a_full_store_does_not_hold_back_the_keepalive() {
    // A store smaller than two requests, and a peer that reports its
    // position only when asked (a KEEPALIVE(R)), as a server whose own
    // store is larger does: the client's KEEPALIVE must still go out.
    let config = Config {
        resume_store_bytes: 64,
        ..Config::default()
    };
    let (requester, mut conns) = resumable_client(
        ClientBuilder::new()
            .config(config)
            .keepalive(Duration::from_secs(1), Duration::from_secs(90))
            .resume(fast()),
    )
    .await;
    let mut raw = prompt("first transport", conns.recv())
        .await
        .expect("transport");
    let _setup = expect_frame(&mut raw).await;
    let data = "0123456789012345678901234567890123456789";
    for _ in 0..3 {
        prompt("queued", requester.fire_and_forget(Payload::from(data)))
            .await
            .expect("queued");
    }
    // The first request fills the store; the others wait for room.
    let first = expect_non_keepalive(&mut raw).await;
    assert!(matches!(first, Frame::RequestFnf(_)), "{first:?}");
    let asked = tokio::time::Instant::now();
    match expect_frame(&mut raw).await {
        Frame::Keepalive(k) => {
            assert!(k.respond, "the periodic KEEPALIVE(R)");
            assert!(tokio::time::Instant::now() - asked <= Duration::from_secs(1));
        }
        other => panic!("expected KEEPALIVE, got {other:?}"),
    }
    // Its answer acknowledges the first request: the next one goes.
    send(
        &mut raw,
        Frame::Keepalive(Keepalive {
            respond: false,
            last_received_position: len(&first),
            data: Bytes::new(),
        }),
    )
    .await;
    assert!(matches!(
        expect_non_keepalive(&mut raw).await,
        Frame::RequestFnf(_)
    ));
}

// The clock is paused: the handshake timeout passes as soon as every task
// is idle.
#[tokio::test(start_paused = true)]
async fn a_reconnect_that_never_finishes_is_a_failed_attempt() {
    // The second call (the first reconnect) never finishes, as a TCP or
    // TLS handshake with a peer gone silent; the third connects.
    let options = ResumeOptions {
        handshake_timeout: Duration::from_secs(3),
        ..fast()
    };
    let (tx, mut conns) = mpsc::unbounded_channel();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let requester = prompt(
        "connect",
        ClientBuilder::new()
            .resume(options)
            .connect_resumable(move || {
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tx = tx.clone();
                async move {
                    if n == 1 {
                        std::future::pending::<()>().await;
                    }
                    let (engine, script) = raw_pair();
                    tx.send(script)
                        .map_err(|_| std::io::Error::other("script gone"))?;
                    Ok(engine)
                }
            }),
    )
    .await
    .expect("connected");
    let (_stream, _request, raw) = stream_on_first_transport(&requester, &mut conns).await;
    let lost = tokio::time::Instant::now();
    drop(raw);
    let mut raw = prompt("the transport after the stuck attempt", conns.recv())
        .await
        .expect("transport");
    assert!(matches!(expect_frame(&mut raw).await, Frame::Resume(_)));
    assert!(
        tokio::time::Instant::now() - lost <= Duration::from_secs(3) + Duration::from_millis(10)
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(!requester.is_closed(), "the session waits to be resumed");
}

// The clock is paused: it moves on only when both engines are idle, so a
// stream that stalls until the next keepalive shows as simulated seconds.
#[tokio::test(start_paused = true)]
async fn a_small_server_store_does_not_stall_a_stream_until_the_keepalive() {
    // The server keeps 256 bytes of unacknowledged frames, the client the
    // default 4 MiB (so it reports its position every 256 KiB received,
    // or when asked).
    let (tx, mut rx) = mpsc::unbounded_channel::<MemoryTransport>();
    let incoming = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|t| t.map(Ok)));
    let server = Server::new(|_setup, _requester| async {
        Ok(request_stream_fn(|_req: Payload| {
            futures::stream::iter((0..200).map(|i| Ok(Payload::from(format!("x{i:03}"))))).boxed()
        }))
    })
    .config(Config {
        resume_store_bytes: 256,
        ..Config::default()
    })
    .resumption(ServerResumeOptions::default());
    tokio::spawn(server.serve(incoming));
    let requester = prompt(
        "connect",
        ClientBuilder::new()
            .keepalive(Duration::from_secs(20), Duration::from_secs(90))
            .resume(fast())
            .connect_resumable(move || {
                let (client, server) = rsocket_core::memory_pair(64 << 10);
                let sent = tx.send(server);
                async move {
                    sent.map_err(|_| std::io::Error::other("server gone"))?;
                    Ok(client)
                }
            }),
    )
    .await
    .expect("connected");
    let started = tokio::time::Instant::now();
    let items: Vec<_> = prompt(
        "the stream",
        requester
            .request_stream(Payload::from("go"))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(items.len(), 200);
    assert!(items.iter().all(Result::is_ok));
    let took = tokio::time::Instant::now() - started;
    assert!(
        took < Duration::from_secs(1),
        "the stream took {took:?}: it waited for keepalives"
    );
}

/// RESUMEs beyond the few one session queues are closed without an answer:
/// the client tries again. `REJECTED_RESUME` would be final for it, and it
/// is only early.
#[tokio::test]
async fn resumes_beyond_a_sessions_queue_are_closed_not_rejected() {
    let server = resumable_server(ServerResumeOptions::default());
    let (raw, _request, x0, x1) = session_with_two_items(&server, b"busy").await;
    drop(raw);
    // Five RESUMEs reach the server before its session runs: it queues four.
    let mut raws = Vec::new();
    for _ in 0..5 {
        let mut raw = connect_raw(&server);
        send(&mut raw, resume(b"busy", len(&x0) + len(&x1), 0)).await;
        raws.push(raw);
    }
    let mut last = raws.pop().expect("five");
    expect_closed(&mut last).await;
    // The session is still there: a later RESUME takes it.
    drop(raws);
    let mut raw = connect_raw(&server);
    send(&mut raw, resume(b"busy", len(&x0) + len(&x1), 0)).await;
    assert!(
        matches!(expect_non_keepalive(&mut raw).await, Frame::ResumeOk(_)),
        "RESUME_OK"
    );
}
