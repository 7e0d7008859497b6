//! Frames that belong to a stream: the four requests, REQUEST_N, CANCEL,
//! PAYLOAD, plus ERROR and EXT, which may be on stream 0 or a stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{
    flag, flags, metadata_flag, put_header, put_payload, DecodeError, FrameType, Header, Reader,
    RequestCount, StreamId, HEADER_LEN,
};
use crate::{ErrorCode, Payload};

fn request_n(r: &mut Reader, frame: FrameType, id: StreamId) -> Result<RequestCount, DecodeError> {
    let n = r.u31("request-n")?;
    RequestCount::new(n).ok_or_else(|| DecodeError::ZeroRequestN {
        frame,
        stream_id: id.get(),
        // The header, the request-n just read, and what follows.
        len: HEADER_LEN + 4 + r.remaining(),
    })
}

/// REQUEST_RESPONSE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestResponse {
    /// The new stream.
    pub stream_id: StreamId,
    /// F flag: more fragments follow.
    pub follows: bool,
    /// The request.
    pub payload: Payload,
}

impl RequestResponse {
    pub(super) fn decode(h: Header, id: StreamId, r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            stream_id: id,
            follows: h.has(flags::FOLLOWS),
            payload: r.payload(h.has(flags::METADATA))?,
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload) | flag(self.follows, flags::FOLLOWS);
        put_header(dst, self.stream_id.get(), FrameType::RequestResponse, f);
        put_payload(dst, &self.payload);
    }
}

/// REQUEST_FNF (fire-and-forget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFnf {
    /// The new stream.
    pub stream_id: StreamId,
    /// F flag: more fragments follow.
    pub follows: bool,
    /// The request.
    pub payload: Payload,
}

impl RequestFnf {
    pub(super) fn decode(h: Header, id: StreamId, r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            stream_id: id,
            follows: h.has(flags::FOLLOWS),
            payload: r.payload(h.has(flags::METADATA))?,
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload) | flag(self.follows, flags::FOLLOWS);
        put_header(dst, self.stream_id.get(), FrameType::RequestFnf, f);
        put_payload(dst, &self.payload);
    }
}

/// REQUEST_STREAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestStream {
    /// The new stream.
    pub stream_id: StreamId,
    /// F flag: more fragments follow.
    pub follows: bool,
    /// Initial credit granted to the responder.
    pub initial_request_n: RequestCount,
    /// The request.
    pub payload: Payload,
}

impl RequestStream {
    pub(super) fn decode(h: Header, id: StreamId, r: &mut Reader) -> Result<Self, DecodeError> {
        let initial_request_n = request_n(r, FrameType::RequestStream, id)?;
        Ok(Self {
            stream_id: id,
            follows: h.has(flags::FOLLOWS),
            initial_request_n,
            payload: r.payload(h.has(flags::METADATA))?,
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload) | flag(self.follows, flags::FOLLOWS);
        put_header(dst, self.stream_id.get(), FrameType::RequestStream, f);
        dst.put_u32(self.initial_request_n.get());
        put_payload(dst, &self.payload);
    }
}

/// REQUEST_CHANNEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestChannel {
    /// The new stream.
    pub stream_id: StreamId,
    /// F flag: more fragments follow.
    pub follows: bool,
    /// C flag: the requester's outbound half ends with this payload.
    pub complete: bool,
    /// Initial credit granted to the responder.
    pub initial_request_n: RequestCount,
    /// The first element of the requester's outbound half.
    pub payload: Payload,
}

impl RequestChannel {
    pub(super) fn decode(h: Header, id: StreamId, r: &mut Reader) -> Result<Self, DecodeError> {
        let initial_request_n = request_n(r, FrameType::RequestChannel, id)?;
        Ok(Self {
            stream_id: id,
            follows: h.has(flags::FOLLOWS),
            complete: h.has(flags::COMPLETE),
            initial_request_n,
            payload: r.payload(h.has(flags::METADATA))?,
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload)
            | flag(self.follows, flags::FOLLOWS)
            | flag(self.complete, flags::COMPLETE);
        put_header(dst, self.stream_id.get(), FrameType::RequestChannel, f);
        dst.put_u32(self.initial_request_n.get());
        put_payload(dst, &self.payload);
    }
}

/// REQUEST_N: more credit for the sender of PAYLOADs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestN {
    /// The stream.
    pub stream_id: StreamId,
    /// Additional credit.
    pub request_n: RequestCount,
}

