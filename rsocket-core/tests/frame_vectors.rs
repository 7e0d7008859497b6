//! Known-answer vectors for the frame codec and the 24-bit length-prefix
//! codec, plus the receiver validation rules of rsocket-protocol.md §2.14.
//!
//! Every vector is checked in both directions: the hex decodes to the
//! expected value, and the value encodes to exactly that hex (with
//! `encoded_len` agreeing). Vectors written with the 3-byte TCP prefix go
//! through [`FrameCodec`] as well.
//!
//! Sources of the hex: rsocket-protocol.md §12.1 (rsocket-tck frame tests),
//! §12.3 (rsocket-java codec tests, with length prefix), §13 (hand-built and
//! cross-checked examples). Where a source names a test but prints no bytes,
//! the bytes here are laid out by hand from §2.

use std::mem::discriminant;

use bytes::{BufMut, Bytes, BytesMut};
use rsocket_core::codec::{CodecError, FrameCodec, LENGTH_PREFIX_LEN};
use rsocket_core::frame::{
    Cancel, DecodeError, ErrorFrame, Ext, FrameType, Ignored, Keepalive, Lease, MetadataPush,
    MimeType, PayloadFrame, RequestChannel, RequestFnf, RequestN, RequestResponse, RequestStream,
    Resume, ResumeOk, Setup, Version, MAX_FRAME_LEN,
};
use rsocket_core::{ErrorCode, Frame, Payload, RequestCount, StreamId};
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Parses hex, ignoring whitespace.
fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {s:?}"
    );
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

/// Lower-case hex without separators, for readable assertion diffs.
fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sid(n: u32) -> StreamId {
    StreamId::new(n).unwrap()
}

fn rn(n: u32) -> RequestCount {
    RequestCount::new(n).unwrap()
}

fn mime(s: &'static str) -> MimeType {
    MimeType::from_static(s).unwrap()
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn data(s: &'static str) -> Payload {
    Payload::new(b(s))
}

fn md_data(md: &'static str, d: &'static str) -> Payload {
    Payload::new(b(d)).with_metadata(b(md))
}

fn decode_hex(s: &str) -> Result<Frame, DecodeError> {
    Frame::decode(hex(s))
}

/// Decodes `hex_str` to `frame` and encodes `frame` to `hex_str`.
#[track_caller]
fn known_answer(hex_str: &str, frame: &Frame) {
    let bytes = hex(hex_str);
    assert_eq!(
        Frame::decode(bytes.clone()).as_ref(),
        Ok(frame),
        "decode of {hex_str}"
    );
    assert_eq!(frame.encoded_len(), bytes.len(), "encoded_len of {frame:?}");
    assert_eq!(to_hex(&frame.to_bytes()), to_hex(&bytes), "to_bytes");
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    assert_eq!(to_hex(&buf), to_hex(&bytes), "encode into BytesMut");
}

/// Like [`known_answer`] for a vector that carries the 3-byte TCP prefix:
/// the bytes go through [`FrameCodec`] in both directions.
#[track_caller]
fn known_answer_tcp(hex_str: &str, frame: &Frame) {
    let wire = hex(hex_str);
    let mut codec = FrameCodec::new();

    let mut src = BytesMut::from(&wire[..]);
    let body = codec
        .decode(&mut src)
        .expect("length prefix accepted")
        .expect("a complete frame");
    assert!(src.is_empty(), "codec left {} bytes", src.len());
    assert_eq!(body.len() + LENGTH_PREFIX_LEN, wire.len());
    assert_eq!(
        Frame::decode(body).as_ref(),
        Ok(frame),
        "decode of {hex_str}"
    );

    let mut dst = BytesMut::new();
    Encoder::<&Frame>::encode(&mut codec, frame, &mut dst).unwrap();
    assert_eq!(to_hex(&dst), to_hex(&wire), "FrameCodec encode");

    // The bare frame is a known answer on its own too.
    known_answer(&to_hex(&wire[LENGTH_PREFIX_LEN..]), frame);
}

fn cancel(id: u32) -> Frame {
    Frame::Cancel(Cancel { stream_id: sid(id) })
}

fn request_response(id: u32, payload: Payload) -> Frame {
    Frame::RequestResponse(RequestResponse {
        stream_id: sid(id),
        follows: false,
        payload,
    })
}

fn request_fnf(id: u32, payload: Payload) -> Frame {
    Frame::RequestFnf(RequestFnf {
        stream_id: sid(id),
        follows: false,
        payload,
    })
}

fn request_stream(id: u32, n: u32, payload: Payload) -> Frame {
    Frame::RequestStream(RequestStream {
        stream_id: sid(id),
        follows: false,
        initial_request_n: rn(n),
        payload,
    })
}

fn request_channel(id: u32, n: u32, complete: bool, payload: Payload) -> Frame {
    Frame::RequestChannel(RequestChannel {
        stream_id: sid(id),
        follows: false,
        complete,
        initial_request_n: rn(n),
        payload,
    })
}

fn request_n(id: u32, n: u32) -> Frame {
    Frame::RequestN(RequestN {
        stream_id: sid(id),
        request_n: rn(n),
    })
}

fn payload(id: u32, next: bool, complete: bool, p: Payload) -> Frame {
    Frame::Payload(PayloadFrame {
        stream_id: sid(id),
        follows: false,
        complete,
        next,
        payload: p,
    })
}

fn error(id: u32, code: ErrorCode, msg: &'static str) -> Frame {
    Frame::Error(ErrorFrame {
        stream_id: StreamId::new(id),
        code,
        data: b(msg),
    })
}

fn keepalive(respond: bool, pos: u64, d: Bytes) -> Frame {
    Frame::Keepalive(Keepalive {
        respond,
        last_received_position: pos,
        data: d,
    })
}

fn lease(ttl_ms: u32, n: u32, metadata: Option<Bytes>) -> Frame {
    Frame::Lease(Lease {
        ttl_ms,
        number_of_requests: n,
        metadata,
    })
}

fn metadata_push(md: &'static str) -> Frame {
    Frame::MetadataPush(MetadataPush { metadata: b(md) })
}

fn ext(id: u32, ignore: bool, ty: u32, p: Payload) -> Frame {
    Frame::Ext(Ext {
        stream_id: StreamId::new(id),
        ignore,
        extended_type: ty,
        payload: p,
    })
}

fn ignored(stream_id: u32, frame_type: FrameType) -> Frame {
    Frame::Ignored(Ignored {
        stream_id,
        frame_type,
    })
}

/// SETUP v1.0 with no flags and no payload.
fn plain_setup(
    keepalive: u32,
    lifetime: u32,
    md_mime: &'static str,
    d_mime: &'static str,
) -> Setup {
    Setup {
        version: Version::V1_0,
        keepalive_interval_ms: keepalive,
        max_lifetime_ms: lifetime,
        resume_token: None,
        lease: false,
        metadata_mime_type: mime(md_mime),
        data_mime_type: mime(d_mime),
        payload: Payload::default(),
    }
}

/// A 65,000-byte token of 0x01 and its hex, as in the TCK's resume tests.
fn big_token() -> (Bytes, String) {
    (Bytes::from(vec![1u8; 65_000]), "01".repeat(65_000))
}

// ---------------------------------------------------------------------------
// §13: hand-built examples
// ---------------------------------------------------------------------------

#[test]
fn s13_1_setup_octet_stream() {
    let frame = Frame::Setup(Box::new(plain_setup(
        30_000,
        90_000,
        "application/octet-stream",
        "application/octet-stream",
    )));
    known_answer_tcp(
        "00 00 44 00 00 00 00 04 00 00 01 00 00 00 00 75 30 00 01 5f 90 18 61 70 70 6c 69 63 61 74 69 6f
         6e 2f 6f 63 74 65 74 2d 73 74 72 65 61 6d 18 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6f 63 74 65 74
         2d 73 74 72 65 61 6d",
        &frame,
    );
}

#[test]
fn s13_2_request_response_with_metadata() {
    let frame = request_response(1, md_data("m", "hi"));
    known_answer("00 00 00 01 11 00 00 00 01 6d 68 69", &frame);
    known_answer_tcp("00 00 0c 00 00 00 01 11 00 00 00 01 6d 68 69", &frame);
}

#[test]
fn s13_3_request_n() {
    let frame = request_n(3, 5);
    known_answer("00 00 00 03 20 00 00 00 00 05", &frame);
    known_answer_tcp("00 00 0a 00 00 00 03 20 00 00 00 00 05", &frame);
}

#[test]
fn s13_4_payload_next_complete() {
    let frame = payload(1, true, true, data("ok"));
    known_answer("00 00 00 01 28 60 6f 6b", &frame);
    known_answer_tcp("00 00 08 00 00 00 01 28 60 6f 6b", &frame);
}

#[test]
fn s13_5_error_application() {
    let frame = error(5, ErrorCode::APPLICATION_ERROR, "boom");
    known_answer("00 00 00 05 2c 00 00 00 02 01 62 6f 6f 6d", &frame);
    known_answer_tcp("00 00 0e 00 00 00 05 2c 00 00 00 02 01 62 6f 6f 6d", &frame);
}

#[test]
fn s13_6_keepalive_and_reply() {
    let frame = keepalive(true, 0, Bytes::new());
    known_answer("00 00 00 00 0c 80 00 00 00 00 00 00 00 00", &frame);
    known_answer_tcp("00 00 0e 00 00 00 00 0c 80 00 00 00 00 00 00 00 00", &frame);
    known_answer(
        "00 00 00 00 0c 00 00 00 00 00 00 00 00 00",
        &keepalive(false, 0, Bytes::new()),
    );
    known_answer(
        "00 00 00 00 0c 80 00 00 00 00 00 00 00 00 64",
        &keepalive(true, 0, b("d")),
    );
}

#[test]
fn s13_7_more_frames() {
    let setup_mrl = Frame::Setup(Box::new(Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 500,
        max_lifetime_ms: 1500,
        resume_token: Some(b("abc")),
        lease: true,
        metadata_mime_type: mime("x/m"),
        data_mime_type: mime("x/d"),
        payload: md_data("M", "D"),
    }));
    let table: Vec<(&str, Frame)> = vec![
        ("00 00 00 01 24 00", cancel(1)),
        ("00 00 00 01 14 00 68 69", request_fnf(1, data("hi"))),
        (
            "00 00 00 01 18 00 00 00 00 05 68 69",
            request_stream(1, 5, data("hi")),
        ),
        (
            "00 00 00 01 1d 40 00 00 00 01 00 00 00 78",
            request_channel(1, 1, true, md_data("", "x")),
        ),
        (
            "00 00 00 01 28 40",
            Frame::Payload(PayloadFrame::complete(sid(1))),
        ),
        (
            "00 00 00 02 29 20 00 00 00",
            payload(2, true, false, md_data("", "")),
        ),
        ("00 00 00 00 31 00 6d", metadata_push("m")),
        (
            "00 00 00 00 08 00 00 00 03 e8 00 00 00 0a",
            lease(1000, 10, None),
        ),
        (
            "00 00 00 00 09 00 00 00 03 e8 00 00 00 0a 6d 64",
            lease(1000, 10, Some(b("md"))),
        ),
        (
            "00 00 00 00 34 00 00 01 00 00 00 03 61 62 63 00 00 00 00 00 00 00 64 00 00 00 00 00 00 00 28",
            Frame::Resume(Resume {
                version: Version::V1_0,
                resume_token: b("abc"),
                last_received_server_position: 100,
                first_available_client_position: 40,
            }),
        ),
        (
            "00 00 00 00 38 00 00 00 00 00 00 00 00 2a",
            Frame::ResumeOk(ResumeOk {
                last_received_client_position: 42,
            }),
        ),
        (
            "00 00 00 00 2c 00 00 00 00 03 6e 6f",
            error(0, ErrorCode::REJECTED_SETUP, "no"),
        ),
        (
            "00 00 00 00 fe 00 00 00 00 07",
            ext(0, true, 7, Payload::default()),
        ),
        (
            "00 00 00 00 05 c0 00 01 00 00 00 00 01 f4 00 00 05 dc 00 03 61 62 63 03 78 2f 6d 03 78 2f 64 00 00 01 4d 44",
            setup_mrl,
        ),
    ];
    for (h, frame) in &table {
        known_answer(h, frame);
        // "TCP = 00 00 <len> + frame": every row has a length below 256.
        let len = hex(h).len();
        assert!(len < 256);
        known_answer_tcp(&format!("0000{len:02x}{h}"), frame);
    }
}

