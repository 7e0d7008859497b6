//! The server's side of connection setup, without I/O: the first frame must
//! be a valid SETUP (or a RESUME, where resumption is on) and must arrive
//! before the setup deadline. The runtime reads the frame, asks
//! [`Handshake::first_frame`] what it means, and sends the ERROR it names
//! when it is refused.

use std::time::Instant;

use crate::config::Config;
use crate::error::{ConnectionError, Limit};
use crate::frame::{DecodeError, ErrorCode, Frame, FrameType, Resume, Setup, Version};

/// What the first frame of a server-side connection led to.
#[derive(Debug)]
pub(crate) enum First {
    /// A SETUP this server takes (the acceptor decides next).
    Setup(Box<Setup>),
    /// A RESUME of a version we resume, for the session store to judge.
    Resume(Resume),
    /// Refused: send `ERROR[code]` with the message, then close.
    Reject { code: ErrorCode, message: String },
}

impl First {
    fn reject(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Reject {
            code,
            message: message.into(),
        }
    }
}

/// One connection's setup: its deadline, and what this server accepts.
#[derive(Debug, Clone)]
pub(crate) struct Handshake {
    deadline: Instant,
    timeout: std::time::Duration,
    /// The server keeps resumable sessions.
    resumption: bool,
    /// The server grants leases.
    lease: bool,
}

impl Handshake {
    pub(crate) fn new(config: &Config, resumption: bool, now: Instant) -> Self {
        Self {
            deadline: now + config.setup_timeout,
            timeout: config.setup_timeout,
            resumption,
            lease: config.lease.is_some(),
        }
    }

    /// When the first frame must have arrived.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The error for a connection that sent nothing in time.
    pub(crate) fn timed_out(&self) -> ConnectionError {
        ConnectionError::LimitExceeded(Limit::SetupTimeout(self.timeout))
    }

    /// Judges the first frame (or why it could not be decoded).
    pub(crate) fn first_frame(&self, first: Result<Frame, &DecodeError>) -> First {
        match first {
            Err(e) if e.frame_type() == Some(FrameType::Setup) => {
                First::reject(ErrorCode::INVALID_SETUP, format!("invalid SETUP: {e}"))
            }
            Err(_) => First::reject(
                ErrorCode::INVALID_SETUP,
                "first frame must be SETUP or RESUME",
            ),
            Ok(Frame::Setup(s)) => self.setup(s),
            Ok(Frame::Resume(r)) => self.resume(r),
            Ok(_) => First::reject(
                ErrorCode::INVALID_SETUP,
                "first frame must be SETUP or RESUME",
            ),
        }
    }

    fn setup(&self, s: Box<Setup>) -> First {
        if s.version != Version::V1_0 {
            First::reject(
                ErrorCode::INVALID_SETUP,
                format!("unsupported protocol version {}", s.version),
            )
        } else if s.resume_token.is_some() && !self.resumption {
            First::reject(ErrorCode::REJECTED_SETUP, "resumption is not supported")
        } else if s.resume_token.as_ref().is_some_and(|t| t.is_empty()) {
            First::reject(ErrorCode::REJECTED_SETUP, "the resume token is empty")
        } else if s.lease && !self.lease {
            First::reject(ErrorCode::UNSUPPORTED_SETUP, "lease is not supported")
        } else {
            First::Setup(s)
        }
    }

    fn resume(&self, r: Resume) -> First {
        if !self.resumption {
            First::reject(ErrorCode::REJECTED_RESUME, "resumption is not supported")
        } else if !resume_version_ok(r.version) {
            First::reject(
                ErrorCode::REJECTED_RESUME,
                format!("unsupported protocol version {}", r.version),
            )
        } else {
            First::Resume(r)
        }
    }
}

