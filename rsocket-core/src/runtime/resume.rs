//! Session resumption in the runtime: what the driver does when a
//! resumable connection loses its transport.
//!
//! The state machine keeps its streams and the store of unacknowledged
//! frames (`proto/resume.rs`); the driver owns the transport and swaps it:
//!
//! ```text
//!  client:  transport lost ─► detached ─► reconnect() ─► RESUME ─► RESUME_OK(x)
//!           (EOF, I/O error,   (no timers    (jittered       │        └► replay store from x,
//!            keepalive          but the       exponential    │           continue
//!            expired)           session's)    backoff)       └► ERROR ─► session fails
//!  server:  transport lost ─► detached (kept for the session timeout, within the
//!           server's count and byte limits) ◄── RESUME arriving on a new
//!           transport, looked up by token ─► RESUME_OK(implied), replay, continue
//! ```
//!
//! Pending requests fail only when the session cannot be resumed, with
//! [`ConnectionError::ResumeFailed`](crate::ConnectionError::ResumeFailed).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::time::Instant;
use tracing::debug;

use super::transport::{Transport, TransportError};
use crate::error::ResumeFailure;
use crate::frame::{ErrorCode, Frame, Resume};

/// Client settings for resumption (see `ClientBuilder::resume` and
/// `ClientBuilder::connect_resumable`).
#[derive(Debug, Clone)]
pub struct ResumeOptions {
    /// The resume token sent in SETUP and RESUME. `None` (the default)
    /// uses 16 random bytes.
    pub token: Option<Bytes>,
    /// How long the session may stay without a transport before it is
    /// given up and every pending request fails. Default 60 s.
    pub session_timeout: Duration,
    /// First delay between reconnect attempts (doubled after each failed
    /// attempt, with jitter: each delay is drawn between half and all of
    /// the current value). The first attempt starts at once. Default
    /// 100 ms.
    pub min_backoff: Duration,
    /// Largest delay between attempts. Default 5 s.
    pub max_backoff: Duration,
    /// How long one attempt may take: opening the transport (the
    /// reconnect function) and the server's answer to RESUME. An attempt
    /// not done by then is dropped with its transport and counts as
    /// failed: the next one starts after the back-off, until the session
    /// timeout. Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for ResumeOptions {
    fn default() -> Self {
        Self {
            token: None,
            session_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Server settings for resumption (see `Server::resumption`).
#[derive(Debug, Clone)]
pub struct ServerResumeOptions {
    /// How long a session that lost its transport is kept for the client
    /// to resume. Default 120 s (rsocket-java's default).
    pub session_timeout: Duration,
    /// Sessions kept without a transport at once; when one more detaches,
    /// the one detached longest is dropped (a RESUME for it is then
    /// refused with `ERROR[REJECTED_RESUME]`, as for an unknown token).
    /// Default 10,000.
    pub max_detached_sessions: usize,
    /// Bytes held by the resume stores of detached sessions together;
    /// past it, the sessions detached longest are dropped, as for
    /// `max_detached_sessions`. Default 256 MiB.
    pub max_detached_bytes: usize,
}

impl Default for ServerResumeOptions {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(120),
            max_detached_sessions: 10_000,
            max_detached_bytes: 256 << 20,
        }
    }
}

/// A small pseudo-random generator seeded from the process's hash keys
/// (no dependency on a crate for randomness): good for jitter and for
/// default tokens that must not collide, not for secrets.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Self(h.finish() | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// 16 random bytes.
pub(crate) fn random_token() -> Bytes {
    let mut rng = Rng::new();
    let mut b = BytesMut::with_capacity(16);
    b.put_u64(rng.next_u64());
    b.put_u64(rng.next_u64());
    b.freeze()
}

/// Jittered exponential backoff.
#[derive(Debug)]
struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
    rng: Rng,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            current: min,
            min,
            max: max.max(min),
            rng: Rng::new(),
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        let half = base / 2;
        let nanos = half.as_nanos().min(u128::from(u64::MAX)) as u64;
        let jitter = if nanos == 0 {
            0
        } else {
            self.rng.next_u64() % nanos
        };
        half + Duration::from_nanos(jitter)
    }
}

