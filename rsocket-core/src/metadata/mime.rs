//! Well-known MIME types and the shared "M flag + id, or length − 1 + ASCII
//! name" MIME encoding used by composite metadata and the per-stream MIME
//! extensions.

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes};

use super::{take, take_u8, MetadataError};

/// Longest custom MIME type or custom auth type, in bytes (7 bits hold
/// `len − 1`).
pub const MAX_CUSTOM_NAME_LEN: usize = 128;

/// Bit 7 of a header byte: the low 7 bits are a well-known id.
pub(super) const WELL_KNOWN_FLAG: u8 = 0x80;

/// Defines the well-known MIME table once and derives every lookup from it.
macro_rules! well_known_mime_types {
    ($($(#[$doc:meta])* $variant:ident = $id:literal => $name:literal,)+) => {
        /// A MIME type with a one-byte id from the RSocket
        /// `WellKnownMimeTypes` table, encoded on the wire as `0x80 | id`.
        ///
        /// Ids `0x00..=0x2A` are data formats and `0x7A..=0x7F` are the
        /// RSocket metadata extensions. Ids `0x2B..=0x79` are unassigned.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum WellKnownMimeType {
            $(
                $(#[$doc])*
                #[doc = concat!("`", $name, "` (id `", stringify!($id), "`).")]
                $variant,
            )+
        }

        impl WellKnownMimeType {
            /// Every well-known MIME type, in id order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// Looks up a 7-bit id; `None` for unassigned ids and for
            /// anything above `0x7F`.
            pub const fn from_id(id: u8) -> Option<Self> {
                match id {
                    $($id => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The 7-bit id (without the `0x80` flag).
            pub const fn id(self) -> u8 {
                match self {
                    $(Self::$variant => $id,)+
                }
            }

            /// The MIME type string, in the exact case of the spec table.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }
    };
}

well_known_mime_types! {
    ApplicationAvro = 0x00 => "application/avro",
    ApplicationCbor = 0x01 => "application/cbor",
    ApplicationGraphql = 0x02 => "application/graphql",
    ApplicationGzip = 0x03 => "application/gzip",
    ApplicationJavascript = 0x04 => "application/javascript",
    ApplicationJson = 0x05 => "application/json",
    ApplicationOctetStream = 0x06 => "application/octet-stream",
    ApplicationPdf = 0x07 => "application/pdf",
    ApplicationThrift = 0x08 => "application/vnd.apache.thrift.binary",
    ApplicationProtobuf = 0x09 => "application/vnd.google.protobuf",
    ApplicationXml = 0x0A => "application/xml",
    ApplicationZip = 0x0B => "application/zip",
    AudioAac = 0x0C => "audio/aac",
    AudioMp3 = 0x0D => "audio/mp3",
    AudioMp4 = 0x0E => "audio/mp4",
    AudioMpeg3 = 0x0F => "audio/mpeg3",
    AudioMpeg = 0x10 => "audio/mpeg",
    AudioOgg = 0x11 => "audio/ogg",
    AudioOpus = 0x12 => "audio/opus",
    AudioVorbis = 0x13 => "audio/vorbis",
    ImageBmp = 0x14 => "image/bmp",
    ImageGif = 0x15 => "image/gif",
    ImageHeicSequence = 0x16 => "image/heic-sequence",
    ImageHeic = 0x17 => "image/heic",
    ImageHeifSequence = 0x18 => "image/heif-sequence",
    ImageHeif = 0x19 => "image/heif",
    ImageJpeg = 0x1A => "image/jpeg",
    ImagePng = 0x1B => "image/png",
    ImageTiff = 0x1C => "image/tiff",
    MultipartMixed = 0x1D => "multipart/mixed",
    TextCss = 0x1E => "text/css",
    TextCsv = 0x1F => "text/csv",
    TextHtml = 0x20 => "text/html",
    TextPlain = 0x21 => "text/plain",
    TextXml = 0x22 => "text/xml",
    VideoH264 = 0x23 => "video/H264",
    VideoH265 = 0x24 => "video/H265",
    VideoVp8 = 0x25 => "video/VP8",
    ApplicationHessian = 0x26 => "application/x-hessian",
    ApplicationJavaObject = 0x27 => "application/x-java-object",
    ApplicationCloudeventsJson = 0x28 => "application/cloudevents+json",
    /// Not known to rsocket-java, rsocket-js or rsocket-rust.
    ApplicationCapnp = 0x29 => "application/x-capnp",
    /// Not known to rsocket-java, rsocket-js or rsocket-rust.
    ApplicationFlatbuffers = 0x2A => "application/x-flatbuffers",
    /// Per-stream data MIME type extension.
    MessageRSocketMimeType = 0x7A => "message/x.rsocket.mime-type.v0",
    /// Accepted data MIME types extension.
    MessageRSocketAcceptMimeTypes = 0x7B => "message/x.rsocket.accept-mime-types.v0",
    /// Authentication extension.
    MessageRSocketAuthentication = 0x7C => "message/x.rsocket.authentication.v0",
    /// Zipkin tracing extension.
    MessageRSocketTracingZipkin = 0x7D => "message/x.rsocket.tracing-zipkin.v0",
    /// Routing extension.
    MessageRSocketRouting = 0x7E => "message/x.rsocket.routing.v0",
    /// Composite metadata extension.
    MessageRSocketCompositeMetadata = 0x7F => "message/x.rsocket.composite-metadata.v0",
}

impl WellKnownMimeType {
    /// Looks up a MIME type string. The match is exact (case-sensitive), as
    /// the spec table is the only source of truth for the spelling.
    pub fn from_str_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.as_str() == name)
    }

    /// The header byte `0x80 | id`.
    pub const fn header_byte(self) -> u8 {
        WELL_KNOWN_FLAG | self.id()
    }
}

impl FromStr for WellKnownMimeType {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_str_name(s).ok_or_else(|| MetadataError::UnknownMimeTypeName { name: s.into() })
    }
}

impl fmt::Display for WellKnownMimeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a custom name (MIME type or auth type) was rejected.
pub(super) enum NameProblem {
    /// Not 1..=128 bytes.
    Length(usize),
    /// A byte above `0x7F`.
    NonAscii,
}

/// Checks the 1..=128 US-ASCII rule shared by custom MIME and auth types.
pub(super) fn check_custom_name(name: &[u8]) -> Result<(), NameProblem> {
    if name.is_empty() || name.len() > MAX_CUSTOM_NAME_LEN {
        return Err(NameProblem::Length(name.len()));
    }
    if !name.is_ascii() {
        return Err(NameProblem::NonAscii);
    }
    Ok(())
}

/// The header byte for a custom name of `len` bytes: `len − 1`, 7 bits.
///
/// Callers pass lengths already checked to be 1..=128.
pub(super) fn custom_name_header(len: usize) -> u8 {
    u8::try_from(len.saturating_sub(1) & 0x7F).unwrap_or(0x7F)
}

/// Reads a header byte and, when its M bit is clear, the custom name that
/// follows. Returns the header and the name bytes (empty when M is set).
pub(super) fn take_name_header(
    buf: &mut Bytes,
    what: &'static str,
) -> Result<(u8, Option<Bytes>), MetadataError> {
    let header = take_u8(buf, what)?;
    if header & WELL_KNOWN_FLAG != 0 {
        return Ok((header & !WELL_KNOWN_FLAG, None));
    }
    let len = usize::from(header) + 1;
    let name = take(buf, len, what)?;
    Ok((header, Some(name)))
}

/// A custom MIME type: 1..=128 US-ASCII bytes.
///
/// Decoded values share the input buffer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomMime(Bytes);

impl CustomMime {
    /// Validates and copies a MIME type string.
    pub fn new(name: &str) -> Result<Self, MetadataError> {
        Self::from_bytes(Bytes::copy_from_slice(name.as_bytes()))
    }

    /// Validates a MIME type without copying it.
    pub fn from_bytes(name: Bytes) -> Result<Self, MetadataError> {
        match check_custom_name(&name) {
            Ok(()) => Ok(Self(name)),
            Err(NameProblem::Length(len)) => Err(MetadataError::InvalidMimeTypeLength { len }),
            Err(NameProblem::NonAscii) => Err(MetadataError::NonAsciiMimeType),
        }
    }

    /// The MIME type string.
    pub fn as_str(&self) -> &str {
        // ASCII is UTF-8, so this never falls back.
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

    /// Length in bytes (1..=128).
    #[allow(clippy::len_without_is_empty)] // never empty by construction
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for CustomMime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CustomMime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A MIME type as it appears in a composite entry header or a per-stream
/// MIME entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryMime {
    /// A type from the well-known table.
    WellKnown(WellKnownMimeType),
    /// A well-known id (`0..=0x7F`) that is not in our table. Decoders
    /// produce this for unassigned ids so that the entry can be skipped;
    /// encoders reject ids above `0x7F`.
    UnknownReserved(u8),
    /// A MIME type spelled out as a string.
    Custom(CustomMime),
}

impl EntryMime {
    /// Parses a MIME string: the well-known variant if the string is in the
    /// table (exact match), otherwise a validated custom type.
    pub fn parse(name: &str) -> Result<Self, MetadataError> {
        match WellKnownMimeType::from_str_name(name) {
            Some(m) => Ok(Self::WellKnown(m)),
            None => CustomMime::new(name).map(Self::Custom),
        }
    }

    /// A validated custom MIME type, even if the string is well known.
    pub fn custom(name: &str) -> Result<Self, MetadataError> {
        CustomMime::new(name).map(Self::Custom)
    }

    /// The MIME string, or `None` for an unknown reserved id.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::WellKnown(m) => Some(m.as_str()),
            Self::UnknownReserved(_) => None,
            Self::Custom(c) => Some(c.as_str()),
        }
    }

    /// The well-known type, if this is one.
    pub fn well_known(&self) -> Option<WellKnownMimeType> {
        match self {
            Self::WellKnown(m) => Some(*m),
            _ => None,
        }
    }

    /// Bytes this header takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::WellKnown(_) | Self::UnknownReserved(_) => 1,
            Self::Custom(c) => 1 + c.len(),
        }
    }

    /// Checks that the value can be encoded (only an [`Self::UnknownReserved`]
    /// id above `0x7F` cannot).
    pub fn validate(&self) -> Result<(), MetadataError> {
        match self {
            Self::UnknownReserved(id) if *id > 0x7F => {
                Err(MetadataError::InvalidWellKnownId { id: *id })
            }
            _ => Ok(()),
        }
    }

    /// Writes the header byte and, for a custom type, the name. Nothing is
    /// written when validation fails.
    pub fn encode_into<B: BufMut + ?Sized>(&self, buf: &mut B) -> Result<(), MetadataError> {
        self.validate()?;
        match self {
            Self::WellKnown(m) => buf.put_u8(m.header_byte()),
            Self::UnknownReserved(id) => buf.put_u8(WELL_KNOWN_FLAG | id),
            Self::Custom(c) => {
                buf.put_u8(custom_name_header(c.len()));
                buf.put_slice(c.as_bytes());
            }
        }
        Ok(())
    }

    /// Reads one header (and custom name) off the front of `buf`.
    pub(super) fn decode(buf: &mut Bytes, what: &'static str) -> Result<Self, MetadataError> {
        match take_name_header(buf, what)? {
            (id, None) => Ok(match WellKnownMimeType::from_id(id) {
                Some(m) => Self::WellKnown(m),
                None => Self::UnknownReserved(id),
            }),
            (_, Some(name)) => CustomMime::from_bytes(name).map(Self::Custom),
        }
    }
}