impl RequestN {
    pub(super) fn decode(id: StreamId, r: &mut Reader) -> Result<Self, DecodeError> {
        let request_n = request_n(r, FrameType::RequestN, id)?;
        r.finish()?;
        Ok(Self {
            stream_id: id,
            request_n,
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        put_header(dst, self.stream_id.get(), FrameType::RequestN, 0);
        dst.put_u32(self.request_n.get());
    }
}

/// CANCEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    /// The stream.
    pub stream_id: StreamId,
}

/// PAYLOAD.
///
/// At least one of `next` and `complete` must be set; the decoder rejects a
/// PAYLOAD with neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFrame {
    /// The stream.
    pub stream_id: StreamId,
    /// F flag: more fragments follow.
    pub follows: bool,
    /// C flag: the sender's half of the stream is complete.
    pub complete: bool,
    /// N flag: the frame carries an element.
    pub next: bool,
    /// The element (empty for a bare COMPLETE).
    pub payload: Payload,
}

impl PayloadFrame {
    /// An element (N).
    pub fn next(stream_id: StreamId, payload: Payload) -> Self {
        Self {
            stream_id,
            follows: false,
            complete: false,
            next: true,
            payload,
        }
    }

    /// The last element (N + C).
    pub fn next_complete(stream_id: StreamId, payload: Payload) -> Self {
        Self {
            stream_id,
            follows: false,
            complete: true,
            next: true,
            payload,
        }
    }

    /// Completion without an element (C).
    pub fn complete(stream_id: StreamId) -> Self {
        Self {
            stream_id,
            follows: false,
            complete: true,
            next: false,
            payload: Payload::default(),
        }
    }

    /// The well-formed PAYLOAD at `start..start + len` of `buf` (one frame,
    /// no length prefix), read in place: metadata and data are slices of
    /// `buf`. `None` for any other frame type and for every malformed
    /// PAYLOAD ([`Frame::decode`](super::Frame::decode) then says what the
    /// frame is), and when the range is not within `buf`.
    #[inline]
    pub(crate) fn peek(buf: &Bytes, start: usize, len: usize) -> Option<Self> {
        let (stream_id, f, payload) = peek_payload_frame(buf, start, len, FrameType::Payload)?;
        if f & (flags::NEXT | flags::COMPLETE) == 0 {
            return None;
        }
        Some(Self {
            stream_id,
            follows: f & flags::FOLLOWS != 0,
            complete: f & flags::COMPLETE != 0,
            next: f & flags::NEXT != 0,
            payload,
        })
    }

