//! Newtypes for the protocol's nouns: stream ids, request counts, error codes,
//! versions, frame types and MIME type strings.

use std::fmt;
use std::num::NonZeroU32;

use bytes::Bytes;

/// Largest value of a u31 field (stream ids, request-n, intervals): 2^31 − 1.
pub const MAX_U31: u32 = 0x7FFF_FFFF;
/// Largest value of a u63 field (resume positions): 2^63 − 1.
pub const MAX_U63: u64 = 0x7FFF_FFFF_FFFF_FFFF;

/// A non-zero stream id (1 ..= 2^31 − 1).
///
/// Stream 0 is the connection itself, so frames that belong to the connection
/// have no `StreamId` field at all and frames that belong to a stream cannot
/// be built for stream 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(NonZeroU32);

impl StreamId {
    /// The largest stream id.
    pub const MAX: Self = Self(match NonZeroU32::new(MAX_U31) {
        Some(v) => v,
        None => unreachable!(),
    });

    /// `Some` when `id` is in 1 ..= 2^31 − 1.
    pub const fn new(id: u32) -> Option<Self> {
        if id > MAX_U31 {
            return None;
        }
        match NonZeroU32::new(id) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The id as a plain integer.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Odd ids are opened by the client.
    pub const fn is_client_initiated(self) -> bool {
        !self.0.get().is_multiple_of(2)
    }

    /// Even ids are opened by the server.
    pub const fn is_server_initiated(self) -> bool {
        self.0.get().is_multiple_of(2)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A request count for REQUEST_N and the initial request-n of
/// REQUEST_STREAM / REQUEST_CHANNEL: 1 ..= 2^31 − 1.
///
/// rsocket-java treats 2^31 − 1 as "unbounded"; so do we (see
/// [`RequestCount::is_unbounded`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestCount(NonZeroU32);

impl RequestCount {
    /// 2^31 − 1, treated as unbounded demand.
    pub const MAX: Self = Self(match NonZeroU32::new(MAX_U31) {
        Some(v) => v,
        None => unreachable!(),
    });
    /// A count of one.
    pub const ONE: Self = Self(NonZeroU32::MIN);

    /// `Some` when `n` is in 1 ..= 2^31 − 1.
    pub const fn new(n: u32) -> Option<Self> {
        if n > MAX_U31 {
            return None;
        }
        match NonZeroU32::new(n) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// Clamps `n` into 1 ..= 2^31 − 1 (0 becomes 1, large values saturate).
    pub fn saturating(n: u64) -> Self {
        let clamped = n.clamp(1, u64::from(MAX_U31));
        // clamp guarantees 1..=MAX_U31
        Self::new(clamped as u32).unwrap_or(Self::MAX)
    }

    /// The count as a plain integer.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// True for 2^31 − 1, which peers use to mean "everything".
    pub const fn is_unbounded(self) -> bool {
        self.0.get() == MAX_U31
    }
}

impl fmt::Debug for RequestCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestCount({})", self.0)
    }
}

/// An RSocket error code (the u32 of an ERROR frame).
///
/// Codes 0x301 ..= 0xFFFF_FFFE are application-defined and round-trip
/// unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The SETUP frame is invalid for the server (stream 0).
    pub const INVALID_SETUP: Self = Self(0x0000_0001);
    /// Some SETUP parameters are not supported (stream 0).
    pub const UNSUPPORTED_SETUP: Self = Self(0x0000_0002);
    /// The server refused the SETUP (stream 0).
    pub const REJECTED_SETUP: Self = Self(0x0000_0003);
    /// The server refused the RESUME (stream 0).
    pub const REJECTED_RESUME: Self = Self(0x0000_0004);
    /// The connection is being terminated (stream 0).
    pub const CONNECTION_ERROR: Self = Self(0x0000_0101);
    /// The connection is being closed gracefully (stream 0).
    pub const CONNECTION_CLOSE: Self = Self(0x0000_0102);
    /// Application-layer error on a stream.
    pub const APPLICATION_ERROR: Self = Self(0x0000_0201);
    /// The request was refused and not processed.
    pub const REJECTED: Self = Self(0x0000_0202);
    /// The responder cancelled the request; processing may have started.
    pub const CANCELED: Self = Self(0x0000_0203);
    /// The request is invalid.
    pub const INVALID: Self = Self(0x0000_0204);
    /// First application-defined code.
    pub const MIN_APPLICATION: Self = Self(0x0000_0301);
    /// Last application-defined code.
    pub const MAX_APPLICATION: Self = Self(0xFFFF_FFFE);

    /// The spec's name for a protocol code, `None` for other values.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x001 => "INVALID_SETUP",
            0x002 => "UNSUPPORTED_SETUP",
            0x003 => "REJECTED_SETUP",
            0x004 => "REJECTED_RESUME",
            0x101 => "CONNECTION_ERROR",
            0x102 => "CONNECTION_CLOSE",
            0x201 => "APPLICATION_ERROR",
            0x202 => "REJECTED",
            0x203 => "CANCELED",
            0x204 => "INVALID",
            _ => return None,
        })
    }

    /// True for the four setup/resume rejection codes.
    pub const fn is_setup_error(self) -> bool {
        matches!(self.0, 0x001..=0x004)
    }

    /// True for codes that only make sense on stream 0.
    pub const fn is_connection_level(self) -> bool {
        matches!(self.0, 0x001..=0x004 | 0x101 | 0x102)
    }

    /// True for the two reserved codes: 0 (never sent) and 0xFFFF_FFFF
    /// (reserved for extension).
    pub const fn is_reserved(self) -> bool {
        matches!(self.0, 0 | 0xFFFF_FFFF)
    }

    /// True for application-defined codes (0x301 ..= 0xFFFF_FFFE).
    pub const fn is_application_defined(self) -> bool {
        self.0 >= Self::MIN_APPLICATION.0 && self.0 <= Self::MAX_APPLICATION.0
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "ErrorCode({:#x})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#010x}", self.0),
        }
    }
}