/// Whether a RESUME's version is one we resume: 1.0, and 0.1, which
/// rsocket-js 1.0.0-alpha sends in RESUME (a documented leniency).
fn resume_version_ok(v: Version) -> bool {
    v == Version::V1_0 || (v.major == 0 && v.minor == 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::config::SetupParams;
    use crate::frame::RequestN;
    use crate::lease::LeaseConfig;

    fn setup() -> Box<Setup> {
        Box::new(SetupParams::default().to_frame())
    }

    fn rejected(f: First) -> (ErrorCode, String) {
        match f {
            First::Reject { code, message } => (code, message),
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn the_deadline_is_the_setup_timeout_from_now() {
        let now = Instant::now();
        let config = Config {
            setup_timeout: Duration::from_secs(7),
            ..Config::default()
        };
        let h = Handshake::new(&config, false, now);
        assert_eq!(h.deadline(), now + Duration::from_secs(7));
        assert!(matches!(
            h.timed_out(),
            ConnectionError::LimitExceeded(Limit::SetupTimeout(d)) if d == Duration::from_secs(7)
        ));
    }

    #[test]
    fn each_refusal_names_the_spec_code() {
        let now = Instant::now();
        let plain = Handshake::new(&Config::default(), false, now);
        let leasing = Config {
            lease: Some(LeaseConfig::default()),
            ..Config::default()
        };
        let full = Handshake::new(&leasing, true, now);

        assert!(matches!(
            plain.first_frame(Ok(Frame::Setup(setup()))),
            First::Setup(_)
        ));

        let mut v2 = setup();
        v2.version = Version { major: 2, minor: 0 };
        assert_eq!(
            rejected(plain.first_frame(Ok(Frame::Setup(v2)))).0,
            ErrorCode::INVALID_SETUP
        );

        let mut token = setup();
        token.resume_token = Some(Bytes::from_static(b"t"));
        assert_eq!(
            rejected(plain.first_frame(Ok(Frame::Setup(token.clone())))).0,
            ErrorCode::REJECTED_SETUP
        );
        assert!(matches!(
            full.first_frame(Ok(Frame::Setup(token))),
            First::Setup(_)
        ));

        let mut empty = setup();
        empty.resume_token = Some(Bytes::new());
        assert_eq!(
            rejected(full.first_frame(Ok(Frame::Setup(empty)))).0,
            ErrorCode::REJECTED_SETUP
        );

        let mut lease = setup();
        lease.lease = true;
        assert_eq!(
            rejected(plain.first_frame(Ok(Frame::Setup(lease.clone())))).0,
            ErrorCode::UNSUPPORTED_SETUP
        );
        assert!(matches!(
            full.first_frame(Ok(Frame::Setup(lease))),
            First::Setup(_)
        ));

        let n = RequestN {
            stream_id: crate::frame::StreamId::new(1).expect("id"),
            request_n: crate::frame::RequestCount::ONE,
        };
        assert_eq!(
            rejected(plain.first_frame(Ok(Frame::RequestN(n)))).0,
            ErrorCode::INVALID_SETUP
        );
    }

    #[test]
    fn resume_is_judged_by_version_and_server_support() {
        let now = Instant::now();
        let resume = |major, minor| Resume {
            version: Version { major, minor },
            resume_token: Bytes::from_static(b"t"),
            last_received_server_position: 0,
            first_available_client_position: 0,
        };
        let plain = Handshake::new(&Config::default(), false, now);
        let resuming = Handshake::new(&Config::default(), true, now);
        assert_eq!(
            rejected(plain.first_frame(Ok(Frame::Resume(resume(1, 0))))).0,
            ErrorCode::REJECTED_RESUME
        );
        assert!(matches!(
            resuming.first_frame(Ok(Frame::Resume(resume(1, 0)))),
            First::Resume(_)
        ));
        // rsocket-js 1.0.0-alpha sends 0.1 in RESUME.
        assert!(matches!(
            resuming.first_frame(Ok(Frame::Resume(resume(0, 1)))),
            First::Resume(_)
        ));
        assert_eq!(
            rejected(resuming.first_frame(Ok(Frame::Resume(resume(2, 0))))).0,
            ErrorCode::REJECTED_RESUME
        );
    }
}