    pub(super) fn decode(h: Header, id: StreamId, r: &mut Reader) -> Result<Self, DecodeError> {
        let next = h.has(flags::NEXT);
        let complete = h.has(flags::COMPLETE);
        if !next && !complete {
            return Err(DecodeError::PayloadWithoutNextOrComplete {
                stream_id: id.get(),
            });
        }
        Ok(Self {
            stream_id: id,
            follows: h.has(flags::FOLLOWS),
            complete,
            next,
            payload: r.payload(h.has(flags::METADATA))?,
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        self.encode_with_prefix(None, dst);
    }

    /// Checks the frame behind its 24-bit length prefix at `at` of `buf`
    /// for a plain item of stream `key`: a PAYLOAD with the N flag and no C,
    /// F or I flag, a metadata length within the frame, whole in `buf` and
    /// no longer than `max_len`. Returns where the frame ends and the
    /// length of its payload (metadata and data); `None` for anything else
    /// (the frame is then read the ordinary way). Such frames in a row are
    /// kept as one run and cut apart by [`take_item`](Self::take_item) as
    /// they are consumed.
    #[inline(always)]
    pub(crate) fn scan_item(
        buf: &[u8],
        at: usize,
        key: u32,
        max_len: usize,
    ) -> Option<(usize, usize)> {
        const PLAIN: u16 = ((FrameType::Payload.code() as u16) << 10) | flags::NEXT;
        let b = buf.get(at..)?;
        let head: &[u8; 9] = b.get(..9)?.try_into().ok()?;
        // Bytes 1..9 in one word: the low two bytes of the length, then
        // the stream id and the type and flags, which are compared at once.
        let [_, rest @ ..] = *head;
        let word = u64::from_be_bytes(rest);
        let len = (usize::from(head[0]) << 16) | (word >> 48) as usize;
        let body = len.checked_sub(HEADER_LEN)?;
        if len > max_len || len + 3 > b.len() {
            return None;
        }
        let id_type_flags = word & 0xFFFF_FFFF_FFFF;
        let plain = (u64::from(key) << 16) | u64::from(PLAIN);
        let end = at + 3 + len;
        if id_type_flags == plain {
            return Some((end, body));
        }
        if id_type_flags != plain | u64::from(flags::METADATA) {
            return None;
        }
        let mlen = super::get_u24(b.get(9..)?)?;
        if mlen.checked_add(3)? > body {
            return None;
        }
        Some((end, body - 3))
    }

    /// Cuts the first frame of a run checked by
    /// [`scan_item`](Self::scan_item) from the front of `run` and returns
    /// its payload, slices of `run`. `None`, with `run` left as it was,
    /// when the front is not such a frame. Each payload is built where it
    /// is returned (no branch merges two of them): a consumer takes one per
    /// item, and copies of the 64-byte value were a fair part of its cost.
    #[inline]
    pub(crate) fn take_item(run: &mut Bytes) -> Option<Payload> {
        let head: &[u8; 9] = run.get(..9)?.try_into().ok()?;
        let len = (u32::from_be_bytes([head[0], head[1], head[2], head[3]]) >> 8) as usize;
        let metadata = u16::from_be_bytes([head[7], head[8]]) & flags::METADATA != 0;
        let body = len.checked_sub(HEADER_LEN)?;
        if len + 3 > run.len() {
            return None;
        }
        if !metadata {
            run.advance(9);
            return Some(Payload {
                metadata: None,
                data: cut_front(run, body),
            });
        }
        let mlen = super::get_u24(run.get(9..)?)?;
        let body = body.checked_sub(mlen.checked_add(3)?)?;
        run.advance(12);
        let metadata = cut_front(run, mlen);
        Some(Payload {
            metadata: Some(metadata),
            data: cut_front(run, body),
        })
    }

    /// Writes the frame, preceded by the 24-bit length `prefix` when given.
    /// The hottest encoder: prefix, header and metadata length go out in one
    /// write from a stack buffer, then metadata and data.
    #[inline]
    pub(crate) fn encode_with_prefix(&self, prefix: Option<usize>, dst: &mut impl BufMut) {
        put_payload_frame(
            dst,
            prefix,
            self.stream_id,
            FrameType::Payload,
            self.flags(),
            &self.payload,
        );
    }

    /// Writes the frame behind its 24-bit length prefix `len` (the frame's
    /// encoded length), except its data, which are the frame's last bytes:
    /// a writer that sends the data from their own buffer writes this first.
    pub(crate) fn encode_head(&self, len: usize, dst: &mut impl BufMut) {
        put_payload_head(
            dst,
            Some(len),
            self.stream_id,
            FrameType::Payload,
            self.flags(),
            &self.payload,
        );
    }

    /// The frame's encoded length, without the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        HEADER_LEN + super::payload_len(&self.payload)
    }

    fn flags(&self) -> u16 {
        metadata_flag(&self.payload)
            | flag(self.follows, flags::FOLLOWS)
            | flag(self.complete, flags::COMPLETE)
            | flag(self.next, flags::NEXT)
    }

    /// Writes PAYLOAD(N), or PAYLOAD(N+C) with `complete`, unfragmented,
    /// behind its 24-bit length prefix `len` (the frame's encoded length):
    /// what [`encode_with_prefix`](Self::encode_with_prefix) writes for
    /// such a frame, without building the frame value first.
    ///
    /// Written with `BytesMut::extend_from_slice`, which inlines (the
    /// `BufMut::put_slice` of `BytesMut` does not): prefix and header go
    /// out as one copy of a constant length, and no call is made but the
    /// copy of the data. Always inlined: its one caller is the loop that
    /// encodes a batch of items.
    #[inline(always)]
    pub(crate) fn encode_next(
        stream_id: StreamId,
        complete: bool,
        payload: &Payload,
        len: usize,
        dst: &mut BytesMut,
    ) {
        let f = flag(complete, flags::COMPLETE) | flags::NEXT;
        let word = (u16::from(FrameType::Payload.code()) << 10) | f;
        let mut head = [0u8; 12];
        head[..3].copy_from_slice(&((len & 0xFF_FFFF) as u32).to_be_bytes()[1..]);
        head[3..7].copy_from_slice(&stream_id.get().to_be_bytes());
        match &payload.metadata {
            Some(m) => {
                head[7..9].copy_from_slice(&(word | flags::METADATA).to_be_bytes());
                head[9..].copy_from_slice(&((m.len() & 0xFF_FFFF) as u32).to_be_bytes()[1..]);
                dst.extend_from_slice(&head);
                dst.extend_from_slice(m);
            }
            None => {
                head[7..9].copy_from_slice(&word.to_be_bytes());
                dst.extend_from_slice(&head[..9]);
            }
        }
        dst.extend_from_slice(&payload.data);
    }
}

/// ERROR: ends a stream, or the connection when `stream_id` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The stream; `None` for a connection-level error (stream 0).
    pub stream_id: Option<StreamId>,
    /// The error code.
    pub code: ErrorCode,
    /// UTF-8 message (not validated on receipt).
    pub data: Bytes,
}

