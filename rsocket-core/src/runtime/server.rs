//! Server side: validating SETUP, the acceptor, and the accept loop with
//! graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info_span, warn, Instrument};

use super::driver::ConnectionDriver;
use super::requester::Requester;
use super::resume::{
    Mailbox, OfferError, Resumer, ServerResume, ServerResumeOptions, SessionGuard, SessionMsg,
    Sessions,
};
use super::shared::Shared;
use super::tokio_now;
use super::transport::flush_and_close;
use super::transport::{Transport, TransportError};
use crate::config::{Config, SetupInfo};
use crate::error::{ConnectionError, Initiator, StreamError};
use crate::frame::{ErrorCode, ErrorFrame, Frame};
use crate::lease::LeaseConfig;
use crate::proto::{Connection, First, Handshake, KeepaliveParams, Side};
use crate::rsocket::RSocket;
use crate::stats::ServerStats;

/// Decides whether to take a connection, given the client's SETUP and a
/// requester for calling the client back; returns the responder for it.
///
/// The connection runs while the acceptor decides: calls it makes on the
/// requester (and awaits) go out and are answered, and KEEPALIVEs are
/// answered. Requests the client sends meanwhile wait for the responder
/// (within the connection's limits; reading pauses past them).
///
/// Implemented for closures `Fn(SetupInfo, Requester) -> impl Future<Output =
/// Result<R, StreamError>>` where `R` is any [`RSocket`]; a rejection is
/// sent to the client as `ERROR[REJECTED_SETUP]` with the error's message.
///
/// ```
/// use rsocket_core::{request_response_fn, Server, StreamError};
/// let server = Server::new(|setup: rsocket_core::SetupInfo, _requester| async move {
///     if setup.payload.data.is_empty() {
///         return Err(StreamError::rejected("say who you are"));
///     }
///     Ok(request_response_fn(|req| async move { Ok(Some(req)) }))
/// });
/// # let _ = server;
/// ```
pub trait SocketAcceptor: Send + Sync + 'static {
    /// Accept or reject one connection.
    fn accept(
        &self,
        setup: SetupInfo,
        requester: Requester,
    ) -> BoxFuture<'static, Result<Arc<dyn RSocket>, StreamError>>;
}

impl<F, Fut, R> SocketAcceptor for F
where
    F: Fn(SetupInfo, Requester) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, StreamError>> + Send + 'static,
    R: RSocket,
{
    fn accept(
        &self,
        setup: SetupInfo,
        requester: Requester,
    ) -> BoxFuture<'static, Result<Arc<dyn RSocket>, StreamError>> {
        self(setup, requester)
            .map(|r| match r {
                Ok(responder) => Ok(into_shared(responder)),
                Err(e) => Err(e),
            })
            .boxed()
    }
}

