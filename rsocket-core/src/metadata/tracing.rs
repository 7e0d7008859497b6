//! Zipkin tracing metadata (`message/x.rsocket.tracing-zipkin.v0`, id
//! `0x7D`).
//!
//! ```text
//! flags: I 0x80 ids present | D 0x40 debug | S 0x20 sampled
//!        N 0x10 not sampled | T 0x08 128-bit trace id | P 0x04 parent id
//! then, only if I: trace id (8 or 16 bytes, high half first), span id (8),
//!                  parent span id (8, only if P)
//! ```
//!
//! The two low flag bits are unused and dropped on decode; so are `T` and
//! `P` when `I` is clear. Bytes after the last field are an error.

use bytes::{BufMut, Bytes, BytesMut};

use super::MetadataError;

const FLAG_IDS: u8 = 0x80;
const FLAG_DEBUG: u8 = 0x40;
const FLAG_SAMPLED: u8 = 0x20;
const FLAG_NOT_SAMPLED: u8 = 0x10;
const FLAG_TRACE_128: u8 = 0x08;
const FLAG_PARENT: u8 = 0x04;

/// The sampling decision the flags express, after the spec's precedence
/// rules (debug beats sampled beats not-sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampling {
    /// `D` is set: sample and force debug.
    Debug,
    /// `S` is set (and `D` is not).
    Sampled,
    /// `N` is set (and neither `D` nor `S`).
    NotSampled,
    /// No sampling flag: the receiver decides.
    Undecided,
}

/// Trace, span and optional parent ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceIds {
    /// The trace id; must fit in 64 bits unless `trace_id_128` is set.
    pub trace_id: u128,
    /// Whether the trace id is sent as 128 bits (the `T` flag).
    pub trace_id_128: bool,
    /// The span id.
    pub span_id: u64,
    /// The parent span id (the `P` flag).
    pub parent_id: Option<u64>,
}

impl TraceIds {
    /// Ids with a 64-bit trace id and no parent.
    pub fn new_64(trace_id: u64, span_id: u64) -> Self {
        Self {
            trace_id: u128::from(trace_id),
            trace_id_128: false,
            span_id,
            parent_id: None,
        }
    }

    /// Ids with a 128-bit trace id and no parent.
    pub fn new_128(trace_id: u128, span_id: u64) -> Self {
        Self {
            trace_id,
            trace_id_128: true,
            span_id,
            parent_id: None,
        }
    }

    /// Sets the parent span id.
    pub fn with_parent(mut self, parent_id: u64) -> Self {
        self.parent_id = Some(parent_id);
        self
    }
}

/// Decoded (or to be encoded) Zipkin tracing metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZipkinTracing {
    /// The `D` flag.
    pub debug: bool,
    /// The `S` flag.
    pub sampled: bool,
    /// The `N` flag.
    pub not_sampled: bool,
    /// The ids; `None` clears the `I` flag and sends only the flags byte.
    pub ids: Option<TraceIds>,
}

impl ZipkinTracing {
    /// Flags only, marked not sampled (e.g. for a health check).
    pub fn not_sampled() -> Self {
        Self {
            not_sampled: true,
            ..Self::default()
        }
    }

    /// Sampled tracing with the given ids.
    pub fn sampled(ids: TraceIds) -> Self {
        Self {
            sampled: true,
            ids: Some(ids),
            ..Self::default()
        }
    }

    /// The sampling decision, applying "S ignored when D set; N ignored when
    /// S or D set".
    pub fn sampling(&self) -> Sampling {
        if self.debug {
            Sampling::Debug
        } else if self.sampled {
            Sampling::Sampled
        } else if self.not_sampled {
            Sampling::NotSampled
        } else {
            Sampling::Undecided
        }
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        let mut flags = 0;
        let mut set = |on: bool, bit: u8| {
            if on {
                flags |= bit;
            }
        };
        set(self.debug, FLAG_DEBUG);
        set(self.sampled, FLAG_SAMPLED);
        set(self.not_sampled, FLAG_NOT_SAMPLED);
        if let Some(ids) = &self.ids {
            set(true, FLAG_IDS);
            set(ids.trace_id_128, FLAG_TRACE_128);
            set(ids.parent_id.is_some(), FLAG_PARENT);
        }
        flags
    }

