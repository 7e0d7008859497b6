//! The tokio runtime: transports, the connection driver, requester handles,
//! and the client and server entry points.
//!
//! ```text
//!   Requester (Clone) ──lock──┐            ┌── responder tasks (handlers not
//!                             ▼            │   done at once; pumps poll user
//!          Mutex<proto::Connection + wakers>   streams only with credit)
//!                             ▲
//!   ConnectionDriver ─────────┘  reads the transport, handles frames in
//!                                batches, writes every queued frame and
//!                                flushes once, arms the keepalive timer
//! ```
//!
//! Over a byte-stream transport ([`WireRead`], [`WireWrite`]) the driver
//! reads runs of raw frames, which the state machine handles in place, and
//! writes the runs of frames the state machine encoded when they were
//! queued: on a connection without resumption, no `Frame` value is built
//! for a PAYLOAD under 4 KiB either way (resumable connections keep frame
//! values for the resume store).
//!
//! Modules, each importing only those below it: `driver` (the connection's
//! task) and `server` / `handshake` / `resume` / `reconnect` (connection
//! setup) → `requester` (the public handle) and `responder` (dispatching
//! requests to the user's `RSocket`) → `stream` (stream handles: the
//! inbound side of a stream, the pump of an outbound one) → `shared` (the
//! locked state and the wakers, woken after the lock is released) and
//! `transport`.

mod driver;
mod handshake;
mod reconnect;
mod requester;
mod responder;
mod resume;
mod server;
mod shared;
mod stream;
mod transport;

use std::sync::Arc;
use std::time::Instant as StdInstant;

use tracing::info_span;

pub use driver::ConnectionDriver;
pub use handshake::Handshakes;
pub use reconnect::{ReconnectOptions, Reconnecting};
pub use requester::{MetadataPushFuture, OpenFuture, Requester, ResponseFuture, ResponseStream};
pub use resume::{ResumeOptions, ServerResumeOptions};
pub use server::{accept, ServeError, Server, ServerStatsHandle, SocketAcceptor};
pub use transport::{
    memory_pair, FrameReader, FrameWriter, MemoryTransport, StreamTransport, Transport,
    TransportError, WireRead, WireWrite,
};

use crate::config::{Config, SetupParams};
use crate::error::{ConfigError, ConnectionError};
use crate::lease::LeaseConfig;
use crate::proto::{Connection, KeepaliveParams, Side};
use crate::rsocket::{RSocket, RejectAll};