impl From<WellKnownMimeType> for EntryMime {
    fn from(m: WellKnownMimeType) -> Self {
        Self::WellKnown(m)
    }
}

impl From<CustomMime> for EntryMime {
    fn from(c: CustomMime) -> Self {
        Self::Custom(c)
    }
}

impl FromStr for EntryMime {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_is_complete_and_consistent() {
        assert_eq!(WellKnownMimeType::ALL.len(), 0x2B + 6);
        for id in 0u8..=0xFF {
            let known = matches!(id, 0x00..=0x2A | 0x7A..=0x7F);
            let m = WellKnownMimeType::from_id(id);
            assert_eq!(m.is_some(), known, "id {id:#x}");
            if let Some(m) = m {
                assert_eq!(m.id(), id);
                assert_eq!(m.header_byte(), 0x80 | id);
                assert_eq!(WellKnownMimeType::from_str_name(m.as_str()), Some(m));
                assert_eq!(m.as_str().parse::<WellKnownMimeType>(), Ok(m));
                assert_eq!(m.to_string(), m.as_str());
            }
        }
        for (i, m) in WellKnownMimeType::ALL.iter().enumerate() {
            for n in &WellKnownMimeType::ALL[i + 1..] {
                assert!(m.id() < n.id());
                assert_ne!(m.as_str(), n.as_str());
            }
        }
    }