impl ErrorFrame {
    /// Builds an ERROR frame from a message.
    pub fn new(stream_id: Option<StreamId>, code: ErrorCode, message: &str) -> Self {
        Self {
            stream_id,
            code,
            data: Bytes::copy_from_slice(message.as_bytes()),
        }
    }

    /// The message, with invalid UTF-8 replaced.
    pub fn message(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    pub(super) fn decode(id: Option<StreamId>, r: &mut Reader) -> Result<Self, DecodeError> {
        let code = ErrorCode(r.u32()?);
        Ok(Self {
            stream_id: id,
            code,
            data: r.rest(),
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        put_header(
            dst,
            self.stream_id.map_or(0, StreamId::get),
            FrameType::Error,
            0,
        );
        dst.put_u32(self.code.0);
        dst.put_slice(&self.data);
    }
}

/// EXT: an extension frame. No extended types are registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext {
    /// The stream; `None` for stream 0.
    pub stream_id: Option<StreamId>,
    /// I flag: the receiver may drop the frame if it does not understand it.
    pub ignore: bool,
    /// Extended type (1 ..= 2^31 − 1).
    pub extended_type: u32,
    /// Body, laid out as metadata (with length) and data, as rsocket-java does.
    pub payload: Payload,
}

impl Ext {
    pub(super) fn decode(
        h: Header,
        id: Option<StreamId>,
        r: &mut Reader,
    ) -> Result<Self, DecodeError> {
        let extended_type = r.u31("extended type")?;
        if extended_type == 0 {
            return Err(DecodeError::ZeroValue {
                frame: FrameType::Ext,
                field: "extended type",
            });
        }
        Ok(Self {
            stream_id: id,
            ignore: h.has(flags::IGNORE),
            extended_type,
            payload: r.payload(h.has(flags::METADATA))?,
        })
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload) | flag(self.ignore, flags::IGNORE);
        put_header(
            dst,
            self.stream_id.map_or(0, StreamId::get),
            FrameType::Ext,
            f,
        );
        dst.put_u32(self.extended_type & super::MAX_U31);
        put_payload(dst, &self.payload);
    }
}

/// The first `n` bytes of `b` (at most its length), cut from it: what
/// `Bytes::split_to` does, inlined (it is not, across crates).
#[inline(always)]
fn cut_front(b: &mut Bytes, n: usize) -> Bytes {
    let mut front = b.clone();
    front.truncate(n);
    b.advance(n.min(b.len()));
    front
}

/// Reads in place the frame of type `ty` at `start..start + len` of `buf`
/// (one frame, no length prefix) whose body is a payload alone (PAYLOAD,
/// REQUEST_FNF): its stream, its flags and the payload, sliced from `buf`.
/// `None` for another type, the I flag, stream 0, a metadata length beyond
/// the frame, or a range not within `buf`: [`Frame::decode`](super::Frame::decode)
/// judges those. Always inlined: left to the compiler it became a call
/// that cost a streamed 64-byte item about 90 instructions (callgrind).
#[inline(always)]
fn peek_payload_frame(
    buf: &Bytes,
    start: usize,
    len: usize,
    ty: FrameType,
) -> Option<(StreamId, u16, Payload)> {
    let end = start.checked_add(len)?;
    let b = buf.get(start..end)?;
    let head: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
    let word = u16::from_be_bytes([head[4], head[5]]);
    let f = word & 0x3FF;
    if (word >> 10) as u8 != ty.code() || f & flags::IGNORE != 0 {
        return None;
    }
    let stream_id = StreamId::new(u32::from_be_bytes([head[0], head[1], head[2], head[3]]))?;
    let mut at = start + HEADER_LEN;
    let metadata = if f & flags::METADATA != 0 {
        let mlen = super::get_u24(b.get(HEADER_LEN..)?)?;
        at += 3;
        if mlen > end - at {
            return None;
        }
        let metadata = buf.slice(at..at + mlen);
        at += mlen;
        Some(metadata)
    } else {
        None
    };
    let data = if at == end {
        Bytes::new()
    } else {
        buf.slice(at..end)
    };
    Some((stream_id, f, Payload { metadata, data }))
}

/// Writes a frame whose body is a payload (PAYLOAD, REQUEST_RESPONSE,
/// REQUEST_FNF), with its length prefix when given, in at most three
/// copies: the fixed fields at once, the metadata, the data. `f` must
/// already hold the M flag when the payload has metadata.
pub(crate) fn put_payload_frame(
    dst: &mut impl BufMut,
    prefix: Option<usize>,
    stream_id: StreamId,
    ty: FrameType,
    f: u16,
    payload: &Payload,
) {
    put_payload_head(dst, prefix, stream_id, ty, f, payload);
    dst.put_slice(&payload.data);
}

/// What [`put_payload_frame`] writes, without the data.
#[inline]
fn put_payload_head(
    dst: &mut impl BufMut,
    prefix: Option<usize>,
    stream_id: StreamId,
    ty: FrameType,
    f: u16,
    payload: &Payload,
) {
    let (head, n) = payload_head(prefix, stream_id, ty, f, payload);
    dst.put_slice(&head[..n]);
    if let Some(m) = &payload.metadata {
        dst.put_slice(m);
    }
}

/// [`put_payload_frame`] into a `BytesMut`, whose `extend_from_slice`
/// inlines where `BufMut::put_slice` is a call: the encoders of whole
/// requests use it.
#[inline]
fn extend_payload_frame(
    dst: &mut BytesMut,
    len: usize,
    stream_id: StreamId,
    ty: FrameType,
    f: u16,
    payload: &Payload,
) {
    let (head, n) = payload_head(Some(len), stream_id, ty, f, payload);
    dst.extend_from_slice(&head[..n]);
    if let Some(m) = &payload.metadata {
        dst.extend_from_slice(m);
    }
    dst.extend_from_slice(&payload.data);
}

/// The fixed fields of a payload-carrying frame: the length prefix when
/// given, stream id, type and flags, and the metadata length when there is
/// metadata; the array and how much of it is used.
#[inline]
fn payload_head(
    prefix: Option<usize>,
    stream_id: StreamId,
    ty: FrameType,
    f: u16,
    payload: &Payload,
) -> ([u8; 12], usize) {
    let mut head = [0u8; 12];
    let mut n = 0;
    if let Some(len) = prefix {
        head[..3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        n = 3;
    }
    head[n..n + 4].copy_from_slice(&stream_id.get().to_be_bytes());
    let word = (u16::from(ty.code()) << 10) | f;
    head[n + 4..n + 6].copy_from_slice(&word.to_be_bytes());
    n += 6;
    if let Some(m) = &payload.metadata {
        head[n..n + 3].copy_from_slice(&((m.len() & 0xFF_FFFF) as u32).to_be_bytes()[1..]);
        n += 3;
    }
    (head, n)
}

impl RequestResponse {
    /// A REQUEST_RESPONSE at `start..start + len` of `buf` (one frame, no
    /// length prefix), read in place like [`RequestFnf::peek`]: its
    /// metadata and data sliced from `buf`, what
    /// [`Frame::decode`](super::Frame::decode) gives for it. `None` for
    /// any other frame, and for one that decoding must judge (I flag,
    /// stream 0, a metadata length beyond the frame).
    #[inline]
    pub(crate) fn peek(buf: &Bytes, start: usize, len: usize) -> Option<Self> {
        let (stream_id, f, payload) =
            peek_payload_frame(buf, start, len, FrameType::RequestResponse)?;
        Some(Self {
            stream_id,
            follows: f & flags::FOLLOWS != 0,
            payload,
        })
    }

    /// Writes REQUEST_RESPONSE, unfragmented, behind its 24-bit length
    /// prefix `len` (the frame's encoded length), without building the
    /// frame value first.
    #[inline]
    pub(crate) fn encode_whole(
        stream_id: StreamId,
        payload: &Payload,
        len: usize,
        dst: &mut BytesMut,
    ) {
        let f = metadata_flag(payload);
        extend_payload_frame(dst, len, stream_id, FrameType::RequestResponse, f, payload);
    }

    /// See [`put_payload_frame`].
    pub(crate) fn encode_with_prefix(&self, prefix: Option<usize>, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload) | flag(self.follows, flags::FOLLOWS);
        put_payload_frame(
            dst,
            prefix,
            self.stream_id,
            FrameType::RequestResponse,
            f,
            &self.payload,
        );
    }
}

impl RequestFnf {
    /// Reads the REQUEST_FNF of `len` bytes at `start` in `buf` in place,
    /// its metadata and data sliced from `buf`: what
    /// [`Frame::decode`](super::Frame::decode) gives for it. `None` for
    /// any other frame, and for one that decoding must judge (I flag, stream
    /// 0, a metadata length beyond the frame).
    #[inline]
    pub(crate) fn peek(buf: &Bytes, start: usize, len: usize) -> Option<Self> {
        let (stream_id, f, payload) = peek_payload_frame(buf, start, len, FrameType::RequestFnf)?;
        Some(Self {
            stream_id,
            follows: f & flags::FOLLOWS != 0,
            payload,
        })
    }