#[test]
fn s13_8_request_response_with_composite_routing() {
    let frame = Frame::RequestResponse(RequestResponse {
        stream_id: sid(1),
        follows: false,
        payload: Payload::new(b("hi")).with_metadata(hex("fe 00 00 06 05 68 65 6c 6c 6f")),
    });
    let h = "00 00 00 01 11 00 00 00 0a fe 00 00 06 05 68 65 6c 6c 6f 68 69";
    known_answer(h, &frame);
    known_answer_tcp(&format!("00 00 15 {h}"), &frame);
}

#[test]
fn s13_9_position_accounting_frames() {
    let req = request_stream(1, 5, data("hi"));
    let resp = payload(1, true, false, data("ok"));
    known_answer("00 00 00 01 28 20 6f 6b", &resp);
    assert_eq!(req.encoded_len(), 12);
    assert_eq!(resp.encoded_len(), 8);
}

// ---------------------------------------------------------------------------
// §12.1: rsocket-tck frame codec tests
// ---------------------------------------------------------------------------

#[test]
fn tck_cancel() {
    known_answer("00000001 2400", &cancel(1));
    known_answer("00003039 2400", &cancel(12_345));
}

#[test]
fn tck_error() {
    known_answer(
        "00000001 2c00 00000201 64",
        &error(1, ErrorCode::APPLICATION_ERROR, "d"),
    );
}

#[test]
fn tck_keepalive() {
    known_answer(
        "00000000 0c80 0000000000000000 64",
        &keepalive(true, 0, b("d")),
    );
    known_answer(
        "00000000 0c80 0000000000000003 050403",
        &keepalive(true, 3, Bytes::from_static(&[5, 4, 3])),
    );
}

#[test]
fn tck_lease() {
    known_answer(
        "00000000 0900 00000001 0000002a 6d64",
        &lease(1, 42, Some(b("md"))),
    );
    known_answer("00000000 0800 00000001 0000002a", &lease(1, 42, None));
}

#[test]
fn tck_metadata_push() {
    known_answer("00000000 3100 6d64", &metadata_push("md"));
    // Empty metadata: M stays set.
    known_answer("00000000 3100", &metadata_push(""));
}

