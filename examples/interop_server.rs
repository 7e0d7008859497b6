//! Interop responder: serves the cross-implementation contract (see
//! `docs/interop.md`) over TCP or WebSocket, so that rsocket-py and
//! rsocket-js clients (and `interop_client`) can check this engine.
//!
//! ```text
//! cargo run --release --example interop_server -- --transport tcp|ws \
//!     --host 127.0.0.1 --port 0 [--fragment MTU]
//! ```
//!
//! Once it accepts connections it prints exactly one line
//! `READY <transport> <host> <port>` on stdout (port 0 picks a free port and
//! the line carries the real one). It runs until SIGTERM or Ctrl-C.
//!
//! Contract, per connection:
//! * request/response: `fnf-count`, `mp-count`, `mp-last`, `caps`, `fail`,
//!   `produced` (JSON `{"produced": N, "state": S}`: items the last
//!   request/stream produced, and whether it is `running`, `completed` or
//!   `cancelled`; `none` before any), anything else is echoed as
//!   `echo:<data>` with the request's metadata;
//! * fire-and-forget is counted, metadata push recorded;
//! * request/stream `N` sends `0` .. `N-1` then completes; a negative or
//!   non-numeric `N` fails with `bad n`;
//! * request/channel upper-cases every inbound payload, the first included;
//! * with composite metadata announced in SETUP, a routing entry must name
//!   `echo`, `stream` or `channel` (matching the interaction);
//! * leasing: a client that sets the L flag in SETUP is granted 2 requests
//!   for 30 s at once; request/response `lease-grant` (on any connection)
//!   grants that again to every leased connection and answers
//!   `granted:<connections>`; `lease-stats` answers JSON
//!   `{"requests": N, "rejected": R}`: requests this connection received
//!   before it, and those rejected for exceeding the lease. A second
//!   listener without lease (its port is `noLeasePort` in `caps`) refuses
//!   the L flag with `ERROR[UNSUPPORTED_SETUP]`.

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use rsocket::metadata::{CompositeMetadata, RoutingMetadata, WellKnownMimeType};
use rsocket::{
    async_trait, Config, Lease, LeaseConfig, Listener, MimeType, Payload, PayloadStream, RSocket,
    RequestError, Requester, Server, ServerResumeOptions, SetupInfo, StreamError,
};

/// What one connection has seen.
#[derive(Default)]
struct ConnState {
    fnf_count: AtomicU64,
    mp_count: AtomicU64,
    mp_last: Mutex<Option<Bytes>>,
    /// The last request/stream, for the `produced` query.
    last_stream: Mutex<Option<Arc<Progress>>>,
    /// Requests that reached the responder (any interaction).
    requests: AtomicU64,
}

/// The grant every leased connection gets: at setup and on `lease-grant`.
fn interop_lease() -> Lease {
    Lease::new(Duration::from_secs(30), 2)
}

/// The connections that negotiated leasing, for `lease-grant`.
#[derive(Default)]
struct Leased {
    connections: Mutex<Vec<Requester>>,
}

impl Leased {
    /// Grants every open leased connection a fresh lease; returns how many.
    fn grant_all(&self) -> usize {
        let Ok(mut list) = self.connections.lock() else {
            return 0;
        };
        list.retain(|r| !r.is_closed());
        list.iter()
            .filter(|r| r.send_lease(&interop_lease()))
            .count()
    }
}

const RUNNING: u8 = 0;
const COMPLETED: u8 = 1;
const CANCELLED: u8 = 2;

/// How far a request/stream got.
#[derive(Default)]
struct Progress {
    produced: AtomicU64,
    state: AtomicU8,
}

impl Progress {
    fn to_json(&self) -> String {
        let state = match self.state.load(Ordering::SeqCst) {
            RUNNING => "running",
            COMPLETED => "completed",
            _ => "cancelled",
        };
        format!(
            r#"{{"produced": {}, "state": "{state}"}}"#,
            self.produced.load(Ordering::SeqCst)
        )
    }
}