    /// Bytes this value takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match &self.ids {
            None => 1,
            Some(ids) => {
                let trace = if ids.trace_id_128 { 16 } else { 8 };
                let parent = if ids.parent_id.is_some() { 8 } else { 0 };
                1 + trace + 8 + parent
            }
        }
    }

    /// Checks that the value can be encoded: a 64-bit trace id must fit.
    pub fn validate(&self) -> Result<(), MetadataError> {
        match &self.ids {
            Some(ids) if !ids.trace_id_128 && ids.trace_id > u128::from(u64::MAX) => {
                Err(MetadataError::TraceIdTooWide)
            }
            _ => Ok(()),
        }
    }

    /// Appends the encoding to `buf`. Nothing is written when validation
    /// fails.
    pub fn encode_into<B: BufMut + ?Sized>(&self, buf: &mut B) -> Result<(), MetadataError> {
        self.validate()?;
        buf.put_u8(self.flags());
        if let Some(ids) = &self.ids {
            if ids.trace_id_128 {
                buf.put_u128(ids.trace_id);
            } else {
                let low = u64::try_from(ids.trace_id).map_err(|_| MetadataError::TraceIdTooWide)?;
                buf.put_u64(low);
            }
            buf.put_u64(ids.span_id);
            if let Some(parent) = ids.parent_id {
                buf.put_u64(parent);
            }
        }
        Ok(())
    }

    /// Encodes into a new buffer.
    pub fn encode(&self) -> Result<Bytes, MetadataError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Decodes tracing metadata.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetadataError> {
        let mut rest = bytes;
        let [flags] = take(&mut rest, "tracing flags")?;
        let mut out = Self {
            debug: flags & FLAG_DEBUG != 0,
            sampled: flags & FLAG_SAMPLED != 0,
            not_sampled: flags & FLAG_NOT_SAMPLED != 0,
            ids: None,
        };
        if flags & FLAG_IDS != 0 {
            let trace_id_128 = flags & FLAG_TRACE_128 != 0;
            let trace_id = if trace_id_128 {
                u128::from_be_bytes(take(&mut rest, "trace id")?)
            } else {
                u128::from(u64::from_be_bytes(take(&mut rest, "trace id")?))
            };
            let span_id = u64::from_be_bytes(take(&mut rest, "span id")?);
            let parent_id = if flags & FLAG_PARENT != 0 {
                Some(u64::from_be_bytes(take(&mut rest, "parent span id")?))
            } else {
                None
            };
            out.ids = Some(TraceIds {
                trace_id,
                trace_id_128,
                span_id,
                parent_id,
            });
        }
        if !rest.is_empty() {
            return Err(MetadataError::TrailingBytes {
                what: "tracing metadata",
                count: rest.len(),
            });
        }
        Ok(out)
    }
}