#[test]
fn tck_payload() {
    known_answer(
        "00000001 2960 000002 6d64 64",
        &payload(1, true, true, md_data("md", "d")),
    );
    known_answer("00000001 2860 64", &payload(1, true, true, data("d")));
    known_answer(
        "00000001 2960 000002 6d64",
        &payload(1, true, true, md_data("md", "")),
    );
    known_answer(
        "00000001 2920 000002 6d64 64",
        &payload(1, true, false, md_data("md", "d")),
    );
    known_answer("00000001 2820 64", &payload(1, true, false, data("d")));
}

#[test]
fn tck_request_channel() {
    known_answer(
        "00000001 1d00 00000001 000002 6d64 64",
        &request_channel(1, 1, false, md_data("md", "d")),
    );
    known_answer(
        "00000001 1d00 00000001 000000 64",
        &request_channel(1, 1, false, md_data("", "d")),
    );
    known_answer(
        "00000001 1c00 00000001 64",
        &request_channel(1, 1, false, data("d")),
    );
    known_answer(
        "00000001 1c40 00000001 64",
        &request_channel(1, 1, true, data("d")),
    );
}

#[test]
fn tck_request_fnf() {
    known_answer(
        "00000001 1500 000002 6d64 64",
        &request_fnf(1, md_data("md", "d")),
    );
    known_answer("00000001 1400 64", &request_fnf(1, data("d")));
    known_answer(
        "00000001 1500 000002 6d64",
        &request_fnf(1, md_data("md", "")),
    );
}

#[test]
fn tck_request_n() {
    known_answer("00000001 2000 00000005", &request_n(1, 5));
}

#[test]
fn tck_request_response() {
    known_answer(
        "00000001 1100 000002 6d64 64",
        &request_response(1, md_data("md", "d")),
    );
    known_answer("00000001 1000 64", &request_response(1, data("d")));
    known_answer(
        "00000001 1100 000002 6d64",
        &request_response(1, md_data("md", "")),
    );
}

#[test]
fn tck_request_stream() {
    known_answer(
        "00000001 1900 00000001 000002 6d64 64",
        &request_stream(1, 1, md_data("md", "d")),
    );
    known_answer(
        "00000001 1900 00000001 000000 64",
        &request_stream(1, 1, md_data("", "d")),
    );
    known_answer(
        "00000001 1800 00000001 64",
        &request_stream(1, 1, data("d")),
    );
}

#[test]
fn tck_resume_with_65000_byte_token() {
    let (token, token_hex) = big_token();
    let frame = Frame::Resume(Resume {
        version: Version::V1_0,
        resume_token: token,
        last_received_server_position: 21,
        first_available_client_position: 12,
    });
    known_answer(
        &format!("00000000 3400 0001 0000 fde8 {token_hex} 0000000000000015 000000000000000c"),
        &frame,
    );
}

#[test]
fn tck_resume_ok() {
    known_answer(
        "00000000 3800 000000000000002a",
        &Frame::ResumeOk(ResumeOk {
            last_received_client_position: 42,
        }),
    );
}

fn tck_setup(resume_token: Option<Bytes>) -> Frame {
    Frame::Setup(Box::new(Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 5,
        max_lifetime_ms: 500,
        resume_token,
        lease: false,
        metadata_mime_type: mime("metadata_type"),
        data_mime_type: mime("data_type"),
        payload: Payload::new(Bytes::from_static(&[5, 4, 3]))
            .with_metadata(Bytes::from_static(&[1, 2, 3, 4])),
    }))
}

const TCK_SETUP_TAIL: &str =
    "0d 6d657461646174615f74797065 09 646174615f74797065 000004 01020304 050403";

#[test]
fn tck_setup_with_metadata() {
    known_answer(
        &format!("00000000 0500 0001 0000 00000005 000001f4 {TCK_SETUP_TAIL}"),
        &tck_setup(None),
    );
}

#[test]
fn tck_setup_with_resume_token() {
    let (token, token_hex) = big_token();
    known_answer(
        &format!("00000000 0580 0001 0000 00000005 000001f4 fde8 {token_hex} {TCK_SETUP_TAIL}"),
        &tck_setup(Some(token)),
    );
}

#[test]
fn tck_connection_setup_feature() {
    // keepalive 500, lifetime 1500, composite metadata / text/plain, no flags.
    let frame = Frame::Setup(Box::new(plain_setup(
        500,
        1500,
        "message/x.rsocket.composite-metadata.v0",
        "text/plain",
    )));
    known_answer_tcp(
        "000045 00000000 0400 0001 0000 000001f4 000005dc
         27 6d6573736167652f782e72736f636b65742e636f6d706f736974652d6d657461646174612e7630
         0a 746578742f706c61696e",
        &frame,
    );
}

// ---------------------------------------------------------------------------
// §12.3: rsocket-java codec tests (vectors with the TCP length prefix)
// ---------------------------------------------------------------------------

#[test]
fn java_error_frame_codec() {
    known_answer_tcp(
        "00000b000000012c000000020164",
        &error(1, ErrorCode::APPLICATION_ERROR, "d"),
    );
}

#[test]
fn java_keepalive_frame_flyweight() {
    known_answer_tcp(
        "00000f000000000c80000000000000000064",
        &keepalive(true, 0, b("d")),
    );
}

#[test]
fn java_request_n_frame_codec() {
    known_answer_tcp("00000a00000001200000000005", &request_n(1, 5));
}

#[test]
fn java_generic_frame_codec_request_stream() {
    known_answer_tcp(
        "000010000000011900000000010000026d6464",
        &request_stream(1, 1, md_data("md", "d")),
    );
    known_answer_tcp(
        "00000e0000000119000000000100000064",
        &request_stream(1, 1, md_data("", "d")),
    );
    known_answer_tcp(
        "00000b0000000118000000000164",
        &request_stream(1, 1, data("d")),
    );
}

#[test]
fn java_lease_frame_codec() {
    known_answer_tcp(
        "000010 00000000 0900 000003e8 0000000a 6d64",
        &lease(1000, 10, Some(b("md"))),
    );
    known_answer_tcp(
        "00000e 00000000 0800 000003e8 0000000a",
        &lease(1000, 10, None),
    );
    // Zero TTL / zero requests are accepted on receipt (§2.2).
    known_answer("00000000 0800 00000000 00000000", &lease(0, 0, None));
}

#[test]
fn java_extension_frame_codec() {
    known_answer_tcp(
        "000010 00000001 ff00 00000001 000002 6d64 64",
        &ext(1, true, 1, md_data("md", "d")),
    );
    known_answer_tcp(
        "00000b 00000001 fe00 00000001 64",
        &ext(1, true, 1, data("d")),
    );
    known_answer_tcp(
        "00000f 00000001 ff00 00000001 000002 6d64",
        &ext(1, true, 1, md_data("md", "")),
    );
    // Without the I flag the frame is still an EXT, not dropped.
    known_answer(
        "00000000 fc00 7fffffff",
        &ext(0, false, 0x7FFF_FFFF, data("")),
    );
}

