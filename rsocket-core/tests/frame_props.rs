//! Property tests for the frame codec and the length-prefix codec.
//!
//! 1. Any valid [`Frame`] round-trips: encode → decode gives an equal value,
//!    and `encoded_len` is exact.
//! 2. Arbitrary bytes never panic [`Frame::decode`]; any `Ok` re-encodes to
//!    bytes that decode to the same frame (not necessarily the same bytes:
//!    undefined flag bits are dropped).
//! 3. [`FrameCodec`] yields the same frames however the byte stream is cut
//!    into reads, and never panics on arbitrary input.
//!
//! Case counts are kept small so the file runs in a few seconds in a debug
//! build; raise `PROPTEST_CASES` for a longer local run.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use rsocket_core::codec::{CodecError, FrameCodec, LENGTH_PREFIX_LEN};
use rsocket_core::frame::{
    Cancel, DecodeError, ErrorFrame, Ext, FrameType, Ignored, Keepalive, Lease, MetadataPush,
    MimeType, PayloadFrame, RequestChannel, RequestFnf, RequestN, RequestResponse, RequestStream,
    Resume, ResumeOk, Setup, Version, HEADER_LEN, MAX_U31, MAX_U63,
};
use rsocket_core::{ErrorCode, Frame, Payload, RequestCount, StreamId};
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------
// strategies
// ---------------------------------------------------------------------------

/// Edge values first, then anything in range.
fn u31_in(min: u32) -> impl Strategy<Value = u32> {
    prop_oneof![
        1 => Just(min),
        1 => Just(MAX_U31),
        6 => min..=MAX_U31,
    ]
}

fn stream_id() -> impl Strategy<Value = StreamId> {
    u31_in(1).prop_map(|n| StreamId::new(n).unwrap())
}

fn opt_stream_id() -> impl Strategy<Value = Option<StreamId>> {
    option::of(stream_id())
}

fn request_count() -> impl Strategy<Value = RequestCount> {
    u31_in(1).prop_map(|n| RequestCount::new(n).unwrap())
}

fn u63() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(MAX_U63), 0..=MAX_U63]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// Metadata present (possibly empty) or absent, and data.
fn payload() -> impl Strategy<Value = Payload> {
    (option::of(bytes(48)), bytes(48)).prop_map(|(metadata, data)| Payload { metadata, data })
}

/// US-ASCII, at most 255 bytes.
fn mime_type() -> impl Strategy<Value = MimeType> {
    prop_oneof![
        4 => vec(0u8..=0x7F, 0..=40),
        1 => vec(0u8..=0x7F, 255..=255),
    ]
    .prop_map(|v| MimeType::new(v).unwrap())
}

/// A resume token of at most 65,535 bytes (occasionally exactly that).
fn resume_token() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        20 => bytes(32),
        1 => Just(Bytes::from(vec![0xA5; 65_535])),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u16>(), any::<u16>()).prop_map(|(major, minor)| Version { major, minor })
}

fn setup() -> impl Strategy<Value = Frame> {
    (
        version(),
        u31_in(1),
        u31_in(1),
        option::of(resume_token()),
        any::<bool>(),
        mime_type(),
        mime_type(),
        payload(),
    )
        .prop_map(
            |(version, keepalive, lifetime, resume_token, lease, md_mime, data_mime, payload)| {
                Frame::Setup(Box::new(Setup {
                    version,
                    keepalive_interval_ms: keepalive,
                    max_lifetime_ms: lifetime,
                    resume_token,
                    lease,
                    metadata_mime_type: md_mime,
                    data_mime_type: data_mime,
                    payload,
                }))
            },
        )
}

fn lease() -> impl Strategy<Value = Frame> {
    (u31_in(0), u31_in(0), option::of(bytes(48))).prop_map(|(ttl_ms, n, metadata)| {
        Frame::Lease(Lease {
            ttl_ms,
            number_of_requests: n,
            metadata,
        })
    })
}

fn keepalive() -> impl Strategy<Value = Frame> {
    (any::<bool>(), u63(), bytes(48)).prop_map(|(respond, pos, data)| {
        Frame::Keepalive(Keepalive {
            respond,
            last_received_position: pos,
            data,
        })
    })
}

fn request_response() -> impl Strategy<Value = Frame> {
    (stream_id(), any::<bool>(), payload()).prop_map(|(stream_id, follows, payload)| {
        Frame::RequestResponse(RequestResponse {
            stream_id,
            follows,
            payload,
        })
    })
}