/// `0` .. `n-1`, each counted when the engine takes it (only with credit).
/// Dropped before its end (the requester's CANCEL), it records that.
struct Counted {
    next: u64,
    n: u64,
    progress: Arc<Progress>,
}

impl Stream for Counted {
    type Item = Result<Payload, RequestError>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.next == self.n {
            self.progress.state.store(COMPLETED, Ordering::SeqCst);
            return Poll::Ready(None);
        }
        let i = self.next;
        self.next += 1;
        self.progress.produced.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Payload::from(i.to_string()))))
    }

    /// Exact, so that COMPLETE goes out with the last item.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.n - self.next).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = self.progress.state.compare_exchange(
            RUNNING,
            CANCELLED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// The responder of one connection.
struct Responder {
    state: Arc<ConnState>,
    /// SETUP announced composite metadata: routing entries are honoured.
    routing: bool,
    /// This connection's own handle (its lease counters).
    requester: Requester,
    leased: Arc<Leased>,
    /// The port of the listener without lease, for `caps`.
    no_lease_port: u16,
}

/// The route named by a request's metadata, if routing is on and the
/// metadata holds a routing entry.
fn route_of(routing: bool, payload: &Payload) -> Option<String> {
    if !routing {
        return None;
    }
    let metadata = payload.metadata.clone()?;
    let entry = CompositeMetadata::new(metadata)
        .find(WellKnownMimeType::MessageRSocketRouting)
        .ok()??;
    let tags = RoutingMetadata::new(entry).to_vec().ok()?;
    // An empty routing entry names no route: it is an unknown route.
    Some(
        tags.first()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
    )
}

fn check_route(routing: bool, payload: &Payload, expected: &str) -> Result<(), StreamError> {
    match route_of(routing, payload) {
        Some(route) if route != expected => {
            Err(StreamError::application(format!("unknown route: {route}")))
        }
        _ => Ok(()),
    }
}

fn failed_stream(e: StreamError) -> PayloadStream {
    futures::stream::once(async move { Err(RequestError::from(e)) }).boxed()
}

impl Responder {
    /// What this server supports. "fragmentation": fragmented requests are
    /// reassembled (and replies fragmented with `--fragment`).
    fn caps(&self) -> String {
        format!(
            concat!(
                r#"{{"impl": "rsocket-rs {}", "fragmentation": true, "metadataPush": true, "#,
                r#""lease": true, "resume": true, "routing": true, "noLeasePort": {}}}"#
            ),
            env!("CARGO_PKG_VERSION"),
            self.no_lease_port,
        )
    }

    fn answer(&self, request: Payload) -> Result<Payload, StreamError> {
        check_route(self.routing, &request, "echo")?;
        let seen_before = self.state.requests.fetch_add(1, Ordering::SeqCst);
        let reply = match &request.data[..] {
            b"lease-grant" => Payload::from(format!("granted:{}", self.leased.grant_all())),
            b"lease-stats" => Payload::from(format!(
                r#"{{"requests": {seen_before}, "rejected": {}}}"#,
                self.requester.stats().lease_rejected
            )),
            b"fnf-count" => Payload::from(self.state.fnf_count.load(Ordering::SeqCst).to_string()),
            b"mp-count" => Payload::from(self.state.mp_count.load(Ordering::SeqCst).to_string()),
            b"mp-last" => {
                let last = self
                    .state
                    .mp_last
                    .lock()
                    .map_err(|_| StreamError::application("state poisoned"))?;
                let mut data = b"mp:".to_vec();
                data.extend_from_slice(last.as_deref().unwrap_or_default());
                Payload::from(data)
            }
            b"caps" => Payload::from(self.caps()),
            b"produced" => {
                let last = self
                    .state
                    .last_stream
                    .lock()
                    .map_err(|_| StreamError::application("state poisoned"))?;
                Payload::from(match last.as_deref() {
                    Some(p) => p.to_json(),
                    None => r#"{"produced": 0, "state": "none"}"#.to_owned(),
                })
            }
            b"fail" => return Err(StreamError::application("requested failure")),
            data => {
                let mut echoed = b"echo:".to_vec();
                echoed.extend_from_slice(data);
                Payload {
                    metadata: request.metadata.clone(),
                    data: echoed.into(),
                }
            }
        };
        Ok(reply)
    }
}

