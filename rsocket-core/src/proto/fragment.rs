//! Fragmentation of outbound payloads and reassembly of inbound ones.
//!
//! Outbound (rsocket-java's layout, which every peer accepts): the first
//! fragment keeps the original frame type and its fixed fields (request-n)
//! with F set; follow-ups are PAYLOAD frames with N set; all metadata goes
//! before any data, each fragment carrying its own metadata length; C (for
//! PAYLOAD or REQUEST_CHANNEL) goes on the last fragment only. Slicing is
//! zero-copy.
//!
//! Inbound: fragments are appended until one arrives without F; the result
//! is then handled as if it had come in one frame.

#[cfg(test)]
use bytes::Bytes;
use bytes::BytesMut;

use crate::frame::{
    Frame, PayloadFrame, RequestChannel, RequestCount, RequestFnf, RequestResponse, RequestStream,
    StreamId, HEADER_LEN, MAX_U31,
};
use crate::Payload;

/// The logical frame a fragment sequence belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FragKind {
    RequestResponse,
    RequestFnf,
    RequestStream(RequestCount),
    RequestChannel(RequestCount),
    /// PAYLOAD with its N flag.
    Payload {
        next: bool,
    },
}

impl FragKind {
    fn fixed_len(self) -> usize {
        match self {
            Self::RequestStream(_) | Self::RequestChannel(_) => 4,
            _ => 0,
        }
    }

    /// Builds the frame for one fragment (or a whole logical frame).
    #[inline]
    pub(crate) fn frame(
        self,
        stream_id: StreamId,
        payload: Payload,
        follows: bool,
        complete: bool,
    ) -> Frame {
        match self {
            Self::RequestResponse => Frame::RequestResponse(RequestResponse {
                stream_id,
                follows,
                payload,
            }),
            Self::RequestFnf => Frame::RequestFnf(RequestFnf {
                stream_id,
                follows,
                payload,
            }),
            Self::RequestStream(n) => Frame::RequestStream(RequestStream {
                stream_id,
                follows,
                initial_request_n: n,
                payload,
            }),
            Self::RequestChannel(n) => Frame::RequestChannel(RequestChannel {
                stream_id,
                follows,
                complete,
                initial_request_n: n,
                payload,
            }),
            Self::Payload { next } => Frame::Payload(PayloadFrame {
                stream_id,
                follows,
                complete,
                next,
                payload,
            }),
        }
    }
}

/// Frame size of a logical frame before fragmentation.
pub(crate) fn whole_len(kind: FragKind, payload: &Payload) -> usize {
    HEADER_LEN + kind.fixed_len() + crate::frame::payload_len(payload)
}

/// Splits a logical frame into fragments of at most `mtu` bytes each and
/// passes them, with their encoded length, to `emit` in order. `mtu` must be
/// at least [`crate::config::MIN_MTU`]. A frame that already fits is emitted
/// whole.
#[inline]
pub(crate) fn fragment(
    kind: FragKind,
    stream_id: StreamId,
    payload: Payload,
    complete: bool,
    mtu: usize,
    mut emit: impl FnMut(Frame, usize),
) {
    let len = whole_len(kind, &payload);
    if len <= mtu {
        emit(kind.frame(stream_id, payload, false, complete), len);
        return;
    }
    split(kind, stream_id, payload, complete, mtu, &mut emit);
}

#[cold]
fn split(
    kind: FragKind,
    stream_id: StreamId,
    payload: Payload,
    complete: bool,
    mtu: usize,
    emit: &mut dyn FnMut(Frame, usize),
) {
    let Payload { metadata, data } = payload;
    let mut md = metadata;
    let mut data = data;
    let mut first = true;
    loop {
        let overhead = HEADER_LEN + if first { kind.fixed_len() } else { 0 };
        let mut budget = mtu.saturating_sub(overhead);
        let md_part = match md.as_mut() {
            Some(m) => {
                budget = budget.saturating_sub(3);
                let take = m.len().min(budget);
                budget -= take;
                let part = m.split_to(take);
                if m.is_empty() {
                    md = None;
                }
                Some(part)
            }
            None => None,
        };
        let take = data.len().min(budget);
        let data_part = data.split_to(take);
        let more = md.is_some() || !data.is_empty();
        let piece = Payload {
            metadata: md_part,
            data: data_part,
        };
        let frame = if first {
            kind.frame(stream_id, piece, more, complete && !more)
        } else {
            FragKind::Payload { next: true }.frame(stream_id, piece, more, complete && !more)
        };
        let len = frame.encoded_len();
        emit(frame, len);
        first = false;
        if !more {
            return;
        }
    }
}