/// Reads `N` bytes off the front of `rest`.
fn take<const N: usize>(rest: &mut &[u8], what: &'static str) -> Result<[u8; N], MetadataError> {
    let truncated = || MetadataError::Truncated {
        what,
        needed: N,
        remaining: rest.len(),
    };
    let Some((head, tail)) = rest.split_at_checked(N) else {
        return Err(truncated());
    };
    let out = <[u8; N]>::try_from(head).map_err(|_| truncated())?;
    *rest = tail;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_vector(value: &ZipkinTracing, bytes: &[u8]) {
        assert_eq!(&value.encode().unwrap()[..], bytes);
        assert_eq!(value.encoded_len(), bytes.len());
        assert_eq!(ZipkinTracing::decode(bytes).as_ref(), Ok(value));
    }

    #[test]
    fn vector_64_bit_with_parent() {
        let value = ZipkinTracing::sampled(TraceIds::new_64(1, 2).with_parent(3));
        let mut bytes = vec![0xa4];
        for n in [1u64, 2, 3] {
            bytes.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(bytes.len(), 25);
        check_vector(&value, &bytes);
    }

    #[test]
    fn vector_128_bit() {
        let value = ZipkinTracing::sampled(TraceIds::new_128(0xA << 64 | 0xB, 2));
        let mut bytes = vec![0xa8];
        for n in [0xAu64, 0xB, 2] {
            bytes.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(bytes.len(), 25);
        check_vector(&value, &bytes);
    }

    #[test]
    fn vector_not_sampled() {
        check_vector(&ZipkinTracing::not_sampled(), &[0x10]);
    }

    #[test]
    fn each_flag_variant() {
        let none = ZipkinTracing::default();
        check_vector(&none, &[0x00]);
        assert_eq!(none.sampling(), Sampling::Undecided);
        let debug = ZipkinTracing {
            debug: true,
            ..none
        };
        check_vector(&debug, &[0x40]);
        assert_eq!(debug.sampling(), Sampling::Debug);
        let sampled = ZipkinTracing {
            sampled: true,
            ..none
        };
        check_vector(&sampled, &[0x20]);
        assert_eq!(sampled.sampling(), Sampling::Sampled);
        assert_eq!(
            ZipkinTracing::not_sampled().sampling(),
            Sampling::NotSampled
        );
        let all = ZipkinTracing {
            debug: true,
            sampled: true,
            not_sampled: true,
            ids: None,
        };
        check_vector(&all, &[0x70]);
        assert_eq!(all.sampling(), Sampling::Debug);
        let s_and_n = ZipkinTracing {
            debug: false,
            ..all
        };
        assert_eq!(s_and_n.sampling(), Sampling::Sampled);
    }

    #[test]
    fn id_shapes() {
        let ids64 = TraceIds::new_64(u64::MAX, 7);
        let ids128 = TraceIds::new_128(u128::MAX, 7);
        for (ids, flags, len) in [
            (ids64, 0x80, 17),
            (ids64.with_parent(9), 0x84, 25),
            (ids128, 0x88, 25),
            (ids128.with_parent(9), 0x8c, 33),
        ] {
            let value = ZipkinTracing {
                ids: Some(ids),
                ..ZipkinTracing::default()
            };
            let bytes = value.encode().unwrap();
            assert_eq!(bytes[0], flags);
            assert_eq!(bytes.len(), len);
            assert_eq!(ZipkinTracing::decode(&bytes), Ok(value));
        }
    }

    #[test]
    fn ignored_bits_are_dropped() {
        // Unused low bits, and T/P without I.
        assert_eq!(
            ZipkinTracing::decode(&[0x1F]),
            Ok(ZipkinTracing::not_sampled())
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            ZipkinTracing::decode(&[]),
            Err(MetadataError::Truncated {
                what: "tracing flags",
                needed: 1,
                remaining: 0
            })
        );
        assert_eq!(
            ZipkinTracing::decode(&[0x80, 0, 0, 0]),
            Err(MetadataError::Truncated {
                what: "trace id",
                needed: 8,
                remaining: 3
            })
        );
        assert_eq!(
            ZipkinTracing::decode(&[0x88; 9]),
            Err(MetadataError::Truncated {
                what: "trace id",
                needed: 16,
                remaining: 8
            })
        );
        assert_eq!(
            ZipkinTracing::decode(&[0x80; 12]),
            Err(MetadataError::Truncated {
                what: "span id",
                needed: 8,
                remaining: 3
            })
        );
        assert_eq!(
            ZipkinTracing::decode(&[0x84; 17]),
            Err(MetadataError::Truncated {
                what: "parent span id",
                needed: 8,
                remaining: 0
            })
        );
        assert_eq!(
            ZipkinTracing::decode(&[0x10, 0x00]),
            Err(MetadataError::TrailingBytes {
                what: "tracing metadata",
                count: 1
            })
        );
        let wide = ZipkinTracing {
            ids: Some(TraceIds {
                trace_id: 1 << 64,
                trace_id_128: false,
                span_id: 0,
                parent_id: None,
            }),
            ..ZipkinTracing::default()
        };
        assert_eq!(wide.encode(), Err(MetadataError::TraceIdTooWide));
    }

    fn arb_tracing() -> impl Strategy<Value = ZipkinTracing> {
        let ids = (
            any::<bool>(),
            any::<u128>(),
            any::<u64>(),
            any::<Option<u64>>(),
        )
            .prop_map(|(wide, trace, span_id, parent_id)| TraceIds {
                trace_id: if wide {
                    trace
                } else {
                    trace & u128::from(u64::MAX)
                },
                trace_id_128: wide,
                span_id,
                parent_id,
            });
        (any::<[bool; 3]>(), proptest::option::of(ids)).prop_map(|([d, s, n], ids)| ZipkinTracing {
            debug: d,
            sampled: s,
            not_sampled: n,
            ids,
        })
    }

    proptest! {
        #[test]
        fn round_trip(value in arb_tracing()) {
            let bytes = value.encode().unwrap();
            prop_assert_eq!(bytes.len(), value.encoded_len());
            prop_assert_eq!(ZipkinTracing::decode(&bytes), Ok(value));
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(value) = ZipkinTracing::decode(&input) {
                let again = value.encode().unwrap();
                prop_assert_eq!(ZipkinTracing::decode(&again), Ok(value));
            }
        }
    }
}
