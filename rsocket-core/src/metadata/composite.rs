//! Composite metadata (`message/x.rsocket.composite-metadata.v0`, id `0x7F`):
//! a sequence of `[MIME header][u24 length][content]` entries.
//!
//! ```text
//! +-+-------------+-----------------+-----------------+---------+
//! |M| id or len-1 | MIME name (M=0) | content len u24 | content |
//! +-+-------------+-----------------+-----------------+---------+
//! ```
//!
//! Entry order is preserved and the same MIME type may appear more than once.

use std::iter::FusedIterator;

use bytes::{BufMut, Bytes, BytesMut};

use super::{take, take_array, EntryMime, MetadataError, WellKnownMimeType};

/// Largest entry content: the length field is 24 bits.
pub const MAX_ENTRY_CONTENT_LEN: usize = 0xFF_FFFF;

/// One composite metadata entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositeEntry {
    /// The MIME type of `content`.
    pub mime: EntryMime,
    /// The entry's metadata; a zero-copy slice when decoded.
    pub content: Bytes,
}

impl CompositeEntry {
    /// Creates an entry.
    pub fn new(mime: impl Into<EntryMime>, content: impl Into<Bytes>) -> Self {
        Self {
            mime: mime.into(),
            content: content.into(),
        }
    }

    /// Bytes this entry takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.mime.encoded_len() + 3 + self.content.len()
    }

    /// Checks that the entry can be encoded.
    pub fn validate(&self) -> Result<(), MetadataError> {
        self.mime.validate()?;
        if self.content.len() > MAX_ENTRY_CONTENT_LEN {
            return Err(MetadataError::ContentTooLong {
                len: self.content.len(),
            });
        }
        Ok(())
    }

    /// Appends the entry to `buf`. Nothing is written when validation fails.
    pub fn encode_into<B: BufMut + ?Sized>(&self, buf: &mut B) -> Result<(), MetadataError> {
        self.validate()?;
        self.mime.encode_into(buf)?;
        put_u24(buf, self.content.len());
        buf.put_slice(&self.content);
        Ok(())
    }

    /// Reads one entry off the front of `buf`.
    fn decode(buf: &mut Bytes) -> Result<Self, MetadataError> {
        let mime = EntryMime::decode(buf, "composite entry MIME type")?;
        let [a, b, c] = take_array::<3>(buf, "composite entry length")?;
        let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
        let content = take(buf, len, "composite entry content")?;
        Ok(Self { mime, content })
    }
}

/// Writes the low 24 bits of `len` big-endian; callers check the range.
fn put_u24<B: BufMut + ?Sized>(buf: &mut B, len: usize) {
    let [_, _, _, _, _, a, b, c] = u64::try_from(len).unwrap_or(u64::MAX).to_be_bytes();
    buf.put_slice(&[a, b, c]);
}

/// Composite metadata received from a peer (or built locally).
///
/// A cheap wrapper around the raw bytes; nothing is parsed until iterated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompositeMetadata(Bytes);

impl CompositeMetadata {
    /// Wraps raw composite metadata bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// Starts building composite metadata.
    pub fn builder() -> CompositeMetadataBuilder {
        CompositeMetadataBuilder::new()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the raw bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Iterates the entries. A malformed entry yields one error and ends
    /// the iteration.
    pub fn iter(&self) -> CompositeIter {
        CompositeIter::new(self.0.clone())
    }

    /// Decodes every entry, failing on the first malformed one.
    pub fn to_vec(&self) -> Result<Vec<CompositeEntry>, MetadataError> {
        self.iter().collect()
    }

    /// The content of the first entry with the well-known type `mime`.
    ///
    /// Entries are scanned in order; a malformed entry before the match is
    /// an error, one after it is not looked at.
    pub fn find(&self, mime: WellKnownMimeType) -> Result<Option<Bytes>, MetadataError> {
        for entry in self.iter() {
            let entry = entry?;
            if entry.mime == EntryMime::WellKnown(mime) {
                return Ok(Some(entry.content));
            }
        }
        Ok(None)
    }

    /// Every entry with the well-known type `mime`, in order.
    pub fn find_all(&self, mime: WellKnownMimeType) -> Result<Vec<Bytes>, MetadataError> {
        let mut out = Vec::new();
        for entry in self.iter() {
            let entry = entry?;
            if entry.mime == EntryMime::WellKnown(mime) {
                out.push(entry.content);
            }
        }
        Ok(out)
    }
}

impl From<Bytes> for CompositeMetadata {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl IntoIterator for CompositeMetadata {
    type Item = Result<CompositeEntry, MetadataError>;
    type IntoIter = CompositeIter;