/// An inbound fragment sequence being put back together.
#[derive(Debug)]
pub(crate) struct Reassembly {
    pub(crate) kind: FragKind,
    metadata: Option<BytesMut>,
    data: BytesMut,
}

impl Reassembly {
    pub(crate) fn new(kind: FragKind) -> Self {
        Self {
            kind,
            metadata: None,
            data: BytesMut::new(),
        }
    }

    /// A request being reassembled (not a PAYLOAD on an open stream).
    pub(crate) fn is_request(&self) -> bool {
        !matches!(self.kind, FragKind::Payload { .. })
    }

    /// Credit from a REQUEST_N that arrived while a REQUEST_STREAM or
    /// REQUEST_CHANNEL was reassembled: added to its initial request-n,
    /// saturating at 2^31 - 1 (unbounded). Ignored for other kinds.
    pub(crate) fn add_credit(&mut self, n: RequestCount) {
        let add = |c: RequestCount| {
            RequestCount::new(c.get().saturating_add(n.get()).min(MAX_U31)).unwrap_or(c)
        };
        match &mut self.kind {
            FragKind::RequestStream(c) | FragKind::RequestChannel(c) => *c = add(*c),
            _ => {}
        }
    }

    /// Bytes buffered so far.
    pub(crate) fn len(&self) -> usize {
        self.metadata.as_ref().map_or(0, BytesMut::len) + self.data.len()
    }

    /// Appends one fragment's payload.
    pub(crate) fn push(&mut self, p: &Payload) {
        if let Some(m) = &p.metadata {
            self.metadata
                .get_or_insert_with(BytesMut::new)
                .extend_from_slice(m);
        }
        self.data.extend_from_slice(&p.data);
    }

    /// The reassembled payload.
    pub(crate) fn finish(self) -> Payload {
        Payload {
            metadata: self.metadata.map(BytesMut::freeze),
            data: self.data.freeze(),
        }
    }
}

/// Convenience for tests and callers that want the fragments as a list.
#[cfg(test)]
pub(crate) fn fragments(
    kind: FragKind,
    stream_id: StreamId,
    payload: Payload,
    complete: bool,
    mtu: usize,
) -> Vec<Frame> {
    let mut v = Vec::new();
    fragment(kind, stream_id, payload, complete, mtu, |f, len| {
        assert_eq!(len, f.encoded_len());
        v.push(f)
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u32) -> StreamId {
        StreamId::new(n).unwrap()
    }

    #[test]
    fn spec_worked_example_layout() {
        // rsocket-protocol.md §8: 100 B metadata + 100 B data, REQUEST_RESPONSE, MTU 61.
        let p =
            Payload::new(Bytes::from(vec![b'd'; 100])).with_metadata(Bytes::from(vec![b'm'; 100]));
        let frames = fragments(FragKind::RequestResponse, sid(1), p.clone(), false, 61);
        let sizes: Vec<usize> = frames.iter().map(Frame::encoded_len).collect();
        assert_eq!(sizes, vec![61, 61, 61, 47]);
        let hex: Vec<String> = frames
            .iter()
            .map(|f| {
                let b = f.to_bytes();
                format!("{:02x}{:02x}", b[4], b[5])
            })
            .collect();
        assert_eq!(hex, vec!["1180", "29a0", "28a0", "2820"]);
        let mut r = Reassembly::new(FragKind::RequestResponse);
        for f in &frames {
            match f {
                Frame::RequestResponse(x) => r.push(&x.payload),
                Frame::Payload(x) => r.push(&x.payload),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(r.finish(), p);
    }

    #[test]
    fn complete_only_on_last_fragment_and_request_n_only_first() {
        let p = Payload::new(Bytes::from(vec![7u8; 300]));
        let n = RequestCount::new(5).unwrap();
        let frames = fragments(FragKind::RequestChannel(n), sid(3), p, true, 64);
        assert!(frames.len() > 2);
        for (i, f) in frames.iter().enumerate() {
            let last = i == frames.len() - 1;
            match f {
                Frame::RequestChannel(c) => {
                    assert_eq!(i, 0);
                    assert!(c.follows && !c.complete);
                }
                Frame::Payload(pf) => {
                    assert!(pf.next, "follow-ups carry N");
                    assert_eq!(pf.follows, !last);
                    assert_eq!(pf.complete, last);
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(f.encoded_len() <= 64);
        }
    }

    #[test]
    fn small_frame_is_not_fragmented() {
        let frames = fragments(
            FragKind::Payload { next: true },
            sid(2),
            Payload::from("hi"),
            true,
            64,
        );
        assert_eq!(frames.len(), 1);
        assert!(matches!(&frames[0], Frame::Payload(p) if p.complete && p.next && !p.follows));
    }
}
