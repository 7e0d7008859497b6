//! Typed errors: what travels in a stream's ERROR frame ([`StreamError`]),
//! why a connection ended ([`ConnectionError`]), and what a request observes
//! ([`RequestError`]).

use std::io;
use std::sync::Arc;

use crate::frame::ErrorCode;

/// An error carried by an ERROR frame on a stream: the spec's code and a
/// UTF-8 message. Application-defined codes round-trip unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StreamError {
    /// The error code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl StreamError {
    /// An error with any code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// APPLICATION_ERROR.
    pub fn application(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::APPLICATION_ERROR, message)
    }

    /// REJECTED: the request was not processed.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::REJECTED, message)
    }

    /// CANCELED: the responder cancelled the request.
    pub fn canceled(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::CANCELED, message)
    }

    /// INVALID: the request is invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID, message)
    }
}

/// Who brought a connection down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// This side (a local close or a limit we enforce).
    Local,
    /// The remote peer (its ERROR frame, or a violation we detected in what
    /// it sent).
    Remote,
}

/// Why a connection ended. Cloned to every pending request when it does.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The transport failed or was closed underneath us.
    #[error("transport error: {0}")]
    Io(Arc<io::Error>),
    /// The peer closed the transport without an ERROR frame.
    #[error("connection closed by the peer")]
    ClosedByPeer,
    /// The peer violated the protocol; we sent `ERROR[CONNECTION_ERROR]` and
    /// closed.
    #[error("protocol violation by the peer: {message}")]
    Protocol {
        /// The code we sent.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// The peer sent an ERROR frame on stream 0.
    #[error("peer closed the connection with {code}: {message}")]
    Remote {
        /// The code it sent.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The server rejected our SETUP (or, at a server, we rejected theirs).
    #[error("setup rejected with {code}: {message}")]
    SetupRejected {
        /// INVALID_SETUP, UNSUPPORTED_SETUP, REJECTED_SETUP or REJECTED_RESUME.
        code: ErrorCode,
        /// The reason.
        message: String,
        /// Who rejected it.
        initiator: Initiator,
    },
    /// Nothing was received from the peer within the max lifetime.
    #[error("no frame received from the peer within the keepalive max lifetime")]
    KeepaliveTimeout,
    /// A local limit was exceeded.
    #[error("local limit exceeded: {0}")]
    LimitExceeded(Limit),
    /// The connection was closed on this side.
    #[error("connection closed locally")]
    LocallyClosed,
    /// The connection never started: its configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A resumable session lost its transport and could not be resumed;
    /// every request still pending on it fails with this error.
    #[error("session could not be resumed: {reason}")]
    ResumeFailed {
        /// Why.
        reason: ResumeFailure,
    },
}

/// Why a resumable session could not be resumed (see
/// [`ConnectionError::ResumeFailed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeFailure {
    /// No new transport resumed the session within the session timeout.
    #[error("not resumed within the session timeout of {0:?}")]
    SessionTimeout(std::time::Duration),
    /// The peer refused the resumption (`ERROR[REJECTED_RESUME]` or
    /// `ERROR[CONNECTION_ERROR]` in answer to RESUME).
    #[error("the peer rejected the resumption with {code}: {message}")]
    Rejected {
        /// The code it sent.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// This side refused the peer's resumption, or the positions the peer
    /// reported cannot be honoured (frames it lacks were already
    /// released, or a position is not on a frame boundary).
    #[error("positions cannot be honoured: {0}")]
    Positions(String),
    /// The server dropped the detached session to stay within its limits
    /// on detached sessions (count or bytes).
    #[error("the detached session was evicted by the server's limits")]
    Evicted,
    /// The peer answered RESUME with something other than RESUME_OK or
    /// ERROR.
    #[error("unexpected answer to RESUME: {0}")]
    Protocol(String),
}

impl ConnectionError {
    /// Who caused the connection to end.
    pub fn initiator(&self) -> Initiator {
        match self {
            Self::Io(_) | Self::ClosedByPeer | Self::Protocol { .. } | Self::Remote { .. } => {
                Initiator::Remote
            }
            Self::SetupRejected { initiator, .. } => *initiator,
            Self::KeepaliveTimeout => Initiator::Remote,
            Self::LimitExceeded(_) | Self::LocallyClosed | Self::Config(_) => Initiator::Local,
            Self::ResumeFailed { reason } => match reason {
                ResumeFailure::Rejected { .. } | ResumeFailure::Protocol(_) => Initiator::Remote,
                _ => Initiator::Local,
            },
        }
    }
}

impl From<io::Error> for ConnectionError {
    fn from(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

/// What a request (or a handler's stream) can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The other side answered with an ERROR frame on the stream.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The connection ended before the request did.
    #[error("connection: {0}")]
    Connection(#[from] ConnectionError),
    /// The connection is closing gracefully (`ERROR[CONNECTION_CLOSE]` was
    /// sent or received) and takes no new requests; this one was not sent.
    #[error("connection is closing ({initiator:?} side began); request not sent")]
    ConnectionClosing {
        /// Which side began the graceful close.
        initiator: Initiator,
    },
    /// The stream was cancelled (by the peer, for a responder; locally, for
    /// a requester).
    #[error("stream cancelled")]
    Cancelled,
    /// The peer broke the protocol on this stream; the stream was
    /// cancelled.
    #[error("protocol violation on the stream: {0}")]
    Protocol(StreamViolation),
    /// No connection could take the request, so it was not sent: for
    /// example, a load balancer had no ready member within its wait time.
    /// The source is the layer's own error; downcast it to learn more.
    #[error("no connection available: {0}")]
    Unavailable(Arc<dyn std::error::Error + Send + Sync>),
    /// Leasing is on and the peer's lease does not allow a new request
    /// (none granted yet, used up, or expired), also after waiting up to
    /// `LeaseConfig::wait`. The request was not sent.
    #[error("no valid lease: {0}; request not sent")]
    NoLease(NoLease),
    /// The frame would be longer than `Config::max_frame_len` and its type
    /// cannot be fragmented (METADATA_PUSH). Nothing was sent; the
    /// connection goes on.
    #[error("a frame of {len} bytes exceeds max_frame_len {max}; not sent")]
    FrameTooLarge {
        /// The frame's length (length prefix excluded).
        len: usize,
        /// `Config::max_frame_len`.
        max: usize,
    },
}

/// Why the requester had no valid lease ([`RequestError::NoLease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoLease {
    /// The peer has not granted a lease yet.
    #[error("the peer has not granted a lease yet")]
    NotGranted,
    /// Every request of the current lease has been used.
    #[error("the lease's requests are used up")]
    Exhausted,
    /// The current lease's time-to-live has passed.
    #[error("the lease has expired")]
    Expired,
}

impl RequestError {
    /// The stream error, if the peer sent one.
    pub fn as_stream_error(&self) -> Option<&StreamError> {
        match self {
            Self::Stream(e) => Some(e),
            _ => None,
        }
    }

    /// The ERROR frame a responder sends for this error.
    pub(crate) fn to_stream_error(&self) -> StreamError {
        match self {
            Self::Stream(e) => e.clone(),
            Self::Cancelled => StreamError::canceled("cancelled"),
            other => StreamError::application(other.to_string()),
        }
    }
}

/// A limit of [`Config`](crate::Config) that ended a connection at run
/// time (as opposed to a [`ConfigError`], a bad setting found up front).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Limit {
    /// Control frames alone passed twice `max_outbound_queue_bytes`: the
    /// peer is not reading.
    #[error("outbound queue passed twice its cap of {cap} bytes: the peer is not reading")]
    OutboundQueue {
        /// `Config::max_outbound_queue_bytes`.
        cap: usize,
    },
    /// Inbound reassembly would have exceeded `max_reassembly_bytes`.
    #[error("reassembly buffers would exceed {cap} bytes")]
    ReassemblyBytes {
        /// `Config::max_reassembly_bytes`.
        cap: usize,
    },
    /// The peer read nothing of a full outbound queue for
    /// `outbound_stall_timeout`: the transport was dropped.
    #[error("the peer read nothing of a full outbound queue for {0:?}")]
    OutboundStall(std::time::Duration),
    /// No SETUP arrived within `setup_timeout`.
    #[error("no SETUP within {0:?}")]
    SetupTimeout(std::time::Duration),
    /// The transport refused an outbound frame (for example one longer
    /// than its maximum frame length).
    #[error("the transport refused an outbound frame")]
    OutboundFrame,
}

/// How a peer broke the protocol on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamViolation {
    /// It sent more items than it was granted with REQUEST_N.
    #[error("the peer sent more items than it was granted")]
    BeyondCredit,
}

