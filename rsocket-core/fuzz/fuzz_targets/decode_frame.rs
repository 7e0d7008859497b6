//! Arbitrary bytes → `Frame::decode`. Decoding must never panic, and any
//! frame that decodes must re-encode (to exactly `encoded_len` bytes) into
//! bytes that decode to an equal frame.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rsocket_core::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = frame.to_bytes();
    assert_eq!(again.len(), frame.encoded_len());
    assert_eq!(Frame::decode(again), Ok(frame));
});
