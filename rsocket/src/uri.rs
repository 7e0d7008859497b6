//! Transport URIs: `tcp://host:port`, `ws://host:port/path`,
//! `wss://host:port/path`.

use std::fmt;
use std::str::FromStr;

/// Where to connect or listen, parsed from a URI.
///
/// ```
/// use rsocket::TransportUri;
/// let uri: TransportUri = "tcp://127.0.0.1:7878".parse()?;
/// assert_eq!(uri, TransportUri::Tcp { host: "127.0.0.1".into(), port: 7878 });
/// let uri: TransportUri = "ws://localhost:8080/rsocket?x=1".parse()?;
/// assert_eq!(uri.to_string(), "ws://localhost:8080/rsocket?x=1");
/// assert!("http://example.com".parse::<TransportUri>().is_err());
/// # Ok::<(), rsocket::UriError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportUri {
    /// Length-prefixed frames over TCP.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// WebSocket, one frame per binary message; `tls` for `wss://`.
    Ws {
        /// The whole URL, as given but for the scheme, which is in lower
        /// case (the WebSocket client accepts no other spelling).
        url: String,
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port (80 or 443 when the URL has none).
        port: u16,
        /// Path and query, at least `/`.
        path: String,
        /// `wss://`.
        tls: bool,
    },
}

/// Why a string is not a [`TransportUri`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// No `scheme://`.
    #[error("missing scheme: expected tcp://, ws:// or wss://")]
    MissingScheme,
    /// A scheme other than `tcp`, `ws` and `wss`.
    #[error("unsupported scheme {0:?}: expected tcp, ws or wss")]
    UnsupportedScheme(String),
    /// No host.
    #[error("missing host")]
    MissingHost,
    /// An authority that is not `host[:port]` or `[ipv6][:port]`: an IPv6
    /// address without brackets, or something other than `:port` after
    /// the closing bracket.
    #[error("invalid host {0:?}: expected host[:port] or [ipv6][:port]")]
    InvalidHost(String),
    /// `tcp://` needs a port.
    #[error("missing port")]
    MissingPort,
    /// The port is not a number in 0..=65535.
    #[error("invalid port {0:?}")]
    InvalidPort(String),
}

impl TransportUri {
    /// `host:port`, with brackets around an IPv6 address, for resolving.
    pub fn authority(&self) -> String {
        let (host, port) = match self {
            Self::Tcp { host, port } | Self::Ws { host, port, .. } => (host, port),
        };
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

impl FromStr for TransportUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or(UriError::MissingScheme)?;
        let scheme = scheme.to_ascii_lowercase();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = split_authority(authority)?;
        match scheme.as_str() {
            "tcp" => Ok(Self::Tcp {
                host,
                port: port.ok_or(UriError::MissingPort)?,
            }),
            "ws" | "wss" => {
                let tls = scheme == "wss";
                let path = match path {
                    "" => "/".to_owned(),
                    p if p.starts_with('?') => format!("/{p}"),
                    p => p.to_owned(),
                };
                Ok(Self::Ws {
                    url: format!("{scheme}://{rest}"),
                    host,
                    port: port.unwrap_or(if tls { 443 } else { 80 }),
                    path,
                    tls,
                })
            }
            _ => Err(UriError::UnsupportedScheme(scheme)),
        }
    }
}

/// `host[:port]`, `[v6][:port]`.
fn split_authority(authority: &str) -> Result<(String, Option<u16>), UriError> {
    let invalid = || UriError::InvalidHost(authority.to_owned());
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(UriError::MissingHost)?;
        match after {
            "" => (host, None),
            after => (host, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        // A second colon: an IPv6 address without its brackets.
        if port.is_some_and(|p| p.contains(':')) {
            return Err(invalid());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(UriError::MissingHost);
    }
    let port = port
        .map(|p| match p.bytes().all(|b| b.is_ascii_digit()) {
            true => p.parse().map_err(|_| UriError::InvalidPort(p.to_owned())),
            false => Err(UriError::InvalidPort(p.to_owned())),
        })
        .transpose()?;
    Ok((host.to_owned(), port))
}

impl fmt::Display for TransportUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { .. } => write!(f, "tcp://{}", self.authority()),
            Self::Ws { url, .. } => f.write_str(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let t: TransportUri = "tcp://[::1]:9".parse().unwrap();
        assert_eq!(t.authority(), "[::1]:9");
        let w: TransportUri = "wss://example.com".parse().unwrap();
        assert_eq!(
            w,
            TransportUri::Ws {
                url: "wss://example.com".into(),
                host: "example.com".into(),
                port: 443,
                path: "/".into(),
                tls: true
            }
        );
        let w: TransportUri = "WS://h:1?q".parse().unwrap();
        assert!(
            matches!(w, TransportUri::Ws { ref path, port: 1, tls: false, .. } if path == "/?q")
        );
        assert_eq!(w.to_string(), "ws://h:1?q");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            "tcp://h".parse::<TransportUri>(),
            Err(UriError::MissingPort)
        );
        assert_eq!("h:1".parse::<TransportUri>(), Err(UriError::MissingScheme));
        assert_eq!(
            "tcp://:1".parse::<TransportUri>(),
            Err(UriError::MissingHost)
        );
        assert_eq!(
            "tcp://h:99999".parse::<TransportUri>(),
            Err(UriError::InvalidPort("99999".into()))
        );
        assert!(matches!(
            "udp://h:1".parse::<TransportUri>(),
            Err(UriError::UnsupportedScheme(_))
        ));
    }

    /// An authority that is not `host[:port]` or `[v6][:port]` is refused,
    /// not read as some other address.
    #[test]
    fn rejects_malformed_authorities() {
        let cases = [
            // An IPv6 address needs brackets: `fe80::1` is not host
            // `fe80:` and port 1.
            ("tcp://fe80::1", UriError::InvalidHost("fe80::1".into())),
            ("ws://::1/p", UriError::InvalidHost("::1".into())),
            // Something other than `:port` after the brackets.
            ("ws://[::1]x/p", UriError::InvalidHost("[::1]x".into())),
            ("tcp://[::1]9", UriError::InvalidHost("[::1]9".into())),
            // A port is digits only.
            ("tcp://h:+9", UriError::InvalidPort("+9".into())),
            ("ws://h: 9/", UriError::InvalidPort(" 9".into())),
        ];
        for (uri, err) in cases {
            assert_eq!(uri.parse::<TransportUri>(), Err(err), "{uri}");
        }
        let ok: TransportUri = "ws://[fe80::1]/p".parse().unwrap();
        assert_eq!(ok.authority(), "[fe80::1]:80");
    }
}
