//! RSocket metadata extensions: well-known MIME types, composite metadata,
//! routing, authentication, per-stream data MIME types and Zipkin tracing.
//!
//! Every extension here is "incubating, version 0" in the RSocket spec. The
//! codecs work on [`bytes::Bytes`] and are zero-copy on decode: every decoded
//! string or content field is a [`Bytes::slice`]-style view of the input.
//!
//! | Extension | MIME id | Types |
//! |---|---|---|
//! | Composite metadata | `0x7F` | [`CompositeMetadata`], [`CompositeMetadataBuilder`], [`CompositeEntry`] |
//! | Routing | `0x7E` | [`RoutingMetadata`], [`RoutingTag`] |
//! | Zipkin tracing | `0x7D` | [`ZipkinTracing`], [`TraceIds`] |
//! | Authentication | `0x7C` | [`Authentication`], [`CustomAuthType`] |
//! | Accept MIME types | `0x7B` | [`encode_accept_mime_types`], [`AcceptMimeTypes`] |
//! | Data MIME type | `0x7A` | [`encode_mime_type`], [`decode_mime_type`] |
//!
//! # Invariants
//!
//! * **No decoder panics.** Every length read from the wire is checked
//!   against the remaining input before the input is split; a short input is
//!   reported as [`MetadataError::Truncated`] with the byte counts.
//! * **Custom names use "length − 1".** A custom MIME type or custom auth
//!   type is 1..=128 US-ASCII bytes and its length is written as `len − 1`
//!   in the low 7 bits of the header byte, like rsocket-java and rsocket-js.
//! * **Unknown well-known ids are not errors.** A header byte `0x80 | id`
//!   whose id is not in the table decodes as [`EntryMime::UnknownReserved`]
//!   so that a composite entry can be skipped rather than failing the whole
//!   metadata.
//! * **Validated newtypes.** [`CustomMime`] and [`CustomAuthType`] always
//!   hold 1..=128 ASCII bytes, and [`Utf8Bytes`] always holds UTF-8, so
//!   encoders only need to check the lengths that depend on context.
//! * **Iterators are fused.** After yielding an error, the composite,
//!   routing and accept-list iterators return `None`.
//!
//! # Example
//!
//! ```
//! use rsocket_core::metadata::{CompositeMetadata, RoutingMetadata, WellKnownMimeType};
//!
//! let route = RoutingMetadata::encode(["greeter.hello"])?;
//! let mut builder = CompositeMetadata::builder();
//! builder.push_well_known(WellKnownMimeType::MessageRSocketRouting, route)?;
//! builder.push_custom("x/trace-id", "abc")?;
//! let metadata = CompositeMetadata::new(builder.build());
//!
//! let route = metadata
//!     .find(WellKnownMimeType::MessageRSocketRouting)?
//!     .expect("routing entry present");
//! let tags = RoutingMetadata::new(route).to_vec()?;
//! assert_eq!(tags[0].as_str(), "greeter.hello");
//! # Ok::<(), rsocket_core::metadata::MetadataError>(())
//! ```

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

mod auth;
mod composite;
mod mime;
mod mime_type;
mod routing;
mod tracing;

pub use self::auth::{Authentication, CustomAuthType};
pub use self::composite::{
    CompositeEntry, CompositeIter, CompositeMetadata, CompositeMetadataBuilder,
    MAX_ENTRY_CONTENT_LEN,
};
pub use self::mime::{CustomMime, EntryMime, WellKnownMimeType, MAX_CUSTOM_NAME_LEN};
pub use self::mime_type::{
    decode_mime_type, encode_accept_mime_types, encode_mime_type, AcceptMimeTypes,
    AcceptMimeTypesIter,
};
pub use self::routing::{RoutingIter, RoutingMetadata, RoutingTag, MAX_TAG_LEN};
pub use self::tracing::{Sampling, TraceIds, ZipkinTracing};