    #[test]
    fn spot_checks() {
        use WellKnownMimeType as W;
        assert_eq!(W::from_id(0x00), Some(W::ApplicationAvro));
        assert_eq!(W::from_id(0x05), Some(W::ApplicationJson));
        assert_eq!(W::from_id(0x23).map(W::as_str), Some("video/H264"));
        assert_eq!(W::from_id(0x25).map(W::as_str), Some("video/VP8"));
        assert_eq!(W::from_id(0x2A), Some(W::ApplicationFlatbuffers));
        assert_eq!(
            W::from_id(0x7F).map(W::as_str),
            Some("message/x.rsocket.composite-metadata.v0")
        );
        assert_eq!(W::from_id(0x2B), None);
        assert_eq!(W::from_id(120), None);
        assert_eq!(W::from_id(0x80), None);
        assert_eq!(W::from_id(0xFF), None);
        assert_eq!(W::from_str_name("video/h264"), None);
        assert_eq!(
            "text/x-nope".parse::<W>(),
            Err(MetadataError::UnknownMimeTypeName {
                name: "text/x-nope".into()
            })
        );
    }

    #[test]
    fn custom_mime_lengths() {
        for len in [1usize, 2, 127, 128] {
            let s = "a".repeat(len);
            let c = CustomMime::new(&s).unwrap();
            assert_eq!(c.len(), len);
            let mut out = Vec::new();
            EntryMime::Custom(c).encode_into(&mut out).unwrap();
            assert_eq!(out[0], u8::try_from(len - 1).unwrap());
            assert_eq!(out.len(), len + 1);
        }
        assert_eq!(
            CustomMime::new(""),
            Err(MetadataError::InvalidMimeTypeLength { len: 0 })
        );
        assert_eq!(
            CustomMime::new(&"a".repeat(129)),
            Err(MetadataError::InvalidMimeTypeLength { len: 129 })
        );
        assert_eq!(
            CustomMime::new("text/é"),
            Err(MetadataError::NonAsciiMimeType)
        );
    }