#[async_trait]
impl RSocket for Responder {
    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(self.answer(request)?))
    }

    async fn fire_and_forget(&self, _request: Payload) -> Result<(), RequestError> {
        self.state.requests.fetch_add(1, Ordering::SeqCst);
        self.state.fnf_count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        if let Ok(mut last) = self.state.mp_last.lock() {
            *last = Some(metadata);
        }
        self.state.mp_count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        self.state.requests.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = check_route(self.routing, &request, "stream") {
            return failed_stream(e);
        }
        let n = request
            .data_utf8()
            .and_then(|s| s.trim().parse::<u64>().ok());
        match n {
            // Items are produced only as the requester grants credit: the
            // engine polls this stream only while credit is left.
            Some(n) => {
                let progress = Arc::new(Progress::default());
                if let Ok(mut last) = self.state.last_stream.lock() {
                    *last = Some(progress.clone());
                }
                Counted {
                    next: 0,
                    n,
                    progress,
                }
                .boxed()
            }
            None => failed_stream(StreamError::application("bad n")),
        }
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        self.state.requests.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = check_route(self.routing, &first, "channel") {
            return failed_stream(e);
        }
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .map_ok(|p| Payload::from(String::from_utf8_lossy(&p.data).to_uppercase()))
            .boxed()
    }
}

struct Args {
    transport: String,
    host: String,
    port: u16,
    fragment: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        transport: "tcp".into(),
        host: "127.0.0.1".into(),
        port: 0,
        fragment: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--transport" => args.transport = value()?,
            "--host" => args.host = value()?,
            "--port" => args.port = value()?.parse().context("--port")?,
            "--fragment" => args.fragment = Some(value()?.parse().context("--fragment")?),
            "-h" | "--help" => {
                println!("interop_server --transport tcp|ws --host H --port P [--fragment MTU]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if args.transport != "tcp" && args.transport != "ws" {
        bail!("--transport must be tcp or ws");
    }
    Ok(args)
}

fn ready(transport: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {transport} {} {}", addr.ip(), addr.port())?;
    out.flush()?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = parse_args()?;
    let config = Config {
        mtu: args.fragment,
        ..Config::default()
    };
    config.validate().context("--fragment")?;

    // The second listener, without lease: SETUP with L is refused there.
    let no_lease_listener =
        Listener::bind(&format!("{}://{}:0", args.transport, args.host)).await?;
    let no_lease_port = no_lease_listener.local_addr().port();
    let leased = Arc::new(Leased::default());
    let acceptor = move |setup: SetupInfo, requester: Requester| {
        let leased = leased.clone();
        async move {
            let routing = setup.metadata_mime_type == MimeType::COMPOSITE_METADATA;
            if setup.lease {
                requester.send_lease(&interop_lease());
                if let Ok(mut list) = leased.connections.lock() {
                    list.push(requester.clone());
                }
            }
            Ok(Responder {
                state: Arc::default(),
                routing,
                requester,
                leased,
                no_lease_port,
            })
        }
    };
    let server = Server::new(acceptor.clone())
        .config(config.clone())
        .grace_period(Duration::from_millis(200))
        // Grants come from the acceptor and `lease-grant`, no policy.
        .lease(LeaseConfig::new())
        // Resumable sessions (SETUP with a token) survive a lost transport
        // for 30 s; other connections are unaffected.
        .resumption(ServerResumeOptions {
            session_timeout: Duration::from_secs(30),
            ..ServerResumeOptions::default()
        });
    let no_lease_server = Server::new(acceptor)
        .config(config)
        .grace_period(Duration::from_millis(200));
    tokio::spawn(no_lease_server.serve(no_lease_listener));

    let listener =
        Listener::bind(&format!("{}://{}:{}", args.transport, args.host, args.port)).await?;
    ready(&args.transport, listener.local_addr())?;
    server
        .serve_with_shutdown(listener, shutdown_signal())
        .await?;
    Ok(())
}
