//! Authentication metadata (`message/x.rsocket.authentication.v0`, id
//! `0x7C`).
//!
//! ```text
//! +-+-------------------+---------------------------+-----------------+
//! |A| type id or len-1  | custom auth type (A = 0)  | payload (rest)  |
//! +-+-------------------+---------------------------+-----------------+
//! ```
//!
//! Well-known auth types: `simple` (`0x00`, payload = `u16` username length,
//! username, password) and `bearer` (`0x01`, payload = token). A custom type
//! name is 1..=128 US-ASCII bytes written with the `len − 1` convention of
//! rsocket-java and rsocket-js (rsocket-go writes the raw length and does
//! not interoperate with this for custom types).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::mime::{check_custom_name, custom_name_header, take_name_header, NameProblem};
use super::{take, take_array, MetadataError, Utf8Bytes};

/// A custom authentication type name: 1..=128 US-ASCII bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomAuthType(Bytes);

impl CustomAuthType {
    /// Validates and copies an auth type name.
    pub fn new(name: &str) -> Result<Self, MetadataError> {
        Self::from_bytes(Bytes::copy_from_slice(name.as_bytes()))
    }

    /// Validates an auth type name without copying it.
    pub fn from_bytes(name: Bytes) -> Result<Self, MetadataError> {
        match check_custom_name(&name) {
            Ok(()) => Ok(Self(name)),
            Err(NameProblem::Length(len)) => Err(MetadataError::InvalidAuthTypeLength { len }),
            Err(NameProblem::NonAscii) => Err(MetadataError::NonAsciiAuthType),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // ASCII is UTF-8, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (1..=128).
    #[allow(clippy::len_without_is_empty)] // never empty by construction
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for CustomAuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for CustomAuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decoded (or to be encoded) authentication metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Well-known `simple` (`0x00`): username and password.
    Simple {
        /// The username, at most 65535 bytes.
        username: Utf8Bytes,
        /// The password (the rest of the metadata).
        password: Utf8Bytes,
    },
    /// Well-known `bearer` (`0x01`): a token.
    Bearer {
        /// The token (the rest of the metadata).
        token: Utf8Bytes,
    },
    /// A custom auth type named by a string.
    Custom {
        /// The auth type name.
        auth_type: CustomAuthType,
        /// The opaque payload.
        payload: Bytes,
    },
    /// A well-known auth type id that this implementation does not know.
    ///
    /// Encoded verbatim as `0x80 | id` + payload; ids `0` and `1` therefore
    /// decode back as `Simple`/`Bearer` (or fail if the payload does not
    /// fit those layouts).
    WellKnownUnknown {
        /// The 7-bit id.
        id: u8,
        /// The opaque payload.
        payload: Bytes,
    },
}

impl Authentication {
    /// Well-known id of `simple`.
    pub const SIMPLE_ID: u8 = 0x00;
    /// Well-known id of `bearer`.
    pub const BEARER_ID: u8 = 0x01;
    /// Longest simple-auth username in bytes.
    pub const MAX_USERNAME_LEN: usize = u16::MAX as usize;

    /// Simple authentication. The username length is checked when encoding.
    pub fn simple(username: impl Into<Utf8Bytes>, password: impl Into<Utf8Bytes>) -> Self {
        Self::Simple {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Bearer authentication.
    pub fn bearer(token: impl Into<Utf8Bytes>) -> Self {
        Self::Bearer {
            token: token.into(),
        }
    }

    /// A custom auth type (1..=128 ASCII bytes) with an opaque payload.
    pub fn custom(auth_type: &str, payload: impl Into<Bytes>) -> Result<Self, MetadataError> {
        Ok(Self::Custom {
            auth_type: CustomAuthType::new(auth_type)?,
            payload: payload.into(),
        })
    }

    /// Checks that the value can be encoded.
    pub fn validate(&self) -> Result<(), MetadataError> {
        match self {
            Self::Simple { username, .. } if username.len() > Self::MAX_USERNAME_LEN => {
                Err(MetadataError::UsernameTooLong {
                    len: username.len(),
                })
            }
            Self::WellKnownUnknown { id, .. } if *id > 0x7F => {
                Err(MetadataError::InvalidWellKnownId { id: *id })
            }
            _ => Ok(()),
        }
    }

    /// Bytes this value takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Simple { username, password } => 1 + 2 + username.len() + password.len(),
            Self::Bearer { token } => 1 + token.len(),
            Self::Custom { auth_type, payload } => 1 + auth_type.len() + payload.len(),
            Self::WellKnownUnknown { payload, .. } => 1 + payload.len(),
        }
    }

    /// Appends the encoding to `buf`. Nothing is written when validation
    /// fails.
    pub fn encode_into<B: BufMut + ?Sized>(&self, buf: &mut B) -> Result<(), MetadataError> {
        self.validate()?;
        match self {
            Self::Simple { username, password } => {
                let len =
                    u16::try_from(username.len()).map_err(|_| MetadataError::UsernameTooLong {
                        len: username.len(),
                    })?;
                buf.put_u8(0x80 | Self::SIMPLE_ID);
                buf.put_u16(len);
                buf.put_slice(username.as_bytes());
                buf.put_slice(password.as_bytes());
            }
            Self::Bearer { token } => {
                buf.put_u8(0x80 | Self::BEARER_ID);
                buf.put_slice(token.as_bytes());
            }
            Self::Custom { auth_type, payload } => {
                buf.put_u8(custom_name_header(auth_type.len()));
                buf.put_slice(auth_type.as_bytes());
                buf.put_slice(payload);
            }
            Self::WellKnownUnknown { id, payload } => {
                buf.put_u8(0x80 | id);
                buf.put_slice(payload);
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

    /// Decodes authentication metadata; all fields share `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Self, MetadataError> {
        let mut rest = bytes;
        match take_name_header(&mut rest, "auth type")? {
            (Self::SIMPLE_ID, None) => {
                let len = u16::from_be_bytes(take_array(&mut rest, "username length")?);
                let username = take(&mut rest, usize::from(len), "username")?;
                Ok(Self::Simple {
                    username: Utf8Bytes::validate(username, "username")?,
                    password: Utf8Bytes::validate(rest, "password")?,
                })
            }
            (Self::BEARER_ID, None) => Ok(Self::Bearer {
                token: Utf8Bytes::validate(rest, "bearer token")?,
            }),
            (id, None) => Ok(Self::WellKnownUnknown { id, payload: rest }),
            (_, Some(name)) => Ok(Self::Custom {
                auth_type: CustomAuthType::from_bytes(name)?,
                payload: rest,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_vector(auth: &Authentication, bytes: &[u8]) {
        assert_eq!(&auth.encode().unwrap()[..], bytes);
        assert_eq!(auth.encoded_len(), bytes.len());
        assert_eq!(
            Authentication::decode(Bytes::copy_from_slice(bytes)).as_ref(),
            Ok(auth)
        );
    }

    #[test]
    fn vector_simple() {
        check_vector(
            &Authentication::simple("user", "pass"),
            &[
                0x80, 0x00, 0x04, 0x75, 0x73, 0x65, 0x72, 0x70, 0x61, 0x73, 0x73,
            ],
        );
    }

    #[test]
    fn vector_bearer() {
        check_vector(&Authentication::bearer("tok"), &[0x81, 0x74, 0x6f, 0x6b]);
    }

    #[test]
    fn vector_custom() {
        check_vector(
            &Authentication::custom("x-auth", "PAY").unwrap(),
            &[0x05, 0x78, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x50, 0x41, 0x59],
        );
    }

    #[test]
    fn empty_fields() {
        check_vector(&Authentication::simple("", ""), &[0x80, 0x00, 0x00]);
        check_vector(&Authentication::bearer(""), &[0x81]);
        check_vector(&Authentication::custom("a", "").unwrap(), &[0x00, b'a']);
    }

    #[test]
    fn unknown_well_known_id() {
        check_vector(
            &Authentication::WellKnownUnknown {
                id: 0x7F,
                payload: Bytes::from_static(b"zz"),
            },
            b"\xffzz",
        );
        let bad = Authentication::WellKnownUnknown {
            id: 0x80,
            payload: Bytes::new(),
        };
        assert_eq!(
            bad.encode(),
            Err(MetadataError::InvalidWellKnownId { id: 0x80 })
        );
    }

    #[test]
    fn username_limits() {
        let max = "u".repeat(65535);
        let auth = Authentication::simple(max.as_str(), "p");
        let bytes = auth.encode().unwrap();
        assert_eq!(&bytes[..3], &[0x80, 0xff, 0xff]);
        assert_eq!(Authentication::decode(bytes), Ok(auth));
        let too_long = Authentication::simple("u".repeat(65536), "p");
        assert_eq!(
            too_long.encode(),
            Err(MetadataError::UsernameTooLong { len: 65536 })
        );
        let mut buf = Vec::new();
        assert!(too_long.encode_into(&mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn custom_type_limits() {
        for len in [1usize, 2, 127, 128] {
            let name = "t".repeat(len);
            let auth = Authentication::custom(&name, "p").unwrap();
            let bytes = auth.encode().unwrap();
            assert_eq!(bytes[0], u8::try_from(len - 1).unwrap());
            assert_eq!(Authentication::decode(bytes), Ok(auth));
        }
        assert_eq!(
            Authentication::custom("", "p"),
            Err(MetadataError::InvalidAuthTypeLength { len: 0 })
        );
        assert_eq!(
            Authentication::custom(&"t".repeat(129), "p"),
            Err(MetadataError::InvalidAuthTypeLength { len: 129 })
        );
        assert_eq!(
            Authentication::custom("tökén", "p"),
            Err(MetadataError::NonAsciiAuthType)
        );
    }

    #[test]
    fn malformed_input() {
        let cases: &[(&[u8], MetadataError)] = &[
            (
                &[],
                MetadataError::Truncated {
                    what: "auth type",
                    needed: 1,
                    remaining: 0,
                },
            ),
            (
                &[0x80, 0x00],
                MetadataError::Truncated {
                    what: "username length",
                    needed: 2,
                    remaining: 1,
                },
            ),
            (
                &[0x80, 0x00, 0x05, b'a'],
                MetadataError::Truncated {
                    what: "username",
                    needed: 5,
                    remaining: 1,
                },
            ),
            (
                &[0x80, 0x00, 0x01, 0xff],
                MetadataError::InvalidUtf8 { what: "username" },
            ),
            (
                &[0x80, 0x00, 0x01, b'a', 0xff],
                MetadataError::InvalidUtf8 { what: "password" },
            ),
            (
                &[0x81, 0xc3],
                MetadataError::InvalidUtf8 {
                    what: "bearer token",
                },
            ),
            (
                &[0x03, b'a', b'b'],
                MetadataError::Truncated {
                    what: "auth type",
                    needed: 4,
                    remaining: 2,
                },
            ),
            (&[0x01, b'a', 0x80], MetadataError::NonAsciiAuthType),
        ];
        for (bytes, err) in cases {
            assert_eq!(
                Authentication::decode(Bytes::copy_from_slice(bytes)).as_ref(),
                Err(err),
                "{bytes:02x?}"
            );
        }
    }

    fn arb_auth() -> impl Strategy<Value = Authentication> {
        prop_oneof![
            (".{0,20}", ".{0,20}").prop_map(|(u, p)| Authentication::simple(u, p)),
            ".{0,20}".prop_map(Authentication::bearer),
            (
                "[ -~]{1,128}",
                proptest::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(|(t, p)| Authentication::custom(&t, p).unwrap()),
            (2u8..=0x7F, proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(id, p)| {
                Authentication::WellKnownUnknown {
                    id,
                    payload: p.into(),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(auth in arb_auth()) {
            let bytes = auth.encode().unwrap();
            prop_assert_eq!(bytes.len(), auth.encoded_len());
            prop_assert_eq!(Authentication::decode(bytes), Ok(auth));
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let input = Bytes::from(input);
            if let Ok(auth) = Authentication::decode(input.clone()) {
                prop_assert_eq!(auth.encode(), Ok(input));
            }
        }
    }
}