    /// Writes REQUEST_FNF, unfragmented, behind its 24-bit length prefix
    /// `len` (the frame's encoded length), without building the frame
    /// value first.
    #[inline]
    pub(crate) fn encode_whole(
        stream_id: StreamId,
        payload: &Payload,
        len: usize,
        dst: &mut BytesMut,
    ) {
        let f = metadata_flag(payload);
        extend_payload_frame(dst, len, stream_id, FrameType::RequestFnf, f, payload);
    }

    /// See [`put_payload_frame`].
    pub(crate) fn encode_with_prefix(&self, prefix: Option<usize>, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload) | flag(self.follows, flags::FOLLOWS);
        put_payload_frame(
            dst,
            prefix,
            self.stream_id,
            FrameType::RequestFnf,
            f,
            &self.payload,
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};

    use super::PayloadFrame;
    use crate::frame::{Frame, StreamId};
    use crate::Payload;

    /// Data only, empty, data with metadata, empty metadata.
    fn sample_payloads() -> [Payload; 4] {
        [
            Payload::from("data"),
            Payload::default(),
            Payload::from("d").with_metadata(Bytes::from_static(b"meta")),
            Payload::default().with_metadata(Bytes::new()),
        ]
    }

    /// The encoders of whole requests write what the general frame
    /// encoder writes for the same REQUEST_FNF and REQUEST_RESPONSE.
    #[test]
    fn whole_request_encoders_agree_with_the_frame_encoder() {
        let id = StreamId::new(11).expect("id");
        for p in sample_payloads() {
            let fnf = Frame::RequestFnf(super::RequestFnf {
                stream_id: id,
                follows: false,
                payload: p.clone(),
            });
            let rr = Frame::RequestResponse(super::RequestResponse {
                stream_id: id,
                follows: false,
                payload: p.clone(),
            });
            for (frame, whole) in [
                (
                    &fnf,
                    super::RequestFnf::encode_whole as fn(_, &_, _, &mut _),
                ),
                (&rr, super::RequestResponse::encode_whole),
            ] {
                let len = frame.encoded_len();
                let mut general = BytesMut::new();
                frame.encode_prefixed(len, &mut general);
                let mut direct = BytesMut::new();
                whole(id, &p, len, &mut direct);
                assert_eq!(direct, general, "{frame:?}");
            }
        }
    }

