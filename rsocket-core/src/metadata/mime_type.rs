//! Per-stream data MIME types.
//!
//! * `message/x.rsocket.mime-type.v0` (`0x7A`): exactly one MIME entry
//!   declaring the data MIME type of this stream's payloads.
//! * `message/x.rsocket.accept-mime-types.v0` (`0x7B`): a sequence of MIME
//!   entries the requester accepts for response data.
//!
//! Each entry is one byte `0x80 | id` for a well-known type, or `len − 1`
//! followed by a 1..=128-byte US-ASCII name.

use std::iter::FusedIterator;

use bytes::{Bytes, BytesMut};

use super::{EntryMime, MetadataError};

/// Encodes a `message/x.rsocket.mime-type.v0` value (one entry).
///
/// ```
/// use rsocket_core::metadata::{decode_mime_type, encode_mime_type, WellKnownMimeType};
///
/// let bytes = encode_mime_type(&WellKnownMimeType::ApplicationJson.into())?;
/// assert_eq!(&bytes[..], [0x85]);
/// assert_eq!(decode_mime_type(bytes)?.as_str(), Some("application/json"));
/// # Ok::<(), rsocket_core::metadata::MetadataError>(())
/// ```
pub fn encode_mime_type(mime: &EntryMime) -> Result<Bytes, MetadataError> {
    let mut buf = BytesMut::with_capacity(mime.encoded_len());
    mime.encode_into(&mut buf)?;
    Ok(buf.freeze())
}

/// Decodes a `message/x.rsocket.mime-type.v0` value. The input must hold
/// exactly one entry; leftovers are [`MetadataError::TrailingBytes`].
pub fn decode_mime_type(bytes: Bytes) -> Result<EntryMime, MetadataError> {
    let mut rest = bytes;
    let mime = EntryMime::decode(&mut rest, "data MIME type")?;
    if !rest.is_empty() {
        return Err(MetadataError::TrailingBytes {
            what: "data MIME type",
            count: rest.len(),
        });
    }
    Ok(mime)
}

/// Encodes a `message/x.rsocket.accept-mime-types.v0` value. An empty list
/// encodes to empty bytes.
pub fn encode_accept_mime_types<'a, I>(mimes: I) -> Result<Bytes, MetadataError>
where
    I: IntoIterator<Item = &'a EntryMime>,
{
    let mut buf = BytesMut::new();
    for mime in mimes {
        buf.reserve(mime.encoded_len());
        mime.encode_into(&mut buf)?;
    }
    Ok(buf.freeze())
}

/// An encoded accept list: a cheap wrapper that decodes lazily.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptMimeTypes(Bytes);

impl AcceptMimeTypes {
    /// Wraps an encoded accept list.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Iterates the entries; a malformed entry yields one error and ends
    /// the iteration.
    pub fn iter(&self) -> AcceptMimeTypesIter {
        AcceptMimeTypesIter {
            rest: self.0.clone(),
            failed: false,
        }
    }

    /// Decodes every entry, failing on the first malformed one.
    pub fn to_vec(&self) -> Result<Vec<EntryMime>, MetadataError> {
        self.iter().collect()
    }
}

impl From<Bytes> for AcceptMimeTypes {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl IntoIterator for &AcceptMimeTypes {
    type Item = Result<EntryMime, MetadataError>;
    type IntoIter = AcceptMimeTypesIter;

    fn into_iter(self) -> AcceptMimeTypesIter {
        self.iter()
    }
}

/// Iterator over an accept list; yields `Err` once and then `None` on
/// malformed input.
#[derive(Debug, Clone)]
pub struct AcceptMimeTypesIter {
    rest: Bytes,
    failed: bool,
}

impl Iterator for AcceptMimeTypesIter {
    type Item = Result<EntryMime, MetadataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = EntryMime::decode(&mut self.rest, "accepted MIME type");
        if result.is_err() {
            self.failed = true;
            self.rest = Bytes::new();
        }
        Some(result)
    }
}

