//! Routing metadata (`message/x.rsocket.routing.v0`, id `0x7E`): a sequence
//! of tags, each a `u8` length followed by 1..=255 bytes of UTF-8.
//!
//! The encoder rejects empty tags, tags over 255 bytes and tags containing
//! NUL (the spec forbids NUL). The decoder rejects a zero length byte, short
//! input and invalid UTF-8, but tolerates NUL inside a tag.

use std::iter::FusedIterator;

use bytes::{BufMut, Bytes, BytesMut};

use super::{take, take_u8, MetadataError, Utf8Bytes};

/// Longest routing tag in bytes.
pub const MAX_TAG_LEN: usize = 255;

/// One routing tag: UTF-8 text, a zero-copy slice when decoded.
pub type RoutingTag = Utf8Bytes;

/// Routing metadata: a cheap wrapper around the encoded tag list.
///
/// ```
/// use rsocket_core::metadata::RoutingMetadata;
///
/// let bytes = RoutingMetadata::encode(["hello"])?;
/// assert_eq!(&bytes[..], b"\x05hello");
/// let tags = RoutingMetadata::new(bytes).to_vec()?;
/// assert_eq!(tags, ["hello"]);
/// # Ok::<(), rsocket_core::metadata::MetadataError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingMetadata(Bytes);

impl RoutingMetadata {
    /// Wraps encoded routing metadata.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// Checks that `tag` can be encoded: 1..=255 bytes and no NUL.
    pub fn check_tag(tag: &str) -> Result<(), MetadataError> {
        match tag.len() {
            0 => Err(MetadataError::EmptyTag),
            len if len > MAX_TAG_LEN => Err(MetadataError::TagTooLong { len }),
            _ if tag.as_bytes().contains(&0) => Err(MetadataError::TagContainsNul),
            _ => Ok(()),
        }
    }

    /// Encodes a list of tags. Any number of tags (including none) is
    /// allowed; the first invalid tag fails the whole call.
    pub fn encode<I, T>(tags: I) -> Result<Bytes, MetadataError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut buf = BytesMut::new();
        for tag in tags {
            let tag = tag.as_ref();
            Self::check_tag(tag)?;
            let len = u8::try_from(tag.len())
                .map_err(|_| MetadataError::TagTooLong { len: tag.len() })?;
            buf.reserve(1 + tag.len());
            buf.put_u8(len);
            buf.put_slice(tag.as_bytes());
        }
        Ok(buf.freeze())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the raw bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Iterates the tags. A malformed tag yields one error and ends the
    /// iteration.
    pub fn iter(&self) -> RoutingIter {
        RoutingIter::new(self.0.clone())
    }

    /// Decodes every tag, failing on the first malformed one.
    pub fn to_vec(&self) -> Result<Vec<RoutingTag>, MetadataError> {
        self.iter().collect()
    }
}

impl From<Bytes> for RoutingMetadata {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl IntoIterator for RoutingMetadata {
    type Item = Result<RoutingTag, MetadataError>;
    type IntoIter = RoutingIter;

    fn into_iter(self) -> RoutingIter {
        RoutingIter::new(self.0)
    }
}

impl IntoIterator for &RoutingMetadata {
    type Item = Result<RoutingTag, MetadataError>;
    type IntoIter = RoutingIter;

    fn into_iter(self) -> RoutingIter {
        self.iter()
    }
}

/// Iterator over routing tags; yields `Err` once and then `None` on
/// malformed input.
#[derive(Debug, Clone)]
pub struct RoutingIter {
    rest: Bytes,
    failed: bool,
}

impl RoutingIter {
    /// Iterates the tags in `bytes`.
    pub fn new(bytes: Bytes) -> Self {
        Self {
            rest: bytes,
            failed: false,
        }
    }

