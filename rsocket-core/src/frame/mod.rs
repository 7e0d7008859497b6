//! The frame codec: one typed value per RSocket frame type.
//!
//! [`Frame::decode`] takes a [`Bytes`] holding exactly one frame (no length
//! prefix) and returns metadata and data as zero-copy slices of it.
//! [`Frame::encode`] writes into any [`BufMut`]; [`Frame::encoded_len`] gives
//! the exact size up front so a caller can reserve once.
//!
//! Flags are named booleans; the raw bits never leave this module. Frames
//! that belong to the connection (SETUP, LEASE, KEEPALIVE, METADATA_PUSH,
//! RESUME, RESUME_OK) have no stream-id field, and frames that belong to a
//! stream carry a [`StreamId`], which cannot be 0.
//!
//! Decoding never panics. Structural problems give a [`DecodeError`]; frames
//! the spec says to drop (unknown type or malformed body with the I flag,
//! stream frames on stream 0, METADATA_PUSH on a stream) decode to
//! [`Frame::Ignored`].

mod connection;
mod stream;
mod types;

use bytes::{Buf, BufMut, Bytes};

pub use connection::{Keepalive, Lease, MetadataPush, Resume, ResumeOk, Setup};
pub use stream::{
    Cancel, ErrorFrame, Ext, PayloadFrame, RequestChannel, RequestFnf, RequestN, RequestResponse,
    RequestStream,
};
pub use types::{
    ErrorCode, FrameType, InvalidMimeType, MimeType, RequestCount, StreamId, Version, MAX_U31,
    MAX_U63,
};

use crate::Payload;

/// Size of the frame header: stream id (4) + type and flags (2).
pub const HEADER_LEN: usize = 6;
/// The largest frame any transport may carry: 2^24 − 1 bytes.
pub const MAX_FRAME_LEN: usize = 0xFF_FFFF;

pub(crate) mod flags {
    pub(crate) const IGNORE: u16 = 0x200;
    pub(crate) const METADATA: u16 = 0x100;
    pub(crate) const FOLLOWS: u16 = 0x080;
    pub(crate) const RESUME: u16 = 0x080;
    pub(crate) const RESPOND: u16 = 0x080;
    pub(crate) const COMPLETE: u16 = 0x040;
    pub(crate) const LEASE: u16 = 0x040;
    pub(crate) const NEXT: u16 = 0x020;
}

/// One RSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SETUP (stream 0). Boxed: it is sent once per connection and is by
    /// far the largest frame, so keeping it out of line halves the size of
    /// every `Frame` on the hot path.
    Setup(Box<Setup>),
    /// LEASE (stream 0).
    Lease(Lease),
    /// KEEPALIVE (stream 0).
    Keepalive(Keepalive),
    /// REQUEST_RESPONSE.
    RequestResponse(RequestResponse),
    /// REQUEST_FNF.
    RequestFnf(RequestFnf),
    /// REQUEST_STREAM.
    RequestStream(RequestStream),
    /// REQUEST_CHANNEL.
    RequestChannel(RequestChannel),
    /// REQUEST_N.
    RequestN(RequestN),
    /// CANCEL.
    Cancel(Cancel),
    /// PAYLOAD.
    Payload(PayloadFrame),
    /// ERROR (stream 0 or a stream).
    Error(ErrorFrame),
    /// METADATA_PUSH (stream 0).
    MetadataPush(MetadataPush),
    /// RESUME (stream 0).
    Resume(Resume),
    /// RESUME_OK (stream 0).
    ResumeOk(ResumeOk),
    /// EXT.
    Ext(Ext),
    /// A frame the receiver must drop: an unknown type or malformed body with
    /// the I flag, a stream frame on stream 0, or METADATA_PUSH on a stream.
    Ignored(Ignored),
}

