//! Connection configuration and SETUP parameters.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ConfigError;
use crate::frame::{MimeType, Setup, Version, MAX_FRAME_LEN, MAX_U31};
use crate::lease::LeaseConfig;
use crate::Payload;

/// The smallest MTU we fragment to. rsocket-java rejects non-final fragments
/// shorter than 61 frame bytes, so we never produce smaller ones.
pub const MIN_MTU: usize = 64;

/// Limits and tuning for one connection. Every limit is enforced; the doc of
/// each field says what happens when it is reached.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame accepted or sent, in bytes (prefix excluded). Default and
    /// hard cap: 16,777,215. Longer inbound frames are a transport error;
    /// longer outbound payloads are fragmented. Frames that cannot be
    /// fragmented are never sent longer: a client's SETUP fails `connect`
    /// with `ConfigError::SetupFrameTooLong`, a METADATA_PUSH fails with
    /// `RequestError::FrameTooLarge`, a LEASE is not granted
    /// (`Requester::send_lease` returns false) and an ERROR's message is
    /// cut to fit.
    pub max_frame_len: usize,
    /// Fragment outbound payloads whose frame would exceed this many bytes
    /// (at least [`MIN_MTU`]). `None` fragments only at `max_frame_len`.
    pub mtu: Option<usize>,
    /// Bytes that may sit in inbound reassembly buffers at once, over all
    /// streams. Exceeding it closes the connection with CONNECTION_ERROR.
    /// Default 64 MiB.
    pub max_reassembly_bytes: usize,
    /// Streams the peer may have open against our responder at once. A
    /// request beyond it is answered with `ERROR[REJECTED]`. With this many
    /// fire-and-forget handlers still running, the connection reads no more
    /// frames until one finishes, so load pushes back on the peer and no
    /// whole fire-and-forget is dropped; meanwhile this side does not hold
    /// the peer's silence against the keepalive's max lifetime (the peer,
    /// whose KEEPALIVEs wait unanswered, may close). The first fragment of
    /// a fragmented fire-and-forget that arrives while open streams and
    /// requests still being reassembled number this many is dropped (there
    /// is nobody to tell). Default 10,000.
    pub max_concurrent_inbound_streams: usize,
    /// Bytes of encoded frames waiting for the writer. When reached, new
    /// requests, responder streams and request/response answers from
    /// spawned handlers wait until the writer has drained below it. Frames
    /// queued without waiting (control frames: KEEPALIVE answers,
    /// REQUEST_N, CANCEL, ERROR; request/response answers written while
    /// reading) pause reading once they fill this limit, so a peer that
    /// sends requests without reading the answers is pushed back through
    /// the transport; if they alone pass twice this limit (local handles
    /// keep adding them), the connection is closed. Default 1 MiB.
    pub max_outbound_queue_bytes: usize,
    /// How long reading may stay paused because the peer does not read
    /// what we queued in reply (see `max_outbound_queue_bytes`) before the
    /// transport is dropped: a peer that reads nothing cannot be sent an
    /// ERROR frame either. Also the longest the driver waits to flush its
    /// last frames and close the transport after any close. Default 30 s.
    pub outbound_stall_timeout: Duration,
    /// Default credit window of request/stream and channel inbound halves:
    /// the initial request-n, replenished with REQUEST_N when half of it has
    /// been consumed. Items buffered per stream never exceed the window
    /// (see `max_prefetch` for how a default window grows).
    /// Default 256; override per request with `Requester::with_prefetch`
    /// (a fixed window).
    pub default_prefetch: u32,
    /// A stream with the default window grows it while its items are
    /// small: at each replenishment the window may double, up to
    /// `prefetch_bytes` divided by the largest item seen on the stream, and
    /// never beyond this many items. Fewer REQUEST_N round trips keep a
    /// fast producer busy; the bytes a stream may buffer stay near
    /// `prefetch_bytes` for items of the size seen so far. Set it to
    /// `default_prefetch` for fixed windows. Default 4,096.
    pub max_prefetch: u32,
    /// The byte budget that bounds a growing window (see `max_prefetch`).
    /// Default 256 KiB.
    pub prefetch_bytes: usize,
    /// How long a server waits for the first frame (SETUP) before closing.
    /// Default 30 s.
    pub setup_timeout: Duration,
    /// How long a graceful close (`ERROR[CONNECTION_CLOSE]`, sent by
    /// `Requester::close` or received from the peer) lets open streams run
    /// before the connection is closed with `ERROR[CONNECTION_ERROR]`.
    /// Default 30 s. A server's shutdown uses its own bound instead,
    /// `Server::grace_period`.
    pub close_timeout: Duration,
    /// Leasing (see [`crate::lease`]). `None` (the default): a client does
    /// not ask for it and a server refuses a SETUP that does with
    /// `ERROR[UNSUPPORTED_SETUP]`. `ClientBuilder::lease` and
    /// `Server::lease` set it.
    pub lease: Option<LeaseConfig>,
    /// Resumable connections only: bytes of sent resumable frames (requests,
    /// REQUEST_N, CANCEL, stream ERROR, PAYLOAD) kept until the peer
    /// acknowledges them, so that they can be sent again after a
    /// reconnect. When the store is full, no more resumable frames are
    /// handed to the transport until an acknowledgement frees room (one
    /// frame may pass the cap when the store is empty): the outbound queue
    /// then fills and producers wait, as they do for
    /// `max_outbound_queue_bytes`; KEEPALIVEs still go. The session never
    /// ends because of it. This side reports its own received position (a
    /// KEEPALIVE) after every quarter of this many bytes received, and at
    /// least every 256 KiB, so that the peer's store is released before it
    /// fills; a side whose store fills first (it is smaller than the
    /// peer's reporting interval) asks the peer for its position with a
    /// KEEPALIVE(R), one at a time, rather than wait for the next
    /// keepalive. Default 4 MiB.
    pub resume_store_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
            mtu: None,
            max_reassembly_bytes: 64 << 20,
            max_concurrent_inbound_streams: 10_000,
            max_outbound_queue_bytes: 1 << 20,
            outbound_stall_timeout: Duration::from_secs(30),
            default_prefetch: 256,
            max_prefetch: 4096,
            prefetch_bytes: 256 << 10,
            setup_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(30),
            lease: None,
            resume_store_bytes: 4 << 20,
        }
    }
}

