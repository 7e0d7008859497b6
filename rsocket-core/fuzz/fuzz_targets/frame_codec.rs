//! Arbitrary bytes through the 24-bit length-prefix `FrameCodec`.
//!
//! The first input byte picks the read size (1..=256) and the second the
//! maximum frame length; the rest is the byte stream, fed to the decoder one
//! read at a time and drained after each read. Nothing may panic, every
//! yielded frame must respect the bounds and equal the bytes behind its
//! prefix, re-framing it must give those bytes back, and each frame is also
//! handed to `Frame::decode`.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rsocket_core::codec::{CodecError, FrameCodec, LENGTH_PREFIX_LEN};
use rsocket_core::frame::HEADER_LEN;
use rsocket_core::Frame;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let [chunk, max, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) + 1;
    // 0 → the default (2^24 − 1); otherwise a small limit so the
    // too-large path is reached.
    let mut codec = match *max {
        0 => FrameCodec::new(),
        m => FrameCodec::with_max_frame_len(usize::from(m) * 4),
    };
    let limit = codec.max_frame_len();

    let mut src = BytesMut::new();
    let mut consumed = 0usize;
    for read in stream.chunks(chunk) {
        src.extend_from_slice(read);
        loop {
            match codec.decode(&mut src) {
                Ok(Some(body)) => {
                    assert!(body.len() >= HEADER_LEN && body.len() <= limit);
                    let start = consumed + LENGTH_PREFIX_LEN;
                    assert_eq!(&stream[start..start + body.len()], &body[..]);
                    consumed = start + body.len();

                    let mut reframed = BytesMut::new();
                    Encoder::<Bytes>::encode(&mut codec, body.clone(), &mut reframed)
                        .expect("a decoded frame fits the same codec");
                    assert_eq!(&reframed[..], &stream[start - LENGTH_PREFIX_LEN..consumed]);

                    let _ = Frame::decode(body);
                }
                Ok(None) => break,
                Err(CodecError::FrameTooLarge { len, max }) => {
                    assert!(len > max && max == limit);
                    return;
                }
                Err(CodecError::FrameTooShort(len)) => {
                    assert!(len < HEADER_LEN);
                    return;
                }
                Err(e) => panic!("unexpected codec error {e:?}"),
            }
        }
    }
    assert_eq!(consumed + src.len(), stream.len());
});
