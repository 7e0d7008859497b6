//! A reconnecting client for servers without resumption: when the
//! connection ends or begins a graceful close, the next request opens a new
//! one (with backoff); what was pending on an ended connection fails with
//! its [`ConnectionError`](crate::ConnectionError), nothing is replayed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use tracing::debug;

use super::requester::Requester;
use super::resume::Rng;
use crate::error::{ConnectionError, RequestError};
use crate::rsocket::{error_stream, PayloadStream, RSocket};
use crate::Payload;

/// Settings of a [`Reconnecting`] client.
#[derive(Debug, Clone)]
pub struct ReconnectOptions {
    /// First delay between failed connection attempts (doubled after each,
    /// with jitter: each delay is drawn between half and all of the current
    /// value). The first attempt starts at once, unless the connection
    /// being replaced ended having received nothing from the server (or
    /// only its refusal of the SETUP): such connections in a row count as
    /// failed attempts, so that a server that accepts and drops is not
    /// dialled again at once by every request. Default 100 ms.
    pub min_backoff: Duration,
    /// Largest delay between attempts. Default 5 s.
    pub max_backoff: Duration,
    /// How long one request waits for a connection (waiting for another
    /// caller's attempts, and each attempt, included) before it fails with
    /// the last connection error, or a timeout when no attempt has failed
    /// yet. Default 30 s.
    pub max_wait: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_wait: Duration::from_secs(30),
        }
    }
}

type Connect =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Requester, ConnectionError>> + Send + Sync>;

struct Inner {
    connect: Connect,
    options: ReconnectOptions,
    /// The current connection; the async lock lets one caller reconnect
    /// while the others wait for it.
    current: tokio::sync::Mutex<Current>,
}

struct Current {
    requester: Option<Requester>,
    /// The current connection has been counted in `dropped`.
    judged: bool,
    /// Connections in a row that ended having received nothing from the
    /// server (or only its refusal of the SETUP): a server that accepts
    /// and drops. The next attempt waits as after as many failed ones.
    dropped: u32,
}

/// A client that replaces its connection when it ends or begins a
/// graceful close (see
/// [`ClientBuilder::connect_reconnecting`](crate::ClientBuilder::connect_reconnecting)).
/// Cheap to clone; implements [`RSocket`], each request going to the
/// current connection.
///
/// Unlike resumption, nothing survives the old connection: requests,
/// streams and channels open on it fail with its
/// [`ConnectionError`]; requests made afterwards go to a new connection
/// (a new SETUP). Any server works.
#[derive(Clone)]
pub struct Reconnecting {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Reconnecting {
    pub(crate) fn new(connect: Connect, options: ReconnectOptions, first: Requester) -> Self {
        Self {
            inner: Arc::new(Inner {
                connect,
                options,
                current: tokio::sync::Mutex::new(Current {
                    requester: Some(first),
                    judged: false,
                    dropped: 0,
                }),
            }),
        }
    }