#[test]
fn java_setup_frame_codec() {
    known_answer_tcp(
        "000044 00000000 0400 0001 0000 00007530 00015f90
         18 6170706c69636174696f6e2f6f637465742d73747265616d
         18 6170706c69636174696f6e2f6f637465742d73747265616d",
        &Frame::Setup(Box::new(plain_setup(
            30_000,
            90_000,
            "application/octet-stream",
            "application/octet-stream",
        ))),
    );
    // With a resume token and the lease flag (R + L, no metadata).
    let mut with_token = plain_setup(1, 2, "a", "b");
    with_token.resume_token = Some(Bytes::from_static(&[0xAA, 0xBB]));
    with_token.lease = true;
    with_token.payload = data("x");
    known_answer_tcp(
        "00001b 00000000 04c0 0001 0000 00000001 00000002 0002 aabb 01 61 01 62 78",
        &Frame::Setup(Box::new(with_token)),
    );
    // An R flag with an empty token keeps the token present.
    let mut empty_token = plain_setup(1, 2, "", "");
    empty_token.resume_token = Some(Bytes::new());
    known_answer(
        "00000000 0480 0001 0000 00000001 00000002 0000 00 00",
        &Frame::Setup(Box::new(empty_token)),
    );
    // Largest u31 intervals.
    known_answer(
        "00000000 0400 0001 0000 7fffffff 7fffffff 00 00",
        &Frame::Setup(Box::new(plain_setup(0x7FFF_FFFF, 0x7FFF_FFFF, "", ""))),
    );
}

#[test]
fn java_resume_frame_codec() {
    let frame = Frame::Resume(Resume {
        version: Version::V1_0,
        resume_token: Bytes::from_static(&[0x10, 0x20]),
        last_received_server_position: 0x7FFF_FFFF_FFFF_FFFF,
        first_available_client_position: 0,
    });
    known_answer_tcp(
        "00001e 00000000 3400 0001 0000 0002 1020 7fffffffffffffff 0000000000000000",
        &frame,
    );
}

#[test]
fn java_resume_ok_frame_codec() {
    known_answer_tcp(
        "00000e 00000000 3800 7fffffffffffffff",
        &Frame::ResumeOk(ResumeOk {
            last_received_client_position: 0x7FFF_FFFF_FFFF_FFFF,
        }),
    );
}

#[test]
fn java_version_codec() {
    let at = |major: u16, minor: u16| {
        let mut s = plain_setup(1, 1, "", "");
        s.version = Version { major, minor };
        Frame::Setup(Box::new(s))
    };
    known_answer("00000000 0400 0001 0000 00000001 00000001 00 00", &at(1, 0));
    // 4660.22136 = 0x1234.0x5678
    known_answer(
        "00000000 0400 1234 5678 00000001 00000001 00 00",
        &at(4660, 22136),
    );
    // No u16 overflow into the neighbouring field.
    known_answer(
        "00000000 0400 ffff ffff 00000001 00000001 00 00",
        &at(u16::MAX, u16::MAX),
    );
    assert_eq!(
        Version {
            major: 4660,
            minor: 22136
        }
        .to_string(),
        "4660.22136"
    );
    assert_eq!(Version::default().to_string(), "1.0");
}

#[test]
fn java_payload_flyweight_next_data_empty_metadata() {
    known_answer(
        "00000001 2920 000000 64",
        &payload(1, true, false, md_data("", "d")),
    );
}

/// §1.5: the type-and-flags word for every frame type and the common flag
/// combinations.
#[test]
fn header_word_for_every_type() {
    let setup = |meta: bool, resume: bool, lease: bool| {
        let mut s = plain_setup(1, 1, "", "");
        s.resume_token = resume.then(|| b("t"));
        s.lease = lease;
        s.payload = if meta { md_data("", "") } else { data("") };
        Frame::Setup(Box::new(s))
    };
    let rr = |md: bool, follows: bool| {
        Frame::RequestResponse(RequestResponse {
            stream_id: sid(1),
            follows,
            payload: if md { md_data("", "") } else { data("") },
        })
    };
    let pl = |md: bool, follows: bool, next: bool, complete: bool| {
        Frame::Payload(PayloadFrame {
            stream_id: sid(1),
            follows,
            complete,
            next,
            payload: if md { md_data("", "") } else { data("") },
        })
    };
    let fnf_follows = Frame::RequestFnf(RequestFnf {
        stream_id: sid(1),
        follows: true,
        payload: data(""),
    });
    let cases: Vec<(u16, Frame)> = vec![
        (0x0400, setup(false, false, false)),
        (0x0500, setup(true, false, false)),
        (0x0480, setup(false, true, false)),
        (0x0440, setup(false, false, true)),
        (0x05C0, setup(true, true, true)),
        (0x0800, lease(1, 1, None)),
        (0x0900, lease(1, 1, Some(Bytes::new()))),
        (0x0C00, keepalive(false, 0, Bytes::new())),
        (0x0C80, keepalive(true, 0, Bytes::new())),
        (0x1000, rr(false, false)),
        (0x1100, rr(true, false)),
        (0x1080, rr(false, true)),
        (0x1180, rr(true, true)),
        (0x1400, request_fnf(1, data(""))),
        (0x1500, request_fnf(1, md_data("", ""))),
        (0x1480, fnf_follows),
        (0x1800, request_stream(1, 1, data(""))),
        (0x1900, request_stream(1, 1, md_data("", ""))),
        (0x1C00, request_channel(1, 1, false, data(""))),
        (0x1C40, request_channel(1, 1, true, data(""))),
        (0x1D40, request_channel(1, 1, true, md_data("", ""))),
        (0x2000, request_n(1, 1)),
        (0x2400, cancel(1)),
        (0x2820, pl(false, false, true, false)),
        (0x2840, pl(false, false, false, true)),
        (0x2860, pl(false, false, true, true)),
        (0x2920, pl(true, false, true, false)),
        (0x28A0, pl(false, true, true, false)),
        (0x29A0, pl(true, true, true, false)),
        (0x2960, pl(true, false, true, true)),
        (0x2C00, error(0, ErrorCode::CONNECTION_ERROR, "")),
        (0x3100, metadata_push("")),
        (
            0x3400,
            Frame::Resume(Resume {
                version: Version::V1_0,
                resume_token: Bytes::new(),
                last_received_server_position: 0,
                first_available_client_position: 0,
            }),
        ),
        (
            0x3800,
            Frame::ResumeOk(ResumeOk {
                last_received_client_position: 0,
            }),
        ),
        (0xFC00, ext(1, false, 1, data(""))),
        (0xFE00, ext(1, true, 1, data(""))),
        (0xFF00, ext(1, true, 1, md_data("", ""))),
    ];
    for (word, frame) in &cases {
        let bytes = frame.to_bytes();
        assert_eq!(
            u16::from_be_bytes([bytes[4], bytes[5]]),
            *word,
            "header word of {frame:?}"
        );
        assert_eq!(frame.frame_type().code(), (word >> 10) as u8);
        assert_eq!(Frame::decode(bytes).as_ref(), Ok(frame));
    }
}

#[test]
fn frame_type_codes() {
    let known = [
        (0x01, FrameType::Setup),
        (0x02, FrameType::Lease),
        (0x03, FrameType::Keepalive),
        (0x04, FrameType::RequestResponse),
        (0x05, FrameType::RequestFnf),
        (0x06, FrameType::RequestStream),
        (0x07, FrameType::RequestChannel),
        (0x08, FrameType::RequestN),
        (0x09, FrameType::Cancel),
        (0x0A, FrameType::Payload),
        (0x0B, FrameType::Error),
        (0x0C, FrameType::MetadataPush),
        (0x0D, FrameType::Resume),
        (0x0E, FrameType::ResumeOk),
        (0x3F, FrameType::Ext),
    ];
    for code in 0u8..64 {
        let ty = FrameType::from_code(code);
        assert_eq!(ty.code(), code);
        match known.iter().find(|(c, _)| *c == code) {
            Some((_, expected)) => assert_eq!(ty, *expected),
            None => assert_eq!(ty, FrameType::Unknown(code)),
        }
    }
}