impl Config {
    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_len < MIN_MTU || self.max_frame_len > MAX_FRAME_LEN {
            return Err(ConfigError::MaxFrameLen {
                value: self.max_frame_len,
                min: MIN_MTU,
                max: MAX_FRAME_LEN,
            });
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU || mtu > self.max_frame_len {
                return Err(ConfigError::Mtu {
                    value: mtu,
                    min: MIN_MTU,
                    max: self.max_frame_len,
                });
            }
        }
        if self.default_prefetch == 0 {
            return Err(ConfigError::Zero("default_prefetch"));
        }
        if self.max_outbound_queue_bytes == 0 {
            return Err(ConfigError::Zero("max_outbound_queue_bytes"));
        }
        if self.close_timeout.is_zero() {
            return Err(ConfigError::Zero("close_timeout"));
        }
        if self.max_concurrent_inbound_streams == 0 {
            return Err(ConfigError::Zero("max_concurrent_inbound_streams"));
        }
        if self.outbound_stall_timeout.is_zero() {
            return Err(ConfigError::Zero("outbound_stall_timeout"));
        }
        if self.resume_store_bytes == 0 {
            return Err(ConfigError::Zero("resume_store_bytes"));
        }
        if self.setup_timeout.is_zero() {
            return Err(ConfigError::Zero("setup_timeout"));
        }
        let fixed = self
            .lease
            .as_ref()
            .and_then(|l| l.policy.as_ref()?.fixed_grant());
        if fixed.is_some_and(|l| l.wire_ttl().is_zero()) {
            return Err(ConfigError::Zero("the fixed lease policy's ttl"));
        }
        if let Some(len) = fixed.map(|l| crate::frame::Frame::Lease(l.to_frame()).encoded_len()) {
            if len > self.max_frame_len {
                return Err(ConfigError::LeaseFrameTooLong {
                    len,
                    max: self.max_frame_len,
                });
            }
        }
        Ok(())
    }

    /// The frame size above which outbound payloads are fragmented.
    pub(crate) fn fragment_at(&self) -> usize {
        self.mtu
            .unwrap_or(self.max_frame_len)
            .min(self.max_frame_len)
    }
}

