//! The frames the server sends for a client-streaming call, read raw: a
//! real server (`accept` with the test router) on one end of an in-memory
//! pipe, this script on the other, reading and writing frames through
//! `FrameCodec`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rsocket_core::codec::FrameCodec;
use rsocket_core::frame::{PayloadFrame, RequestChannel, RequestResponse, Setup, Version};
use rsocket_core::{
    accept, Config, Frame, MimeType, Payload, RSocket, RequestCount, Requester, SetupInfo,
    StreamError, StreamId, StreamTransport,
};
use rsocket_rpc::codegen::prost::Message;
use rsocket_rpc::Metadata;
use rsocket_rpc_tests::greeter::{HelloReply, HelloRequest};
use rsocket_rpc_tests::router;
use rsocket_rpc_tests::service::Probe;
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;

/// How long the script waits for a frame before failing.
const WAIT: Duration = Duration::from_secs(5);

type Raw = Framed<DuplexStream, FrameCodec>;

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("a valid stream id")
}

fn routed(route: &str, message: &HelloRequest) -> Payload {
    Payload {
        metadata: Some(Metadata::new().encode_request(route).expect("a route")),
        data: Bytes::from(message.encode_to_vec()),
    }
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        count: 0,
    }
}

async fn send(raw: &mut Raw, frame: Frame) {
    tokio::time::timeout(WAIT, raw.send(frame))
        .await
        .expect("send timed out")
        .expect("send failed");
}

async fn next_frame(raw: &mut Raw) -> Frame {
    let bytes = match tokio::time::timeout(WAIT, raw.next()).await {
        Ok(Some(Ok(b))) => b,
        Ok(Some(Err(e))) => panic!("codec error: {e}"),
        Ok(None) => panic!("the server closed the connection"),
        Err(_) => panic!("no frame within {WAIT:?}"),
    };
    Frame::decode(bytes).expect("the server sends valid frames")
}

/// A server with the test router on one end of a pipe, SETUP sent.
async fn server() -> Raw {
    let (engine, script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    let (probe, _events) = Probe::new();
    let responder: Arc<dyn RSocket> = Arc::new(router(probe));
    tokio::spawn(async move {
        let acceptor = move |_: SetupInfo, _: Requester| {
            let responder = responder.clone();
            async move { Ok::<_, StreamError>(responder) }
        };
        if let Ok((_requester, driver)) =
            accept(StreamTransport::new(r, w), Config::default(), &acceptor).await
        {
            let _ = driver.await;
        }
    });
    set_up(script).await
}

/// The raw end of a connection to the router, after an RPC client's SETUP.
async fn set_up(script: DuplexStream) -> Raw {
    let mut raw = Framed::new(script, FrameCodec::new());
    let params = rsocket_rpc::setup_params();
    let setup = Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: 90_000,
        resume_token: None,
        lease: false,
        metadata_mime_type: params.metadata_mime_type,
        data_mime_type: MimeType::from_static(rsocket_rpc::DATA_MIME_TYPE).expect("valid"),
        payload: Payload::default(),
    };
    send(&mut raw, Frame::Setup(Box::new(setup))).await;
    raw
}

/// A client-streaming call is answered with exactly one PAYLOAD with the
/// N and C flags: no separate COMPLETE, nothing else on the stream.
#[tokio::test]
async fn client_streaming_answer_is_one_payload_next_complete() {
    let mut raw = server().await;
    let header = Payload {
        metadata: Some(
            Metadata::new()
                .encode_request("greeter.Greeter/LotsOfGreetings")
                .expect("a route"),
        ),
        data: Bytes::new(),
    };
    send(
        &mut raw,
        Frame::RequestChannel(RequestChannel {
            stream_id: sid(1),
            follows: false,
            complete: false,
            initial_request_n: RequestCount::new(1).expect("valid"),
            payload: header,
        }),
    )
    .await;

    // The handler reads its input, granting credit; the one message (with
    // the end of the input) goes out once there is some.
    let mut sent = false;
    let answer = loop {
        match next_frame(&mut raw).await {
            Frame::RequestN(n) if n.stream_id == sid(1) => {
                if !sent {
                    let message = Payload::new(Bytes::from(hello("f").encode_to_vec()));
                    send(
                        &mut raw,
                        Frame::Payload(PayloadFrame::next_complete(sid(1), message)),
                    )
                    .await;
                    sent = true;
                }
            }
            Frame::Payload(p) if p.stream_id == sid(1) => break p,
            other => panic!("expected REQUEST_N or PAYLOAD on stream 1, got {other:?}"),
        }
    };
    assert!(sent, "the server answered before reading the input");
    assert!(
        answer.next && answer.complete && !answer.follows,
        "{answer:?}"
    );
    let reply = HelloReply::decode(answer.payload.data).expect("decodes");
    assert_eq!(reply.message, "Hello f (1)");

    // A unary call as a barrier: the server sends nothing more on stream 1
    // before its answer (a late REQUEST_N aside, which is not an answer).
    send(
        &mut raw,
        Frame::RequestResponse(RequestResponse {
            stream_id: sid(3),
            follows: false,
            payload: routed("greeter.Greeter/SayHello", &hello("barrier")),
        }),
    )
    .await;
    loop {
        match next_frame(&mut raw).await {
            Frame::RequestN(n) if n.stream_id == sid(1) => {}
            Frame::Payload(p) if p.stream_id == sid(3) => {
                assert!(p.next && p.complete, "{p:?}");
                break;
            }
            other => panic!("expected only the barrier's answer, got {other:?}"),
        }
    }
}