// ---------------------------------------------------------------------------
// §2.14: receiver validation
// ---------------------------------------------------------------------------

#[test]
fn header_shorter_than_six_bytes() {
    for n in 0..6 {
        assert_eq!(
            Frame::decode(Bytes::from(vec![0u8; n])),
            Err(DecodeError::HeaderTruncated(n))
        );
    }
    // Five bytes of an otherwise valid CANCEL: the flags byte is missing.
    assert_eq!(
        decode_hex("00000001 24"),
        Err(DecodeError::HeaderTruncated(5))
    );
}

#[test]
fn truncated_fixed_fields() {
    let truncated = |frame, needed, remaining| {
        Err(DecodeError::Truncated {
            frame,
            needed,
            remaining,
        })
    };
    // REQUEST_N with a 2-byte body.
    assert_eq!(
        decode_hex("00000001 2000 0000"),
        truncated(FrameType::RequestN, 4, 2)
    );
    // REQUEST_STREAM without its request-n.
    assert_eq!(
        decode_hex("00000001 1800"),
        truncated(FrameType::RequestStream, 4, 0)
    );
    assert_eq!(
        decode_hex("00000001 1c00 000001"),
        truncated(FrameType::RequestChannel, 4, 3)
    );
    // RESUME whose token length (16) overruns the 2 bytes left.
    assert_eq!(
        decode_hex("00000000 3400 0001 0000 0010 6162"),
        truncated(FrameType::Resume, 16, 2)
    );
    // RESUME missing its second position.
    assert_eq!(
        decode_hex("00000000 3400 0001 0000 0000 0000000000000001"),
        truncated(FrameType::Resume, 8, 0)
    );
    // SETUP cut inside the keepalive interval.
    assert_eq!(
        decode_hex("00000000 0400 0001 0000 0000"),
        truncated(FrameType::Setup, 4, 2)
    );
    // SETUP whose data MIME length (5) overruns.
    assert_eq!(
        decode_hex("00000000 0400 0001 0000 00000001 00000001 00 05 6162"),
        truncated(FrameType::Setup, 5, 2)
    );
    // SETUP with R whose token length overruns.
    assert_eq!(
        decode_hex("00000000 0480 0001 0000 00000001 00000001 0004 61"),
        truncated(FrameType::Setup, 4, 1)
    );
    // KEEPALIVE with a 7-byte position.
    assert_eq!(
        decode_hex("00000000 0c80 00000000000000"),
        truncated(FrameType::Keepalive, 8, 7)
    );
    // LEASE without its request count.
    assert_eq!(
        decode_hex("00000000 0800 00000001"),
        truncated(FrameType::Lease, 4, 0)
    );
    // ERROR with a 3-byte code.
    assert_eq!(
        decode_hex("00000001 2c00 000002"),
        truncated(FrameType::Error, 4, 3)
    );
    assert_eq!(
        decode_hex("00000000 3800 00000000"),
        truncated(FrameType::ResumeOk, 8, 4)
    );
    assert_eq!(decode_hex("00000001 fc00"), truncated(FrameType::Ext, 4, 0));
    // M set but the metadata length itself is cut.
    assert_eq!(
        decode_hex("00000001 1100 0000"),
        truncated(FrameType::RequestResponse, 3, 2)
    );
    assert_eq!(
        decode_hex("00000001 2920"),
        truncated(FrameType::Payload, 3, 0)
    );
}

#[test]
fn metadata_length_overrun() {
    assert_eq!(
        decode_hex("00000001 1100 000005 6869"),
        Err(DecodeError::MetadataOverrun {
            frame: FrameType::RequestResponse,
            declared: 5,
            remaining: 2,
        })
    );
    assert_eq!(
        decode_hex("00000001 2920 ffffff 00"),
        Err(DecodeError::MetadataOverrun {
            frame: FrameType::Payload,
            declared: 0xFF_FFFF,
            remaining: 1,
        })
    );
    assert_eq!(
        decode_hex("00000001 1900 00000001 000003 6d64"),
        Err(DecodeError::MetadataOverrun {
            frame: FrameType::RequestStream,
            declared: 3,
            remaining: 2,
        })
    );
    assert_eq!(
        decode_hex("00000000 0500 0001 0000 00000001 00000001 00 00 000001"),
        Err(DecodeError::MetadataOverrun {
            frame: FrameType::Setup,
            declared: 1,
            remaining: 0,
        })
    );
    // Exactly fitting metadata is fine (data empty).
    assert_eq!(
        decode_hex("00000001 1100 000002 6869"),
        Ok(request_response(1, md_data("hi", "")))
    );
}

#[test]
fn request_n_zero() {
    assert_eq!(
        decode_hex("00000007 2000 00000000"),
        Err(DecodeError::ZeroRequestN {
            frame: FrameType::RequestN,
            stream_id: 7,
            len: 10,
        })
    );
    assert_eq!(
        decode_hex("00000001 1800 00000000 6869"),
        Err(DecodeError::ZeroRequestN {
            frame: FrameType::RequestStream,
            stream_id: 1,
            len: 12,
        })
    );
    assert_eq!(
        decode_hex("00000003 1c40 00000000"),
        Err(DecodeError::ZeroRequestN {
            frame: FrameType::RequestChannel,
            stream_id: 3,
            len: 10,
        })
    );
}

#[test]
fn reserved_top_bit() {
    let reserved = |frame, field| Err(DecodeError::ReservedBitSet { frame, field });
    // Stream id, on a stream frame and on a connection frame.
    assert_eq!(
        decode_hex("80000001 2400"),
        reserved(FrameType::Cancel, "stream id")
    );
    assert_eq!(
        decode_hex("80000000 0c00 0000000000000000"),
        reserved(FrameType::Keepalive, "stream id")
    );
    assert_eq!(
        decode_hex("ffffffff 2c00 00000201"),
        reserved(FrameType::Error, "stream id")
    );
    // u31 fields.
    assert_eq!(
        decode_hex("00000001 2000 80000005"),
        reserved(FrameType::RequestN, "request-n")
    );
    assert_eq!(
        decode_hex("00000001 1800 ffffffff"),
        reserved(FrameType::RequestStream, "request-n")
    );
    assert_eq!(
        decode_hex("00000000 0400 0001 0000 80000000 00000001 00 00"),
        reserved(FrameType::Setup, "keepalive interval")
    );
    assert_eq!(
        decode_hex("00000000 0400 0001 0000 00000001 80000001 00 00"),
        reserved(FrameType::Setup, "max lifetime")
    );
    assert_eq!(
        decode_hex("00000000 0800 80000000 00000001"),
        reserved(FrameType::Lease, "time-to-live")
    );
    assert_eq!(
        decode_hex("00000000 0800 00000001 80000000"),
        reserved(FrameType::Lease, "number of requests")
    );
    assert_eq!(
        decode_hex("00000001 fc00 80000001"),
        reserved(FrameType::Ext, "extended type")
    );
    // u63 fields.
    assert_eq!(
        decode_hex("00000000 0c00 8000000000000000"),
        reserved(FrameType::Keepalive, "last received position")
    );
    assert_eq!(
        decode_hex("00000000 3800 ffffffffffffffff"),
        reserved(FrameType::ResumeOk, "last received client position")
    );
    assert_eq!(
        decode_hex("00000000 3400 0001 0000 0000 8000000000000000 0000000000000000"),
        reserved(FrameType::Resume, "last received server position")
    );
    assert_eq!(
        decode_hex("00000000 3400 0001 0000 0000 0000000000000000 8000000000000000"),
        reserved(FrameType::Resume, "first available client position")
    );
}