    fn into_iter(self) -> CompositeIter {
        CompositeIter::new(self.0)
    }
}

impl IntoIterator for &CompositeMetadata {
    type Item = Result<CompositeEntry, MetadataError>;
    type IntoIter = CompositeIter;

    fn into_iter(self) -> CompositeIter {
        self.iter()
    }
}

/// Iterator over composite metadata entries; content is sliced, not copied.
///
/// Yields `Err` once for a malformed entry and then `None` forever.
#[derive(Debug, Clone)]
pub struct CompositeIter {
    rest: Bytes,
    failed: bool,
}

impl CompositeIter {
    /// Iterates the entries in `bytes`.
    pub fn new(bytes: Bytes) -> Self {
        Self {
            rest: bytes,
            failed: false,
        }
    }

    /// The bytes not yet consumed.
    pub fn remaining(&self) -> &Bytes {
        &self.rest
    }
}

impl Iterator for CompositeIter {
    type Item = Result<CompositeEntry, MetadataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = CompositeEntry::decode(&mut self.rest);
        if result.is_err() {
            self.failed = true;
            self.rest = Bytes::new();
        }
        Some(result)
    }
}

impl FusedIterator for CompositeIter {}

/// Builds composite metadata by appending entries in order.
///
/// ```
/// use rsocket_core::metadata::{CompositeMetadata, WellKnownMimeType};
///
/// let mut b = CompositeMetadata::builder();
/// b.push_well_known(WellKnownMimeType::ApplicationJson, "{}")?
///     .push_custom("x/y", "ab")?;
/// assert_eq!(&b.build()[..], b"\x85\x00\x00\x02{}\x02x/y\x00\x00\x02ab");
/// # Ok::<(), rsocket_core::metadata::MetadataError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CompositeMetadataBuilder {
    buf: BytesMut,
}