/// Everything that can go wrong while encoding or decoding a metadata
/// extension.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The input ended before a field was complete.
    #[error("truncated {what}: needed {needed} bytes, {remaining} remaining")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left in the input.
        remaining: usize,
    },
    /// A custom MIME type is empty or longer than 128 bytes.
    #[error("custom MIME type must be 1..=128 bytes, got {len}")]
    InvalidMimeTypeLength {
        /// The offending length in bytes.
        len: usize,
    },
    /// A custom MIME type contains a byte outside US-ASCII.
    #[error("custom MIME type is not US-ASCII")]
    NonAsciiMimeType,
    /// A custom authentication type is empty or longer than 128 bytes.
    #[error("custom auth type must be 1..=128 bytes, got {len}")]
    InvalidAuthTypeLength {
        /// The offending length in bytes.
        len: usize,
    },
    /// A custom authentication type contains a byte outside US-ASCII.
    #[error("custom auth type is not US-ASCII")]
    NonAsciiAuthType,
    /// A "well-known" id above `0x7F` was given to an encoder; only 7 bits
    /// are available.
    #[error("well-known id {id:#04x} does not fit in 7 bits")]
    InvalidWellKnownId {
        /// The offending id.
        id: u8,
    },
    /// A string is not the name of a well-known MIME type.
    #[error("{name:?} is not a well-known MIME type")]
    UnknownMimeTypeName {
        /// The string that was looked up.
        name: String,
    },
    /// Composite entry content does not fit in the 24-bit length field.
    #[error("composite entry content is {len} bytes, the limit is 16777215")]
    ContentTooLong {
        /// The content length in bytes.
        len: usize,
    },
    /// A routing tag is empty.
    #[error("routing tag is empty")]
    EmptyTag,
    /// A routing tag is longer than 255 bytes.
    #[error("routing tag is {len} bytes, the limit is 255")]
    TagTooLong {
        /// The tag length in bytes.
        len: usize,
    },
    /// A routing tag to be encoded contains a NUL byte.
    #[error("routing tag contains a NUL byte")]
    TagContainsNul,
    /// A simple-auth username is longer than 65535 bytes.
    #[error("username is {len} bytes, the limit is 65535")]
    UsernameTooLong {
        /// The username length in bytes.
        len: usize,
    },
    /// A field that must be UTF-8 is not.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field that failed validation.
        what: &'static str,
    },
    /// Bytes were left over after a value that must fill the whole input.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes {
        /// The value that was decoded.
        what: &'static str,
        /// The number of bytes left over.
        count: usize,
    },
    /// A trace id marked as 64-bit does not fit in 64 bits.
    #[error("trace id does not fit in 64 bits but the 128-bit flag is not set")]
    TraceIdTooWide,
}

/// Immutable bytes that are known to be valid UTF-8.
///
/// Decoders hand these out as zero-copy views of the input; build one from a
/// `&str`, a `String` or (checked) from [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps a static string without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Checks that `bytes` is UTF-8 and wraps it; `what` names the field in
    /// the error.
    pub(super) fn validate(bytes: Bytes, what: &'static str) -> Result<Self, MetadataError> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            Err(_) => Err(MetadataError::InvalidUtf8 { what }),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // The constructor validated the bytes, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Unwraps the underlying [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = MetadataError;

    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        Self::validate(bytes, "text")
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(s: Utf8Bytes) -> Self {
        s.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Splits `n` bytes off the front of `buf`, or reports how short it is.
fn take(buf: &mut Bytes, n: usize, what: &'static str) -> Result<Bytes, MetadataError> {
    if buf.len() < n {
        return Err(MetadataError::Truncated {
            what,
            needed: n,
            remaining: buf.len(),
        });
    }
    Ok(buf.split_to(n))
}

/// Reads one byte off the front of `buf`.
fn take_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, MetadataError> {
    let b = take(buf, 1, what)?;
    b.first().copied().ok_or(MetadataError::Truncated {
        what,
        needed: 1,
        remaining: 0,
    })
}

/// Reads `N` bytes off the front of `buf` into an array.
fn take_array<const N: usize>(
    buf: &mut Bytes,
    what: &'static str,
) -> Result<[u8; N], MetadataError> {
    let b = take(buf, N, what)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&b);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_reports_needed_and_remaining() {
        let mut b = Bytes::from_static(b"ab");
        assert_eq!(
            take(&mut b, 3, "x"),
            Err(MetadataError::Truncated {
                what: "x",
                needed: 3,
                remaining: 2
            })
        );
        assert_eq!(take(&mut b, 2, "x").unwrap(), Bytes::from_static(b"ab"));
        assert!(take_u8(&mut b, "y").is_err());
        let mut b = Bytes::from_static(&[1, 2, 3]);
        assert_eq!(take_array::<2>(&mut b, "z").unwrap(), [1, 2]);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn utf8_bytes_validates() {
        assert!(Utf8Bytes::try_from(Bytes::from_static(&[0xff])).is_err());
        let s = Utf8Bytes::try_from(Bytes::from_static(b"hi")).unwrap();
        assert_eq!(s, "hi");
        assert_eq!(s.to_string(), "hi");
        assert_eq!(format!("{s:?}"), "\"hi\"");
        assert_eq!(Utf8Bytes::from_static("x").len(), 1);
        assert!(Utf8Bytes::default().is_empty());
    }
}