/// Shares a responder, without a second allocation when it is already an
/// `Arc<dyn RSocket>`.
pub(crate) fn into_shared<R: RSocket>(responder: R) -> Arc<dyn RSocket> {
    let mut slot = Some(responder);
    if let Some(shared) =
        (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Arc<dyn RSocket>>>()
    {
        if let Some(shared) = shared.take() {
            return shared;
        }
    }
    match slot {
        Some(responder) => Arc::new(responder),
        None => Arc::new(crate::rsocket::RejectAll),
    }
}

/// Takes one server-side connection through setup: reads the first frame
/// (within `config.setup_timeout`), checks it, asks the acceptor, and
/// returns the driver to poll. A rejected SETUP is answered with the ERROR
/// frame the spec names, flushed before the transport is closed.
pub async fn accept<T: Transport>(
    transport: T,
    config: Config,
    acceptor: &dyn SocketAcceptor,
) -> Result<(Requester, ConnectionDriver<T>), ConnectionError> {
    match accept_inner(transport, config, acceptor, None).await? {
        Accepted::New(requester, driver) => Ok((requester, *driver)),
        // Without sessions no RESUME is taken.
        Accepted::Resumed => Err(ConnectionError::LocallyClosed),
    }
}

/// What the first frame of a server-side transport led to.
enum Accepted<T: Transport> {
    /// A new connection (SETUP).
    New(Requester, Box<ConnectionDriver<T>>),
    /// A RESUME, handed to the session it names.
    Resumed,
}

async fn accept_inner<T: Transport>(
    transport: T,
    config: Config,
    acceptor: &dyn SocketAcceptor,
    sessions: Option<&Arc<Sessions<T>>>,
) -> Result<Accepted<T>, ConnectionError> {
    config.validate()?;
    let mut transport = transport;
    transport.limit_frame_len(config.max_frame_len);
    let peer = transport.peer_info();
    let (mut reader, mut writer) = transport.split();
    let handshake = Handshake::new(&config, sessions.is_some(), tokio_now());
    let deadline = tokio::time::Instant::from_std(handshake.deadline());
    let Ok(first) = tokio::time::timeout_at(deadline, reader.next()).await else {
        debug!("no SETUP within the setup timeout");
        return Err(handshake.timed_out());
    };
    let judged = match first {
        None => return Err(ConnectionError::ClosedByPeer),
        Some(Err(TransportError::Io(e))) => return Err(e.into()),
        Some(Err(TransportError::Decode(e))) => handshake.first_frame(Err(&e)),
        Some(Err(other)) => First::Reject {
            code: ErrorCode::INVALID_SETUP,
            message: other.to_string(),
        },
        Some(Ok(frame)) => handshake.first_frame(Ok(frame)),
    };
    let checked: Result<_, (ErrorCode, String)> = match judged {
        First::Setup(s) => Ok(s),
        First::Reject { code, message } => Err((code, message)),
        First::Resume(r) => {
            let Some(sessions) = sessions else {
                return Err(ConnectionError::LocallyClosed);
            };
            let token = r.resume_token.clone();
            let msg = SessionMsg::Resume {
                reader,
                writer,
                frame: r,
            };
            let (msg, why) = match sessions.offer(&token, msg) {
                Ok(()) => return Ok(Accepted::Resumed),
                Err(OfferError::UnknownToken(m)) => (m, "unknown or expired resume token"),
                Err(OfferError::Busy(m)) => {
                    // Not a refusal: REJECTED_RESUME is final for the client,
                    // and the session may well take its next attempt.
                    debug!(
                        "closing a RESUME for a session with RESUMEs queued; the client may retry"
                    );
                    if let SessionMsg::Resume { mut writer, .. } = m {
                        let _ = futures::SinkExt::close(&mut writer).await;
                    }
                    return Err(ConnectionError::LocallyClosed);
                }
            };
            let SessionMsg::Resume { mut writer, .. } = msg else {
                return Err(ConnectionError::LocallyClosed);
            };
            debug!(why, "rejecting RESUME");
            let _ = flush_and_close(
                &mut writer,
                Frame::Error(ErrorFrame::new(None, ErrorCode::REJECTED_RESUME, why)),
            )
            .await;
            return Err(ConnectionError::SetupRejected {
                code: ErrorCode::REJECTED_RESUME,
                message: why.to_owned(),
                initiator: Initiator::Local,
            });
        }
    };
    let setup = match checked {
        Ok(s) => s,
        Err((code, message)) => {
            debug!(%code, %message, "rejecting setup");
            let _ = flush_and_close(
                &mut writer,
                Frame::Error(ErrorFrame::new(None, code, &message)),
            )
            .await;
            return Err(ConnectionError::SetupRejected {
                code,
                message,
                initiator: Initiator::Local,
            });
        }
    };
    // A resumable session: the token must not be in use.
    let mut session: Option<(SessionGuard<T>, Arc<Mailbox<T>>)> = None;
    if let (Some(token), Some(sessions)) = (&setup.resume_token, sessions) {
        match sessions.register(token.clone()) {
            Some(s) => session = Some(s),
            None => {
                let message = "the resume token is already in use".to_owned();
                let frame =
                    Frame::Error(ErrorFrame::new(None, ErrorCode::REJECTED_SETUP, &message));
                let _ = flush_and_close(&mut writer, frame).await;
                return Err(ConnectionError::SetupRejected {
                    code: ErrorCode::REJECTED_SETUP,
                    message,
                    initiator: Initiator::Local,
                });
            }
        }
    }
    let info = SetupInfo::from_frame(*setup, peer);
    let span = info_span!("rsocket.conn", side = "server", peer = ?info.peer.addr);
    let keepalive = KeepaliveParams {
        send_interval: None,
        max_lifetime: info.max_lifetime,
    };
    // Leasing is on when the client asked for it (a server without lease
    // has refused such a SETUP above).
    let lease = config.lease.clone().filter(|_| info.lease);
    let now = tokio_now();
    let mut conn = Connection::new(Side::Server, config, keepalive, now);
    if let Some(lease) = &lease {
        conn.enable_lease(lease, now);
    }
    if session.is_some() {
        conn.enable_resume();
    }
    let shared = Shared::new(conn, span);
    let requester = Requester::new(shared.clone());
    // The driver runs while the acceptor decides, holding the client's
    // requests: calls the acceptor makes on its requester (to the client)
    // go out and are answered, and KEEPALIVEs are answered.
    let mut driver =
        ConnectionDriver::new(shared.clone(), reader, writer, Arc::new(crate::RejectAll));
    driver.hold_requests();
    if let Some((guard, mailbox)) = session {
        driver = driver.with_resumer(Resumer::Server(ServerResume { guard, mailbox }));
    }
    // An acceptor that panics refuses the SETUP, like one that errs: the
    // connection's task (and the server) go on.
    let panicked = || Err(StreamError::rejected("the acceptor panicked"));
    let for_acceptor = requester.clone();
    let accepting = async move {
        match std::panic::catch_unwind(AssertUnwindSafe(|| acceptor.accept(info, for_acceptor))) {
            Ok(fut) => AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| panicked()),
            Err(_) => panicked(),
        }
    };
    let mut accepting = pin!(accepting);
    let accepted = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = accepting.as_mut().poll(cx) {
            return Poll::Ready(Ok(r));
        }
        Pin::new(&mut driver).poll(cx).map(Err)
    })
    .await;
    match accepted {
        Ok(Ok(responder)) => {
            driver.respond_with(responder);
            if let Some(grants) = lease.as_ref().and_then(|l| l.policy.as_ref()?.grants()) {
                driver.set_lease_source(grants);
            }
            Ok(Accepted::New(requester, Box::new(driver)))
        }
        Ok(Err(e)) => {
            let err = ConnectionError::SetupRejected {
                code: ErrorCode::REJECTED_SETUP,
                message: e.message.clone(),
                initiator: Initiator::Local,
            };
            // The ERROR goes out before the transport is closed (within
            // `Config::outbound_stall_timeout`).
            shared
                .lock()
                .close(ErrorCode::REJECTED_SETUP, &e.message, err.clone());
            let _ = (&mut driver).await;
            Err(err)
        }
        // The connection ended while the acceptor decided (the client
        // left, or broke the protocol).
        Err(ended) => Err(ended.err().unwrap_or(ConnectionError::LocallyClosed)),
    }
}