fn request_fnf() -> impl Strategy<Value = Frame> {
    (stream_id(), any::<bool>(), payload()).prop_map(|(stream_id, follows, payload)| {
        Frame::RequestFnf(RequestFnf {
            stream_id,
            follows,
            payload,
        })
    })
}

fn request_stream() -> impl Strategy<Value = Frame> {
    (stream_id(), any::<bool>(), request_count(), payload()).prop_map(
        |(stream_id, follows, initial_request_n, payload)| {
            Frame::RequestStream(RequestStream {
                stream_id,
                follows,
                initial_request_n,
                payload,
            })
        },
    )
}

fn request_channel() -> impl Strategy<Value = Frame> {
    (
        stream_id(),
        any::<bool>(),
        any::<bool>(),
        request_count(),
        payload(),
    )
        .prop_map(
            |(stream_id, follows, complete, initial_request_n, payload)| {
                Frame::RequestChannel(RequestChannel {
                    stream_id,
                    follows,
                    complete,
                    initial_request_n,
                    payload,
                })
            },
        )
}

fn request_n() -> impl Strategy<Value = Frame> {
    (stream_id(), request_count()).prop_map(|(stream_id, request_n)| {
        Frame::RequestN(RequestN {
            stream_id,
            request_n,
        })
    })
}

fn cancel() -> impl Strategy<Value = Frame> {
    stream_id().prop_map(|stream_id| Frame::Cancel(Cancel { stream_id }))
}

/// PAYLOAD always has NEXT, COMPLETE or both.
fn payload_frame() -> impl Strategy<Value = Frame> {
    (
        stream_id(),
        any::<bool>(),
        prop_oneof![Just((true, false)), Just((false, true)), Just((true, true))],
        payload(),
    )
        .prop_map(|(stream_id, follows, (next, complete), payload)| {
            Frame::Payload(PayloadFrame {
                stream_id,
                follows,
                complete,
                next,
                payload,
            })
        })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::INVALID_SETUP),
        Just(ErrorCode::CONNECTION_ERROR),
        Just(ErrorCode::APPLICATION_ERROR),
        Just(ErrorCode::MIN_APPLICATION),
        Just(ErrorCode::MAX_APPLICATION),
        Just(ErrorCode(0x8000_0000)),
        any::<u32>().prop_map(ErrorCode),
    ]
}

fn error() -> impl Strategy<Value = Frame> {
    (opt_stream_id(), error_code(), bytes(48)).prop_map(|(stream_id, code, data)| {
        Frame::Error(ErrorFrame {
            stream_id,
            code,
            data,
        })
    })
}

fn metadata_push() -> impl Strategy<Value = Frame> {
    bytes(64).prop_map(|metadata| Frame::MetadataPush(MetadataPush { metadata }))
}

fn resume() -> impl Strategy<Value = Frame> {
    (version(), resume_token(), u63(), u63()).prop_map(|(version, token, last, first)| {
        Frame::Resume(Resume {
            version,
            resume_token: token,
            last_received_server_position: last,
            first_available_client_position: first,
        })
    })
}

fn resume_ok() -> impl Strategy<Value = Frame> {
    u63().prop_map(|pos| {
        Frame::ResumeOk(ResumeOk {
            last_received_client_position: pos,
        })
    })
}

/// EXT: extended type ≥ 1.
fn ext() -> impl Strategy<Value = Frame> {
    (opt_stream_id(), any::<bool>(), u31_in(1), payload()).prop_map(
        |(stream_id, ignore, extended_type, payload)| {
            Frame::Ext(Ext {
                stream_id,
                ignore,
                extended_type,
                payload,
            })
        },
    )
}

/// Any `Ignored` the decoder can produce: any stream-id word (reserved bit
/// included) with any canonical frame type, except METADATA_PUSH on stream
/// 0, which is always a valid frame and never ignored.
fn ignored() -> impl Strategy<Value = Frame> {
    let stream = prop_oneof![
        Just(0u32),
        Just(1),
        Just(MAX_U31),
        Just(0x8000_0000),
        any::<u32>()
    ];
    // Known types twice as often as the 49 unassigned codes.
    let code = prop_oneof![
        2 => prop::sample::select((1u8..=0x0E).chain([0x3F]).collect::<Vec<_>>()),
        1 => 0u8..64,
    ];
    (stream, code)
        .prop_filter_map(
            "METADATA_PUSH on stream 0 is never ignored",
            |(stream_id, code)| {
                let frame_type = FrameType::from_code(code);
                (stream_id != 0 || frame_type != FrameType::MetadataPush).then_some(Ignored {
                    stream_id,
                    frame_type,
                })
            },
        )
        .prop_map(Frame::Ignored)
}

