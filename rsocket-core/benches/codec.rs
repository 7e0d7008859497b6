//! Frame codec benchmarks.
//!
//! * `payload_64`: a 64-byte PAYLOAD frame (header + 58 data bytes).
//! * `request_stream_md`: REQUEST_STREAM with composite routing metadata.
//! * `payload_16k`: a PAYLOAD carrying 16 KiB of data.
//! * `frame_codec_10k`: the 24-bit length-prefix codec over a buffer of
//!   10,000 prefixed 64-byte PAYLOAD frames (throughput in frames).
//!
//! `encode` writes into a reused, pre-sized `BytesMut` (what a framed writer
//! does); `decode` parses a shared `Bytes` (what the length-prefix codec
//! yields), so each iteration pays one atomic reference-count increment and
//! the matching decrement when the frame is dropped; `decode_static` parses
//! the same bytes from a `Bytes::from_static`, which has no reference count,
//! to show the parse cost alone.
//!
//! Run: `cargo bench -p rsocket-core --bench codec`
//! (quick: `... -- --warm-up-time 1 --measurement-time 2`).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rsocket_core::codec::FrameCodec;
use rsocket_core::frame::{PayloadFrame, RequestStream};
use rsocket_core::{Frame, Payload, RequestCount, StreamId};
use tokio_util::codec::{Decoder, Encoder};

const FRAMES_IN_BUFFER: usize = 10_000;

fn stream(id: u32) -> StreamId {
    StreamId::new(id).unwrap_or(StreamId::MAX)
}

/// A PAYLOAD (NEXT) frame whose encoding is exactly `frame_len` bytes.
fn payload_frame(frame_len: usize) -> Frame {
    let data = Bytes::from((0..frame_len - 6).map(|i| i as u8).collect::<Vec<u8>>());
    Frame::Payload(PayloadFrame::next(stream(1), Payload::new(data)))
}

/// REQUEST_STREAM with a composite routing entry as metadata and 32 data bytes.
fn request_stream_with_metadata() -> Frame {
    let mut metadata = vec![0xFE, 0x00, 0x00, 0x11, 0x10];
    metadata.extend_from_slice(b"service.method.x");
    Frame::RequestStream(RequestStream {
        stream_id: stream(7),
        follows: false,
        initial_request_n: RequestCount::MAX,
        payload: Payload::new(vec![0x5A; 32]).with_metadata(metadata),
    })
}

/// The frame's bytes as a shared `Bytes`, as the length-prefix codec hands
/// them out.
fn shared_bytes(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.encoded_len() * 2);
    frame.encode(&mut buf);
    let out = buf.split().freeze();
    drop(buf);
    out
}

fn bench_frame(c: &mut Criterion, name: &str, frame: &Frame) {
    let len = frame.encoded_len();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(len as u64));

    let mut out = BytesMut::with_capacity(len);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(frame).encode(&mut out);
            black_box(&out);
        });
    });

    let bytes = shared_bytes(frame);
    assert_eq!(Frame::decode(bytes.clone()).as_ref(), Ok(frame));
    group.bench_function("decode", |b| {
        b.iter(|| Frame::decode(black_box(&bytes).clone()));
    });

    // The same bytes without a reference count: parse cost alone.
    let unshared = Bytes::from_static(Vec::leak(bytes.to_vec()));
    group.bench_function("decode_static", |b| {
        b.iter(|| Frame::decode(black_box(&unshared).clone()));
    });
    group.finish();
}

fn frame_benches(c: &mut Criterion) {
    bench_frame(c, "payload_64", &payload_frame(64));
    bench_frame(c, "request_stream_md", &request_stream_with_metadata());
    bench_frame(c, "payload_16k", &payload_frame(16 * 1024 + 6));
}

fn codec_benches(c: &mut Criterion) {
    let frame = payload_frame(64);
    let mut codec = FrameCodec::new();
    let mut wire = BytesMut::new();
    for _ in 0..FRAMES_IN_BUFFER {
        Encoder::<&Frame>::encode(&mut codec, &frame, &mut wire).expect("frame fits");
    }
    let wire = wire.freeze();

    let mut group = c.benchmark_group("frame_codec_10k");
    group.throughput(Throughput::Elements(FRAMES_IN_BUFFER as u64));

    group.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            for _ in 0..FRAMES_IN_BUFFER {
                Encoder::<&Frame>::encode(&mut codec, black_box(&frame), &mut out)
                    .expect("frame fits");
            }
            black_box(&out);
        });
    });

    // Length prefix only: the decoder yields each frame's bytes.
    group.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut src| {
                let mut n = 0usize;
                while let Ok(Some(body)) = codec.decode(&mut src) {
                    black_box(body);
                    n += 1;
                }
                assert_eq!(n, FRAMES_IN_BUFFER);
            },
            BatchSize::LargeInput,
        );
    });

    // Length prefix and frame parsing: bytes off the wire to typed frames.
    group.bench_function("decode_and_parse", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut src| {
                let mut n = 0usize;
                while let Ok(Some(body)) = codec.decode(&mut src) {
                    if black_box(Frame::decode(body)).is_ok() {
                        n += 1;
                    }
                }
                assert_eq!(n, FRAMES_IN_BUFFER);
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, frame_benches, codec_benches);
criterion_main!(benches);
