//! What a transport's `WireWrite` is handed, and what goes through its
//! `Sink` (see `Transport::wire_writer`): a transport that records which
//! way each frame came wraps the byte-stream transport, and a script on
//! the other end of the pipe drives the client.

mod common;
use common::*;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::{Sink, StreamExt};
use rsocket_core::frame::{FrameType, RequestResponse};
use rsocket_core::runtime::{FrameReader, FrameWriter};
use rsocket_core::{
    ClientBuilder, Frame, Payload, ResumeOptions, StreamTransport, Transport, TransportError,
    WireRead, WireWrite,
};
use tokio::io::DuplexStream;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Sink,
    Wire,
}

type Log = Arc<Mutex<Vec<(Way, FrameType)>>>;

struct Recording {
    inner: StreamTransport<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>,
    log: Log,
}

struct RecordingWriter {
    inner: FrameWriter<WriteHalf<DuplexStream>>,
    log: Log,
}

impl Sink<Frame> for RecordingWriter {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), Self::Error> {
        self.log
            .lock()
            .unwrap()
            .push((Way::Sink, item.frame_type()));
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl WireWrite for RecordingWriter {
    fn start_send_wire(&mut self, frames: &mut BytesMut) -> Result<(), TransportError> {
        let mut run = &frames[..];
        let mut log = self.log.lock().unwrap();
        while !run.is_empty() {
            let len =
                (usize::from(run[0]) << 16) | (usize::from(run[1]) << 8) | usize::from(run[2]);
            let frame = Frame::decode(bytes::Bytes::copy_from_slice(&run[3..3 + len]))
                .expect("the engine encodes valid frames");
            log.push((Way::Wire, frame.frame_type()));
            run.advance(3 + len);
        }
        drop(log);
        self.inner.start_send_wire(frames)
    }
}

impl Transport for Recording {
    type Reader = FrameReader<ReadHalf<DuplexStream>>;
    type Writer = RecordingWriter;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (reader, inner) = self.inner.split();
        (
            reader,
            RecordingWriter {
                inner,
                log: self.log,
            },
        )
    }

    fn wire_reader(reader: &mut Self::Reader) -> Option<&mut dyn WireRead> {
        Some(reader)
    }

    fn wire_writer(writer: &mut Self::Writer) -> Option<&mut dyn WireWrite> {
        Some(writer)
    }
}

fn recording(log: &Log) -> (Recording, Raw) {
    let (inner, raw) = raw_pair();
    (
        Recording {
            inner,
            log: log.clone(),
        },
        raw,
    )
}

/// A request whose encoded frame is `len` bytes long.
fn request_of(len: usize) -> Payload {
    let header = 6;
    Payload::from(vec![1u8; len - header])
}

#[tokio::test(start_paused = true)]
async fn without_resumption_frames_under_4_kib_come_as_runs_and_larger_ones_as_frames() {
    let log = Log::default();
    let (t, mut raw) = recording(&log);
    let requester = ClientBuilder::new()
        .keepalive(Duration::from_secs(1), Duration::from_secs(60))
        .connect(t)
        .expect("valid config");
    let mut want = vec![];
    assert_eq!(expect_frame(&mut raw).await.frame_type(), FrameType::Setup);
    want.push((Way::Wire, FrameType::Setup));

    // REQUEST_STREAM, REQUEST_N, CANCEL.
    let mut stream = requester.request_stream_with_credit(Payload::from("s"), 1);
    assert!(futures::poll!(stream.next()).is_pending());
    stream.request(5);
    drop(stream);
    for t in [
        FrameType::RequestStream,
        FrameType::RequestN,
        FrameType::Cancel,
    ] {
        assert_eq!(expect_frame(&mut raw).await.frame_type(), t);
        want.push((Way::Wire, t));
    }
    // ERROR: the client has no responder and refuses the server's request.
    send(
        &mut raw,
        Frame::RequestResponse(RequestResponse {
            stream_id: sid(2),
            follows: false,
            payload: Payload::from("q"),
        }),
    )
    .await;
    assert_eq!(expect_frame(&mut raw).await.frame_type(), FrameType::Error);
    want.push((Way::Wire, FrameType::Error));
    // KEEPALIVE, once the interval has passed.
    assert_eq!(
        expect_frame(&mut raw).await.frame_type(),
        FrameType::Keepalive
    );
    want.push((Way::Wire, FrameType::Keepalive));
    // A request of 4095 bytes is a run; one of 4096 bytes is a frame.
    let mut pending = vec![];
    for (len, way) in [(4095, Way::Wire), (4096, Way::Sink)] {
        let mut rr = requester.request_response(request_of(len));
        assert!(futures::poll!(&mut rr).is_pending());
        pending.push(rr);
        let f = expect_frame(&mut raw).await;
        assert_eq!(
            (f.frame_type(), f.encoded_len()),
            (FrameType::RequestResponse, len)
        );
        want.push((way, FrameType::RequestResponse));
    }
    assert_eq!(*log.lock().unwrap(), want);
}

#[tokio::test]
async fn with_resumption_every_frame_comes_through_the_sink() {
    let log = Log::default();
    let (tx, mut conns) = mpsc::unbounded_channel();
    let options = ResumeOptions {
        token: Some(bytes::Bytes::from_static(b"t")),
        ..ResumeOptions::default()
    };
    let for_connect = log.clone();
    let requester = prompt(
        "connect",
        ClientBuilder::new()
            .resume(options)
            .connect_resumable(move || {
                let (t, raw) = recording(&for_connect);
                let sent = tx.send(raw);
                async move {
                    sent.map_err(|_| std::io::Error::other("script gone"))?;
                    Ok(t)
                }
            }),
    )
    .await
    .expect("connected");
    let mut raw = prompt("transport", conns.recv()).await.expect("transport");
    assert_eq!(expect_frame(&mut raw).await.frame_type(), FrameType::Setup);
    let mut rr = requester.request_response(Payload::from("small"));
    assert!(futures::poll!(&mut rr).is_pending());
    assert_eq!(
        expect_frame(&mut raw).await.frame_type(),
        FrameType::RequestResponse
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            (Way::Sink, FrameType::Setup),
            (Way::Sink, FrameType::RequestResponse)
        ]
    );
}
