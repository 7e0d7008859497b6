//! In-memory and TCP test servers for the balancer tests.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part; test-only module

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rsocket_balance::{BoxError, Connect, MemberInfo, MemberState};
use rsocket_core::{
    async_trait, memory_pair, ClientBuilder, LeaseConfig, MemoryTransport, Payload, PayloadStream,
    RSocket, RequestError, Requester, Server, StreamError,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Counters shared by a server's connections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests received (any interaction).
    pub hits: AtomicUsize,
    /// Stream items produced.
    pub produced: AtomicUsize,
    /// Connections open on the server side.
    pub open: AtomicUsize,
    /// Connections accepted so far.
    pub accepted: AtomicUsize,
}

/// The responder every test server runs. Request data:
/// * request/response: `"fail"` answers APPLICATION_ERROR, `"hang"` never
///   answers, anything else answers the server's name after its delay;
/// * request/stream: the data is an item count; items are `name:i`;
///   `"hang"` sends no item and never ends, `"hang1"` sends `name:0` and
///   then nothing, never ending;
/// * request/channel: echoes each item as `name:data`; a first item
///   `"hang"` gets no answer and the channel never ends.
pub struct Responder {
    name: String,
    delay: Duration,
    counters: Arc<Counters>,
}

#[async_trait]
impl RSocket for Responder {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.counters.hits.fetch_add(1, Ordering::SeqCst);
        match req.data_utf8() {
            Some("fail") => return Err(StreamError::application("asked to fail").into()),
            Some("hang") => futures::future::pending::<()>().await,
            _ => {}
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(Some(Payload::from(self.name.clone())))
    }

    async fn fire_and_forget(&self, _req: Payload) -> Result<(), RequestError> {
        self.counters.hits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn metadata_push(&self, _metadata: Bytes) -> Result<(), RequestError> {
        self.counters.hits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        self.counters.hits.fetch_add(1, Ordering::SeqCst);
        match req.data_utf8() {
            Some("hang") => return futures::stream::pending().boxed(),
            Some("hang1") => {
                let first = Payload::from(format!("{}:0", self.name));
                return futures::stream::once(async { Ok(first) })
                    .chain(futures::stream::pending())
                    .boxed();
            }
            _ => {}
        }
        let n: usize = req.data_utf8().and_then(|s| s.parse().ok()).unwrap_or(0);
        let name = self.name.clone();
        let counters = self.counters.clone();
        futures::stream::iter(0..n)
            .map(move |i| {
                counters.produced.fetch_add(1, Ordering::SeqCst);
                Ok(Payload::from(format!("{name}:{i}")))
            })
            .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        self.counters.hits.fetch_add(1, Ordering::SeqCst);
        if first.data_utf8() == Some("hang") {
            return futures::stream::pending().boxed();
        }
        let name = self.name.clone();
        futures::stream::once(async { Ok(first) })
            .chain(rest)
            .map(move |p| {
                let p = p?;
                Ok(Payload::from(format!(
                    "{name}:{}",
                    p.data_utf8().unwrap_or("")
                )))
            })
            .boxed()
    }
}

fn server(name: &str, delay: Duration, counters: &Arc<Counters>) -> Server {
    let name = name.to_owned();
    let counters = counters.clone();
    Server::new(move |_setup, requester: Requester| {
        counters.open.fetch_add(1, Ordering::SeqCst);
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let watch = counters.clone();
        tokio::spawn(async move {
            requester.closed().await;
            watch.open.fetch_sub(1, Ordering::SeqCst);
        });
        let responder = Responder {
            name: name.clone(),
            delay,
            counters: counters.clone(),
        };
        async move { Ok(responder) }
    })
    .grace_period(Duration::from_secs(30))
}

/// An in-memory server: each dial hands it one end of a memory pair.
pub struct MemServer {
    pub name: String,
    pub counters: Arc<Counters>,
    tx: mpsc::UnboundedSender<MemoryTransport>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl MemServer {
    pub fn start(name: &str, delay: Duration) -> Self {
        Self::start_with(name, delay, None)
    }

    /// A server that leases to clients asking for it (see `Server::lease`).
    pub fn start_with(name: &str, delay: Duration, lease: Option<LeaseConfig>) -> Self {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel::<MemoryTransport>();
        let incoming = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|t| (Ok::<_, std::io::Error>(t), rx))
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = server(name, delay, &counters);
        if let Some(lease) = lease {
            server = server.lease(lease);
        }
        let serve = server.serve_with_shutdown(incoming, async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move {
            let _ = serve.await;
        });
        Self {
            name: name.to_owned(),
            counters,
            tx,
            stop: Some(stop),
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.counters.hits.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Dials this server with default client settings.
    pub fn connector(&self) -> impl Connect + Clone {
        self.connector_with(ClientBuilder::new())
    }

    /// Dials this server with `builder`; fails once the server is gone.
    pub fn connector_with(&self, builder: ClientBuilder) -> impl Connect + Clone {
        let tx = self.tx.clone();
        move || {
            let tx = tx.clone();
            let builder = builder.clone();
            async move {
                let (client_end, server_end) = memory_pair(256 * 1024);
                tx.send(server_end)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
                Ok::<_, BoxError>(builder.connect(client_end)?)
            }
        }
    }

    /// Stops at once: every connection is dropped mid-flight.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Graceful shutdown: CONNECTION_CLOSE, in-flight requests finish.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A TCP server on loopback; `kill` drops it and its connections.
pub struct TcpServer {
    pub addr: std::net::SocketAddr,
    pub counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl TcpServer {
    pub async fn start(name: &str, addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let counters = Arc::new(Counters::default());
        let listener = rsocket_transport_tcp::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let serve = server(name, Duration::ZERO, &counters).serve(listener);
        let task = tokio::spawn(async move {
            let _ = serve.await;
        });
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    pub fn hits(&self) -> usize {
        self.counters.hits.load(Ordering::SeqCst)
    }

    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Members in a given state.
pub fn count<K>(members: &[MemberInfo<K>], state: MemberState) -> usize {
    members.iter().filter(|m| m.state == state).count()
}

/// The data of a reply, as text.
pub fn text(p: Option<Payload>) -> String {
    p.and_then(|p| p.data_utf8().map(str::to_owned))
        .unwrap_or_default()
}

/// Bounds a test step that waits for an event (never used to order them).
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The (name, connector) list of some in-memory servers.
pub fn targets(servers: &[MemServer]) -> Vec<(String, impl Connect + Clone)> {
    servers
        .iter()
        .map(|s| (s.name.clone(), s.connector()))
        .collect()
}