impl CompositeMetadataBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry. Fails (appending nothing) for content over
    /// 16 MiB − 1 or a reserved id above `0x7F`.
    pub fn push(
        &mut self,
        mime: impl Into<EntryMime>,
        content: impl Into<Bytes>,
    ) -> Result<&mut Self, MetadataError> {
        self.push_entry(&CompositeEntry::new(mime, content))
    }

    /// Appends an entry with a well-known MIME type.
    pub fn push_well_known(
        &mut self,
        mime: WellKnownMimeType,
        content: impl Into<Bytes>,
    ) -> Result<&mut Self, MetadataError> {
        self.push(mime, content)
    }

    /// Appends an entry with a custom MIME type string (1..=128 ASCII
    /// bytes), written out even if it is in the well-known table.
    pub fn push_custom(
        &mut self,
        mime: &str,
        content: impl Into<Bytes>,
    ) -> Result<&mut Self, MetadataError> {
        let mime = EntryMime::custom(mime)?;
        self.push(mime, content)
    }

    /// Appends an already built entry.
    pub fn push_entry(&mut self, entry: &CompositeEntry) -> Result<&mut Self, MetadataError> {
        entry.validate()?;
        self.buf.reserve(entry.encoded_len());
        entry.encode_into(&mut self.buf)?;
        Ok(self)
    }

    /// Bytes written so far.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no entry has been pushed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded metadata.
    pub fn build(self) -> Bytes {
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{CustomMime, RoutingMetadata};
    use proptest::prelude::*;

    const ROUTING_ENTRY: &[u8] = &[0xfe, 0x00, 0x00, 0x06, 0x05, b'h', b'e', b'l', b'l', b'o'];
    const CUSTOM_ENTRY: &[u8] = &[0x02, b'x', b'/', b'y', 0x00, 0x00, 0x02, b'a', b'b'];

    fn routing_entry() -> CompositeEntry {
        CompositeEntry::new(
            WellKnownMimeType::MessageRSocketRouting,
            Bytes::from_static(b"\x05hello"),
        )
    }

    fn custom_entry() -> CompositeEntry {
        CompositeEntry::new(CustomMime::new("x/y").unwrap(), Bytes::from_static(b"ab"))
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<CompositeEntry, MetadataError>> {
        CompositeMetadata::new(Bytes::copy_from_slice(bytes))
            .iter()
            .collect()
    }

    #[test]
    fn vector_routing_entry() {
        let route = RoutingMetadata::encode(["hello"]).unwrap();
        let mut b = CompositeMetadata::builder();
        b.push_well_known(WellKnownMimeType::MessageRSocketRouting, route)
            .unwrap();
        assert_eq!(&b.build()[..], ROUTING_ENTRY);
        assert_eq!(decode_all(ROUTING_ENTRY), vec![Ok(routing_entry())]);
    }

    #[test]
    fn vector_custom_entry() {
        let mut b = CompositeMetadata::builder();
        b.push_custom("x/y", "ab").unwrap();
        assert_eq!(&b.build()[..], CUSTOM_ENTRY);
        assert_eq!(decode_all(CUSTOM_ENTRY), vec![Ok(custom_entry())]);
    }

    #[test]
    fn vector_both_entries() {
        let both = [ROUTING_ENTRY, CUSTOM_ENTRY].concat();
        let mut b = CompositeMetadata::builder();
        b.push_entry(&routing_entry())
            .unwrap()
            .push_entry(&custom_entry())
            .unwrap();
        assert_eq!(b.encoded_len(), both.len());
        assert_eq!(&b.build()[..], &both[..]);
        assert_eq!(
            decode_all(&both),
            vec![Ok(routing_entry()), Ok(custom_entry())]
        );
    }

    #[test]
    fn content_is_zero_copy() {
        let input = Bytes::from([ROUTING_ENTRY, CUSTOM_ENTRY].concat());
        let range = input.as_ptr_range();
        for entry in CompositeMetadata::new(input).iter() {
            let content = entry.unwrap().content;
            assert!(range.contains(&content.as_ptr()));
        }
    }

    #[test]
    fn custom_mime_lengths_round_trip() {
        for len in [1usize, 2, 127, 128] {
            let name = "m".repeat(len);
            let mut b = CompositeMetadata::builder();
            b.push_custom(&name, "c").unwrap();
            let bytes = b.build();
            assert_eq!(bytes[0], u8::try_from(len - 1).unwrap());
            assert_eq!(bytes.len(), 1 + len + 3 + 1);
            let entries = CompositeMetadata::new(bytes).to_vec().unwrap();
            assert_eq!(entries[0].mime.as_str(), Some(name.as_str()));
            assert_eq!(entries[0].content, "c");
        }
    }

    #[test]
    fn custom_mime_rejected() {
        let mut b = CompositeMetadata::builder();
        assert_eq!(
            b.push_custom("", "c").err(),
            Some(MetadataError::InvalidMimeTypeLength { len: 0 })
        );
        assert_eq!(
            b.push_custom(&"m".repeat(129), "c").err(),
            Some(MetadataError::InvalidMimeTypeLength { len: 129 })
        );
        assert_eq!(
            b.push_custom("tëxt/plain", "c").err(),
            Some(MetadataError::NonAsciiMimeType)
        );
        assert!(b.is_empty());
    }

    #[test]
    fn well_known_extremes_and_reserved() {
        let mut b = CompositeMetadata::builder();
        b.push_well_known(WellKnownMimeType::ApplicationAvro, "a")
            .unwrap()
            .push_well_known(WellKnownMimeType::MessageRSocketCompositeMetadata, "b")
            .unwrap()
            .push(EntryMime::UnknownReserved(120), "c")
            .unwrap();
        let bytes = b.build();
        assert_eq!(
            &bytes[..],
            b"\x80\x00\x00\x01a\xff\x00\x00\x01b\xf8\x00\x00\x01c"
        );
        let mimes: Vec<_> = CompositeMetadata::new(bytes)
            .iter()
            .map(|e| e.unwrap().mime)
            .collect();
        use WellKnownMimeType as W;
        let expected = [W::ApplicationAvro, W::MessageRSocketCompositeMetadata];
        assert_eq!(mimes[..2], expected.map(EntryMime::WellKnown));
        assert_eq!(mimes[2], EntryMime::UnknownReserved(120));
    }

    #[test]
    fn three_entries_and_find() {
        let mut b = CompositeMetadata::builder();
        b.push_well_known(WellKnownMimeType::TextPlain, "one")
            .unwrap()
            .push_custom("application/x-two", "two")
            .unwrap()
            .push_well_known(WellKnownMimeType::TextPlain, "three")
            .unwrap();
        let md = CompositeMetadata::new(b.build());
        let contents: Vec<_> = md.iter().map(|e| e.unwrap().content).collect();
        assert_eq!(contents, ["one", "two", "three"]);
        assert_eq!(
            md.find(WellKnownMimeType::TextPlain),
            Ok(Some(Bytes::from("one")))
        );
        assert_eq!(md.find(WellKnownMimeType::ApplicationJson), Ok(None));
        assert_eq!(
            md.find_all(WellKnownMimeType::TextPlain).unwrap(),
            ["one", "three"]
        );
        assert_eq!((&md).into_iter().count(), 3);
        assert_eq!(md.into_iter().count(), 3);
    }

    #[test]
    fn truncated_entries_fail_then_stop() {
        let (mime, len, content) = (
            "composite entry MIME type",
            "composite entry length",
            "composite entry content",
        );
        let cases: &[(&[u8], &str, usize, usize)] = &[
            (&[0x02, b'x'], mime, 3, 1),
            (&[0x85], len, 3, 0),
            (&[0x85, 0x00, 0x00], len, 3, 2),
            (&[0x85, 0x00, 0x00, 0x05, b'a'], content, 5, 1),
            (&[0x85, 0xff, 0xff, 0xff], content, 0xFF_FFFF, 0),
        ];
        for &(bytes, what, needed, remaining) in cases {
            let mut it = CompositeMetadata::new(Bytes::copy_from_slice(bytes)).iter();
            assert_eq!(
                it.next(),
                Some(Err(MetadataError::Truncated {
                    what,
                    needed,
                    remaining
                }))
            );
            assert_eq!(it.next(), None);
            assert_eq!(it.next(), None);
        }
        // A good entry followed by a truncated one.
        let bytes = [ROUTING_ENTRY, &[0x85, 0x00]].concat();
        let results = decode_all(&bytes);
        assert_eq!(results.len(), 2);
        assert_eq!(results[0], Ok(routing_entry()));
        assert!(results[1].is_err());
        let md = CompositeMetadata::new(Bytes::from(bytes));
        assert!(md.to_vec().is_err());
        assert_eq!(
            md.find(WellKnownMimeType::MessageRSocketRouting),
            Ok(Some(Bytes::from_static(b"\x05hello")))
        );
        assert!(md.find(WellKnownMimeType::TextPlain).is_err());
    }

    #[test]
    fn edge_inputs() {
        assert!(decode_all(&[]).is_empty());
        let empty = CompositeEntry::new(WellKnownMimeType::ApplicationJson, Bytes::new());
        assert_eq!(decode_all(&[0x85, 0, 0, 0]), vec![Ok(empty)]);
        let non_ascii = decode_all(&[0x00, 0xE9, 0x00, 0x00, 0x00]);
        assert_eq!(non_ascii, vec![Err(MetadataError::NonAsciiMimeType)]);
    }

    #[test]
    fn content_length_limit() {
        let mut b = CompositeMetadata::builder();
        let too_long = vec![0u8; MAX_ENTRY_CONTENT_LEN + 1];
        let err = MetadataError::ContentTooLong {
            len: too_long.len(),
        };
        assert_eq!(b.push_custom("a", too_long).err(), Some(err));
        assert!(b.is_empty());
        b.push_custom("a", vec![7u8; MAX_ENTRY_CONTENT_LEN])
            .unwrap();
        let bytes = b.build();
        assert_eq!(&bytes[..5], &[0x00, b'a', 0xff, 0xff, 0xff]);
        let entries = CompositeMetadata::new(bytes).to_vec().unwrap();
        assert_eq!(entries[0].content.len(), MAX_ENTRY_CONTENT_LEN);
    }

    fn arb_mime() -> impl Strategy<Value = EntryMime> {
        prop_oneof![
            proptest::sample::select(WellKnownMimeType::ALL).prop_map(EntryMime::WellKnown),
            (0x2Bu8..=0x79).prop_map(EntryMime::UnknownReserved),
            "[ -~]{1,128}".prop_map(|s| EntryMime::custom(&s).unwrap()),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = CompositeEntry> {
        (arb_mime(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(m, c)| CompositeEntry::new(m, c))
    }

    proptest! {
        #[test]
        fn built_entries_iterate_back(entries in proptest::collection::vec(arb_entry(), 0..8)) {
            let mut b = CompositeMetadata::builder();
            for e in &entries {
                b.push_entry(e).unwrap();
            }
            let expected_len: usize = entries.iter().map(CompositeEntry::encoded_len).sum();
            prop_assert_eq!(b.encoded_len(), expected_len);
            let decoded = CompositeMetadata::new(b.build()).to_vec().unwrap();
            prop_assert_eq!(decoded, entries);
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let md = CompositeMetadata::new(input);
            let results: Vec<_> = md.iter().collect();
            let errors = results.iter().filter(|r| r.is_err()).count();
            prop_assert!(errors <= 1);
            if errors == 1 {
                prop_assert!(results.last().is_some_and(Result::is_err));
            }
            let _ = md.find(WellKnownMimeType::MessageRSocketRouting);
            if let Ok(entries) = md.to_vec() {
                let mut b = CompositeMetadata::builder();
                for e in &entries {
                    b.push_entry(e).unwrap();
                }
                let bytes = b.build();
                // Every encoding is canonical, so the bytes come back unchanged.
                prop_assert_eq!(&bytes, md.as_bytes());
                let again = CompositeMetadata::new(bytes).to_vec().unwrap();
                prop_assert_eq!(again, entries);
            }
        }
    }
}