/// `now + d`, or a point a century away when that overflows (a timeout
/// configured as "forever").
pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// A boxed factory of new transports.
pub(crate) type Reconnect<T> =
    Arc<dyn Fn() -> BoxFuture<'static, io::Result<T>> + Send + Sync + 'static>;

/// How one reconnect attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Try again after the backoff (the transport could not be opened or
    /// broke during the handshake).
    Retry(String),
    /// The session is over.
    Final(ResumeFailure),
}

/// A new transport on which RESUME_OK arrived.
pub(crate) struct Resumed<T: Transport> {
    pub(crate) reader: T::Reader,
    pub(crate) writer: T::Writer,
    /// The server's last received client position.
    pub(crate) position: u64,
}

/// The client's side of resumption, owned by the driver.
pub(crate) struct ClientResume<T: Transport> {
    pub(crate) reconnect: Reconnect<T>,
    pub(crate) token: Bytes,
    pub(crate) options: ResumeOptions,
    pub(crate) max_frame_len: usize,
    backoff: Backoff,
    pub(crate) attempt: Option<BoxFuture<'static, Result<Resumed<T>, AttemptError>>>,
    /// When to start the next attempt (while detached and none runs).
    pub(crate) next_attempt: Option<Instant>,
}

impl<T: Transport> ClientResume<T> {
    pub(crate) fn new(
        reconnect: Reconnect<T>,
        token: Bytes,
        options: ResumeOptions,
        max_frame_len: usize,
    ) -> Self {
        let backoff = Backoff::new(options.min_backoff, options.max_backoff);
        Self {
            reconnect,
            token,
            options,
            max_frame_len,
            backoff,
            attempt: None,
            next_attempt: None,
        }
    }

    /// The transport was lost: the first attempt starts at once.
    pub(crate) fn detached(&mut self, now: Instant) {
        self.backoff.reset();
        self.attempt = None;
        self.next_attempt = Some(now);
    }

    /// An attempt failed and may be retried.
    pub(crate) fn retry_later(&mut self, now: Instant) {
        self.attempt = None;
        self.next_attempt = Some(deadline(now, self.backoff.next_delay()));
    }

    /// Starts an attempt that sends `resume` on a new transport.
    pub(crate) fn start(&mut self, resume: Resume) {
        self.next_attempt = None;
        let reconnect = self.reconnect.clone();
        let max_frame_len = self.max_frame_len;
        let wait = self.options.handshake_timeout;
        self.attempt = Some(attempt::<T>(reconnect, resume, max_frame_len, wait).boxed());
    }
}

/// One reconnect attempt, within `wait` (a reconnect function that never
/// finishes, a TCP or TLS handshake with a peer gone silent, must not hold
/// up the attempts after it until the session timeout).
async fn attempt<T: Transport>(
    reconnect: Reconnect<T>,
    resume: Resume,
    max_frame_len: usize,
    wait: Duration,
) -> Result<Resumed<T>, AttemptError> {
    let mut connected = false;
    let exchange = resume_on_new_transport(reconnect, resume, max_frame_len, &mut connected);
    match tokio::time::timeout(wait, exchange).await {
        Ok(outcome) => outcome,
        Err(_) if connected => Err(AttemptError::Retry(format!(
            "no answer to RESUME within {wait:?}"
        ))),
        Err(_) => Err(AttemptError::Retry(format!(
            "the reconnect function did not finish within {wait:?}"
        ))),
    }
}