    /// `encode_next` writes what the frame value's encoder writes.
    #[test]
    fn encode_next_agrees_with_the_frame_encoder() {
        let id = StreamId::new(9).expect("id");
        for p in sample_payloads() {
            for complete in [false, true] {
                let f = Frame::Payload(if complete {
                    PayloadFrame::next_complete(id, p.clone())
                } else {
                    PayloadFrame::next(id, p.clone())
                });
                let len = f.encoded_len();
                let mut want = BytesMut::new();
                f.encode_prefixed(len, &mut want);
                let mut got = BytesMut::from(&b"xx"[..]);
                PayloadFrame::encode_next(id, complete, &p, len, &mut got);
                assert_eq!(&got[2..], &want[..], "{f:?}");
            }
        }
    }

    /// Checks an in-place reader against `Frame::decode`: every frame of
    /// `frames` that `expect` picks is read in place, equal to what the
    /// decoder gives (each encoded after two bytes of something else, so
    /// that the offset counts), no other frame is, a range past the end is
    /// refused, and so is every frame in `bad`.
    fn agrees_with_decode<T: PartialEq + std::fmt::Debug>(
        frames: &[Frame],
        peek: fn(&Bytes, usize, usize) -> Option<T>,
        expect: fn(&Frame) -> Option<&T>,
        bad: &[&[u8]],
    ) {
        for f in frames {
            let mut buf = BytesMut::new();
            buf.put_slice(b"xx");
            f.encode(&mut buf);
            let buf = buf.freeze();
            let len = buf.len() - 2;
            match (peek(&buf, 2, len), expect(f)) {
                (Some(p), Some(want)) => {
                    assert_eq!(&p, want);
                    assert_eq!(&Frame::decode(buf.slice(2..)).unwrap(), f);
                }
                (None, Some(_)) => panic!("not read in place: {f:?}"),
                (Some(p), None) => panic!("{f:?} read as {p:?}"),
                (None, None) => {}
            }
            assert!(peek(&buf, 2, len + 1).is_none(), "past the end");
        }
        for b in bad {
            let buf = Bytes::copy_from_slice(b);
            assert!(peek(&buf, 0, b.len()).is_none(), "{b:?}");
        }
    }