/// What is kept of a frame that decodes as [`Frame::Ignored`].
///
/// Encoding it writes a header with the I flag and, for the types where a
/// bare header is itself a valid frame, the smallest malformed body
/// (REQUEST_RESPONSE and REQUEST_FNF: the M flag without a metadata length;
/// CANCEL: one extra byte). The bytes therefore decode back to an equal
/// `Ignored`. The one value [`Frame::decode`] never produces, METADATA_PUSH
/// on stream 0, has no such encoding and reads back as an empty
/// METADATA_PUSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ignored {
    /// The raw 32-bit stream-id word.
    pub stream_id: u32,
    /// The frame type from the header.
    pub frame_type: FrameType,
}

impl Ignored {
    /// Extra flags and number of zero body bytes that keep the encoded frame
    /// malformed, so that it is ignored again on receipt.
    fn filler(&self) -> (u16, usize) {
        match self.frame_type {
            FrameType::RequestResponse | FrameType::RequestFnf => (flags::METADATA, 0),
            FrameType::Cancel => (0, 1),
            _ => (0, 0),
        }
    }

    fn encode(&self, dst: &mut impl BufMut) {
        let (extra, body) = self.filler();
        put_header(dst, self.stream_id, self.frame_type, flags::IGNORE | extra);
        dst.put_bytes(0, body);
    }
}

/// Why bytes are not a valid frame. One variant per failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than the 6 header bytes.
    #[error("frame of {0} bytes is shorter than the 6-byte header")]
    HeaderTruncated(usize),
    /// A fixed field runs past the end of the frame.
    #[error("{frame:?} frame truncated: needs {needed} more bytes, {remaining} left")]
    Truncated {
        /// Frame type.
        frame: FrameType,
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes left in the frame.
        remaining: usize,
    },
    /// The metadata length is larger than what is left of the frame.
    #[error("{frame:?} metadata length {declared} overruns the {remaining} bytes left")]
    MetadataOverrun {
        /// Frame type.
        frame: FrameType,
        /// The u24 metadata length.
        declared: usize,
        /// Bytes left after the length field.
        remaining: usize,
    },
    /// A frame type this library does not know, without the I flag.
    #[error("unknown frame type {0:#04x} without the ignore flag")]
    UnknownFrameType(u8),
    /// Bit 31 of a u31 field (or bit 63 of a u63 field) is set.
    #[error("reserved top bit set in {field} of {frame:?}")]
    ReservedBitSet {
        /// Frame type.
        frame: FrameType,
        /// Which field.
        field: &'static str,
    },
    /// A connection-level frame on a stream other than 0.
    #[error("{frame:?} must be sent on stream 0, got stream {stream_id}")]
    StreamIdMustBeZero {
        /// Frame type.
        frame: FrameType,
        /// The offending id.
        stream_id: u32,
    },
    /// A request-n of 0 in REQUEST_N, REQUEST_STREAM or REQUEST_CHANNEL.
    #[error("request-n of 0 in {frame:?} on stream {stream_id}")]
    ZeroRequestN {
        /// Frame type.
        frame: FrameType,
        /// The stream the frame was for.
        stream_id: u32,
        /// The frame's encoded length (header included, no length
        /// prefix): such a frame still counts in resume positions.
        len: usize,
    },
    /// A field that must be positive is 0 (keepalive, lifetime, extended type).
    #[error("{field} of {frame:?} must be greater than 0")]
    ZeroValue {
        /// Frame type.
        frame: FrameType,
        /// Which field.
        field: &'static str,
    },
    /// PAYLOAD with neither the NEXT nor the COMPLETE flag.
    #[error("PAYLOAD on stream {stream_id} has neither NEXT nor COMPLETE")]
    PayloadWithoutNextOrComplete {
        /// The stream the frame was for.
        stream_id: u32,
    },
    /// Bytes after the last field of a fixed-size frame.
    #[error("{frame:?} has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Frame type.
        frame: FrameType,
        /// Number of extra bytes.
        extra: usize,
    },
}

