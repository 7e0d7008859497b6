//! Regressions found by the cross-implementation interop suite
//! (`interop/run.sh`), replayed here with a scripted peer on raw frames.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt, TryStreamExt};
use rsocket_core::codec::FrameCodec;
use rsocket_core::frame::{PayloadFrame, RequestChannel, Setup, Version};
use rsocket_core::{
    accept, Config, Frame, MimeType, Payload, PayloadStream, RSocket, RequestCount, Requester,
    SetupInfo, StreamId, StreamTransport,
};
use tokio::time::timeout;
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(5);

/// Upper-cases every inbound payload of a channel, the first included.
struct Upper;

impl RSocket for Upper {
    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .map_ok(|p| Payload::from(String::from_utf8_lossy(&p.data).to_uppercase()))
            .boxed()
    }
}

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("valid stream id")
}

fn setup() -> Setup {
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

async fn send(raw: &mut Framed<tokio::io::DuplexStream, FrameCodec>, frame: Frame) {
    timeout(WAIT, raw.send(frame))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// A channel requester that grants exactly as many credits as items it
/// expects (REQUEST_CHANNEL n = 4, no REQUEST_N), as the rsocket-py interop
/// client does. The responder's output ends
/// when the requester's half does, which no size hint reveals: COMPLETE,
/// which needs no credit, must still follow the fourth item.
#[tokio::test]
async fn responder_channel_completes_when_credit_is_exactly_used_up() {
    let (engine, script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    let transport = StreamTransport::new(r, w);
    let server = tokio::spawn(async move {
        let acceptor =
            |_: SetupInfo, _: Requester| async { Ok(Arc::new(Upper) as Arc<dyn RSocket>) };
        let (_requester, driver) = accept(transport, Config::default(), &acceptor).await?;
        driver.await
    });
    let mut raw = Framed::new(script, FrameCodec::new());
    send(&mut raw, Frame::Setup(Box::new(setup()))).await;

    send(
        &mut raw,
        Frame::RequestChannel(RequestChannel {
            stream_id: sid(1),
            follows: false,
            complete: false,
            initial_request_n: RequestCount::new(4).expect("valid request-n"),
            payload: Payload::from("a"),
        }),
    )
    .await;

    let mut items = Vec::new();
    let mut granted = false;
    loop {
        let bytes = timeout(WAIT, raw.next())
            .await
            .expect("no frame from the responder: COMPLETE never came")
            .expect("transport closed")
            .expect("codec error");
        match Frame::decode(bytes).expect("decodable frame") {
            // Like rsocket-py, send the rest once the responder grants
            // credit for it.
            Frame::RequestN(n) if n.stream_id == sid(1) && !granted => {
                granted = true;
                for d in ["b", "c", "d"] {
                    send(
                        &mut raw,
                        Frame::Payload(PayloadFrame::next(sid(1), Payload::from(d))),
                    )
                    .await;
                }
                send(&mut raw, Frame::Payload(PayloadFrame::complete(sid(1)))).await;
            }
            Frame::Keepalive(_) => {}
            Frame::Payload(p) => {
                assert_eq!(p.stream_id, sid(1));
                if p.next {
                    items.push(String::from_utf8_lossy(&p.payload.data).into_owned());
                }
                if p.complete {
                    break;
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(items, ["A", "B", "C", "D"]);
    drop(raw);
    let _ = timeout(WAIT, server).await;
}
