//! [`Status`]: the outcome of a failed call, with a gRPC-style [`Code`],
//! and its mapping onto RSocket ERROR frames.
//!
//! The mapping is documented in the crate docs ("Errors on the wire"). In
//! short: ERROR frames carry only the spec's codes (`APPLICATION_ERROR`,
//! `REJECTED`, `INVALID`, and `CANCELED` from the core), and the RPC code
//! travels as the start of the message, `"NOT_FOUND: no such user"`.

use std::fmt;

use rsocket_core::{ErrorCode, RequestError, StreamError};

/// The RPC status codes, numbered and named as in gRPC so that users can
/// match on the vocabulary they know.
///
/// On the wire the code travels by name at the start of an ERROR frame's
/// message (see the crate docs); [`Code::as_str`] and [`Code::from_name`]
/// convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// Not an error; never sent in an ERROR frame.
    Ok = 0,
    /// The call was cancelled, usually by the caller.
    Cancelled = 1,
    /// Unknown error, for example an ERROR frame from a peer that does not
    /// speak this mapping.
    Unknown = 2,
    /// The client gave an invalid argument (or the message did not decode).
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// Some requested entity was not found.
    NotFound = 5,
    /// The entity the client tried to create already exists.
    AlreadyExists = 6,
    /// The caller may not perform this operation.
    PermissionDenied = 7,
    /// A resource (quota, message size, ...) is exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// The operation was aborted (concurrency conflict, ...).
    Aborted = 10,
    /// The operation went past the valid range.
    OutOfRange = 11,
    /// The method is not implemented, or not known to the server.
    Unimplemented = 12,
    /// An invariant of the system is broken (for example a handler panicked).
    Internal = 13,
    /// The service is unavailable: on the client, the connection ended or
    /// is closing, no connection was available, or no lease allowed the
    /// request. Usually worth retrying.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The caller is not authenticated.
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Self; 17] = [
        Self::Ok,
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The wire name, as gRPC spells it: `NOT_FOUND`, `INVALID_ARGUMENT`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Cancelled => "CANCELLED",
            Self::Unknown => "UNKNOWN",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Aborted => "ABORTED",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::DataLoss => "DATA_LOSS",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code with this wire name (exact, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The gRPC number of the code.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The code with this gRPC number.
    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.get(usize::from(n)).copied()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed: a [`Code`] to match on and a message for people.
///
/// Handlers return it, interceptors reject calls with it, and clients get
/// it for every failure: an ERROR frame from the server, a connection that
/// ended, a deadline that passed, a message that did not decode.
///
/// ```
/// use rsocket_rpc::{Code, Status};
/// let status = Status::not_found("no such user");
/// assert_eq!(status.code(), Code::NotFound);
/// assert_eq!(status.to_string(), "NOT_FOUND: no such user");
/// ```
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Status {
    code: Code,
    message: String,
    /// The RSocket code of the ERROR frame this status arrived in.
    received: Option<ErrorCode>,
    /// The RSocket code to send instead of `APPLICATION_ERROR`, set only by
    /// the library (decoding, routing, interceptors).
    send_as: Option<ErrorCode>,
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Status");
        d.field("code", &self.code).field("message", &self.message);
        if let Some(w) = self.received {
            d.field("rsocket_code", &w);
        }
        d.finish()
    }
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {$(
        $(#[$doc])*
        pub fn $name(message: impl Into<String>) -> Self {
            Self::new(Code::$code, message)
        }
    )*};
}

impl Status {
    /// A status with any code.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            received: None,
            send_as: None,
        }
    }

    constructors! {
        /// [`Code::Cancelled`].
        cancelled => Cancelled,
        /// [`Code::Unknown`].
        unknown => Unknown,
        /// [`Code::InvalidArgument`].
        invalid_argument => InvalidArgument,
        /// [`Code::DeadlineExceeded`].
        deadline_exceeded => DeadlineExceeded,
        /// [`Code::NotFound`].
        not_found => NotFound,
        /// [`Code::AlreadyExists`].
        already_exists => AlreadyExists,
        /// [`Code::PermissionDenied`].
        permission_denied => PermissionDenied,
        /// [`Code::ResourceExhausted`].
        resource_exhausted => ResourceExhausted,
        /// [`Code::FailedPrecondition`].
        failed_precondition => FailedPrecondition,
        /// [`Code::Aborted`].
        aborted => Aborted,
        /// [`Code::OutOfRange`].
        out_of_range => OutOfRange,
        /// [`Code::Unimplemented`].
        unimplemented => Unimplemented,
        /// [`Code::Internal`].
        internal => Internal,
        /// [`Code::Unavailable`].
        unavailable => Unavailable,
        /// [`Code::DataLoss`].
        data_loss => DataLoss,
        /// [`Code::Unauthenticated`].
        unauthenticated => Unauthenticated,
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message (without the code).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The RSocket error code of the ERROR frame this status arrived in
    /// (client side), if it came from one.
    pub fn rsocket_code(&self) -> Option<ErrorCode> {
        self.received
    }

    /// Marks the status to go out with a given RSocket code instead of
    /// `APPLICATION_ERROR`. The library uses `INVALID` for messages that do
    /// not decode and `REJECTED` for calls refused before any handler ran.
    pub(crate) fn with_wire(mut self, code: ErrorCode) -> Self {
        self.send_as = Some(code);
        self
    }

    /// A status for a call refused before processing: goes out as
    /// `ERROR[REJECTED]`.
    pub(crate) fn rejected(self) -> Self {
        self.with_wire(ErrorCode::REJECTED)
    }

    /// The ERROR frame a server sends for this status when it is the
    /// outcome of a call: `APPLICATION_ERROR` unless the library made the
    /// status (`INVALID` for a message that did not decode, `REJECTED` for a
    /// call refused before its handler ran), and the message
    /// `"<CODE>: <message>"`. A status with code
    /// [`Code::Ok`] is sent as `UNKNOWN`, since an error must not read OK.
    /// A message too long for one ERROR frame (the connection's
    /// `Config::max_frame_len`, at most 16 MiB, less 10 bytes; code prefix
    /// included) is cut to fit when the frame is built.
    pub fn to_stream_error(&self) -> StreamError {
        let code = match self.code {
            Code::Ok => Code::Unknown,
            c => c,
        };
        let wire = match self.send_as {
            Some(w) if w == ErrorCode::REJECTED || w == ErrorCode::INVALID => w,
            _ => ErrorCode::APPLICATION_ERROR,
        };
        StreamError::new(wire, format!("{code}: {}", self.message))
    }

    /// Reads an ERROR frame: a message that starts with a known code name
    /// followed by `": "` gives that code and the rest as the message;
    /// anything else is mapped from the frame's code (see the crate docs).
    pub fn from_stream_error(err: &StreamError) -> Self {
        let parsed = err.message.split_once(": ").and_then(|(name, rest)| {
            Code::from_name(name)
                .filter(|c| *c != Code::Ok)
                .map(|c| (c, rest))
        });
        let (code, message) = match parsed {
            Some((code, rest)) => (code, rest.to_owned()),
            None => (fallback_code(err.code), err.message.clone()),
        };
        Self {
            code,
            message,
            received: Some(err.code),
            send_as: None,
        }
    }
}

/// The code given to an ERROR frame whose message carries none.
fn fallback_code(code: ErrorCode) -> Code {
    if code == ErrorCode::INVALID {
        Code::InvalidArgument
    } else if code == ErrorCode::REJECTED {
        Code::Unavailable
    } else if code == ErrorCode::CANCELED {
        Code::Cancelled
    } else {
        Code::Unknown
    }
}

impl From<RequestError> for Status {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::Stream(e) => Self::from_stream_error(&e),
            RequestError::Connection(e) => Self::unavailable(format!("connection: {e}")),
            // Nothing was sent in these three: the call can be retried, on
            // this connection later or on another one.
            e @ (RequestError::ConnectionClosing { .. }
            | RequestError::Unavailable(_)
            | RequestError::NoLease(_)) => Self::unavailable(e.to_string()),
            RequestError::Cancelled => Self::cancelled("the call was cancelled"),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<&Status> for StreamError {
    fn from(status: &Status) -> Self {
        status.to_stream_error()
    }
}

impl From<Status> for RequestError {
    fn from(status: Status) -> Self {
        Self::Stream(status.to_stream_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (i, code) in Code::ALL.into_iter().enumerate() {
            assert_eq!(Code::from_name(code.as_str()), Some(code));
            assert_eq!(usize::from(code.number()), i);
            assert_eq!(Code::from_number(code.number()), Some(code));
        }
        assert_eq!(Code::from_name("not_found"), None);
        assert_eq!(Code::from_number(17), None);
    }

    #[test]
    fn handler_error_is_application_error_with_code_prefix() {
        let e = Status::not_found("no such user").to_stream_error();
        assert_eq!(e.code, ErrorCode::APPLICATION_ERROR);
        assert_eq!(e.message, "NOT_FOUND: no such user");
    }

    #[test]
    fn library_marks_survive() {
        let e = Status::invalid_argument("bad")
            .with_wire(ErrorCode::INVALID)
            .to_stream_error();
        assert_eq!(e.code, ErrorCode::INVALID);
        let e = Status::unauthenticated("who?").rejected().to_stream_error();
        assert_eq!(e.code, ErrorCode::REJECTED);
        assert_eq!(e.message, "UNAUTHENTICATED: who?");
        // Other codes are not sent as they are.
        let e = Status::internal("x")
            .with_wire(ErrorCode::CONNECTION_ERROR)
            .to_stream_error();
        assert_eq!(e.code, ErrorCode::APPLICATION_ERROR);
    }

    #[test]
    fn ok_is_never_sent() {
        let e = Status::new(Code::Ok, "fine?").to_stream_error();
        assert_eq!(e.message, "UNKNOWN: fine?");
    }

    #[test]
    fn parses_code_prefix_and_keeps_rest() {
        let s = Status::from_stream_error(&StreamError::application("NOT_FOUND: a: b"));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "a: b");
        assert_eq!(s.rsocket_code(), Some(ErrorCode::APPLICATION_ERROR));
    }

    #[test]
    fn falls_back_on_frame_code() {
        let cases = [
            (StreamError::application("boom"), Code::Unknown),
            (StreamError::invalid("bad"), Code::InvalidArgument),
            (StreamError::rejected("no"), Code::Unavailable),
            (StreamError::canceled("stop"), Code::Cancelled),
            (StreamError::application("OK: looks fine"), Code::Unknown),
            (StreamError::application("Not_Found: x"), Code::Unknown),
            (StreamError::application(""), Code::Unknown),
        ];
        for (err, code) in cases {
            let s = Status::from_stream_error(&err);
            assert_eq!(s.code(), code, "{err:?}");
            assert_eq!(s.message(), err.message);
        }
    }

    #[test]
    fn request_errors() {
        assert_eq!(
            Status::from(RequestError::Cancelled).code(),
            Code::Cancelled
        );
        let conn = rsocket_core::ConnectionError::ClosedByPeer;
        assert_eq!(
            Status::from(RequestError::from(conn)).code(),
            Code::Unavailable
        );
    }

    #[test]
    fn requests_not_sent_are_unavailable() {
        let none_ready: std::sync::Arc<dyn std::error::Error + Send + Sync> =
            std::sync::Arc::new(std::io::Error::other("no ready member"));
        let cases = [
            (
                RequestError::ConnectionClosing {
                    initiator: rsocket_core::Initiator::Remote,
                },
                "connection is closing",
            ),
            (RequestError::Unavailable(none_ready), "no ready member"),
            (
                RequestError::NoLease(rsocket_core::NoLease::NotGranted),
                "no valid lease",
            ),
        ];
        for (err, text) in cases {
            let s = Status::from(err.clone());
            assert_eq!(s.code(), Code::Unavailable, "{err:?}");
            assert!(s.message().contains(text), "{err:?}: {}", s.message());
            assert_eq!(s.message(), err.to_string());
        }
        // A protocol violation is a bug somewhere, not unavailability.
        let s = Status::from(RequestError::Protocol(
            rsocket_core::StreamViolation::BeyondCredit,
        ));
        assert_eq!(s.code(), Code::Internal);
    }
}