/// Every `Frame` variant.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        setup(),
        lease(),
        keepalive(),
        request_response(),
        request_fnf(),
        request_stream(),
        request_channel(),
        request_n(),
        cancel(),
        payload_frame(),
        error(),
        metadata_push(),
        resume(),
        resume_ok(),
        ext(),
        ignored(),
    ]
}

/// Bytes shaped like a frame header (interesting stream ids, any type and
/// flags) followed by a short body whose first bytes are often small, so
/// length and count fields land near the edges.
fn frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let stream = prop_oneof![
        Just(0u32),
        Just(1),
        Just(MAX_U31),
        Just(0x8000_0001),
        any::<u32>()
    ];
    let body_byte = prop_oneof![3 => 0u8..4, 1 => any::<u8>()];
    (stream, 0u8..64, 0u16..0x400, vec(body_byte, 0..48)).prop_map(
        |(stream_id, code, flags, body)| {
            let mut out = Vec::with_capacity(HEADER_LEN + body.len());
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&((u16::from(code) << 10) | flags).to_be_bytes());
            out.extend_from_slice(&body);
            out
        },
    )
}

fn arbitrary_frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..64),
        3 => frame_like_bytes(),
    ]
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Encodes every frame behind its length prefix.
fn encode_stream(frames: &[Frame]) -> BytesMut {
    let mut codec = FrameCodec::new();
    let mut wire = BytesMut::new();
    for f in frames {
        Encoder::<&Frame>::encode(&mut codec, f, &mut wire).unwrap();
    }
    wire
}