/// Errors that stop [`Server::serve`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::error::ConfigError),
}

/// Accepts connections from a stream of transports and serves each with the
/// acceptor's responder, until a shutdown signal.
#[derive(Clone)]
pub struct Server {
    acceptor: Arc<dyn SocketAcceptor>,
    config: Config,
    grace_period: Duration,
    registry: Arc<Registry>,
    resumption: Option<ServerResumeOptions>,
}

/// The connections of one server, for [`ServerStatsHandle`].
#[derive(Debug, Default)]
struct Registry {
    pending_setup: AtomicUsize,
    accepted: AtomicU64,
    next_key: AtomicU64,
    live: Mutex<HashMap<u64, Weak<Shared>>>,
    /// Frame and byte counters of the connections that have ended.
    ended: Mutex<ServerStats>,
}

impl Registry {
    fn snapshot(&self) -> ServerStats {
        let mut s = *self.ended.lock().unwrap_or_else(|e| e.into_inner());
        s.pending_setup = self.pending_setup.load(Ordering::Relaxed);
        s.connections_accepted = self.accepted.load(Ordering::Relaxed);
        let live: Vec<Arc<Shared>> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for shared in live {
            s.add_open(&shared.lock().stats());
        }
        s
    }
}

/// Counts a connection as waiting for its SETUP while alive.
struct PendingSetup(Arc<Registry>);

impl PendingSetup {
    fn new(registry: &Arc<Registry>) -> Self {
        registry.accepted.fetch_add(1, Ordering::Relaxed);
        registry.pending_setup.fetch_add(1, Ordering::Relaxed);
        Self(registry.clone())
    }
}

