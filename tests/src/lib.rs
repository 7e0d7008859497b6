//! Cross-crate end-to-end test harness, generic over the transport.
//!
//! Every scenario in [`scenarios`] is written once against the
//! [`TransportKind`] trait and instantiated per transport by the [`suite!`]
//! macro, which generates one `#[tokio::test]` per scenario (and per
//! [`Direction`] where the interaction is symmetric):
//!
//! ```text
//! // tests/tests/e2e.rs
//! use rsocket_tests::{Memory, Tcp, Ws};
//! rsocket_tests::suite!(memory, Memory);
//! rsocket_tests::suite!(tcp, Tcp);
//! rsocket_tests::suite!(ws, Ws);
//! ```
//!
//! Adding a transport means implementing [`TransportKind`]: return the
//! server's stream of incoming transports and a [`Connector`] that opens a
//! client transport to it, then invoking [`suite!`] once more.
//!
//! The pieces:
//! * [`TransportKind`], [`Memory`], [`Tcp`], [`Ws`]: how to get a
//!   server-side stream of transports and a client connector.
//! * [`TestServer`]: a running [`Server`] whose accepted connections hand
//!   their server-side [`Requester`] to the test, with graceful shutdown and
//!   hard abort.
//! * [`pair`]: a connected client and server where one side serves a given
//!   responder and the other side's requester calls it ([`Direction`]).
//! * [`responder`]: the TCK responder (handler table of
//!   rsocket-protocol.md §12.2) and the [`Probe`] it reports through.
//! * [`within`]: the failure guard every wait goes through. Timeouts only
//!   turn a hang into a failure; no test orders events by sleeping.

mod lifecycle;
pub mod proxy;
pub mod responder;
pub mod scenarios;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use rsocket_core::runtime::ServeError;
use rsocket_core::{ClientBuilder, Config, MemoryTransport, RSocket, Requester, Server, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use responder::{DropGuard, DropWatch, Probe, Signal, Signals, TckResponder};

/// How long any single wait may take before the test fails.
pub const GUARD: Duration = Duration::from_secs(5);

/// Awaits `fut`, failing the test with `what` if it takes longer than
/// [`GUARD`]. This is a failure guard only, never a way to order events.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {GUARD:?} waiting for {what}"),
    }
}

/// The server side's stream of accepted transports.
pub type Incoming<T> = BoxStream<'static, io::Result<T>>;

/// What [`TransportKind::start`] returns: the server's incoming transports
/// and a connector to them.
pub type Listening<T> = (Incoming<T>, Connector<T>);

/// Opens client transports to one server. Cheap to clone.
pub struct Connector<T> {
    open: Arc<dyn Fn() -> BoxFuture<'static, io::Result<T>> + Send + Sync>,
}

impl<T> Clone for Connector<T> {
    fn clone(&self) -> Self {
        Self {
            open: self.open.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Connector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl<T: Transport> Connector<T> {
    /// A connector from a closure that opens one transport per call.
    pub fn new<F, Fut>(open: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<T>> + Send + 'static,
    {
        Self {
            open: Arc::new(move || open().boxed()),
        }
    }

    /// Opens a client transport.
    pub async fn connect(&self) -> io::Result<T> {
        (self.open)().await
    }
}

/// A transport the suite runs over.
pub trait TransportKind: Send + Sync + 'static {
    /// The transport both ends use.
    type T: Transport;

    /// Starts listening: returns the stream of incoming (server-side)
    /// transports, to be passed to [`Server::serve`], and a connector that
    /// opens client transports to it.
    fn start() -> impl Future<Output = io::Result<Listening<Self::T>>> + Send;
}

/// The in-memory transport: each connect makes a [`rsocket_core::memory_pair`]
/// and feeds the server end to the server through a bounded channel.
#[derive(Debug, Clone, Copy)]
pub struct Memory;

/// Pipe buffer per direction of an in-memory connection.
const MEMORY_BUFFER: usize = 64 << 10;

impl TransportKind for Memory {
    type T = MemoryTransport;

    async fn start() -> io::Result<Listening<MemoryTransport>> {
        let (tx, mut rx) = mpsc::channel::<MemoryTransport>(8);
        let incoming = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|t| t.map(Ok)));
        let connector = Connector::new(move || {
            let tx = tx.clone();
            async move {
                let (client, server) = rsocket_core::memory_pair(MEMORY_BUFFER);
                tx.send(server)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "server gone"))?;
                Ok(client)
            }
        });
        Ok((incoming.boxed(), connector))
    }
}

/// TCP on 127.0.0.1, port 0.
#[derive(Debug, Clone, Copy)]
pub struct Tcp;

impl TransportKind for Tcp {
    type T = rsocket_transport_tcp::TcpTransport;

    async fn start() -> io::Result<Listening<Self::T>> {
        let listener = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connector = Connector::new(move || rsocket_transport_tcp::connect(addr));
        Ok((listener.boxed(), connector))
    }
}

/// WebSocket on 127.0.0.1, port 0, path `/rsocket`: one frame per binary
/// message.
#[derive(Debug, Clone, Copy)]
pub struct Ws;

impl TransportKind for Ws {
    type T = rsocket_transport_ws::WsClientTransport;

    async fn start() -> io::Result<Listening<Self::T>> {
        let listener = rsocket_transport_ws::WsListener::bind("127.0.0.1:0")
            .await?
            .with_path("/rsocket");
        let url = format!("ws://{}/rsocket", listener.local_addr()?);
        let connector = Connector::new(move || {
            let url = url.clone();
            async move {
                rsocket_transport_ws::connect(&url)
                    .await
                    .map_err(io::Error::other)
            }
        });
        Ok((listener.boxed(), connector))
    }
}