    /// The live connection: the current one while it takes requests,
    /// otherwise (it has ended, or is closing gracefully: the server sent
    /// CONNECTION_CLOSE) a new one (attempts with backoff; a closing
    /// connection lets what is open on it finish). Waiting for another caller's
    /// attempts and each attempt itself count against
    /// [`ReconnectOptions::max_wait`]: once it has passed, this fails with
    /// the last connection error (a timeout when there is none).
    pub async fn requester(&self) -> Result<Requester, ConnectionError> {
        let opts = &self.inner.options;
        let deadline = super::resume::deadline(tokio::time::Instant::now(), opts.max_wait);
        let timed_out = || {
            ConnectionError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no connection within ReconnectOptions::max_wait",
            ))
        };
        let Ok(mut current) = tokio::time::timeout_at(deadline, self.inner.current.lock()).await
        else {
            return Err(timed_out());
        };
        // A connection closing gracefully (the server sent CONNECTION_CLOSE,
        // or the application closed it) refuses new requests until it has
        // drained, which can take its whole close timeout: it is replaced
        // now, and drains on its own.
        let current = &mut *current;
        if let Some(r) = current.requester.as_ref() {
            if r.takes_requests() {
                return Ok(r.clone());
            }
        }
        let max_backoff = opts.max_backoff.max(opts.min_backoff);
        let mut delay = opts.min_backoff;
        let mut rng = Rng::new();
        let mut last = None;
        // A connection that ended having received nothing counts as a
        // failed attempt (once), so that a server that accepts and drops is
        // not dialled again at once by every request.
        // (One closing gracefully, or that received something, resets the
        // count.)
        if let Some(old) = current.requester.as_ref().filter(|_| !current.judged) {
            current.judged = true;
            let silent = old.closed_reason().is_some_and(|reason| {
                matches!(reason, ConnectionError::SetupRejected { .. })
                    || old.stats().frames_in == 0
            });
            current.dropped = if silent {
                current.dropped.saturating_add(1)
            } else {
                0
            };
        }
        if current.dropped > 0 {
            for _ in 1..current.dropped.min(32) {
                delay = delay.saturating_mul(2).min(max_backoff);
            }
            let wait = jittered(delay, &mut rng);
            let now = tokio::time::Instant::now();
            let reason = current
                .requester
                .as_ref()
                .and_then(Requester::closed_reason);
            if super::resume::deadline(now, wait) >= deadline {
                return Err(reason.unwrap_or_else(timed_out));
            }
            debug!(
                dropped = current.dropped,
                ?wait,
                "the last connection served nothing; reconnecting after a back-off"
            );
            tokio::time::sleep(wait).await;
            last = reason;
            delay = delay.saturating_mul(2).min(max_backoff);
        }
        loop {
            let attempt = tokio::time::timeout_at(deadline, (self.inner.connect)()).await;
            let e = match attempt {
                Ok(Ok(r)) => {
                    current.requester = Some(r.clone());
                    current.judged = false;
                    return Ok(r);
                }
                Ok(Err(e)) => e,
                Err(_) => return Err(last.unwrap_or_else(timed_out)),
            };
            let wait = jittered(delay, &mut rng);
            let now = tokio::time::Instant::now();
            if super::resume::deadline(now, wait) >= deadline {
                return Err(e);
            }
            debug!(error = %e, ?wait, "reconnect failed; retrying");
            last = Some(e);
            tokio::time::sleep(wait).await;
            delay = delay.saturating_mul(2).min(max_backoff);
        }
    }

    /// The current connection, without reconnecting and without waiting:
    /// `None` while a caller is reconnecting (or waiting to); the
    /// connection returned may have ended since (see
    /// [`Requester::is_closed`]).
    pub fn current(&self) -> Option<Requester> {
        self.inner
            .current
            .try_lock()
            .ok()
            .and_then(|c| c.requester.clone())
    }
}

/// A delay drawn between half of `delay` and all of it.
fn jittered(delay: Duration, rng: &mut Rng) -> Duration {
    let half = delay / 2;
    let nanos = half.as_nanos().min(u128::from(u64::MAX)) as u64;
    let jitter = if nanos == 0 {
        0
    } else {
        rng.next_u64() % nanos
    };
    half + Duration::from_nanos(jitter)
}

#[async_trait::async_trait]
impl RSocket for Reconnecting {
    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        self.requester().await?.fire_and_forget(request).await
    }

    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        self.requester().await?.request_response(request).await
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        let this = self.clone();
        futures::stream::once(async move {
            match this.requester().await {
                Ok(r) => r.request_stream(request).boxed(),
                Err(e) => error_stream(e),
            }
        })
        .flatten()
        .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        let this = self.clone();
        futures::stream::once(async move {
            match this.requester().await {
                Ok(r) => RSocket::request_channel(&r, first, rest),
                Err(e) => error_stream(e),
            }
        })
        .flatten()
        .boxed()
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        self.requester().await?.metadata_push(metadata).await
    }
}