#[test]
fn payload_without_next_or_complete() {
    assert_eq!(
        decode_hex("00000001 2800 6869"),
        Err(DecodeError::PayloadWithoutNextOrComplete { stream_id: 1 })
    );
    // F and M alone do not count.
    assert_eq!(
        decode_hex("00000009 2980 000000"),
        Err(DecodeError::PayloadWithoutNextOrComplete { stream_id: 9 })
    );
}

#[test]
fn unknown_frame_type_without_ignore_flag() {
    assert_eq!(
        decode_hex("00000000 0000"),
        Err(DecodeError::UnknownFrameType(0x00))
    );
    assert_eq!(
        decode_hex("00000001 3c00 6869"),
        Err(DecodeError::UnknownFrameType(0x0F))
    );
    assert_eq!(
        decode_hex("00000001 f900"),
        Err(DecodeError::UnknownFrameType(0x3E))
    );
}

#[test]
fn unknown_frame_type_with_ignore_flag() {
    assert_eq!(
        decode_hex("00000001 3e00 6869"),
        Ok(ignored(1, FrameType::Unknown(0x0F)))
    );
    assert_eq!(
        decode_hex("00000000 0200"),
        Ok(ignored(0, FrameType::Unknown(0x00)))
    );
    assert_eq!(
        decode_hex("00000005 fbff 00"),
        Ok(ignored(5, FrameType::Unknown(0x3E)))
    );
}

#[test]
fn malformed_frames_with_ignore_flag_are_dropped() {
    // Truncated, metadata overrun, request-n 0, reserved bit, no N/C, wrong
    // stream for a connection frame, zero value, trailing bytes: each with I.
    let cases = [
        ("00000001 2200 0000", 1, FrameType::RequestN),
        ("00000001 1300 000005 6869", 1, FrameType::RequestResponse),
        ("00000001 1700 000005 6869", 1, FrameType::RequestFnf),
        ("00000007 2200 00000000", 7, FrameType::RequestN),
        ("80000001 2600", 0x8000_0001, FrameType::Cancel),
        ("00000001 2a00 6869", 1, FrameType::Payload),
        ("00000001 0600 0001 0000", 1, FrameType::Setup),
        (
            "00000000 0600 0001 0000 00000000 00000001 00 00",
            0,
            FrameType::Setup,
        ),
        ("00000000 fe00 00000000", 0, FrameType::Ext),
        ("00000001 2600 00", 1, FrameType::Cancel),
        ("00000000 3a00 0000000000000000 00", 0, FrameType::ResumeOk),
    ];
    for (h, stream_id, ty) in cases {
        let frame = decode_hex(h).unwrap();
        assert_eq!(frame, ignored(stream_id, ty), "{h}");
        assert_eq!(frame.frame_type(), ty);
    }
}

#[test]
fn stream_frames_on_stream_zero_are_ignored() {
    let cases = [
        ("00000000 1000 6869", FrameType::RequestResponse),
        ("00000000 1400 6869", FrameType::RequestFnf),
        ("00000000 1800 00000001", FrameType::RequestStream),
        ("00000000 1c40 00000001", FrameType::RequestChannel),
        ("00000000 2000 00000005", FrameType::RequestN),
        // Even when the body would be invalid.
        ("00000000 2000 00000000", FrameType::RequestN),
        ("00000000 2400", FrameType::Cancel),
        ("00000000 2820 6f6b", FrameType::Payload),
        ("00000000 2800", FrameType::Payload),
    ];
    for (h, ty) in cases {
        let frame = decode_hex(h).unwrap();
        assert_eq!(frame, ignored(0, ty), "{h}");
        assert_eq!(frame.stream_id(), None);
    }
}

#[test]
fn metadata_push_on_a_stream_is_ignored() {
    assert_eq!(
        decode_hex("00000003 3100 6d"),
        Ok(ignored(3, FrameType::MetadataPush))
    );
    assert_eq!(
        decode_hex("00000003 3100 6d").unwrap().stream_id(),
        Some(sid(3))
    );
    // METADATA_PUSH with M = 0 on stream 0: the body is metadata anyway.
    assert_eq!(decode_hex("00000000 3000 6d"), Ok(metadata_push("m")));
}

#[test]
fn connection_frames_must_be_on_stream_zero() {
    let cases = [
        (
            "00000001 0400 0001 0000 00000001 00000001 00 00",
            FrameType::Setup,
        ),
        ("00000002 0800 00000001 00000001", FrameType::Lease),
        ("00000003 0c80 0000000000000000", FrameType::Keepalive),
        (
            "00000004 3400 0001 0000 0000 0000000000000000 0000000000000000",
            FrameType::Resume,
        ),
        ("7fffffff 3800 0000000000000000", FrameType::ResumeOk),
    ];
    for (h, ty) in cases {
        let err = decode_hex(h).unwrap_err();
        assert_eq!(
            err,
            DecodeError::StreamIdMustBeZero {
                frame: ty,
                stream_id: u32::from_be_bytes(hex(h)[..4].try_into().unwrap()),
            },
            "{h}"
        );
    }
}

#[test]
fn zero_values() {
    let zero = |frame, field| Err(DecodeError::ZeroValue { frame, field });
    assert_eq!(
        decode_hex("00000000 0400 0001 0000 00000000 00000001 00 00"),
        zero(FrameType::Setup, "keepalive interval")
    );
    assert_eq!(
        decode_hex("00000000 0400 0001 0000 00000001 00000000 00 00"),
        zero(FrameType::Setup, "max lifetime")
    );
    assert_eq!(
        decode_hex("00000001 fc00 00000000"),
        zero(FrameType::Ext, "extended type")
    );
}

#[test]
fn trailing_bytes_after_fixed_size_frames() {
    let trailing = |frame, extra| Err(DecodeError::TrailingBytes { frame, extra });
    assert_eq!(
        decode_hex("00000001 2400 00"),
        trailing(FrameType::Cancel, 1)
    );
    assert_eq!(
        decode_hex("00000001 2000 00000005 0000"),
        trailing(FrameType::RequestN, 2)
    );
    assert_eq!(
        decode_hex("00000000 3800 000000000000002a ff"),
        trailing(FrameType::ResumeOk, 1)
    );
    assert_eq!(
        decode_hex("00000000 3400 0001 0000 0000 0000000000000000 0000000000000000 000000"),
        trailing(FrameType::Resume, 3)
    );
}

