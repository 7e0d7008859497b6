//! What the client prints: payloads one per line (or one JSON object per
//! line), and errors that carry the server's ERROR code.

use std::fmt;
use std::io::{self, Write as _};

use anyhow::Result;
use rsocket::{ConnectionError, ErrorCode, Payload, RequestError};
use serde_json::{json, Map, Value};

/// The server answered with an ERROR frame (on the stream, or on stream 0
/// for the connection or SETUP): exit status 1.
#[derive(Debug)]
pub(crate) struct RemoteError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server answered ERROR {} ({:#010x}): {}",
            self.code, self.code.0, self.message
        )
    }
}

impl std::error::Error for RemoteError {}

/// Standard output went away (a closed pipe): stop quietly.
#[derive(Debug)]
pub(crate) struct OutputClosed;

impl fmt::Display for OutputClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for OutputClosed {}

/// The ERROR code and message a request error carries, if any.
pub(crate) fn remote_parts(e: &RequestError) -> Option<(ErrorCode, String)> {
    match e {
        RequestError::Stream(s) => Some((s.code, s.message.clone())),
        RequestError::Connection(
            ConnectionError::Remote { code, message }
            | ConnectionError::SetupRejected { code, message, .. },
        ) => Some((*code, message.clone())),
        _ => None,
    }
}

/// A request error as an `anyhow` error: [`RemoteError`] when the server
/// sent an ERROR frame.
pub(crate) fn classify(e: RequestError) -> anyhow::Error {
    match remote_parts(&e) {
        Some((code, message)) => RemoteError { code, message }.into(),
        None => anyhow::Error::new(e).context("request failed"),
    }
}

/// Text if the bytes are UTF-8 (as a JSON string), else hex.
fn bytes_field(map: &mut Map<String, Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => {
            map.insert(name.to_owned(), Value::String(s.to_owned()));
        }
        Err(_) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            map.insert(format!("{name}_hex"), Value::String(hex));
        }
    }
}

/// Standard output in the chosen format.
#[derive(Debug)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    fn write(line: &str) -> Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|_| OutputClosed.into())
    }

    /// One payload: its data as a line, or a `next` event with data and
    /// metadata.
    pub(crate) fn payload(&self, p: &Payload) -> Result<()> {
        if self.json {
            let mut map = Map::new();
            map.insert("event".into(), "next".into());
            bytes_field(&mut map, "data", &p.data);
            if let Some(md) = &p.metadata {
                bytes_field(&mut map, "metadata", md);
            }
            Self::write(&Value::Object(map).to_string())
        } else {
            Self::write(&String::from_utf8_lossy(&p.data))
        }
    }

    /// A line printed as is in text mode (already JSON in JSON mode).
    pub(crate) fn line(&self, line: &str) -> Result<()> {
        Self::write(line)
    }

    /// A stream event (`complete`, `cancel`, `sent`); printed only in JSON
    /// mode, with extra fields.
    pub(crate) fn event(&self, name: &str, extra: Value) -> Result<()> {
        if !self.json {
            return Ok(());
        }
        let mut map = match extra {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        map.insert("event".into(), name.into());
        Self::write(&Value::Object(map).to_string())
    }

    /// The `error` event for an ERROR frame (JSON mode only; the message
    /// goes to standard error in any mode).
    pub(crate) fn error_event(&self, e: &RemoteError) -> Result<()> {
        self.event(
            "error",
            json!({"code": e.code.to_string(), "code_value": e.code.0, "message": e.message}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsocket::StreamError;

    #[test]
    fn remote_errors_are_recognised() {
        let e = classify(RequestError::Stream(StreamError::application("boom")));
        let r = e.downcast_ref::<RemoteError>().expect("remote");
        assert_eq!(r.code, ErrorCode::APPLICATION_ERROR);
        assert_eq!(
            r.to_string(),
            "server answered ERROR APPLICATION_ERROR (0x00000201): boom"
        );
        let e = classify(RequestError::Cancelled);
        assert!(e.downcast_ref::<RemoteError>().is_none());
        let e = classify(RequestError::Connection(ConnectionError::Remote {
            code: ErrorCode::CONNECTION_ERROR,
            message: "bye".into(),
        }));
        assert!(e.downcast_ref::<RemoteError>().is_some());
    }

    #[test]
    fn binary_fields_become_hex() {
        let mut m = Map::new();
        bytes_field(&mut m, "data", &[0xff, 0x00]);
        bytes_field(&mut m, "metadata", b"ok");
        assert_eq!(m["data_hex"], "ff00");
        assert_eq!(m["metadata"], "ok");
    }
}
