//! The tokio runtime: transports, the connection driver, requester handles,
//! and the client and server entry points.
//!
//! ```text
//!   Requester (Clone) ──lock──┐            ┌── spawned responder tasks
//!                             ▼            │   (one per request; pumps poll
//!                    Mutex<proto::Connection>  user streams only with credit)
//!                             ▲
//!   ConnectionDriver ─────────┘  reads the transport, handles frames in
//!                                batches, writes every queued frame and
//!                                flushes once, arms the keepalive timer
//! ```

mod driver;
mod handshake;
mod requester;
mod responder;
mod server;
mod transport;

use std::sync::Arc;
use std::time::Instant as StdInstant;

use tracing::info_span;

pub use driver::ConnectionDriver;
pub use handshake::Handshakes;
pub use requester::{MetadataPushFuture, OpenFuture, Requester, ResponseFuture, ResponseStream};
pub use server::{accept, ServeError, Server, ServerStatsHandle, SocketAcceptor};
pub use transport::{
    memory_pair, FrameReader, FrameWriter, MemoryTransport, StreamTransport, Transport,
    TransportError,
};

use crate::config::{Config, SetupParams};
use crate::error::ConfigError;
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

    /// Keepalive interval and max lifetime.
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

    /// Sets up the connection without spawning: the caller polls the driver.
    /// SETUP is queued first; requests may be issued right away.
    pub fn connect_with_driver<T: Transport>(
        self,
        transport: T,
    ) -> Result<(Requester, ConnectionDriver<T>), ConfigError> {
        self.config.validate()?;
        let span = info_span!("rsocket.conn", side = "client");
        let keepalive = KeepaliveParams {
            send_interval: Some(self.setup.keepalive_interval),
            max_lifetime: self.setup.max_lifetime,
        };
        let max_frame_len = self.config.max_frame_len;
        let lease = self.config.lease.clone();
        let now = tokio_now();
        let mut conn = Connection::new(Side::Client, self.config, keepalive, now);
        let mut setup = self.setup.to_frame();
        setup.lease = lease.is_some();
        conn.queue_setup(setup);
        if let Some(lease) = &lease {
            // The client's responder grants too; its first LEASE follows
            // the SETUP.
            conn.enable_lease(lease, now);
        }
        let shared = driver::Shared::new(conn, span);
        let mut transport = transport;
        transport.limit_frame_len(max_frame_len);
        let (reader, writer) = transport.split();
        let mut driver = ConnectionDriver::new(shared.clone(), reader, writer, self.responder);
        if let Some(grants) = lease.as_ref().and_then(|l| l.policy.as_ref()?.grants()) {
            driver.set_lease_source(grants);
        }
        Ok((Requester::new(shared), driver))
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