    fn decode_tag(&mut self) -> Result<RoutingTag, MetadataError> {
        let len = take_u8(&mut self.rest, "routing tag length")?;
        if len == 0 {
            return Err(MetadataError::EmptyTag);
        }
        let tag = take(&mut self.rest, usize::from(len), "routing tag")?;
        Utf8Bytes::validate(tag, "routing tag")
    }
}

impl Iterator for RoutingIter {
    type Item = Result<RoutingTag, MetadataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = self.decode_tag();
        if result.is_err() {
            self.failed = true;
            self.rest = Bytes::new();
        }
        Some(result)
    }
}

impl FusedIterator for RoutingIter {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vector_hello() {
        let bytes = RoutingMetadata::encode(["hello"]).unwrap();
        assert_eq!(&bytes[..], &[0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f]);
        let tags = RoutingMetadata::new(bytes).to_vec().unwrap();
        assert_eq!(tags, ["hello"]);
    }

    #[test]
    fn several_tags_and_none() {
        let bytes = RoutingMetadata::encode(vec!["a".to_string(), "bc".into()]).unwrap();
        assert_eq!(&bytes[..], b"\x01a\x02bc");
        let md = RoutingMetadata::new(bytes);
        assert_eq!(md.to_vec().unwrap(), ["a", "bc"]);
        assert_eq!((&md).into_iter().count(), 2);
        assert_eq!(md.into_iter().count(), 2);
        let empty = RoutingMetadata::encode(Vec::<&str>::new()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(RoutingMetadata::new(empty).iter().next(), None);
    }

    #[test]
    fn tag_limits() {
        let max = "t".repeat(255);
        let bytes = RoutingMetadata::encode([max.as_str()]).unwrap();
        assert_eq!(bytes[0], 0xFF);
        assert_eq!(
            RoutingMetadata::new(bytes).to_vec().unwrap(),
            [max.as_str()]
        );
        assert_eq!(
            RoutingMetadata::encode(["ok", ""]),
            Err(MetadataError::EmptyTag)
        );
        assert_eq!(
            RoutingMetadata::encode(["t".repeat(256)]),
            Err(MetadataError::TagTooLong { len: 256 })
        );
        assert_eq!(
            RoutingMetadata::encode(["a\0b"]),
            Err(MetadataError::TagContainsNul)
        );
    }

    #[test]
    fn malformed_input() {
        let cases: &[(&[u8], MetadataError)] = &[
            (&[0x00], MetadataError::EmptyTag),
            (
                &[0x03, b'a'],
                MetadataError::Truncated {
                    what: "routing tag",
                    needed: 3,
                    remaining: 1,
                },
            ),
            (
                &[0x01, 0xFF],
                MetadataError::InvalidUtf8 {
                    what: "routing tag",
                },
            ),
        ];
        for (bytes, err) in cases {
            let mut input = b"\x02ok".to_vec();
            input.extend_from_slice(bytes);
            let mut it = RoutingMetadata::new(input).iter();
            assert_eq!(it.next(), Some(Ok(RoutingTag::from("ok"))));
            assert_eq!(it.next(), Some(Err(err.clone())));
            assert_eq!(it.next(), None);
        }
        // NUL is tolerated on decode.
        assert_eq!(
            RoutingMetadata::new(Bytes::from_static(b"\x01\0"))
                .to_vec()
                .unwrap(),
            ["\0"]
        );
    }

    proptest! {
        #[test]
        fn round_trip(tags in proptest::collection::vec("[^\\x00]{1,60}", 0..6)) {
            let bytes = RoutingMetadata::encode(&tags).unwrap();
            let decoded = RoutingMetadata::new(bytes).to_vec().unwrap();
            prop_assert_eq!(decoded, tags);
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let md = RoutingMetadata::new(input);
            let results: Vec<_> = md.iter().collect();
            prop_assert!(results.iter().filter(|r| r.is_err()).count() <= 1);
            if let Ok(tags) = md.to_vec() {
                if tags.iter().all(|t| RoutingMetadata::check_tag(t).is_ok()) {
                    let again = RoutingMetadata::encode(&tags).unwrap();
                    prop_assert_eq!(&again, md.as_bytes());
                }
            }
        }
    }
}
