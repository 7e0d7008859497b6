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