impl Drop for PendingSetup {
    fn drop(&mut self) {
        self.0.pending_setup.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps an established connection in the registry while alive; on drop,
/// moves its counters to the totals of ended connections.
struct Registered {
    registry: Arc<Registry>,
    key: u64,
    shared: Arc<Shared>,
}

impl Registered {
    fn new(registry: &Arc<Registry>, shared: Arc<Shared>) -> Self {
        let key = registry.next_key.fetch_add(1, Ordering::Relaxed);
        registry
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::downgrade(&shared));
        Self {
            registry: registry.clone(),
            key,
            shared,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let stats = self.shared.lock().stats();
        self.registry
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        self.registry
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_traffic(&stats);
    }
}

/// Reads a [`Server`]'s counters while it serves (see
/// [`crate::stats`]). Cheap to clone.
#[derive(Clone)]
pub struct ServerStatsHandle {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for ServerStatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStatsHandle").finish_non_exhaustive()
    }
}

impl ServerStatsHandle {
    /// The server's counters now: its connections and the sum of their
    /// engine counters. Locks each open connection once.
    pub fn snapshot(&self) -> ServerStats {
        self.registry.snapshot()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("grace_period", &self.grace_period)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with default configuration and a 10 s grace period.
    pub fn new(acceptor: impl SocketAcceptor) -> Self {
        Self {
            acceptor: Arc::new(acceptor),
            config: Config::default(),
            grace_period: Duration::from_secs(10),
            registry: Arc::default(),
            resumption: None,
        }
    }

    /// Accepts resumable sessions: a SETUP carrying a resume token (R
    /// flag) starts a session that survives the loss of its transport for
    /// [`ServerResumeOptions::session_timeout`], and a RESUME with its
    /// token on a new transport continues it (a RESUME for a session that
    /// still has a transport takes it over, and the old transport is
    /// dropped). Without this, SETUP with a token is refused with
    /// `ERROR[REJECTED_SETUP]` and RESUME with `ERROR[REJECTED_RESUME]`.
    /// Sessions are per [`Server::serve`] call.
    pub fn resumption(mut self, options: ServerResumeOptions) -> Self {
        self.resumption = Some(options);
        self
    }

    /// A handle on this server's counters, to read while
    /// [`Server::serve`] runs.
    pub fn stats_handle(&self) -> ServerStatsHandle {
        ServerStatsHandle {
            registry: self.registry.clone(),
        }
    }

    /// Limits and tuning for every connection. A lease set with
    /// [`Server::lease`] is kept unless `config.lease` is set.
    pub fn config(mut self, mut config: Config) -> Self {
        if config.lease.is_none() {
            config.lease = self.config.lease.take();
        }
        self.config = config;
        self
    }

    /// Accepts clients that ask for leasing (SETUP with the L flag; without
    /// this they are refused with `ERROR[UNSUPPORTED_SETUP]`) and grants them
    /// leases from `lease`'s policy. The server's own requester then honours
    /// the leases those clients grant. Clients that do not ask are served
    /// without leasing. See [`crate::lease`].
    pub fn lease(mut self, lease: LeaseConfig) -> Self {
        self.config.lease = Some(lease);
        self
    }

    /// How long in-flight streams may run after shutdown is signalled before
    /// connections are closed regardless.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Serves every connection from `incoming` until the listener ends (a
    /// TCP or WebSocket listener never does: this runs until the process
    /// stops). Accept errors are logged and skipped; after one that is not
    /// about a single connection (out of file descriptors, say) accepting
    /// pauses, from 5 ms doubling up to 1 s, instead of failing again at
    /// once in a busy loop.
    pub async fn serve<S, T>(self, incoming: S) -> Result<(), ServeError>
    where
        S: Stream<Item = io::Result<T>>,
        T: Transport,
    {
        self.serve_with_shutdown(incoming, std::future::pending())
            .await
    }

    /// Serves until `shutdown` resolves; then stops accepting, closes the
    /// connections whose SETUP has not been accepted yet (nothing is open
    /// on them; a SETUP that comes later is not taken), sends
    /// `ERROR[CONNECTION_CLOSE]` on every other connection, lets open streams
    /// finish (new ones are refused: locally on the client, with
    /// `ERROR[REJECTED]` here for requests already on the way) for the grace
    /// period, and closes what is left with `ERROR[CONNECTION_ERROR]`.
    /// Accept errors are handled as in [`Server::serve`].
    pub async fn serve_with_shutdown<S, T>(
        self,
        incoming: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        S: Stream<Item = io::Result<T>>,
        T: Transport,
    {
        self.config.validate()?;
        let (drain_tx, drain_rx) = watch::channel(Phase::Running);
        let sessions: Option<Arc<Sessions<T>>> = self.resumption.clone().map(Sessions::new);
        let mut tasks = JoinSet::new();
        // Boxed so that dropping it below closes the listener.
        let mut incoming = Box::pin(incoming.fuse());
        let mut shutdown = pin!(shutdown.fuse());
        let mut accepting = true;
        // After an accept error that is not about one connection, accepting
        // pauses (see `AcceptPause`).
        let mut pause = AcceptPause::new();
        let resume_accepting = tokio::time::sleep(Duration::ZERO);
        let mut resume_accepting = pin!(resume_accepting);
        let mut paused = false;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = &mut resume_accepting, if paused => paused = false,
                next = incoming.next(), if accepting && !paused => match next {
                    Some(Ok(transport)) => {
                        pause.reset();
                        let acceptor = self.acceptor.clone();
                        let config = self.config.clone();
                        let rx = drain_rx.clone();
                        let pending = PendingSetup::new(&self.registry);
                        let grace = self.grace_period;
                        let sessions = sessions.clone();
                        tasks.spawn(serve_one(transport, config, acceptor, rx, pending, grace, sessions));
                    }
                    Some(Err(e)) => {
                        if is_connection_error(&e) {
                            debug!(error = %e, "accept failed for one connection");
                        } else {
                            let wait = pause.next();
                            warn!(error = %e, ?wait, "accept failed; pausing accepting");
                            resume_accepting
                                .as_mut()
                                .reset(tokio::time::Instant::now() + wait);
                            paused = true;
                        }
                    }
                    // The listener ended: serve what is open, then return.
                    None => accepting = false,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
            if !accepting && tasks.is_empty() {
                return Ok(());
            }
        }
        drop(incoming);
        debug!(stats = ?self.registry.snapshot(), "draining");
        let _ = drain_tx.send(Phase::Draining);
        let drained = tokio::time::timeout(self.grace_period, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            debug!(stats = ?self.registry.snapshot(), "grace period over; closing");
            let _ = drain_tx.send(Phase::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        }
        Ok(())
    }
}

/// An accept error about one connection only (reset or aborted before it
/// was accepted): the next accept may succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// How long accepting pauses after an accept error that is not about one
/// connection: out of file descriptors (`EMFILE`), say, the listener fails
/// again at once for as long as that lasts, and accepting again at once
/// would spin. From 5 ms, doubling after each error, up to 1 s; back to
/// 5 ms once a connection is accepted.
#[derive(Debug)]
struct AcceptPause(Duration);

impl AcceptPause {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self(Self::MIN)
    }

    fn reset(&mut self) {
        self.0 = Self::MIN;
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (wait * 2).min(Self::MAX);
        wait
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
    Closing,
}

/// Serves one transport: setup, then the connection until it ends or the
/// server shuts it down.
///
/// The setup runs in an allocation of its own, freed once it is done: its
/// state (the transport, the configuration, the acceptor's future) is
/// several times what serving needs, and this task's allocation is kept for
/// the connection's whole life.
fn serve_one<T: Transport>(
    transport: T,
    config: Config,
    acceptor: Arc<dyn SocketAcceptor>,
    phase: watch::Receiver<Phase>,
    pending: PendingSetup,
    grace: Duration,
    sessions: Option<Arc<Sessions<T>>>,
) -> impl Future<Output = ()> + Send {
    let setup =
        Box::pin(
            async move { accept_inner(transport, config, &*acceptor, sessions.as_ref()).await },
        );
    serve_accepted(setup, phase, pending, grace)
}

/// The part of [`serve_one`] that lasts: the driver (boxed by the setup)
/// and the server's shutdown phases. Everything here is kept small, and
/// borrowed rather than moved, so that nothing is stored twice.
async fn serve_accepted<T: Transport>(
    setup: Pin<Box<impl Future<Output = Result<Accepted<T>, ConnectionError>>>>,
    mut phase: watch::Receiver<Phase>,
    pending: PendingSetup,
    grace: Duration,
) {
    // A connection still in setup when shutdown begins has nothing open
    // to finish: it is dropped (closing its transport) instead of holding
    // the shutdown for the grace period, and a SETUP that comes later is
    // not accepted.
    let setup = tokio::select! {
        r = setup => r,
        _ = phase.wait_for(|p| *p != Phase::Running) => {
            debug!("server shutting down; dropping a connection still in setup");
            return;
        }
    };
    let (requester, mut driver) = match setup {
        Ok(Accepted::New(requester, driver)) => (requester, driver),
        Ok(Accepted::Resumed) => {
            debug!("transport handed to the session it resumes");
            return;
        }
        Err(e) => {
            debug!(error = %e, "connection not established");
            return;
        }
    };
    let _registered = Registered::new(&pending.0, driver.shared_state().clone());
    drop(pending);
    let span = driver.span();
    let (driver, phase, requester) = (&mut *driver, &mut phase, &requester);
    async move {
        loop {
            tokio::select! {
                r = &mut *driver => {
                    if let Err(e) = r {
                        debug!(error = %e, "connection ended");
                    }
                    return;
                }
                changed = phase.changed() => {
                    if changed.is_err() {
                        // The server future was dropped (its task aborted):
                        // its connections go with it, like the tasks the
                        // drop aborts, by dropping the driver and with it
                        // the transport.
                        return;
                    }
                    match *phase.borrow_and_update() {
                        Phase::Running => {}
                        Phase::Draining => requester.start_drain(grace, "server shutting down"),
                        Phase::Closing => requester.close_with(
                            ErrorCode::CONNECTION_ERROR,
                            "server shutting down",
                        ),
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}