/// A live `Server` with the test router, fed in-memory connections.
fn live_server() -> futures::channel::mpsc::Sender<std::io::Result<rsocket_core::MemoryTransport>> {
    let (probe, _events) = Probe::new();
    let responder: Arc<dyn RSocket> = Arc::new(router(probe));
    let server = rsocket_core::Server::new(move |_: SetupInfo, _: Requester| {
        let responder = responder.clone();
        async move { Ok::<_, StreamError>(responder) }
    });
    let (tx, incoming) = futures::channel::mpsc::channel(1);
    tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));
    tx
}

/// A raw connection to the live server, SETUP sent.
async fn connect_live(
    tx: &mut futures::channel::mpsc::Sender<std::io::Result<rsocket_core::MemoryTransport>>,
) -> Raw {
    let (engine, script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    tx.send(Ok(StreamTransport::new(r, w)))
        .await
        .expect("the server takes connections");
    set_up(script).await
}

/// A unary call on `id` that must be answered by the very next frame.
async fn hello_answered(raw: &mut Raw, id: u32) {
    send(
        raw,
        Frame::RequestResponse(RequestResponse {
            stream_id: sid(id),
            follows: false,
            payload: routed("greeter.Greeter/SayHello", &hello("ok")),
        }),
    )
    .await;
    match next_frame(raw).await {
        Frame::Payload(p) if p.stream_id == sid(id) && p.next && p.complete => {
            let reply = HelloReply::decode(p.payload.data).expect("decodes");
            assert!(reply.message.starts_with("Hello ok"), "{reply:?}");
        }
        other => panic!("expected the answer on stream {id}, got {other:?}"),
    }
}

/// Route metadata that does not parse, or names an enormous route, is
/// refused on its own stream with `ERROR[REJECTED]` (the call was not
/// processed); the connection and the server's other connections go on.
#[tokio::test]
async fn malformed_or_huge_route_metadata_is_rejected_on_its_stream() {
    let mut tx = live_server();
    let mut raw = connect_live(&mut tx).await;
    let mut other = connect_live(&mut tx).await;
    hello_answered(&mut raw, 1).await;
    // rsocket-rpc-java layout: version 1, a 65,535-byte service name,
    // method "M", no tracing.
    let mut v1 = vec![0, 1, 0xFF, 0xFF];
    v1.extend(std::iter::repeat_n(b's', 0xFFFF));
    v1.extend_from_slice(&[0, 1, b'M', 0, 0]);
    // Composite: a routing entry whose one 255-byte tag names no method,
    // after 1 MiB of another entry.
    let mut huge = vec![0x80 | 0x7A, 0x10, 0x00, 0x00];
    huge.extend(std::iter::repeat_n(b'x', 1 << 20));
    huge.extend_from_slice(&[0x80 | 0x7E, 0, 1, 0]);
    huge.push(255);
    huge.extend(std::iter::repeat_n(b'r', 255));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("entry length past the end", vec![0xFE, 0, 0, 100, 3, b'a']),
        ("entry header truncated", vec![0xFE, 0, 0]),
        ("custom MIME name past the end", vec![0x10, b'a']),
        (
            "routing tag past its entry",
            vec![0xFE, 0, 0, 3, 10, b'a', b'b'],
        ),
        ("routing entry with no tag", vec![0xFE, 0, 0, 0]),
        (
            "composite without a routing entry",
            vec![0xFA, 0, 0, 1, b'x'],
        ),
        ("65,535-byte service name", v1),
        ("a 255-byte route after 1 MiB", huge),
    ];
    let mut id = 3;
    for (what, metadata) in cases {
        send(
            &mut raw,
            Frame::RequestResponse(RequestResponse {
                stream_id: sid(id),
                follows: false,
                payload: Payload {
                    metadata: Some(Bytes::from(metadata)),
                    data: Bytes::from(hello("x").encode_to_vec()),
                },
            }),
        )
        .await;
        match next_frame(&mut raw).await {
            Frame::Error(e) => assert_eq!(
                (e.stream_id, e.code),
                (Some(sid(id)), rsocket_core::ErrorCode::REJECTED),
                "{what}: {}",
                e.message()
            ),
            other => panic!("{what}: expected ERROR[REJECTED] on {id}, got {other:?}"),
        }
        hello_answered(&mut raw, id + 2).await;
        id += 4;
    }
    hello_answered(&mut other, 1).await;
    let mut fresh = connect_live(&mut tx).await;
    hello_answered(&mut fresh, 1).await;
}
