//! Protobuf encoding of messages, with the size limit checked before any
//! decoding work.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use prost::Message;
use rsocket_core::metadata::MetadataError;
use rsocket_core::ErrorCode;

use crate::{Metadata, Status};

/// Default limit on the size of a message this side decodes: 4 MiB, as in
/// gRPC.
pub const DEFAULT_MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Which side decodes; decides the status of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A server decoding a request: the caller sent a bad message, which
    /// goes back as `ERROR[INVALID]`.
    Server,
    /// A client decoding a response: the server broke the contract.
    Client,
}

/// The protobuf encoding of `msg`. Encoding a prost message cannot fail.
pub(crate) fn encode<M: Message>(msg: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(msg.encoded_len());
    encode_into(msg, &mut buf);
    buf.freeze()
}

/// Appends the protobuf encoding of `msg` to `buf`, growing it if needed.
/// Encoding into a `BytesMut` (rather than a `Vec`) gives `Bytes` whose
/// clones are a reference count, with no promotion on first clone.
pub(crate) fn encode_into<M: Message>(msg: &M, buf: &mut BytesMut) {
    buf.reserve(msg.encoded_len());
    // Cannot fail: the capacity was reserved just above.
    let _ = msg.encode(buf);
}

/// Encodes messages into shared chunks: small messages cost one
/// allocation per [`ChunkEncoder::CHUNK`] bytes instead of one each. Each
/// message is its own `Bytes`, cut from the chunk; a chunk is freed when
/// the last message cut from it is dropped (sent), so an encoder pins at
/// most the messages still queued plus one partly used chunk.
///
/// A stream has its own; single messages (unary requests and responses)
/// use the thread's, [`encode_small`] and [`encode_request`].
#[derive(Debug, Default)]
pub(crate) struct ChunkEncoder {
    /// The zeroed rest of the current chunk. Each message is written in
    /// place, then cut off the front: prost writes its varints a byte at a
    /// time, which costs several times less into a slice than into a
    /// growing `BytesMut`, and zeroing a chunk once costs less than making
    /// zeroed room for each message.
    free: BytesMut,
    /// The request metadata of routes called without metadata of their
    /// own, recently used (the thread's encoder only): encoded once, then
    /// a reference count per request.
    routes: Vec<(&'static str, Bytes)>,
    /// The entry of `routes` to replace next when it is full.
    next_route: usize,
}

impl ChunkEncoder {
    /// Bytes per chunk.
    pub(crate) const CHUNK: usize = 4096;

    /// Messages up to this size are cut from a chunk; larger ones get an
    /// allocation of their own, so that none pins a chunk.
    const SMALL: usize = Self::CHUNK / 4;

    /// The encoding of `msg`, cut from the chunk when small. prost sizes
    /// the message once, in its own `encode`: it is written straight into
    /// the chunk's free part, and what was written is cut off the front.
    /// The common case, a message that fits, is written in line; the
    /// rest is out of line.
    #[inline]
    pub(crate) fn encode<M: Message>(&mut self, msg: &M) -> Bytes {
        match self.try_encode(msg) {
            Ok(encoded) => encoded,
            Err(needed) => self.encode_elsewhere(msg, needed),
        }
    }

    /// [`encode`](Self::encode) for a message that does not fit in the
    /// chunk's free part (`needed` bytes): in a new chunk if it is small,
    /// else in an allocation of its own.
    #[cold]
    #[inline(never)]
    fn encode_elsewhere<M: Message>(&mut self, msg: &M, needed: usize) -> Bytes {
        if needed <= Self::SMALL {
            // The current chunk is too full: a new one has room.
            self.free = zeroed_chunk();
            self.try_encode(msg).unwrap_or_else(|_| encode(msg))
        } else {
            encode(msg)
        }
    }

    /// Writes `msg` into the chunk's free part (at most [`Self::SMALL`]
    /// bytes of it) and cuts it off; or the size it needs when it does not
    /// fit, with nothing written (prost checks the room first).
    #[inline(always)]
    fn try_encode<M: Message>(&mut self, msg: &M) -> Result<Bytes, usize> {
        let window = self.free.len().min(Self::SMALL);
        let mut out = &mut self.free[..window];
        match msg.encode(&mut out) {
            Ok(()) => {
                let len = window - out.len();
                Ok(if len == 0 {
                    Bytes::new()
                } else {
                    self.free.split_to(len).freeze()
                })
            }
            Err(e) => Err(e.required_capacity()),
        }
    }

    /// Makes room for `len` more bytes, in a new chunk if needed.
    #[inline]
    fn room(&mut self, len: usize) {
        if self.free.len() < len {
            self.free = zeroed_chunk();
        }
    }

    /// Routes whose request metadata is remembered.
    const ROUTES: usize = 8;

    /// The request metadata for `route` with no other entries: remembered
    /// per route string (by address: a `&'static str` never changes).
    #[inline]
    fn route_metadata(&mut self, route: &'static str) -> Result<Bytes, MetadataError> {
        let same = |r: &&str| r.as_ptr() == route.as_ptr() && r.len() == route.len();
        match self.routes.iter().find(|(r, _)| same(r)) {
            Some((_, encoded)) => Ok(encoded.clone()),
            None => self.new_route_metadata(route),
        }
    }