    /// `PayloadFrame::peek` reads exactly the PAYLOADs `Frame::decode`
    /// reads, in place, and leaves every other frame (and every malformed
    /// PAYLOAD) to it.
    #[test]
    fn peek_agrees_with_decode() {
        let id = StreamId::new(5).unwrap();
        let frames = [
            Frame::Payload(PayloadFrame::next(id, Payload::from("data"))),
            Frame::Payload(PayloadFrame::next_complete(
                id,
                Payload::new("d").with_metadata("meta"),
            )),
            Frame::Payload(PayloadFrame::complete(id)),
            Frame::Payload(PayloadFrame::next(id, Payload::metadata_only(""))),
            Frame::Cancel(super::Cancel { stream_id: id }),
        ];
        // Malformed: metadata overrun, neither N nor C, stream 0, short.
        let bad: [&[u8]; 4] = [
            &[0, 0, 0, 1, 0x29, 0x20, 0, 0, 9, b'x'],
            &[0, 0, 0, 1, 0x28, 0x00, b'x'],
            &[0, 0, 0, 0, 0x28, 0x20, b'x'],
            &[0, 0, 0, 1, 0x28],
        ];
        agrees_with_decode(
            &frames,
            PayloadFrame::peek,
            |f| match f {
                Frame::Payload(p) => Some(p),
                _ => None,
            },
            &bad,
        );
    }