/// The brief's list of malformed inputs: each gets its own variant.
#[test]
fn each_failure_has_a_distinct_variant() {
    let cases = [
        "00000001 24",                                     // header truncated
        "00000001 2000 0000",                              // fixed field truncated
        "00000001 1100 000005 6869",                       // metadata overrun
        "00000001 2000 00000000",                          // request-n 0
        "00000001 2000 80000001",                          // bit 31 set
        "00000001 2800",                                   // PAYLOAD without N or C
        "00000001 3c00",                                   // unknown type without I
        "00000001 3800 0000000000000000",                  // connection frame on a stream
        "00000000 0400 0001 0000 00000000 00000001 00 00", // zero keepalive
        "00000001 2400 00",                                // trailing bytes
    ];
    let errors: Vec<DecodeError> = cases.iter().map(|h| decode_hex(h).unwrap_err()).collect();
    for (i, a) in errors.iter().enumerate() {
        for (j, b) in errors.iter().enumerate().skip(i + 1) {
            assert_ne!(
                discriminant(a),
                discriminant(b),
                "cases {} and {} share a variant: {a:?} / {b:?}",
                cases[i],
                cases[j]
            );
        }
        assert!(!a.to_string().is_empty());
    }
    // frame_type() names the header's type where there is one.
    assert_eq!(errors[0].frame_type(), None);
    assert_eq!(errors[1].frame_type(), Some(FrameType::RequestN));
    assert_eq!(errors[5].frame_type(), Some(FrameType::Payload));
    assert_eq!(errors[6].frame_type(), Some(FrameType::Unknown(0x0F)));
}

#[test]
fn undefined_flag_bits_are_ignored_and_never_emitted() {
    // M (and every other undefined bit) on KEEPALIVE, CANCEL, REQUEST_N,
    // ERROR, RESUME_OK; N on REQUEST_RESPONSE.
    let cases: Vec<(&str, Frame, &str)> = vec![
        (
            "00000000 0dff 0000000000000000 64",
            keepalive(true, 0, b("d")),
            "00000000 0c80 0000000000000000 64",
        ),
        ("00000001 25ff", cancel(1), "00000001 2400"),
        (
            "00000001 21ff 00000005",
            request_n(1, 5),
            "00000001 2000 00000005",
        ),
        (
            "00000001 2dff 00000201 64",
            error(1, ErrorCode::APPLICATION_ERROR, "d"),
            "00000001 2c00 00000201 64",
        ),
        (
            "00000000 397f 000000000000002a",
            Frame::ResumeOk(ResumeOk {
                last_received_client_position: 42,
            }),
            "00000000 3800 000000000000002a",
        ),
        (
            "00000001 1060 6869",
            request_response(1, data("hi")),
            "00000001 1000 6869",
        ),
    ];
    for (input, frame, canonical) in &cases {
        assert_eq!(decode_hex(input).as_ref(), Ok(frame), "{input}");
        known_answer(canonical, frame);
    }
}

#[test]
fn error_codes_decode_as_u32_over_the_full_range() {
    let codes = [
        0x0000_0000,
        0x0000_0001,
        0x0000_0204,
        0x0000_0301,
        0x7FFF_FFFF,
        0x8000_0000,
        0xDEAD_BEEF,
        0xFFFF_FFFE,
        0xFFFF_FFFF,
    ];
    for code in codes {
        for stream in [0u32, 1, 0x7FFF_FFFF] {
            let h = format!("{stream:08x} 2c00 {code:08x} 6f6f7073");
            let frame = decode_hex(&h).unwrap();
            let Frame::Error(e) = &frame else {
                panic!("not an ERROR: {frame:?}");
            };
            assert_eq!(e.code, ErrorCode(code));
            assert_eq!(e.message(), "oops");
            assert_eq!(
                e.stream_id.map(StreamId::get),
                Some(stream).filter(|s| *s != 0)
            );
            known_answer(&h, &frame);
        }
    }
    assert!(ErrorCode(0x8000_0000).is_application_defined());
    assert!(ErrorCode(0xFFFF_FFFE).is_application_defined());
    assert!(ErrorCode(0x301).is_application_defined());
    assert!(!ErrorCode(0x300).is_application_defined());
    assert!(!ErrorCode(0xFFFF_FFFF).is_application_defined());
}

#[test]
fn application_error_codes_round_trip() {
    for code in [0x301, 0x1234_5678, 0x8000_0001, 0xFFFF_FFFE] {
        let frame = Frame::Error(ErrorFrame::new(Some(sid(9)), ErrorCode(code), "app"));
        let bytes = frame.to_bytes();
        assert_eq!(&bytes[6..10], &code.to_be_bytes());
        assert_eq!(Frame::decode(bytes), Ok(frame));
    }
}

/// A decoded `Ignored` re-encodes to bytes that are ignored again, also for
/// the types where a bare header would be a valid frame (REQUEST_RESPONSE,
/// REQUEST_FNF, CANCEL).
#[test]
fn ignored_frames_re_encode_to_ignored_frames() {
    for h in [
        "00000001 1300 000005 6869", // REQUEST_RESPONSE, metadata overrun, I
        "00000001 1700 000005 6869", // REQUEST_FNF, metadata overrun, I
        "00000001 2600 00",          // CANCEL, trailing byte, I
        "00000000 1000 6869",        // REQUEST_RESPONSE on stream 0
        "00000003 3100 6d",          // METADATA_PUSH on stream 3
        "00000001 3e00",             // unknown type, I
        "80000001 1200",             // reserved bit, I
    ] {
        let first = decode_hex(h).unwrap();
        assert!(matches!(first, Frame::Ignored(_)), "{h}: {first:?}");
        let bytes = first.to_bytes();
        assert_eq!(bytes.len(), first.encoded_len());
        assert_eq!(Frame::decode(bytes), Ok(first), "{h}");
    }
    // The exact bytes written for an Ignored.
    known_answer("00000001 1300", &ignored(1, FrameType::RequestResponse));
    known_answer("00000001 1700", &ignored(1, FrameType::RequestFnf));
    known_answer("00000001 2600 00", &ignored(1, FrameType::Cancel));
    known_answer("00000000 2a00", &ignored(0, FrameType::Payload));
    known_answer("00000001 3e00", &ignored(1, FrameType::Unknown(0x0F)));
}

// ---------------------------------------------------------------------------
// FrameCodec: the 24-bit length prefix
// ---------------------------------------------------------------------------

/// The TCP vectors of §13, concatenated.
fn tcp_stream() -> (Bytes, Vec<Frame>) {
    let vectors: Vec<(&str, Frame)> = vec![
        (
            "00 00 0c 00 00 00 01 11 00 00 00 01 6d 68 69",
            request_response(1, md_data("m", "hi")),
        ),
        ("00 00 0a 00 00 00 03 20 00 00 00 00 05", request_n(3, 5)),
        (
            "00 00 08 00 00 00 01 28 60 6f 6b",
            payload(1, true, true, data("ok")),
        ),
        (
            "00 00 0e 00 00 00 05 2c 00 00 00 02 01 62 6f 6f 6d",
            error(5, ErrorCode::APPLICATION_ERROR, "boom"),
        ),
        (
            "00 00 0e 00 00 00 00 0c 80 00 00 00 00 00 00 00 00",
            keepalive(true, 0, Bytes::new()),
        ),
        ("00 00 06 00 00 00 01 24 00", cancel(1)),
    ];
    let mut wire = BytesMut::new();
    let mut frames = Vec::new();
    for (h, f) in vectors {
        wire.extend_from_slice(&hex(h));
        frames.push(f);
    }
    (wire.freeze(), frames)
}