/// Builds and connects a client.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use rsocket_core::{memory_pair, ClientBuilder, Payload};
/// let (client_end, _server_end) = memory_pair(64 * 1024);
/// let requester = ClientBuilder::new()
///     .keepalive(std::time::Duration::from_secs(10), std::time::Duration::from_secs(60))
///     .connect(client_end)?;
/// # let _ = requester; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    setup: SetupParams,
    config: Config,
    responder: Arc<dyn RSocket>,
    resume: ResumeOptions,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("setup", &self.setup)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientBuilder {
    /// Defaults: octet-stream MIME types, 20 s keepalive, 90 s lifetime,
    /// no responder (requests from the server are rejected).
    pub fn new() -> Self {
        Self {
            setup: SetupParams::default(),
            config: Config::default(),
            responder: Arc::new(RejectAll),
            resume: ResumeOptions::default(),
        }
    }

    /// All SETUP parameters at once.
    pub fn setup(mut self, setup: SetupParams) -> Self {
        self.setup = setup;
        self
    }

    /// Data MIME type.
    pub fn data_mime_type(mut self, mime: crate::frame::MimeType) -> Self {
        self.setup.data_mime_type = mime;
        self
    }

    /// Metadata MIME type.
    pub fn metadata_mime_type(mut self, mime: crate::frame::MimeType) -> Self {
        self.setup.metadata_mime_type = mime;
        self
    }

    /// Keepalive interval and max lifetime, in whole milliseconds (at
    /// least 1 ms each, or connecting fails with `ConfigError::Zero`; at
    /// most 2^31 − 1 ms, longer values are capped as SETUP carries them).
    /// The lifetime must be longer than the interval, or connecting fails
    /// with `ConfigError::KeepaliveLifetime`: both sides judge the peer dead
    /// after the lifetime without a frame, which on an idle connection
    /// would happen between two KEEPALIVEs.
    pub fn keepalive(
        mut self,
        interval: std::time::Duration,
        max_lifetime: std::time::Duration,
    ) -> Self {
        self.setup.keepalive_interval = interval;
        self.setup.max_lifetime = max_lifetime;
        self
    }

    /// The SETUP payload.
    pub fn setup_payload(mut self, payload: crate::Payload) -> Self {
        self.setup.payload = payload;
        self
    }

    /// Limits and tuning. A lease set with [`ClientBuilder::lease`] is kept
    /// unless `config.lease` is set.
    pub fn config(mut self, mut config: Config) -> Self {
        if config.lease.is_none() {
            config.lease = self.config.lease.take();
        }
        self.config = config;
        self
    }

    /// Asks the server for leasing (the L flag in SETUP): requests then need
    /// a lease from the server (failing with `RequestError::NoLease`, or
    /// waiting up to `LeaseConfig::wait`), and this client grants the
    /// server's requests with `lease`'s policy (none: every request from
    /// the server is rejected until `Requester::send_lease`). A server not
    /// configured for lease refuses the SETUP. See [`crate::lease`].
    pub fn lease(mut self, lease: LeaseConfig) -> Self {
        self.config.lease = Some(lease);
        self
    }

    /// The client's own responder, for requests the server sends.
    pub fn responder(mut self, responder: impl RSocket) -> Self {
        self.responder = server::into_shared(responder);
        self
    }

    /// Resumption settings (token, session timeout, backoff) used by
    /// [`ClientBuilder::connect_resumable`].
    pub fn resume(mut self, options: ResumeOptions) -> Self {
        self.resume = options;
        self
    }

    /// Sets up the connection without spawning: the caller polls the driver.
    /// SETUP is queued first; requests may be issued right away.
    pub fn connect_with_driver<T: Transport>(
        self,
        transport: T,
    ) -> Result<(Requester, ConnectionDriver<T>), ConfigError> {
        self.build(transport, None)
    }

    fn build<T: Transport>(
        self,
        transport: T,
        resume_token: Option<bytes::Bytes>,
    ) -> Result<(Requester, ConnectionDriver<T>), ConfigError> {
        self.config.validate()?;
        // SETUP carries whole milliseconds, 1 ..= 2^31 - 1 (0 is invalid):
        // the local timers use the values the server sees. Below 1 ms, the
        // interval would re-arm at once and the lifetime end at once.
        let (interval, lifetime) = (self.setup.keepalive_interval, self.setup.max_lifetime);
        if interval.as_millis() == 0 {
            return Err(ConfigError::Zero("the keepalive interval (in whole ms)"));
        }
        if lifetime.as_millis() == 0 {
            return Err(ConfigError::Zero(
                "the keepalive max lifetime (in whole ms)",
            ));
        }
        if crate::config::duration_ms(lifetime) <= crate::config::duration_ms(interval) {
            return Err(ConfigError::KeepaliveLifetime { interval, lifetime });
        }
        let span = info_span!("rsocket.conn", side = "client");
        let keepalive = KeepaliveParams {
            send_interval: Some(std::time::Duration::from_millis(u64::from(
                crate::config::duration_ms(interval),
            ))),
            max_lifetime: std::time::Duration::from_millis(u64::from(crate::config::duration_ms(
                lifetime,
            ))),
        };
        let max_frame_len = self.config.max_frame_len;
        let lease = self.config.lease.clone();
        let resumable = resume_token.is_some();
        let mut setup = self.setup.to_frame_with_token(resume_token);
        setup.lease = lease.is_some();
        // SETUP cannot be fragmented: one over the limit would only be
        // refused on the way out, closing the connection.
        let len = crate::frame::Frame::Setup(Box::new(setup.clone())).encoded_len();
        if len > max_frame_len {
            return Err(ConfigError::SetupFrameTooLong {
                len,
                max: max_frame_len,
            });
        }
        let now = tokio_now();
        let mut conn = Connection::new(Side::Client, self.config, keepalive, now);
        if resumable {
            conn.enable_resume();
        }
        conn.queue_setup(setup);
        if let Some(lease) = &lease {
            // The client's responder grants too; its first LEASE follows
            // the SETUP.
            conn.enable_lease(lease, now);
        }
        let shared = shared::Shared::new(conn, span);
        let mut transport = transport;
        transport.limit_frame_len(max_frame_len);
        let (reader, writer) = transport.split();
        let mut driver = ConnectionDriver::new(shared.clone(), reader, writer, self.responder);
        if let Some(grants) = lease.as_ref().and_then(|l| l.policy.as_ref()?.grants()) {
            driver.set_lease_source(grants);
        }
        Ok((Requester::new(shared), driver))
    }

    /// Connects without resumption, and replaces the connection when it
    /// ends: the returned [`Reconnecting`] client sends each request over
    /// the current connection, opening a new one (calling `connect` again,
    /// with jittered exponential backoff, see [`ReconnectOptions`]) when
    /// the current one has ended or is closing gracefully (the server sent
    /// CONNECTION_CLOSE: what is open on it finishes there, new requests
    /// go to the new connection). Requests that were open on a connection
    /// that ended fail with its [`ConnectionError`]; nothing is replayed.
    /// Any server works. An error opening the first transport is returned.
    pub async fn connect_reconnecting<T, F, Fut>(
        self,
        connect: F,
        options: ReconnectOptions,
    ) -> Result<Reconnecting, ConnectionError>
    where
        T: Transport,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::io::Result<T>> + Send + 'static,
    {
        self.config.validate()?;
        let builder = self;
        let connect = Arc::new(connect);
        let open: Arc<
            dyn Fn() -> futures::future::BoxFuture<'static, Result<Requester, ConnectionError>>
                + Send
                + Sync,
        > = Arc::new(move || {
            let builder = builder.clone();
            let fut = connect();
            Box::pin(async move {
                let transport = fut.await?;
                Ok(builder.connect(transport)?)
            })
        });
        let first = open().await?;
        Ok(Reconnecting::new(open, options, first))
    }

    /// Connects with session resumption and spawns the driver.
    ///
    /// `connect` opens a transport: it is called once now, and again
    /// whenever the transport is lost (read or write error, end of
    /// stream, keepalive expired), with jittered exponential backoff (see
    /// [`ResumeOptions`]). On each new transport the client sends RESUME;
    /// after the server's RESUME_OK both sides send again what the other
    /// has not received, and every open request, stream and channel goes
    /// on. Requests fail only when the session cannot be resumed (the
    /// server refuses, or [`ResumeOptions::session_timeout`] passes), with
    /// [`ConnectionError::ResumeFailed`].
    ///
    /// SETUP carries the token (R flag). An error opening the first
    /// transport is returned as is; a later call that fails, or panics, is
    /// a failed attempt and retried.
    ///
    /// ```
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use rsocket_core::{ClientBuilder, ResumeOptions, StreamTransport};
    /// let requester = ClientBuilder::new()
    ///     .resume(ResumeOptions {
    ///         session_timeout: std::time::Duration::from_secs(30),
    ///         ..ResumeOptions::default()
    ///     })
    ///     .connect_resumable(|| async {
    ///         let tcp = tokio::net::TcpStream::connect("127.0.0.1:7878").await?;
    ///         let (r, w) = tcp.into_split();
    ///         Ok(StreamTransport::new(r, w))
    ///     })
    ///     .await?;
    /// # let _ = requester; Ok(()) }
    /// ```
    pub async fn connect_resumable<T, F, Fut>(
        self,
        connect: F,
    ) -> Result<Requester, ConnectionError>
    where
        T: Transport,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::io::Result<T>> + Send + 'static,
    {
        self.config.validate()?;
        let reconnect: resume::Reconnect<T> = Arc::new(move || Box::pin(connect()));
        let transport = reconnect().await?;
        let token = self
            .resume
            .token
            .clone()
            .unwrap_or_else(resume::random_token);
        let options = self.resume.clone();
        let max_frame_len = self.config.max_frame_len;
        let (requester, driver) = self.build(transport, Some(token.clone()))?;
        let client = resume::ClientResume::new(reconnect, token, options, max_frame_len);
        drop(driver.with_resumer(resume::Resumer::Client(client)).spawn());
        Ok(requester)
    }

    /// Connects and spawns the driver on the current tokio runtime.
    pub fn connect<T: Transport>(self, transport: T) -> Result<Requester, ConfigError> {
        let (requester, driver) = self.connect_with_driver(transport)?;
        drop(driver.spawn());
        Ok(requester)
    }
}

/// The current time on tokio's clock (which tests can pause), as a std
/// `Instant` for the state machine.
pub(crate) fn tokio_now() -> StdInstant {
    tokio::time::Instant::now().into_std()
}