/// Opens a transport (`connected` is set once it is open), sends RESUME
/// and reads the answer.
async fn resume_on_new_transport<T: Transport>(
    reconnect: Reconnect<T>,
    resume: Resume,
    max_frame_len: usize,
    connected: &mut bool,
) -> Result<Resumed<T>, AttemptError> {
    // The application's function: a panic in it is a failed attempt.
    let mut transport = std::panic::AssertUnwindSafe(async { reconnect().await })
        .catch_unwind()
        .await
        .map_err(|_| AttemptError::Retry("the reconnect function panicked".to_owned()))?
        .map_err(|e| AttemptError::Retry(format!("reconnect failed: {e}")))?;
    *connected = true;
    transport.limit_frame_len(max_frame_len);
    let (mut reader, mut writer) = transport.split();
    let answer = async {
        writer.send(Frame::Resume(resume)).await?;
        Ok::<_, TransportError>(reader.next().await)
    }
    .await;
    match answer {
        Err(e) | Ok(Some(Err(e))) => Err(AttemptError::Retry(format!(
            "transport failed during RESUME: {e}"
        ))),
        Ok(None) => Err(AttemptError::Retry(
            "transport closed before the answer to RESUME".into(),
        )),
        Ok(Some(Ok(Frame::ResumeOk(ok)))) => Ok(Resumed {
            reader,
            writer,
            position: ok.last_received_client_position,
        }),
        Ok(Some(Ok(Frame::Error(e)))) if e.stream_id.is_none() => {
            Err(AttemptError::Final(ResumeFailure::Rejected {
                code: e.code,
                message: e.message(),
            }))
        }
        Ok(Some(Ok(other))) => Err(AttemptError::Final(ResumeFailure::Protocol(format!(
            "{:?} frame instead of RESUME_OK",
            other.frame_type()
        )))),
    }
}

/// What the accept path hands to a session's driver.
pub(crate) enum SessionMsg<T: Transport> {
    /// A RESUME arrived on a new transport.
    Resume {
        reader: T::Reader,
        writer: T::Writer,
        frame: Resume,
    },
    /// The server's limits on detached sessions dropped this one.
    Evict,
}

/// Messages for one session's driver. Checked with one atomic load per
/// driver round (a channel's receive costs more on the hot path of every
/// resumable connection).
pub(crate) struct Mailbox<T: Transport> {
    queue: Mutex<std::collections::VecDeque<SessionMsg<T>>>,
    pending: std::sync::atomic::AtomicBool,
    waker: AtomicWaker,
}

/// RESUMEs waiting for one session at most (more are closed without an
/// answer, and their clients try again).
const MAILBOX_CAP: usize = 4;

impl<T: Transport> Mailbox<T> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(std::collections::VecDeque::new()),
            pending: std::sync::atomic::AtomicBool::new(false),
            waker: AtomicWaker::new(),
        })
    }

    /// Queues `msg` (a RESUME only while fewer than `MAILBOX_CAP` wait) and
    /// wakes the driver.
    fn post(&self, msg: SessionMsg<T>) -> Result<(), SessionMsg<T>> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(msg, SessionMsg::Resume { .. }) && q.len() >= MAILBOX_CAP {
                return Err(msg);
            }
            q.push_back(msg);
        }
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
        Ok(())
    }

    /// Registers the driver's waker (once per driver poll).
    pub(crate) fn register(&self, cx: &std::task::Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// The next message, if any.
    pub(crate) fn take(&self) -> Option<SessionMsg<T>> {
        if !self.pending.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let msg = q.pop_front();
        if q.is_empty() {
            self.pending
                .store(false, std::sync::atomic::Ordering::Release);
        }
        msg
    }
}

struct Entry<T: Transport> {
    id: u64,
    mailbox: Arc<Mailbox<T>>,
    /// Since when and with how many stored bytes, while detached.
    detached: Option<(Instant, usize)>,
}

/// The resumable sessions of one server, by token.
pub(crate) struct Sessions<T: Transport> {
    pub(crate) options: ServerResumeOptions,
    inner: Mutex<(u64, HashMap<Bytes, Entry<T>>)>,
}

impl<T: Transport> std::fmt::Debug for Sessions<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why a RESUME could not be handed to a session.
pub(crate) enum OfferError<T: Transport> {
    UnknownToken(SessionMsg<T>),
    Busy(SessionMsg<T>),
}