impl DecodeError {
    /// The frame type named by the header, when the header could be read.
    pub fn frame_type(&self) -> Option<FrameType> {
        match self {
            Self::HeaderTruncated(_) => None,
            Self::UnknownFrameType(c) => Some(FrameType::Unknown(*c)),
            Self::Truncated { frame, .. }
            | Self::MetadataOverrun { frame, .. }
            | Self::ReservedBitSet { frame, .. }
            | Self::StreamIdMustBeZero { frame, .. }
            | Self::ZeroRequestN { frame, .. }
            | Self::ZeroValue { frame, .. }
            | Self::TrailingBytes { frame, .. } => Some(*frame),
            Self::PayloadWithoutNextOrComplete { .. } => Some(FrameType::Payload),
        }
    }
}

/// The decoded 6-byte header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) stream_id: u32,
    pub(crate) frame_type: FrameType,
    pub(crate) flags: u16,
}

impl Header {
    pub(crate) fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    fn stream(&self) -> Option<StreamId> {
        StreamId::new(self.stream_id)
    }
}

/// Writes a header.
#[inline]
pub(crate) fn put_header(dst: &mut impl BufMut, stream_id: u32, ty: FrameType, flags: u16) {
    dst.put_u32(stream_id);
    dst.put_u16((u16::from(ty.code()) << 10) | (flags & 0x3FF));
}

/// Bounds-checked reads from a frame body. Every read checks the length first.
pub(crate) struct Reader {
    buf: Bytes,
    frame: FrameType,
}

impl Reader {
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated {
                frame: self.frame,
                needed: n,
                remaining: self.buf.len(),
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u24(&mut self) -> Result<usize, DecodeError> {
        self.need(3)?;
        let hi = usize::from(self.buf.get_u8());
        let lo = usize::from(self.buf.get_u16());
        Ok((hi << 16) | lo)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// A u31 field: bit 31 must be clear.
    pub(crate) fn u31(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let v = self.u32()?;
        if v > MAX_U31 {
            return Err(DecodeError::ReservedBitSet {
                frame: self.frame,
                field,
            });
        }
        Ok(v)
    }

    /// A u63 field: bit 63 must be clear.
    pub(crate) fn u63(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8)?;
        let v = self.buf.get_u64();
        if v > MAX_U63 {
            return Err(DecodeError::ReservedBitSet {
                frame: self.frame,
                field,
            });
        }
        Ok(v)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Everything that is left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                frame: self.frame,
                extra: self.buf.len(),
            })
        }
    }

    /// Reads optional metadata (with a u24 length when `has_metadata`) and the
    /// remaining data.
    pub(crate) fn payload(&mut self, has_metadata: bool) -> Result<Payload, DecodeError> {
        let metadata = if has_metadata {
            let len = self.u24()?;
            if len > self.buf.len() {
                return Err(DecodeError::MetadataOverrun {
                    frame: self.frame,
                    declared: len,
                    remaining: self.buf.len(),
                });
            }
            Some(self.buf.split_to(len))
        } else {
            None
        };
        Ok(Payload {
            metadata,
            data: self.rest(),
        })
    }
}

/// Bytes a payload body takes: metadata length field + metadata + data.
#[inline]
pub(crate) fn payload_len(p: &Payload) -> usize {
    p.metadata.as_ref().map_or(0, |m| 3 + m.len()) + p.data.len()
}

/// Writes a payload body (metadata with u24 length when present, then data).
///
/// Metadata longer than 2^24 − 1 cannot be described; such a frame is also
/// larger than [`MAX_FRAME_LEN`] and is refused by every framing layer before
/// it is encoded.
#[inline]
pub(crate) fn put_payload(dst: &mut impl BufMut, p: &Payload) {
    if let Some(m) = &p.metadata {
        put_u24(dst, m.len());
        dst.put_slice(m);
    }
    dst.put_slice(&p.data);
}