    #[test]
    fn entry_mime_helpers() {
        assert_eq!(
            EntryMime::parse("application/json"),
            Ok(EntryMime::WellKnown(WellKnownMimeType::ApplicationJson))
        );
        let c: EntryMime = "x/y".parse().unwrap();
        assert_eq!(c.as_str(), Some("x/y"));
        assert_eq!(c.well_known(), None);
        assert_eq!(EntryMime::UnknownReserved(120).as_str(), None);
        assert_eq!(
            EntryMime::custom("application/json").unwrap().encoded_len(),
            17
        );
        let mut out = Vec::new();
        assert_eq!(
            EntryMime::UnknownReserved(0x80).encode_into(&mut out),
            Err(MetadataError::InvalidWellKnownId { id: 0x80 })
        );
        assert!(out.is_empty());
        EntryMime::UnknownReserved(120)
            .encode_into(&mut out)
            .unwrap();
        assert_eq!(out, [0xF8]);
    }

    #[test]
    fn decode_header() {
        let mut b = Bytes::from_static(&[0xF8, 0x85, 0x02, b'x', b'/', b'y', 0x01, b'a']);
        assert_eq!(
            EntryMime::decode(&mut b, "m"),
            Ok(EntryMime::UnknownReserved(120))
        );
        assert_eq!(
            EntryMime::decode(&mut b, "m"),
            Ok(EntryMime::WellKnown(WellKnownMimeType::ApplicationJson))
        );
        assert_eq!(EntryMime::decode(&mut b, "m"), EntryMime::parse("x/y"));
        assert_eq!(
            EntryMime::decode(&mut b, "m"),
            Err(MetadataError::Truncated {
                what: "m",
                needed: 2,
                remaining: 1
            })
        );
        let mut b = Bytes::from_static(&[0x00, 0xC3]);
        assert_eq!(
            EntryMime::decode(&mut b, "m"),
            Err(MetadataError::NonAsciiMimeType)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = Bytes::from(input);
            while !b.is_empty() {
                if EntryMime::decode(&mut b, "m").is_err() {
                    break;
                }
            }
        }

        #[test]
        fn from_id_round_trips(id in any::<u8>()) {
            if let Some(m) = WellKnownMimeType::from_id(id) {
                prop_assert_eq!(m.id(), id);
            }
        }
    }
}