/// Protocol version carried by SETUP and RESUME.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl Version {
    /// Version 1.0, the one every maintained implementation speaks.
    pub const V1_0: Self = Self { major: 1, minor: 0 };
}

impl Default for Version {
    fn default() -> Self {
        Self::V1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The 6-bit frame type of the header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum FrameType {
    /// SETUP (0x01).
    Setup,
    /// LEASE (0x02).
    Lease,
    /// KEEPALIVE (0x03).
    Keepalive,
    /// REQUEST_RESPONSE (0x04).
    RequestResponse,
    /// REQUEST_FNF (0x05).
    RequestFnf,
    /// REQUEST_STREAM (0x06).
    RequestStream,
    /// REQUEST_CHANNEL (0x07).
    RequestChannel,
    /// REQUEST_N (0x08).
    RequestN,
    /// CANCEL (0x09).
    Cancel,
    /// PAYLOAD (0x0A).
    Payload,
    /// ERROR (0x0B).
    Error,
    /// METADATA_PUSH (0x0C).
    MetadataPush,
    /// RESUME (0x0D).
    Resume,
    /// RESUME_OK (0x0E).
    ResumeOk,
    /// EXT (0x3F).
    Ext,
    /// Any other code (0x00, 0x0F ..= 0x3E).
    Unknown(u8),
}

impl FrameType {
    /// Decodes the 6-bit code.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::Setup,
            0x02 => Self::Lease,
            0x03 => Self::Keepalive,
            0x04 => Self::RequestResponse,
            0x05 => Self::RequestFnf,
            0x06 => Self::RequestStream,
            0x07 => Self::RequestChannel,
            0x08 => Self::RequestN,
            0x09 => Self::Cancel,
            0x0A => Self::Payload,
            0x0B => Self::Error,
            0x0C => Self::MetadataPush,
            0x0D => Self::Resume,
            0x0E => Self::ResumeOk,
            0x3F => Self::Ext,
            other => Self::Unknown(other & 0x3F),
        }
    }

    /// The 6-bit code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Setup => 0x01,
            Self::Lease => 0x02,
            Self::Keepalive => 0x03,
            Self::RequestResponse => 0x04,
            Self::RequestFnf => 0x05,
            Self::RequestStream => 0x06,
            Self::RequestChannel => 0x07,
            Self::RequestN => 0x08,
            Self::Cancel => 0x09,
            Self::Payload => 0x0A,
            Self::Error => 0x0B,
            Self::MetadataPush => 0x0C,
            Self::Resume => 0x0D,
            Self::ResumeOk => 0x0E,
            Self::Ext => 0x3F,
            Self::Unknown(c) => c & 0x3F,
        }
    }
}

/// A MIME type string as carried in SETUP: at most 255 US-ASCII bytes.
///
/// The protocol layer does not interpret it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MimeType(Bytes);

impl MimeType {
    /// `application/octet-stream`, a sensible default for data.
    pub const OCTET_STREAM: Self = Self(Bytes::from_static(b"application/octet-stream"));
    /// `message/x.rsocket.composite-metadata.v0`.
    pub const COMPOSITE_METADATA: Self = Self(Bytes::from_static(
        b"message/x.rsocket.composite-metadata.v0",
    ));

    /// Validates length (≤ 255) and US-ASCII.
    pub fn new(value: impl Into<Bytes>) -> Result<Self, InvalidMimeType> {
        let b = value.into();
        if b.len() > 255 {
            return Err(InvalidMimeType::TooLong(b.len()));
        }
        if !b.is_ascii() {
            return Err(InvalidMimeType::NotAscii);
        }
        Ok(Self(b))
    }

    /// Builds from a static string; returns an error rather than panicking.
    pub fn from_static(value: &'static str) -> Result<Self, InvalidMimeType> {
        Self::new(Bytes::from_static(value.as_bytes()))
    }

    /// Wraps bytes read off the wire (length is ≤ 255 by construction);
    /// ASCII is not enforced on receipt because the protocol must not
    /// interpret the string.
    pub(crate) fn from_wire(b: Bytes) -> Self {
        Self(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The string, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Encoded length in bytes (≤ 255).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for MimeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "MimeType({:?})", self.0),
        }
    }
}

impl fmt::Display for MimeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl TryFrom<&str> for MimeType {
    type Error = InvalidMimeType;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// Why a string cannot be a SETUP MIME type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMimeType {
    /// Longer than the 255 bytes a u8 length can describe.
    #[error("MIME type is {0} bytes, at most 255 fit in SETUP")]
    TooLong(usize),
    /// Contains non-ASCII bytes.
    #[error("MIME type must be US-ASCII")]
    NotAscii,
}