impl FusedIterator for AcceptMimeTypesIter {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{CustomMime, WellKnownMimeType};
    use proptest::prelude::*;

    #[test]
    fn vector_data_mime() {
        let json = EntryMime::WellKnown(WellKnownMimeType::ApplicationJson);
        assert_eq!(&encode_mime_type(&json).unwrap()[..], [0x85]);
        assert_eq!(decode_mime_type(Bytes::from_static(&[0x85])), Ok(json));
    }

    #[test]
    fn vector_accept_list() {
        let list = vec![
            EntryMime::WellKnown(WellKnownMimeType::ApplicationJson),
            EntryMime::custom("text/x-a").unwrap(),
        ];
        let expected = [0x85, 0x07, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x78, 0x2d, 0x61];
        assert_eq!(&encode_accept_mime_types(&list).unwrap()[..], expected);
        let decoded = AcceptMimeTypes::new(Bytes::copy_from_slice(&expected))
            .to_vec()
            .unwrap();
        assert_eq!(decoded, list);
    }

    #[test]
    fn custom_data_mime() {
        let mime = EntryMime::Custom(CustomMime::new("application/x-mine").unwrap());
        let bytes = encode_mime_type(&mime).unwrap();
        assert_eq!(bytes[0], 17);
        assert_eq!(&bytes[1..], b"application/x-mine");
        assert_eq!(decode_mime_type(bytes), Ok(mime));
        assert_eq!(
            decode_mime_type(Bytes::from_static(&[0xF8])),
            Ok(EntryMime::UnknownReserved(120))
        );
    }

    #[test]
    fn data_mime_errors() {
        assert_eq!(
            decode_mime_type(Bytes::new()),
            Err(MetadataError::Truncated {
                what: "data MIME type",
                needed: 1,
                remaining: 0
            })
        );
        assert_eq!(
            decode_mime_type(Bytes::from_static(&[0x85, 0x85])),
            Err(MetadataError::TrailingBytes {
                what: "data MIME type",
                count: 1
            })
        );
        assert_eq!(
            decode_mime_type(Bytes::from_static(&[0x05, b'a'])),
            Err(MetadataError::Truncated {
                what: "data MIME type",
                needed: 6,
                remaining: 1
            })
        );
        assert_eq!(
            encode_mime_type(&EntryMime::UnknownReserved(0xFF)),
            Err(MetadataError::InvalidWellKnownId { id: 0xFF })
        );
    }

    #[test]
    fn accept_list_errors_are_fused() {
        let md = AcceptMimeTypes::new(Bytes::from_static(&[0x85, 0x01, b'a']));
        let mut it = md.iter();
        assert!(matches!(it.next(), Some(Ok(_))));
        assert!(matches!(
            it.next(),
            Some(Err(MetadataError::Truncated { .. }))
        ));
        assert_eq!(it.next(), None);
        assert!(md.to_vec().is_err());
        assert_eq!(AcceptMimeTypes::default().iter().next(), None);
        assert!(encode_accept_mime_types(&[]).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let input = Bytes::from(input);
            if let Ok(mime) = decode_mime_type(input.clone()) {
                prop_assert_eq!(encode_mime_type(&mime), Ok(input.clone()));
            }
            let list = AcceptMimeTypes::new(input.clone());
            prop_assert!(list.iter().filter(Result::is_err).count() <= 1);
            if let Ok(mimes) = list.to_vec() {
                prop_assert_eq!(encode_accept_mime_types(&mimes), Ok(input));
            }
        }

        #[test]
        fn accept_list_round_trip(names in proptest::collection::vec("[ -~]{1,128}", 0..6)) {
            let mimes: Vec<EntryMime> =
                names.iter().map(|n| EntryMime::parse(n).unwrap()).collect();
            let bytes = encode_accept_mime_types(&mimes).unwrap();
            prop_assert_eq!(AcceptMimeTypes::new(bytes).to_vec().unwrap(), mimes);
        }
    }
}