/// A configuration value out of range, found by
/// [`Config::validate`](crate::Config::validate) before anything connects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_frame_len` outside `min..=max`.
    #[error("max_frame_len {value} is outside {min}..={max}")]
    MaxFrameLen {
        /// The value given.
        value: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// `mtu` outside `min..=max_frame_len`.
    #[error("mtu {value} is outside {min}..={max}")]
    Mtu {
        /// The value given.
        value: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed (`max_frame_len`).
        max: usize,
    },
    /// A setting that must be greater than zero is zero.
    #[error("{0} must be greater than 0")]
    Zero(&'static str),
    /// The client's SETUP frame (its payload, MIME types and resume token)
    /// is longer than `max_frame_len`; SETUP cannot be fragmented.
    #[error("the SETUP frame is {len} bytes, over max_frame_len {max}")]
    SetupFrameTooLong {
        /// The SETUP frame's length.
        len: usize,
        /// `max_frame_len`.
        max: usize,
    },
    /// The keepalive max lifetime is not longer than the keepalive
    /// interval: an idle connection would be judged dead (by both sides)
    /// between two KEEPALIVEs.
    #[error(
        "the keepalive max lifetime ({lifetime:?}) must be longer than its interval ({interval:?})"
    )]
    KeepaliveLifetime {
        /// The keepalive interval.
        interval: std::time::Duration,
        /// The max lifetime.
        lifetime: std::time::Duration,
    },
    /// The fixed lease policy's LEASE frame (its metadata) is longer than
    /// `max_frame_len`, so it could never be sent.
    #[error("the fixed lease policy's LEASE frame is {len} bytes, over max_frame_len {max}")]
    LeaseFrameTooLong {
        /// The LEASE frame's length.
        len: usize,
        /// `max_frame_len`.
        max: usize,
    },
}
