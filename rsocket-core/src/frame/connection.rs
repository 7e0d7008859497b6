//! Frames that belong to the connection (stream 0): SETUP, LEASE, KEEPALIVE,
//! METADATA_PUSH, RESUME and RESUME_OK. None of them has a stream-id field;
//! the encoder always writes 0.

use bytes::{BufMut, Bytes};

use super::{
    flag, flags, metadata_flag, payload_len, put_header, put_payload, DecodeError, FrameType,
    Header, MimeType, Reader, Version,
};
use crate::Payload;

/// SETUP: the client's first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Protocol version (1.0).
    pub version: Version,
    /// Milliseconds between the client's KEEPALIVE frames (1 ..= 2^31 − 1).
    pub keepalive_interval_ms: u32,
    /// Milliseconds without a sign of life after which the peer is dead
    /// (1 ..= 2^31 − 1).
    pub max_lifetime_ms: u32,
    /// Resume identification token; `Some` sets the R flag. At most 65,535
    /// bytes fit the u16 length; the encoder writes no more than that.
    pub resume_token: Option<Bytes>,
    /// L flag: the client will honour LEASE.
    pub lease: bool,
    /// MIME type of metadata.
    pub metadata_mime_type: MimeType,
    /// MIME type of data.
    pub data_mime_type: MimeType,
    /// Setup payload.
    pub payload: Payload,
}

impl Setup {
    pub(super) fn decode(h: Header, r: &mut Reader) -> Result<Self, DecodeError> {
        let major = r.u16()?;
        let minor = r.u16()?;
        let keepalive_interval_ms = r.u31("keepalive interval")?;
        let max_lifetime_ms = r.u31("max lifetime")?;
        let resume_token = if h.has(flags::RESUME) {
            let len = usize::from(r.u16()?);
            Some(r.bytes(len)?)
        } else {
            None
        };
        let mlen = usize::from(r.u8()?);
        let metadata_mime_type = MimeType::from_wire(r.bytes(mlen)?);
        let dlen = usize::from(r.u8()?);
        let data_mime_type = MimeType::from_wire(r.bytes(dlen)?);
        let payload = r.payload(h.has(flags::METADATA))?;
        if keepalive_interval_ms == 0 {
            return Err(DecodeError::ZeroValue {
                frame: FrameType::Setup,
                field: "keepalive interval",
            });
        }
        if max_lifetime_ms == 0 {
            return Err(DecodeError::ZeroValue {
                frame: FrameType::Setup,
                field: "max lifetime",
            });
        }
        Ok(Self {
            version: Version { major, minor },
            keepalive_interval_ms,
            max_lifetime_ms,
            resume_token,
            lease: h.has(flags::LEASE),
            metadata_mime_type,
            data_mime_type,
            payload,
        })
    }

    pub(super) fn body_len(&self) -> usize {
        12 + self
            .resume_token
            .as_ref()
            .map_or(0, |t| 2 + t.len().min(usize::from(u16::MAX)))
            + 2
            + self.metadata_mime_type.len()
            + self.data_mime_type.len()
            + payload_len(&self.payload)
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        let f = metadata_flag(&self.payload)
            | flag(self.resume_token.is_some(), flags::RESUME)
            | flag(self.lease, flags::LEASE);
        put_header(dst, 0, FrameType::Setup, f);
        dst.put_u16(self.version.major);
        dst.put_u16(self.version.minor);
        dst.put_u32(self.keepalive_interval_ms & super::MAX_U31);
        dst.put_u32(self.max_lifetime_ms & super::MAX_U31);
        if let Some(t) = &self.resume_token {
            let len = t.len().min(usize::from(u16::MAX));
            dst.put_u16(len as u16);
            dst.put_slice(&t[..len]);
        }
        dst.put_u8(self.metadata_mime_type.len() as u8);
        dst.put_slice(self.metadata_mime_type.as_bytes());
        dst.put_u8(self.data_mime_type.len() as u8);
        dst.put_slice(self.data_mime_type.as_bytes());
        put_payload(dst, &self.payload);
    }
}