/// What a client announces in SETUP.
#[derive(Debug, Clone)]
pub struct SetupParams {
    /// MIME type of metadata (default `application/octet-stream`).
    pub metadata_mime_type: MimeType,
    /// MIME type of data (default `application/octet-stream`).
    pub data_mime_type: MimeType,
    /// Interval between the client's KEEPALIVE frames (default 20 s).
    pub keepalive_interval: Duration,
    /// Time without any frame from the peer after which it is considered
    /// dead (default 90 s).
    pub max_lifetime: Duration,
    /// The setup payload.
    pub payload: Payload,
}

impl Default for SetupParams {
    fn default() -> Self {
        Self {
            metadata_mime_type: MimeType::OCTET_STREAM,
            data_mime_type: MimeType::OCTET_STREAM,
            keepalive_interval: Duration::from_secs(20),
            max_lifetime: Duration::from_secs(90),
            payload: Payload::default(),
        }
    }
}

pub(crate) fn duration_ms(d: Duration) -> u32 {
    d.as_millis().clamp(1, u128::from(MAX_U31)) as u32
}

/// Whole milliseconds, 0 ..= 2^31 − 1.
pub(crate) fn duration_ms_or_zero(d: Duration) -> u32 {
    d.as_millis().min(u128::from(MAX_U31)) as u32
}

impl SetupParams {
    pub(crate) fn to_frame(&self) -> Setup {
        self.to_frame_with_token(None)
    }

    pub(crate) fn to_frame_with_token(&self, resume_token: Option<bytes::Bytes>) -> Setup {
        Setup {
            version: Version::V1_0,
            keepalive_interval_ms: duration_ms(self.keepalive_interval),
            max_lifetime_ms: duration_ms(self.max_lifetime),
            resume_token,
            lease: false,
            metadata_mime_type: self.metadata_mime_type.clone(),
            data_mime_type: self.data_mime_type.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// What the server knows about the transport a connection arrived on.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's socket address, when the transport has one.
    pub addr: Option<SocketAddr>,
    /// The request path (WebSocket).
    pub path: Option<String>,
    /// Handshake headers (WebSocket), names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl PeerInfo {
    /// Info with only a socket address.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            addr: Some(addr),
            ..Self::default()
        }
    }

    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The peer's SETUP, as the server's acceptor sees it.
#[derive(Debug, Clone)]
pub struct SetupInfo {
    /// Protocol version the client speaks.
    pub version: Version,
    /// Metadata MIME type.
    pub metadata_mime_type: MimeType,
    /// Data MIME type.
    pub data_mime_type: MimeType,
    /// The client's keepalive interval.
    pub keepalive_interval: Duration,
    /// The client's max lifetime.
    pub max_lifetime: Duration,
    /// The client set the L flag and the server is configured for lease:
    /// leasing is on for this connection (see [`crate::lease`]).
    pub lease: bool,
    /// The setup payload.
    pub payload: Payload,
    /// Transport details.
    pub peer: PeerInfo,
}

impl SetupInfo {
    pub(crate) fn from_frame(s: Setup, peer: PeerInfo) -> Self {
        Self {
            version: s.version,
            metadata_mime_type: s.metadata_mime_type,
            data_mime_type: s.data_mime_type,
            keepalive_interval: Duration::from_millis(u64::from(s.keepalive_interval_ms)),
            max_lifetime: Duration::from_millis(u64::from(s.max_lifetime_ms)),
            lease: s.lease,
            payload: s.payload,
            peer,
        }
    }
}