    /// The same for `RequestFnf::peek` and REQUEST_FNF.
    #[test]
    fn fnf_peek_agrees_with_decode() {
        let id = StreamId::new(7).unwrap();
        let fnf = |follows, payload| {
            Frame::RequestFnf(super::RequestFnf {
                stream_id: id,
                follows,
                payload,
            })
        };
        let frames = [
            fnf(false, Payload::from("data")),
            fnf(true, Payload::new("d").with_metadata("meta")),
            fnf(false, Payload::metadata_only("")),
            fnf(false, Payload::default()),
            Frame::Payload(PayloadFrame::next(id, Payload::from("data"))),
            Frame::Cancel(super::Cancel { stream_id: id }),
        ];
        // Malformed or for the decoder: metadata overrun, stream 0, I flag,
        // short.
        let bad: [&[u8]; 4] = [
            &[0, 0, 0, 1, 0x15, 0x00, 0, 0, 9, b'x'],
            &[0, 0, 0, 0, 0x14, 0x00, b'x'],
            &[0, 0, 0, 1, 0x16, 0x00, b'x'],
            &[0, 0, 0, 1, 0x14],
        ];
        agrees_with_decode(
            &frames,
            super::RequestFnf::peek,
            |f| match f {
                Frame::RequestFnf(r) => Some(r),
                _ => None,
            },
            &bad,
        );
    }

    /// The same for `RequestResponse::peek` and REQUEST_RESPONSE.
    #[test]
    fn rr_peek_agrees_with_decode() {
        let id = StreamId::new(7).unwrap();
        let rr = |follows, payload| {
            Frame::RequestResponse(super::RequestResponse {
                stream_id: id,
                follows,
                payload,
            })
        };
        let frames = [
            rr(false, Payload::from("data")),
            rr(true, Payload::new("d").with_metadata("meta")),
            rr(false, Payload::metadata_only("")),
            rr(false, Payload::default()),
            Frame::RequestFnf(super::RequestFnf {
                stream_id: id,
                follows: false,
                payload: Payload::from("data"),
            }),
            Frame::Payload(PayloadFrame::next(id, Payload::from("data"))),
            Frame::Cancel(super::Cancel { stream_id: id }),
        ];
        // Malformed or for the decoder: metadata overrun, stream 0, I flag,
        // short.
        let bad: [&[u8]; 4] = [
            &[0, 0, 0, 1, 0x11, 0x00, 0, 0, 9, b'x'],
            &[0, 0, 0, 0, 0x10, 0x00, b'x'],
            &[0, 0, 0, 1, 0x12, 0x00, b'x'],
            &[0, 0, 0, 1, 0x10],
        ];
        agrees_with_decode(
            &frames,
            super::RequestResponse::peek,
            |f| match f {
                Frame::RequestResponse(r) => Some(r),
                _ => None,
            },
            &bad,
        );
    }
}