/// A running [`Server`] on some transport.
///
/// Every accepted connection's server-side [`Requester`] (the handle for
/// calling the client back) is handed to the test through
/// [`TestServer::accepted`].
pub struct TestServer<K: TransportKind> {
    connector: Connector<K::T>,
    accepted: mpsc::UnboundedReceiver<Requester>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl<K: TransportKind> std::fmt::Debug for TestServer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer").finish_non_exhaustive()
    }
}

impl<K: TransportKind> TestServer<K> {
    /// Starts a server whose every connection is served by `responder`,
    /// with `config` and a shutdown grace period of `grace`.
    pub async fn start(responder: Arc<dyn RSocket>, config: Config, grace: Duration) -> Self {
        let (incoming, connector) = K::start().await.expect("start listening");
        let (accepted_tx, accepted) = mpsc::unbounded_channel();
        let server = Server::new(move |_setup, requester: Requester| {
            let _ = accepted_tx.send(requester);
            let responder = responder.clone();
            async move { Ok(responder) }
        })
        .config(config)
        .grace_period(grace);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_with_shutdown(incoming, shutdown_rx.map(|_| ())));
        Self {
            connector,
            accepted,
            shutdown: Some(shutdown_tx),
            task,
        }
    }

    /// Connects a client built by `builder`.
    pub async fn connect(&self, builder: ClientBuilder) -> Requester {
        let transport = within("client transport", self.connector.connect())
            .await
            .expect("connect");
        builder.connect(transport).expect("client config")
    }

    /// The server-side requester of the next accepted connection.
    pub async fn accepted(&mut self) -> Requester {
        within("the server to accept a connection", self.accepted.recv())
            .await
            .expect("server task ended")
    }

    /// Signals graceful shutdown: stop accepting, drain, close after the
    /// grace period.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Kills the server: aborts the accept loop, which drops every
    /// connection's driver and with it the transports.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits for [`Server::serve`] to return (after [`TestServer::shutdown`]).
    pub async fn finished(self) -> Result<(), ServeError> {
        within("the server to finish", self.task)
            .await
            .expect("serve task panicked")
    }
}

/// Which side makes the requests in a [`Pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client requests; the server's acceptor returns the responder.
    ClientToServer,
    /// The server requests through the [`Requester`] its acceptor was
    /// given; the client serves through `ClientBuilder::responder`.
    ServerToClient,
}

/// One connection, set up so that [`Pair::requester`] calls a given
/// responder on the other side.
pub struct Pair<K: TransportKind> {
    /// The requester that calls the responder under test.
    pub requester: Requester,
    /// The client's requester.
    pub client: Requester,
    /// The server's requester for this connection.
    pub server_side: Requester,
    /// The server.
    pub server: TestServer<K>,
}

impl<K: TransportKind> std::fmt::Debug for Pair<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair").finish_non_exhaustive()
    }
}

/// Connects a client to a fresh server, both with `config`. The side named
/// by `dir` as the responder serves `responder`; the other rejects
/// everything. The grace period is 10 s.
pub async fn pair<K: TransportKind>(
    dir: Direction,
    responder: Arc<dyn RSocket>,
    config: Config,
) -> Pair<K> {
    let (server_responder, client_responder): (Arc<dyn RSocket>, Arc<dyn RSocket>) = match dir {
        Direction::ClientToServer => (responder, Arc::new(rsocket_core::RejectAll)),
        Direction::ServerToClient => (Arc::new(rsocket_core::RejectAll), responder),
    };
    let mut server =
        TestServer::<K>::start(server_responder, config.clone(), Duration::from_secs(10)).await;
    let client = server
        .connect(
            ClientBuilder::new()
                .config(config)
                .responder(client_responder),
        )
        .await;
    let server_side = server.accepted().await;
    let requester = match dir {
        Direction::ClientToServer => client.clone(),
        Direction::ServerToClient => server_side.clone(),
    };
    Pair {
        requester,
        client,
        server_side,
        server,
    }
}

/// Generates the whole end-to-end suite for one transport: a module
/// `$name` with one submodule per scenario, holding a `#[tokio::test]` per
/// direction (`client_to_server`, `server_to_client`) or a single `run` for
/// scenarios that only make sense one way.
///
/// The invoking crate needs `tokio` (features `macros`, `rt-multi-thread`).
#[macro_export]
macro_rules! suite {
    ($name:ident, $kind:ty) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::__suite_both!($kind;
                rr_pass,
                rr_error,
                rr_empty,
                rr_cancel,
                rr_concurrent,
                fire_and_forget,
                metadata_push,
                stream_empty,
                stream_single,
                stream_multi,
                stream_alphabet,
                stream_error,
                stream_value_then_error,
                stream_exact_credit,
                stream_cancel_then_reuse,
                stream_concurrent,
                channel_single_vs_single,
                channel_multi_vs_multi,
                channel_requester_completes_responder_errors,
                channel_responder_completes_requester_continues,
                channel_responder_error_terminates_both,
                channel_requester_error_terminates_both,
                channel_requester_cancel,
                channel_responder_drops_inbound,
                channel_echo_credit,
                fragmentation,
                large_payload,
            );
            $crate::__suite_once!($kind;
                dead_peer,
                graceful_shutdown_drains,
                graceful_shutdown_grace_expires,
                many_connections,
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_both {
    ($kind:ty; $($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn client_to_server() {
                    $crate::scenarios::$scenario::<$kind>($crate::Direction::ClientToServer).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn server_to_client() {
                    $crate::scenarios::$scenario::<$kind>($crate::Direction::ServerToClient).await;
                }
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_once {
    ($kind:ty; $($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn run() {
                    $crate::scenarios::$scenario::<$kind>().await;
                }
            }
        )*
    };
}