    /// [`route_metadata`](Self::route_metadata) for a route not
    /// remembered: encoded and remembered.
    #[cold]
    #[inline(never)]
    fn new_route_metadata(&mut self, route: &'static str) -> Result<Bytes, MetadataError> {
        let encoded = Metadata::new().encode(Some(route))?;
        if self.routes.len() < Self::ROUTES {
            self.routes.push((route, encoded.clone()));
        } else {
            let slot = self.next_route % Self::ROUTES;
            self.routes[slot] = (route, encoded.clone());
            self.next_route = slot + 1;
        }
        Ok(encoded)
    }

    /// A request's metadata (with the route) and message, cut from the
    /// chunk when both are small, else in one allocation of their own.
    fn encode_request<M: Message>(
        &mut self,
        metadata: &Metadata,
        route: &'static str,
        message: &M,
    ) -> Result<(Bytes, Bytes), MetadataError> {
        if metadata.is_empty() {
            let encoded = self.route_metadata(route)?;
            return Ok((encoded, self.encode(message)));
        }
        let meta_len = metadata.encoded_len(Some(route));
        let len = meta_len + message.encoded_len();
        if len > Self::SMALL {
            return metadata.encode_with_message(route, message);
        }
        self.room(len);
        let (meta_out, message_out) = self.free[..len].split_at_mut(meta_len);
        let mut meta_rest = &mut *meta_out;
        let written = match metadata.encode_into(Some(route), &mut meta_rest) {
            Ok(()) => meta_rest.is_empty() && write_exact(message, message_out),
            Err(e) => {
                // The chunk's free part stays zeroed.
                self.free[..len].fill(0);
                return Err(e);
            }
        };
        if !written {
            self.free[..len].fill(0);
            return metadata.encode_with_message(route, message);
        }
        let metadata = self.free.split_to(meta_len).freeze();
        Ok((metadata, self.free.split_to(len - meta_len).freeze()))
    }
}

/// A new chunk, all zeros. Zeroed in 1 KiB steps: glibc's `memset`
/// switches to `rep stosb` from 2 KiB, which callgrind counts as one
/// instruction per byte (on hardware either way costs about the same).
fn zeroed_chunk() -> BytesMut {
    let mut chunk = BytesMut::with_capacity(ChunkEncoder::CHUNK);
    for _ in 0..ChunkEncoder::CHUNK / 1024 {
        chunk.resize(chunk.len() + 1024, 0);
    }
    chunk
}

/// Writes `msg` into `out`; false unless it fills `out` exactly, which
/// only a hand-written `Message` whose `encoded_len` is wrong does not
/// (then `out` may hold part of it).
fn write_exact<M: Message>(msg: &M, mut out: &mut [u8]) -> bool {
    msg.encode(&mut out).is_ok() && out.is_empty()
}

thread_local! {
    /// The chunk single messages are encoded into on this thread.
    static THREAD_ENCODER: RefCell<ChunkEncoder> = RefCell::new(ChunkEncoder::default());
}

/// Runs `f` with the thread's encoder; `None` if it is in use (a
/// message's encoding encoding another) or gone (thread teardown).
#[inline(always)]
fn with_thread_encoder<R>(f: impl FnOnce(&mut ChunkEncoder) -> R) -> Option<R> {
    THREAD_ENCODER
        .try_with(|cell| cell.try_borrow_mut().ok().map(|mut enc| f(&mut enc)))
        .ok()
        .flatten()
}

/// The protobuf encoding of a single message (a unary response), cut from
/// the thread's chunk when small.
#[inline]
pub(crate) fn encode_small<M: Message>(msg: &M) -> Bytes {
    with_thread_encoder(|enc| enc.encode(msg)).unwrap_or_else(|| encode(msg))
}

/// A request's metadata (with the route) and message, cut from the
/// thread's chunk when small.
pub(crate) fn encode_request<M: Message>(
    metadata: &Metadata,
    route: &'static str,
    message: &M,
) -> Result<(Bytes, Bytes), MetadataError> {
    with_thread_encoder(|enc| enc.encode_request(metadata, route, message))
        .unwrap_or_else(|| metadata.encode_with_message(route, message))
}

/// Decodes `data` as `M`, refusing data longer than `max` bytes before
/// looking at it. `Bytes` fields of `M` are zero-copy slices of `data`.
#[inline(always)]
pub(crate) fn decode<M: Message + Default>(
    mut data: Bytes,
    max: usize,
    side: Side,
) -> Result<M, Status> {
    if data.len() > max {
        return Err(too_large(data.len(), max, side));
    }
    // What `M::decode` does (the default message, merged with the data),
    // without the call to it.
    let mut message = M::default();
    match message.merge(&mut data) {
        Ok(()) => Ok(message),
        Err(e) => Err(undecodable(&e, side)),
    }
}

/// The status of a message of `len` bytes, over the limit of `max`.
#[cold]
fn too_large(len: usize, max: usize, side: Side) -> Status {
    let status = Status::resource_exhausted(format!(
        "message of {len} bytes exceeds the limit of {max} bytes"
    ));
    match side {
        Side::Server => status.with_wire(ErrorCode::INVALID),
        Side::Client => status,
    }
}

/// The status of a message that does not decode.
#[cold]
fn undecodable(e: &prost::DecodeError, side: Side) -> Status {
    match side {
        Side::Server => Status::invalid_argument(format!("cannot decode the request message: {e}"))
            .with_wire(ErrorCode::INVALID),
        Side::Client => Status::internal(format!("cannot decode the response message: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn round_trip_and_empty_message() {
        let v = prost_types::Timestamp {
            seconds: 7,
            nanos: 9,
        };
        let back: prost_types::Timestamp = decode(encode(&v), 1024, Side::Server).unwrap();
        assert_eq!(back, v);
        // The all-default message is zero bytes and decodes fine.
        let empty = encode(&prost_types::Timestamp::default());
        assert!(empty.is_empty());
        let back: prost_types::Timestamp = decode(empty, 0, Side::Server).unwrap();
        assert_eq!(back, prost_types::Timestamp::default());
    }

    #[test]
    fn chunk_encoder_cuts_messages_from_shared_chunks() {
        let mut enc = ChunkEncoder::default();
        let small = prost_types::Timestamp {
            seconds: 1,
            nanos: 2,
        };
        let a = enc.encode(&small);
        let b = enc.encode(&small);
        assert_eq!(a, encode(&small));
        assert_eq!(b, encode(&small));
        // Adjacent in one chunk.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        // The empty message is empty; a large one stands alone and decodes.
        assert!(enc.encode(&prost_types::Timestamp::default()).is_empty());
        let big = prost_types::Any {
            type_url: "x".repeat(ChunkEncoder::CHUNK),
            value: vec![7; 10],
        };
        let c = enc.encode(&big);
        let back: prost_types::Any = decode(c, usize::MAX, Side::Client).unwrap();
        assert_eq!(back, big);
        // Many small messages across chunk boundaries all round-trip.
        for i in 0..10_000 {
            let m = prost_types::Timestamp {
                seconds: i,
                nanos: 3,
            };
            let back: prost_types::Timestamp = decode(enc.encode(&m), 64, Side::Client).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn requests_from_the_thread_chunk() {
        let mut md = Metadata::new();
        md.insert("x/y", "ab").unwrap();
        let msg = prost_types::Timestamp {
            seconds: 5,
            nanos: 6,
        };
        // A bad route fails and leaves nothing behind in the chunk.
        assert!(encode_request(&md, "", &msg).is_err());
        let (meta, data) = encode_request(&md, "a.B/C", &msg).unwrap();
        assert_eq!(meta, md.encode(Some("a.B/C")).unwrap());
        assert_eq!(data, encode(&msg));
        assert_eq!(encode_small(&msg), encode(&msg));
        // A large one is not cut from the chunk, and is still right.
        let big = prost_types::Any {
            type_url: "x".repeat(ChunkEncoder::CHUNK),
            value: vec![1],
        };
        let (meta, data) = encode_request(&md, "a.B/C", &big).unwrap();
        assert_eq!(meta, md.encode(Some("a.B/C")).unwrap());
        assert_eq!(data, encode(&big));
        assert_eq!(encode_small(&big), encode(&big));
    }

    #[test]
    fn route_metadata_remembered_per_route() {
        const ROUTES: [&str; 10] = [
            "a/0", "a/1", "a/2", "a/3", "a/4", "a/5", "a/6", "a/7", "a/8", "a/9",
        ];
        let msg = prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        };
        let mut enc = ChunkEncoder::default();
        for _ in 0..3 {
            for route in ROUTES {
                let (meta, data) = enc.encode_request(&Metadata::new(), route, &msg).unwrap();
                assert_eq!(meta, Metadata::new().encode(Some(route)).unwrap());
                assert_eq!(data, encode(&msg));
            }
        }
        assert_eq!(enc.routes.len(), ChunkEncoder::ROUTES);
        // An invalid route is refused, and not remembered.
        assert!(enc.encode_request(&Metadata::new(), "", &msg).is_err());
    }

    #[test]
    fn limit_checked_first() {
        // Garbage longer than the limit: reported as too large, not as
        // undecodable, so no decoding was attempted.
        let err = decode::<prost_types::Timestamp>(Bytes::from(vec![0xFF; 9]), 8, Side::Server)
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(err.to_stream_error().code, ErrorCode::INVALID);
    }

    #[test]
    fn garbage_is_invalid_argument_on_server_and_internal_on_client() {
        let garbage = Bytes::from_static(&[0x08]);
        let s = decode::<prost_types::Timestamp>(garbage.clone(), 64, Side::Server).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.to_stream_error().code, ErrorCode::INVALID);
        let c = decode::<prost_types::Timestamp>(garbage, 64, Side::Client).unwrap_err();
        assert_eq!(c.code(), Code::Internal);
    }
}