/// The 24-bit big-endian number at the start of `b` (a length prefix or a
/// metadata length); `None` when `b` holds fewer than three bytes.
#[inline]
pub(crate) fn get_u24(b: &[u8]) -> Option<usize> {
    // One load when a fourth byte follows (nearly always: a frame's
    // header follows its length prefix).
    if let Some(w) = b.first_chunk::<4>() {
        return Some((u32::from_be_bytes(*w) >> 8) as usize);
    }
    match *b {
        [b0, b1, b2, ..] => {
            Some((usize::from(b0) << 16) | (usize::from(b1) << 8) | usize::from(b2))
        }
        _ => None,
    }
}

#[inline]
pub(crate) fn put_u24(dst: &mut impl BufMut, v: usize) {
    let v = (v & 0xFF_FFFF) as u32;
    dst.put_u8((v >> 16) as u8);
    dst.put_u16(v as u16);
}

#[inline]
pub(crate) fn metadata_flag(p: &Payload) -> u16 {
    if p.metadata.is_some() {
        flags::METADATA
    } else {
        0
    }
}

#[inline]
pub(crate) fn flag(on: bool, bit: u16) -> u16 {
    if on {
        bit
    } else {
        0
    }
}

impl Frame {
    /// Decodes one frame (without a length prefix). Never panics.
    #[inline]
    pub fn decode(mut bytes: Bytes) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::HeaderTruncated(bytes.len()));
        }
        let stream_id = bytes.get_u32();
        let word = bytes.get_u16();
        if let Some(frame) = Self::decode_payload_fast(stream_id, word, &mut bytes) {
            return Ok(frame);
        }
        Self::decode_slow(stream_id, word, bytes)
    }

    /// The frames that dominate traffic, a well-formed PAYLOAD,
    /// REQUEST_RESPONSE or REQUEST_FNF on a stream, without the general
    /// machinery. `None` (with `body` untouched) sends anything else,
    /// including every malformed case, down the general path.
    #[inline]
    fn decode_payload_fast(stream_id: u32, word: u16, body: &mut Bytes) -> Option<Self> {
        let f = word & 0x3FF;
        let ty = (word >> 10) as u8;
        let kind = if ty == FrameType::Payload.code() {
            if f & (flags::NEXT | flags::COMPLETE) == 0 {
                return None;
            }
            FrameType::Payload
        } else if ty == FrameType::RequestResponse.code() {
            FrameType::RequestResponse
        } else if ty == FrameType::RequestFnf.code() {
            FrameType::RequestFnf
        } else {
            return None;
        };
        if f & flags::IGNORE != 0 {
            return None;
        }
        let stream_id = StreamId::new(stream_id)?;
        let metadata = if f & flags::METADATA != 0 {
            let len = get_u24(body)?;
            if len > body.len() - 3 {
                return None;
            }
            body.advance(3);
            Some(body.split_to(len))
        } else {
            None
        };
        let payload = Payload {
            metadata,
            data: std::mem::take(body),
        };
        let follows = f & flags::FOLLOWS != 0;
        Some(match kind {
            FrameType::RequestResponse => Self::RequestResponse(RequestResponse {
                stream_id,
                follows,
                payload,
            }),
            FrameType::RequestFnf => Self::RequestFnf(RequestFnf {
                stream_id,
                follows,
                payload,
            }),
            _ => Self::Payload(PayloadFrame {
                stream_id,
                follows,
                complete: f & flags::COMPLETE != 0,
                next: f & flags::NEXT != 0,
                payload,
            }),
        })
    }

    #[cold]
    fn decode_slow(stream_id: u32, word: u16, bytes: Bytes) -> Result<Self, DecodeError> {
        let header = Header {
            stream_id,
            frame_type: FrameType::from_code((word >> 10) as u8),
            flags: word & 0x3FF,
        };
        match Self::decode_body(header, bytes) {
            Ok(f) => Ok(f),
            Err(_) if header.has(flags::IGNORE) => Ok(Self::Ignored(Ignored {
                stream_id,
                frame_type: header.frame_type,
            })),
            Err(e) => Err(e),
        }
    }

    fn decode_body(h: Header, body: Bytes) -> Result<Self, DecodeError> {
        let ty = h.frame_type;
        if h.stream_id > MAX_U31 {
            return Err(DecodeError::ReservedBitSet {
                frame: ty,
                field: "stream id",
            });
        }
        let mut r = Reader {
            buf: body,
            frame: ty,
        };
        let ignored = || {
            Self::Ignored(Ignored {
                stream_id: h.stream_id,
                frame_type: ty,
            })
        };
        // Connection-level frames: must be on stream 0.
        let on_zero = |ty| {
            if h.stream_id == 0 {
                Ok(())
            } else {
                Err(DecodeError::StreamIdMustBeZero {
                    frame: ty,
                    stream_id: h.stream_id,
                })
            }
        };
        Ok(match ty {
            FrameType::Setup => {
                on_zero(ty)?;
                Self::Setup(Box::new(Setup::decode(h, &mut r)?))
            }
            FrameType::Lease => {
                on_zero(ty)?;
                Self::Lease(Lease::decode(h, &mut r)?)
            }
            FrameType::Keepalive => {
                on_zero(ty)?;
                Self::Keepalive(Keepalive::decode(h, &mut r)?)
            }
            FrameType::Resume => {
                on_zero(ty)?;
                Self::Resume(Resume::decode(&mut r)?)
            }
            FrameType::ResumeOk => {
                on_zero(ty)?;
                Self::ResumeOk(ResumeOk::decode(&mut r)?)
            }
            FrameType::MetadataPush => match h.stream() {
                // The spec says METADATA_PUSH on a stream must be ignored.
                Some(_) => ignored(),
                None => Self::MetadataPush(MetadataPush { metadata: r.rest() }),
            },
            FrameType::Error => Self::Error(ErrorFrame::decode(h.stream(), &mut r)?),
            FrameType::Ext => Self::Ext(Ext::decode(h, h.stream(), &mut r)?),
            FrameType::Unknown(code) => return Err(DecodeError::UnknownFrameType(code)),
            _ => {
                // Stream-level frames: stream 0 is ignored, as the spec says.
                let Some(id) = h.stream() else {
                    return Ok(ignored());
                };
                match ty {
                    FrameType::RequestResponse => {
                        Self::RequestResponse(RequestResponse::decode(h, id, &mut r)?)
                    }
                    FrameType::RequestFnf => Self::RequestFnf(RequestFnf::decode(h, id, &mut r)?),
                    FrameType::RequestStream => {
                        Self::RequestStream(RequestStream::decode(h, id, &mut r)?)
                    }
                    FrameType::RequestChannel => {
                        Self::RequestChannel(RequestChannel::decode(h, id, &mut r)?)
                    }
                    FrameType::RequestN => Self::RequestN(RequestN::decode(id, &mut r)?),
                    FrameType::Cancel => {
                        r.finish()?;
                        Self::Cancel(Cancel { stream_id: id })
                    }
                    FrameType::Payload => Self::Payload(PayloadFrame::decode(h, id, &mut r)?),
                    // Every other type was matched above.
                    _ => return Ok(ignored()),
                }
            }
        })
    }

    /// Exact number of bytes [`Frame::encode`] writes (header included, no
    /// length prefix).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Self::Setup(f) => f.body_len(),
                Self::Lease(f) => f.body_len(),
                Self::Keepalive(f) => f.body_len(),
                Self::RequestResponse(f) => payload_len(&f.payload),
                Self::RequestFnf(f) => payload_len(&f.payload),
                Self::RequestStream(f) => 4 + payload_len(&f.payload),
                Self::RequestChannel(f) => 4 + payload_len(&f.payload),
                Self::RequestN(_) => 4,
                Self::Cancel(_) => 0,
                Self::Payload(f) => payload_len(&f.payload),
                Self::Error(f) => 4 + f.data.len(),
                Self::MetadataPush(f) => f.metadata.len(),
                Self::Resume(f) => f.body_len(),
                Self::ResumeOk(_) => 8,
                Self::Ext(f) => 4 + payload_len(&f.payload),
                Self::Ignored(f) => f.filler().1,
            }
    }

    /// Writes the frame behind its 24-bit length prefix, `len` being its
    /// [`encoded_len`](Self::encoded_len) (computed once by the caller).
    /// The frames of the hot paths write prefix and header together.
    #[inline]
    pub(crate) fn encode_prefixed(&self, len: usize, dst: &mut impl BufMut) {
        match self {
            Self::Payload(p) => p.encode_with_prefix(Some(len), dst),
            Self::RequestResponse(r) => r.encode_with_prefix(Some(len), dst),
            Self::RequestFnf(r) => r.encode_with_prefix(Some(len), dst),
            _ => {
                put_u24(dst, len);
                self.encode(dst);
            }
        }
    }

    /// Writes the frame (header and body, no length prefix).
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Setup(f) => f.encode(dst),
            Self::Lease(f) => f.encode(dst),
            Self::Keepalive(f) => f.encode(dst),
            Self::RequestResponse(f) => f.encode(dst),
            Self::RequestFnf(f) => f.encode(dst),
            Self::RequestStream(f) => f.encode(dst),
            Self::RequestChannel(f) => f.encode(dst),
            Self::RequestN(f) => f.encode(dst),
            Self::Cancel(f) => put_header(dst, f.stream_id.get(), FrameType::Cancel, 0),
            Self::Payload(f) => f.encode(dst),
            Self::Error(f) => f.encode(dst),
            Self::MetadataPush(f) => {
                put_header(dst, 0, FrameType::MetadataPush, flags::METADATA);
                dst.put_slice(&f.metadata);
            }
            Self::Resume(f) => f.encode(dst),
            Self::ResumeOk(f) => {
                put_header(dst, 0, FrameType::ResumeOk, 0);
                dst.put_u64(f.last_received_client_position);
            }
            Self::Ext(f) => f.encode(dst),
            Self::Ignored(f) => f.encode(dst),
        }
    }

    /// Encodes into a new buffer of exactly [`Frame::encoded_len`] bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = bytes::BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// The frame type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Setup(_) => FrameType::Setup,
            Self::Lease(_) => FrameType::Lease,
            Self::Keepalive(_) => FrameType::Keepalive,
            Self::RequestResponse(_) => FrameType::RequestResponse,
            Self::RequestFnf(_) => FrameType::RequestFnf,
            Self::RequestStream(_) => FrameType::RequestStream,
            Self::RequestChannel(_) => FrameType::RequestChannel,
            Self::RequestN(_) => FrameType::RequestN,
            Self::Cancel(_) => FrameType::Cancel,
            Self::Payload(_) => FrameType::Payload,
            Self::Error(_) => FrameType::Error,
            Self::MetadataPush(_) => FrameType::MetadataPush,
            Self::Resume(_) => FrameType::Resume,
            Self::ResumeOk(_) => FrameType::ResumeOk,
            Self::Ext(_) => FrameType::Ext,
            Self::Ignored(i) => i.frame_type,
        }
    }

    /// The stream the frame belongs to; `None` for stream 0.
    pub fn stream_id(&self) -> Option<StreamId> {
        match self {
            Self::RequestResponse(f) => Some(f.stream_id),
            Self::RequestFnf(f) => Some(f.stream_id),
            Self::RequestStream(f) => Some(f.stream_id),
            Self::RequestChannel(f) => Some(f.stream_id),
            Self::RequestN(f) => Some(f.stream_id),
            Self::Cancel(f) => Some(f.stream_id),
            Self::Payload(f) => Some(f.stream_id),
            Self::Error(f) => f.stream_id,
            Self::Ext(f) => f.stream_id,
            Self::Ignored(i) => StreamId::new(i.stream_id),
            _ => None,
        }
    }
}