/// Feeds `wire` to a fresh codec in reads whose sizes cycle through `cuts`,
/// draining the decoder after each read.
fn decode_in_chunks(
    codec: &mut FrameCodec,
    wire: &[u8],
    cuts: &[usize],
) -> (Vec<Bytes>, Result<(), CodecError>, BytesMut) {
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = cuts.iter().cycle();
    while pos < wire.len() {
        let n = (*sizes.next().unwrap()).min(wire.len() - pos);
        src.put_slice(&wire[pos..pos + n]);
        pos += n;
        loop {
            match codec.decode(&mut src) {
                Ok(Some(b)) => out.push(b),
                Ok(None) => break,
                Err(e) => return (out, Err(e), src),
            }
        }
    }
    (out, Ok(()), src)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a failure is useful; an hour of it is not.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// encode → decode is the identity on valid frames.
    #[test]
    fn frame_round_trips(frame in frame()) {
        let bytes = frame.to_bytes();
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(Frame::decode(bytes), Ok(frame));
    }

    /// `Ignored` values get their own run: they are a small share of
    /// `frame()`, and the types where a bare header is a valid frame
    /// (REQUEST_RESPONSE, REQUEST_FNF, CANCEL) are a small share of those.
    #[test]
    fn ignored_round_trips(frame in ignored()) {
        prop_assert_eq!(Frame::decode(frame.to_bytes()), Ok(frame));
    }

    /// Header fields land where §1.4 says, for every valid frame.
    #[test]
    fn header_carries_stream_and_type(frame in frame()) {
        let bytes = frame.to_bytes();
        prop_assert!(bytes.len() >= HEADER_LEN);
        let word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let type_code = bytes[4] >> 2;
        prop_assert_eq!(type_code, frame.frame_type().code());
        match &frame {
            Frame::Ignored(i) => prop_assert_eq!(word, i.stream_id),
            _ => {
                prop_assert_eq!(StreamId::new(word), frame.stream_id());
                prop_assert_eq!(word & 0x8000_0000, 0);
            }
        }
    }

    /// Decoding arbitrary bytes never panics, and whatever decodes re-encodes
    /// to bytes that decode to the same frame.
    #[test]
    fn arbitrary_bytes_never_panic_and_re_encode_stably(raw in arbitrary_frame_bytes()) {
        let input = Bytes::from(raw);
        match Frame::decode(input.clone()) {
            Ok(frame) => {
                let again = frame.to_bytes();
                prop_assert_eq!(again.len(), frame.encoded_len());
                prop_assert_eq!(Frame::decode(again), Ok(frame.clone()));
                // The decoder never reports a type other than the header's.
                prop_assert_eq!(frame.frame_type().code(), input[4] >> 2);
            }
            Err(DecodeError::HeaderTruncated(n)) => {
                prop_assert!(input.len() < HEADER_LEN);
                prop_assert_eq!(n, input.len());
            }
            Err(e) => {
                prop_assert!(input.len() >= HEADER_LEN);
                // With the I flag every failure becomes Ignored instead.
                prop_assert_eq!(input[4] & 0x02, 0, "I flag set but got {:?}", e);
                let code = e.frame_type().unwrap().code();
                prop_assert_eq!(code, input[4] >> 2);
            }
        }
    }

    /// Truncating a valid frame never panics the decoder.
    #[test]
    fn truncated_frames_never_panic(frame in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = frame.to_bytes();
        let at = cut.index(bytes.len() + 1);
        if let Ok(f) = Frame::decode(bytes.slice(..at)) {
            prop_assert_eq!(Frame::decode(f.to_bytes()), Ok(f));
        }
    }

    /// Error codes are carried as a full u32.
    #[test]
    fn error_codes_round_trip(stream in opt_stream_id(), code in any::<u32>()) {
        let frame = Frame::Error(ErrorFrame::new(stream, ErrorCode(code), "x"));
        let bytes = frame.to_bytes();
        prop_assert_eq!(&bytes[6..10], &code.to_be_bytes()[..]);
        let Ok(Frame::Error(e)) = Frame::decode(bytes) else {
            return Err(TestCaseError::fail("not an ERROR"));
        };
        prop_assert_eq!(e.code, ErrorCode(code));
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Any cut of the byte stream into reads yields the same frames.
    #[test]
    fn codec_reassembles_any_chunking(
        frames in vec(frame(), 1..8),
        cuts in vec(1usize..40, 1..16),
    ) {
        let wire = encode_stream(&frames);
        let mut codec = FrameCodec::new();
        let (bodies, result, rest) = decode_in_chunks(&mut codec, &wire, &cuts);
        prop_assert!(result.is_ok(), "{:?}", result);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(bodies.len(), frames.len());
        for (body, frame) in bodies.into_iter().zip(&frames) {
            prop_assert_eq!(body.len(), frame.encoded_len());
            prop_assert_eq!(Frame::decode(body), Ok(frame.clone()));
        }
    }

    /// One byte at a time works too, and a frame appears only on its last byte.
    #[test]
    fn codec_byte_by_byte(frames in vec(frame(), 1..4)) {
        let wire = encode_stream(&frames);
        let mut codec = FrameCodec::new();
        let (bodies, result, rest) = decode_in_chunks(&mut codec, &wire, &[1]);
        prop_assert!(result.is_ok());
        prop_assert!(rest.is_empty());
        let decoded: Vec<Frame> = bodies.into_iter().map(|b| Frame::decode(b).unwrap()).collect();
        prop_assert_eq!(decoded, frames);
    }

    /// Arbitrary bytes never panic the length-prefix decoder; what it yields
    /// is within the configured bounds, and an error is one of the two
    /// framing errors.
    #[test]
    fn codec_never_panics_on_arbitrary_bytes(
        raw in vec(prop_oneof![3 => 0u8..8, 1 => any::<u8>()], 0..512),
        cuts in vec(1usize..64, 1..8),
        max in prop_oneof![Just(usize::MAX), 0usize..300],
    ) {
        let mut codec = FrameCodec::with_max_frame_len(max);
        let limit = codec.max_frame_len();
        let (bodies, result, rest) = decode_in_chunks(&mut codec, &raw, &cuts);
        let mut consumed = 0;
        for body in &bodies {
            prop_assert!(body.len() >= HEADER_LEN && body.len() <= limit);
            prop_assert_eq!(
                &raw[consumed..consumed + LENGTH_PREFIX_LEN],
                &[(body.len() >> 16) as u8, (body.len() >> 8) as u8, body.len() as u8][..]
            );
            prop_assert_eq!(&raw[consumed + LENGTH_PREFIX_LEN..][..body.len()], &body[..]);
            consumed += LENGTH_PREFIX_LEN + body.len();
            // Decoding the body must not panic either.
            let _ = Frame::decode(body.clone());
        }
        match result {
            Ok(()) => prop_assert_eq!(consumed + rest.len(), raw.len()),
            Err(CodecError::FrameTooLarge { len, max }) => {
                prop_assert!(len > max);
                prop_assert_eq!(max, limit);
            }
            Err(CodecError::FrameTooShort(len)) => prop_assert!(len < HEADER_LEN),
            Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        }
    }
}