impl<T: Transport> Sessions<T> {
    pub(crate) fn new(options: ServerResumeOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            inner: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<Bytes, Entry<T>>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session; `None` when the token is in use.
    pub(crate) fn register(
        self: &Arc<Self>,
        token: Bytes,
    ) -> Option<(SessionGuard<T>, Arc<Mailbox<T>>)> {
        let mut inner = self.lock();
        if inner.1.contains_key(&token) {
            return None;
        }
        inner.0 += 1;
        let id = inner.0;
        let mailbox = Mailbox::new();
        inner.1.insert(
            token.clone(),
            Entry {
                id,
                mailbox: mailbox.clone(),
                detached: None,
            },
        );
        Some((
            SessionGuard {
                sessions: self.clone(),
                token,
                id,
            },
            mailbox,
        ))
    }

    /// Hands a RESUME to the session with this token.
    pub(crate) fn offer(&self, token: &Bytes, msg: SessionMsg<T>) -> Result<(), OfferError<T>> {
        let inner = self.lock();
        let Some(entry) = inner.1.get(token) else {
            return Err(OfferError::UnknownToken(msg));
        };
        entry.mailbox.post(msg).map_err(OfferError::Busy)
    }
}

/// A session's registration; removes it when the session ends.
pub(crate) struct SessionGuard<T: Transport> {
    sessions: Arc<Sessions<T>>,
    token: Bytes,
    id: u64,
}

impl<T: Transport> SessionGuard<T> {
    pub(crate) fn timeout(&self) -> Duration {
        self.sessions.options.session_timeout
    }

    /// The session lost its transport, holding `bytes` in its store:
    /// counts it against the limits, evicting the sessions detached longest
    /// while over them (possibly this one).
    pub(crate) fn detached(&self, now: Instant, bytes: usize) {
        let mut inner = self.sessions.lock();
        if let Some(e) = inner.1.get_mut(&self.token) {
            if e.id == self.id {
                e.detached = Some((now, bytes));
            }
        }
        let opts = &self.sessions.options;
        loop {
            let (count, total, oldest) = inner
                .1
                .iter()
                .filter_map(|(k, e)| e.detached.map(|(since, b)| (k, since, b)))
                .fold(
                    (0usize, 0usize, None::<(Bytes, Instant)>),
                    |(c, t, o), (k, since, b)| {
                        let o = match o {
                            Some((ok, os)) if os <= since => Some((ok, os)),
                            _ => Some((k.clone(), since)),
                        };
                        (c + 1, t + b, o)
                    },
                );
            if count <= opts.max_detached_sessions && total <= opts.max_detached_bytes {
                break;
            }
            let Some((victim, _)) = oldest else { break };
            if let Some(e) = inner.1.get_mut(&victim) {
                debug!("evicting a detached session to stay within the server's limits");
                e.detached = None;
                let _ = e.mailbox.post(SessionMsg::Evict);
            }
        }
    }

    /// The session has a transport again.
    pub(crate) fn attached(&self) {
        let mut inner = self.sessions.lock();
        if let Some(e) = inner.1.get_mut(&self.token) {
            if e.id == self.id {
                e.detached = None;
            }
        }
    }
}

impl<T: Transport> Drop for SessionGuard<T> {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        if inner.1.get(&self.token).is_some_and(|e| e.id == self.id) {
            inner.1.remove(&self.token);
        }
    }
}

/// The server's side of resumption, owned by the driver.
pub(crate) struct ServerResume<T: Transport> {
    pub(crate) guard: SessionGuard<T>,
    pub(crate) mailbox: Arc<Mailbox<T>>,
}

/// Either side's resumption state in the driver.
pub(crate) enum Resumer<T: Transport> {
    Client(ClientResume<T>),
    Server(ServerResume<T>),
}

/// Sends a refusal on a transport that tried to resume, then closes it
/// (in the background: the driver does not wait for a peer to read it).
pub(crate) fn refuse<W>(mut writer: W, code: ErrorCode, message: String)
where
    W: futures::Sink<Frame, Error = TransportError> + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let frame = Frame::Error(crate::frame::ErrorFrame::new(None, code, &message));
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            super::transport::flush_and_close(&mut writer, frame),
        )
        .await;
    });
}