fn decode_all(codec: &mut FrameCodec, src: &mut BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(body) = codec.decode(src).unwrap() {
        out.push(Frame::decode(body).unwrap());
    }
    out
}

#[test]
fn codec_prefix_split_across_reads() {
    let (wire, frames) = tcp_stream();
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut boundaries = Vec::new();
    let mut end = 0;
    for f in &frames {
        end += LENGTH_PREFIX_LEN + f.encoded_len();
        boundaries.push(end);
    }
    for (i, byte) in wire.iter().enumerate() {
        src.put_u8(*byte);
        let got = decode_all(&mut codec, &mut src);
        // A frame appears exactly when its last byte arrives.
        if boundaries.contains(&(i + 1)) {
            assert_eq!(got.len(), 1, "after byte {i}");
        } else {
            assert!(got.is_empty(), "after byte {i}: {got:?}");
        }
        out.extend(got);
    }
    assert_eq!(out, frames);
    assert!(src.is_empty());
}

#[test]
fn codec_many_frames_in_one_read() {
    let (wire, frames) = tcp_stream();
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::from(&wire[..]);
    assert_eq!(decode_all(&mut codec, &mut src), frames);
    assert!(src.is_empty());
    // A partial frame behind the complete ones stays in the buffer.
    let mut src = BytesMut::from(&wire[..]);
    src.extend_from_slice(&hex("00 00 0a 00 00 00 03"));
    assert_eq!(decode_all(&mut codec, &mut src), frames);
    assert_eq!(to_hex(&src), "00000a00000003");
}

#[test]
fn codec_encodes_every_vector_back_to_the_stream() {
    let (wire, frames) = tcp_stream();
    let mut codec = FrameCodec::new();
    let mut dst = BytesMut::new();
    for f in &frames {
        Encoder::<&Frame>::encode(&mut codec, f, &mut dst).unwrap();
    }
    assert_eq!(to_hex(&dst), to_hex(&wire));
    // The owned-frame and pre-encoded-bytes encoders agree.
    let mut owned = BytesMut::new();
    let mut pre = BytesMut::new();
    for f in frames {
        Encoder::<Bytes>::encode(&mut codec, f.to_bytes(), &mut pre).unwrap();
        Encoder::<Frame>::encode(&mut codec, f, &mut owned).unwrap();
    }
    assert_eq!(owned, dst);
    assert_eq!(pre, dst);
}

#[test]
fn codec_length_over_max_errors_without_reserving_it() {
    let mut codec = FrameCodec::with_max_frame_len(1024);
    assert_eq!(codec.max_frame_len(), 1024);
    let mut src = BytesMut::with_capacity(16);
    src.extend_from_slice(&hex("ff ff ff 00 00 00 01"));
    match codec.decode(&mut src) {
        Err(CodecError::FrameTooLarge { len, max }) => {
            assert_eq!((len, max), (0xFF_FFFF, 1024));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(src.capacity() < 1024, "reserved {} bytes", src.capacity());

    // One byte over the limit.
    let mut src = BytesMut::with_capacity(16);
    src.extend_from_slice(&hex("00 04 01"));
    assert!(matches!(
        codec.decode(&mut src),
        Err(CodecError::FrameTooLarge {
            len: 1025,
            max: 1024
        })
    ));
    assert!(src.capacity() < 1024);

    // Positive control: an announced length within the limit is reserved for,
    // so the capacity check above is meaningful.
    let mut src = BytesMut::with_capacity(16);
    src.extend_from_slice(&hex("00 04 00 00 00 00 01"));
    assert!(codec.decode(&mut src).unwrap().is_none());
    assert!(src.capacity() >= LENGTH_PREFIX_LEN + 1024);
}

#[test]
fn codec_exact_limits_are_accepted() {
    // Exactly the maximum.
    let mut codec = FrameCodec::with_max_frame_len(64);
    let frame = Frame::Payload(PayloadFrame::next(sid(1), Payload::new(vec![7u8; 58])));
    assert_eq!(frame.encoded_len(), 64);
    let mut buf = BytesMut::new();
    Encoder::<&Frame>::encode(&mut codec, &frame, &mut buf).unwrap();
    assert_eq!(&buf[..3], &[0, 0, 64]);
    assert_eq!(decode_all(&mut codec, &mut buf), vec![frame]);
    // Exactly the header size (CANCEL).
    let mut buf = BytesMut::from(&hex("000006 00000001 2400")[..]);
    assert_eq!(decode_all(&mut codec, &mut buf), vec![cancel(1)]);
    // The default maximum is 2^24 - 1 and larger settings are capped.
    assert_eq!(FrameCodec::new().max_frame_len(), MAX_FRAME_LEN);
    assert_eq!(FrameCodec::default().max_frame_len(), 0xFF_FFFF);
    assert_eq!(
        FrameCodec::with_max_frame_len(usize::MAX).max_frame_len(),
        0xFF_FFFF
    );
}

#[test]
fn codec_length_below_header_size_is_an_error() {
    for len in 0u8..6 {
        let mut codec = FrameCodec::new();
        let mut src = BytesMut::from(&[0, 0, len, 0, 0, 0, 0, 0, 0][..]);
        match codec.decode(&mut src) {
            Err(CodecError::FrameTooShort(n)) => assert_eq!(n, usize::from(len)),
            other => panic!("length {len}: expected FrameTooShort, got {other:?}"),
        }
    }
}

#[test]
fn codec_refuses_to_encode_oversized_frames() {
    let mut codec = FrameCodec::with_max_frame_len(16);
    let frame = Frame::Payload(PayloadFrame::next(sid(1), Payload::new(vec![0u8; 11])));
    let mut dst = BytesMut::new();
    assert!(matches!(
        Encoder::<&Frame>::encode(&mut codec, &frame, &mut dst),
        Err(CodecError::FrameTooLarge { len: 17, max: 16 })
    ));
    assert!(
        matches!(
            Encoder::<Bytes>::encode(&mut codec, frame.to_bytes(), &mut dst),
            Err(CodecError::FrameTooLarge { len: 17, max: 16 })
        ),
        "pre-encoded bytes are checked too"
    );
    assert!(dst.is_empty(), "nothing written on error");
}

#[test]
fn codec_leftover_bytes_at_eof_are_an_error() {
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::from(&hex("000006 00000001 2400 000006 0000")[..]);
    let first = codec.decode_eof(&mut src).unwrap().unwrap();
    assert_eq!(Frame::decode(first), Ok(cancel(1)));
    assert!(codec.decode_eof(&mut src).is_err());
    // A clean end of stream is not.
    let mut empty = BytesMut::new();
    assert!(codec.decode_eof(&mut empty).unwrap().is_none());
}

#[test]
fn codec_output_is_a_zero_copy_slice() {
    let mut codec = FrameCodec::new();
    let mut src = BytesMut::from(&hex("00000c 00000001 1100 000001 6d 6869")[..]);
    let body = codec.decode(&mut src).unwrap().unwrap();
    let Ok(Frame::RequestResponse(rr)) = Frame::decode(body.clone()) else {
        panic!("not a REQUEST_RESPONSE");
    };
    // The payload points into the frame buffer rather than a copy of it.
    let range = body.as_ptr_range();
    assert!(range.contains(&rr.payload.data.as_ptr()));
    assert!(range.contains(&rr.payload.metadata.unwrap().as_ptr()));
}