/// LEASE: permission to send `number_of_requests` requests within `ttl_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Validity in milliseconds from receipt (0 ..= 2^31 − 1; 0 stops requests).
    pub ttl_ms: u32,
    /// Number of requests allowed (0 ..= 2^31 − 1).
    pub number_of_requests: u32,
    /// Optional metadata (no length prefix on the wire).
    pub metadata: Option<Bytes>,
}

impl Lease {
    pub(super) fn decode(h: Header, r: &mut Reader) -> Result<Self, DecodeError> {
        let ttl_ms = r.u31("time-to-live")?;
        let number_of_requests = r.u31("number of requests")?;
        let metadata = h.has(flags::METADATA).then(|| r.rest());
        Ok(Self {
            ttl_ms,
            number_of_requests,
            metadata,
        })
    }

    pub(super) fn body_len(&self) -> usize {
        8 + self.metadata.as_ref().map_or(0, Bytes::len)
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        let f = flag(self.metadata.is_some(), flags::METADATA);
        put_header(dst, 0, FrameType::Lease, f);
        dst.put_u32(self.ttl_ms & super::MAX_U31);
        dst.put_u32(self.number_of_requests & super::MAX_U31);
        if let Some(m) = &self.metadata {
            dst.put_slice(m);
        }
    }
}

/// KEEPALIVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// R flag: the receiver must answer with the same data.
    pub respond: bool,
    /// The sender's implied resume position (0 without resumption).
    pub last_received_position: u64,
    /// Opaque data, echoed in the answer.
    pub data: Bytes,
}

impl Keepalive {
    pub(super) fn decode(h: Header, r: &mut Reader) -> Result<Self, DecodeError> {
        let last_received_position = r.u63("last received position")?;
        Ok(Self {
            respond: h.has(flags::RESPOND),
            last_received_position,
            data: r.rest(),
        })
    }

    pub(super) fn body_len(&self) -> usize {
        8 + self.data.len()
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        put_header(
            dst,
            0,
            FrameType::Keepalive,
            flag(self.respond, flags::RESPOND),
        );
        dst.put_u64(self.last_received_position & super::MAX_U63);
        dst.put_slice(&self.data);
    }
}

/// METADATA_PUSH: connection-level metadata, no length prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataPush {
    /// The metadata.
    pub metadata: Bytes,
}

/// RESUME: first frame of a resumed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Protocol version, equal to the original SETUP's.
    pub version: Version,
    /// The token from the original SETUP (at most 65,535 bytes).
    pub resume_token: Bytes,
    /// Last position the client received from the server.
    pub last_received_server_position: u64,
    /// Earliest position the client can still retransmit.
    pub first_available_client_position: u64,
}

impl Resume {
    pub(super) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let major = r.u16()?;
        let minor = r.u16()?;
        let len = usize::from(r.u16()?);
        let resume_token = r.bytes(len)?;
        let last_received_server_position = r.u63("last received server position")?;
        let first_available_client_position = r.u63("first available client position")?;
        r.finish()?;
        Ok(Self {
            version: Version { major, minor },
            resume_token,
            last_received_server_position,
            first_available_client_position,
        })
    }

    pub(super) fn body_len(&self) -> usize {
        6 + self.resume_token.len().min(usize::from(u16::MAX)) + 16
    }

    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        put_header(dst, 0, FrameType::Resume, 0);
        dst.put_u16(self.version.major);
        dst.put_u16(self.version.minor);
        let len = self.resume_token.len().min(usize::from(u16::MAX));
        dst.put_u16(len as u16);
        dst.put_slice(&self.resume_token[..len]);
        dst.put_u64(self.last_received_server_position & super::MAX_U63);
        dst.put_u64(self.first_available_client_position & super::MAX_U63);
    }
}

/// RESUME_OK: the server accepted a RESUME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeOk {
    /// Last position the server received from the client.
    pub last_received_client_position: u64,
}

impl ResumeOk {
    pub(super) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let last_received_client_position = r.u63("last received client position")?;
        r.finish()?;
        Ok(Self {
            last_received_client_position,
        })
    }
}
