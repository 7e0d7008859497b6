//! Interop conformance client: connects to a server of the interop contract
//! (`interop_server`, or the rsocket-py / rsocket-js peers in `interop/`)
//! and checks every interaction.
//!
//! ```text
//! cargo run --release --example interop_client -- --transport tcp|ws \
//!     --host 127.0.0.1 --port P [--case-timeout SECS]
//! ```
//!
//! Prints `PASS name`, `FAIL name: reason` or `SKIP name: reason` per case
//! then `K skipped` and a last line `N passed, M failed`; exits non-zero when a
//! case failed. A case is skipped only when the server's `caps` answer says
//! it lacks the feature.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rsocket::metadata::{CompositeMetadata, RoutingMetadata, WellKnownMimeType};
use rsocket::prelude::ConnectExt;
use rsocket::{
    ClientBuilder, Config, ConnectionError, ErrorCode, LeaseConfig, MimeType, NoLease, Payload,
    RequestError, Requester, ResponseStream, ResumeOptions,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// How a case ended.
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

type CaseResult = anyhow::Result<Outcome>;

struct Args {
    transport: String,
    host: String,
    port: u16,
    case_timeout: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        transport: "tcp".into(),
        host: "127.0.0.1".into(),
        port: 0,
        case_timeout: Duration::from_secs(10),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--transport" => args.transport = value()?,
            "--host" => args.host = value()?,
            "--port" => args.port = value()?.parse().context("--port")?,
            "--case-timeout" => {
                args.case_timeout =
                    Duration::from_secs_f64(value()?.parse().context("--case-timeout")?)
            }
            "-h" | "--help" => {
                println!(
                    "interop_client --transport tcp|ws --host H --port P [--case-timeout SECS]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if args.transport != "tcp" && args.transport != "ws" {
        bail!("--transport must be tcp or ws");
    }
    if args.port == 0 {
        bail!("--port is required");
    }
    Ok(args)
}

/// Opens a connection with the given client settings.
async fn connect(args: &Args, builder: ClientBuilder) -> anyhow::Result<Requester> {
    connect_port(args, args.port, builder).await
}

/// Opens a connection to another port of the server's host.
async fn connect_port(args: &Args, port: u16, builder: ClientBuilder) -> anyhow::Result<Requester> {
    Ok(builder.connect_to(&uri(args, port)).await?)
}

fn uri(args: &Args, port: u16) -> String {
    let path = if args.transport == "ws" { "/" } else { "" };
    format!("{}://{}:{port}{path}", args.transport, args.host)
}

/// A TCP relay to the server that the resume case cuts (both sockets of
/// every relayed connection closed) to make the client resume.
struct Relay {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(host: &str, port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?.port();
        let upstream = format!("{host}:{port}");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn({
            let accepted = accepted.clone();
            let cut = cut.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let mut cut_rx = cut.subscribe();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_rx.changed() => {}
                        }
                        let _ = client.shutdown().await;
                    });
                }
            }
        });
        Ok(Self {
            port: local,
            accepted,
            cut,
            task,
        })
    }

    fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// The server's `caps` answer.
#[derive(Debug, Clone, Default)]
struct Caps {
    implementation: String,
    fragmentation: bool,
    metadata_push: bool,
    lease: bool,
    resume: bool,
    routing: bool,
    /// A listener of the same server without lease, if it has one.
    no_lease_port: Option<u16>,
}

fn parse_caps(text: &str) -> anyhow::Result<Caps> {
    let v: serde_json::Value = serde_json::from_str(text).context("caps is not JSON")?;
    let flag = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(|| anyhow!("caps: {k:?} missing or not a boolean"))
    };
    Ok(Caps {
        implementation: v
            .get("impl")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow!("caps: \"impl\" missing or not a string"))?
            .to_owned(),
        fragmentation: flag("fragmentation")?,
        metadata_push: flag("metadataPush")?,
        lease: flag("lease")?,
        resume: flag("resume")?,
        routing: flag("routing")?,
        no_lease_port: v
            .get("noLeasePort")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok()),
    })
}

fn text(p: &Payload) -> String {
    String::from_utf8_lossy(&p.data).into_owned()
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> anyhow::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(anyhow!("{what}: got {got:?}, want {want:?}"))
    }
}

/// Request/response that must answer with a payload.
async fn rr(client: &Requester, p: Payload) -> anyhow::Result<Payload> {
    client
        .request_response(p)
        .await
        .map_err(|e| anyhow!("request failed: {e}"))?
        .ok_or_else(|| anyhow!("completed without a payload"))
}

async fn rr_text(client: &Requester, data: &'static str) -> anyhow::Result<String> {
    Ok(text(&rr(client, Payload::from(data)).await?))
}

/// Checks that `r` is ERROR[APPLICATION_ERROR] with `message`.
fn expect_app_error<T: std::fmt::Debug>(
    r: Result<T, RequestError>,
    message: &str,
) -> anyhow::Result<()> {
    match r {
        Ok(v) => Err(anyhow!("expected APPLICATION_ERROR {message:?}, got {v:?}")),
        Err(e) => match e.as_stream_error() {
            Some(se) if se.code == ErrorCode::APPLICATION_ERROR && se.message == message => Ok(()),
            _ => Err(anyhow!("expected APPLICATION_ERROR {message:?}, got {e}")),
        },
    }
}

async fn collect_texts(stream: ResponseStream) -> Result<Vec<String>, RequestError> {
    stream.map_ok(|p| text(&p)).try_collect().await
}

fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Polls `query` until it answers `want` (or the case timeout ends it).
async fn poll_until(client: &Requester, query: &'static str, want: &str) -> anyhow::Result<()> {
    loop {
        if rr_text(client, query).await? == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn routed(route: &str, data: impl Into<Bytes>) -> anyhow::Result<Payload> {
    let mut b = CompositeMetadata::builder();
    b.push_well_known(
        WellKnownMimeType::MessageRSocketRouting,
        RoutingMetadata::encode([route])?,
    )?;
    Ok(Payload {
        metadata: Some(b.build()),
        data: data.into(),
    })
}

/// Receives the next item of a stream within `wait`; `Ok(None)` on completion.
async fn next_item(
    s: &mut ResponseStream,
    wait: Duration,
) -> anyhow::Result<Option<Result<Payload, RequestError>>> {
    tokio::time::timeout(wait, s.next())
        .await
        .map_err(|_| anyhow!("nothing received within {wait:?}"))
}

/// Time to wait, after a batch was delivered, for items beyond the credit
/// granted. Over-delivery comes right behind the batch in the same
/// write, so a short window catches it; it does not order anything.
const QUIET: Duration = Duration::from_millis(150);

struct Ctx {
    args: Args,
    client: Requester,
    caps: Caps,
}

impl Ctx {
    /// Through a relay that is cut mid-stream: a resumable session gets 3
    /// items of a stream with explicit credit, loses its transport, asks
    /// for the rest, and gets it over the resumed session, in order and
    /// once; a request/response works afterwards.
    async fn case_resume(&self) -> CaseResult {
        if !self.caps.resume {
            return Ok(Outcome::Skip(format!(
                "server {} does not support resumption",
                self.caps.implementation
            )));
        }
        let relay = Relay::start(&self.args.host, self.args.port).await?;
        let client = ClientBuilder::new()
            .keepalive(Duration::from_secs(1), Duration::from_secs(10))
            .resume(ResumeOptions {
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(500),
                session_timeout: self.args.case_timeout,
                ..ResumeOptions::default()
            })
            .connect_resumable_to(&uri(&self.args, relay.port))
            .await?;
        let wait = self.args.case_timeout / 2;
        let mut s = client.request_stream_with_credit(Payload::from("10"), 3);
        let mut got = Vec::new();
        for _ in 0..3 {
            match next_item(&mut s, wait).await? {
                Some(item) => got.push(text(&item?)),
                None => bail!("completed after {} items", got.len()),
            }
        }
        relay.cut();
        s.request(7);
        while let Some(item) = next_item(&mut s, wait).await? {
            got.push(text(&item?));
        }
        expect_eq("items", got, numbers(10))?;
        expect_eq(
            "reply after resume",
            rr_text(&client, "after-resume").await?,
            "echo:after-resume".into(),
        )?;
        if relay.accepted() < 2 {
            bail!("the client did not reconnect");
        }
        client.close();
        Ok(Outcome::Pass)
    }
    async fn case_rr_echo(&self) -> CaseResult {
        let reply = rr(&self.client, Payload::new("hello").with_metadata("meta-1")).await?;
        expect_eq("data", text(&reply), "echo:hello".into())?;
        expect_eq(
            "metadata",
            reply.metadata,
            Some(Bytes::from_static(b"meta-1")),
        )?;
        Ok(Outcome::Pass)
    }

    async fn case_rr_no_metadata(&self) -> CaseResult {
        let reply = rr(&self.client, Payload::from("plain")).await?;
        expect_eq("data", text(&reply), "echo:plain".into())?;
        // Absent (M flag clear) or empty: some peers cannot tell them apart.
        if reply.metadata.as_ref().is_some_and(|m| !m.is_empty()) {
            bail!("metadata: got {:?}, want none", reply.metadata);
        }
        Ok(Outcome::Pass)
    }

    async fn case_rr_error(&self) -> CaseResult {
        let r = self.client.request_response(Payload::from("fail")).await;
        expect_app_error(r, "requested failure")?;
        Ok(Outcome::Pass)
    }

    async fn case_stream(&self) -> CaseResult {
        let got = collect_texts(self.client.request_stream(Payload::from("5"))).await?;
        expect_eq("items", got, numbers(5))?;
        Ok(Outcome::Pass)
    }

    async fn case_stream_empty(&self) -> CaseResult {
        let got = collect_texts(self.client.request_stream(Payload::from("0"))).await?;
        expect_eq("items", got, Vec::<String>::new())?;
        Ok(Outcome::Pass)
    }

    async fn case_stream_bad_n(&self) -> CaseResult {
        for n in ["-1", "abc"] {
            let r = collect_texts(self.client.request_stream(Payload::from(n))).await;
            expect_app_error(r, "bad n").with_context(|| format!("stream {n:?}"))?;
        }
        Ok(Outcome::Pass)
    }

    /// A 10-item stream consumed with explicit credit 2, then 3, then 5:
    /// after each batch, nothing more may arrive until more is requested.
    async fn case_stream_batches(&self) -> CaseResult {
        let wait = self.args.case_timeout / 2;
        let mut s = self
            .client
            .request_stream_with_credit(Payload::from("10"), 2);
        let mut got = Vec::new();
        let mut requested = 0;
        for (i, batch) in [2usize, 3, 5].into_iter().enumerate() {
            if i > 0 {
                s.request(batch as u32);
            }
            requested += batch;
            while got.len() < requested {
                match next_item(&mut s, wait).await? {
                    Some(Ok(p)) => got.push(text(&p)),
                    Some(Err(e)) => bail!("after {} items: {e}", got.len()),
                    None => bail!("completed after {} items, want 10", got.len()),
                }
            }
            if requested < 10 {
                if let Ok(extra) = tokio::time::timeout(QUIET, s.next()).await {
                    match extra {
                        Some(Ok(p)) => bail!(
                            "item {:?} arrived beyond the {requested} requested",
                            text(&p)
                        ),
                        Some(Err(e)) => bail!("after {requested} items: {e}"),
                        None => bail!("completed after {requested} items, want 10"),
                    }
                }
            }
        }
        match next_item(&mut s, wait).await? {
            None => {}
            Some(Ok(p)) => bail!("item {:?} beyond the 10 requested", text(&p)),
            Some(Err(e)) => bail!("instead of completion: {e}"),
        }
        expect_eq("items", got, numbers(10))?;
        Ok(Outcome::Pass)
    }

    /// Cancels a long stream after 3 items; the connection keeps working.
    async fn case_stream_cancel(&self) -> CaseResult {
        let wait = self.args.case_timeout / 2;
        let mut s = self
            .client
            .request_stream_with_credit(Payload::from("100000"), 5);
        let mut got = Vec::new();
        while got.len() < 3 {
            match next_item(&mut s, wait).await? {
                Some(Ok(p)) => got.push(text(&p)),
                Some(Err(e)) => bail!("after {} items: {e}", got.len()),
                None => bail!("completed after {} items", got.len()),
            }
        }
        expect_eq("items", got, numbers(3))?;
        drop(s); // sends CANCEL
                 // The server must see the CANCEL and stop, having produced no more
                 // than the 5 items of credit.
        let (produced, state) = loop {
            let v: serde_json::Value =
                serde_json::from_str(&rr_text(&self.client, "produced").await?)
                    .context("`produced` is not JSON")?;
            let state = v
                .get("state")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
                .to_owned();
            if state != "running" {
                break (v.get("produced").and_then(serde_json::Value::as_u64), state);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        expect_eq("stream state after CANCEL", state, "cancelled".into())?;
        match produced {
            Some(n) if (3..=5).contains(&n) => {}
            other => bail!("produced {other:?} items, expected 3 to 5 (credit 5)"),
        }
        let reply = rr_text(&self.client, "after-cancel").await?;
        expect_eq("reply after cancel", reply, "echo:after-cancel".into())?;
        let again = collect_texts(self.client.request_stream(Payload::from("2"))).await?;
        expect_eq("stream after cancel", again, numbers(2))?;
        Ok(Outcome::Pass)
    }

    async fn case_channel(&self) -> CaseResult {
        let rest = futures::stream::iter(["b", "c", "d"].map(Payload::from));
        // A window of 2 makes the responder wait for REQUEST_N.
        let got = collect_texts(
            self.client
                .with_prefetch(2)
                .request_channel(Payload::from("a"), rest),
        )
        .await?;
        expect_eq(
            "items",
            got,
            ["A", "B", "C", "D"].map(String::from).to_vec(),
        )?;
        Ok(Outcome::Pass)
    }

    async fn case_fnf(&self) -> CaseResult {
        let before: u64 = rr_text(&self.client, "fnf-count").await?.parse()?;
        for data in ["fnf-1", "fnf-2", "fnf-3"] {
            self.client.fire_and_forget(Payload::from(data)).await?;
        }
        let want = (before + 3).to_string();
        poll_until(&self.client, "fnf-count", &want).await?;
        Ok(Outcome::Pass)
    }

    async fn case_metadata_push(&self) -> CaseResult {
        if !self.caps.metadata_push {
            return Ok(skip_server(&self.caps, "metadata push"));
        }
        let before: u64 = rr_text(&self.client, "mp-count").await?.parse()?;
        let marker = format!("mp-marker-{}", std::process::id());
        self.client
            .metadata_push(Bytes::from(marker.clone()))
            .await
            .map_err(|e| anyhow!("metadata push: {e}"))?;
        poll_until(&self.client, "mp-last", &format!("mp:{marker}")).await?;
        expect_eq(
            "mp-count",
            rr_text(&self.client, "mp-count").await?,
            (before + 1).to_string(),
        )?;
        Ok(Outcome::Pass)
    }

    async fn routing_client(&self) -> anyhow::Result<Requester> {
        connect(
            &self.args,
            ClientBuilder::new().metadata_mime_type(MimeType::COMPOSITE_METADATA),
        )
        .await
    }

    async fn case_routing(&self, which: &str) -> CaseResult {
        if !self.caps.routing {
            return Ok(skip_server(&self.caps, "routing"));
        }
        let client = self.routing_client().await?;
        match which {
            "echo" => {
                let request = routed("echo", "routed")?;
                let metadata = request.metadata.clone();
                let reply = rr(&client, request).await?;
                expect_eq("data", text(&reply), "echo:routed".into())?;
                expect_eq("metadata", reply.metadata, metadata)?;
            }
            "stream" => {
                let got = collect_texts(client.request_stream(routed("stream", "3")?)).await?;
                expect_eq("items", got, numbers(3))?;
            }
            "channel" => {
                let rest = futures::stream::iter([Payload::from("y")]);
                let got =
                    collect_texts(client.request_channel(routed("channel", "x")?, rest)).await?;
                expect_eq("items", got, ["X", "Y"].map(String::from).to_vec())?;
            }
            _ => {
                let r = client.request_response(routed("nope", "x")?).await;
                expect_app_error(r, "unknown route: nope")?;
                let r = collect_texts(client.request_stream(routed("echo", "1")?)).await;
                expect_app_error(r, "unknown route: echo").context("stream routed to echo")?;
            }
        }
        client.close();
        Ok(Outcome::Pass)
    }

    /// Large request/response and channel payloads over a connection whose
    /// MTU is 64 bytes: every request is fragmented on the way out, and the
    /// echo comes back fragmented when the server fragments.
    async fn case_fragmentation(&self) -> CaseResult {
        if !self.caps.fragmentation {
            return Ok(skip_server(&self.caps, "fragmented frames"));
        }
        let config = Config {
            mtu: Some(64),
            ..Config::default()
        };
        let client = connect(&self.args, ClientBuilder::new().config(config)).await?;
        let data: String = (0..1500)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let metadata: String = (0..300)
            .map(|i| char::from(b'A' + (i % 26) as u8))
            .collect();
        let reply = rr(
            &client,
            Payload::new(data.clone()).with_metadata(metadata.clone()),
        )
        .await?;
        expect_eq("data", text(&reply), format!("echo:{data}"))?;
        expect_eq("metadata", reply.metadata, Some(Bytes::from(metadata)))?;

        let big = |c: char| c.to_string().repeat(400);
        let rest = futures::stream::iter([Payload::from(big('y'))]);
        let got = collect_texts(client.request_channel(Payload::from(big('x')), rest)).await?;
        expect_eq("channel items", got, vec![big('X'), big('Y')])?;
        client.close();
        Ok(Outcome::Pass)
    }
}

impl Ctx {
    /// On a connection with the L flag: the server's grant of 2 requests
    /// lets two through, the third fails here without being sent, and
    /// after `lease-grant` (asked on the unleased connection) requests
    /// work again; the server saw exactly 3 requests and rejected none.
    async fn case_lease(&self) -> CaseResult {
        if !self.caps.lease {
            return Ok(skip_server(&self.caps, "lease"));
        }
        let leased = connect(&self.args, ClientBuilder::new().lease(LeaseConfig::new())).await?;
        // Waits for the server's first LEASE instead of failing.
        let patient = leased.with_lease_wait(self.args.case_timeout);
        expect_eq("a", rr_text(&patient, "a").await?, "echo:a".to_owned())?;
        expect_eq("b", rr_text(&leased, "b").await?, "echo:b".to_owned())?;
        let state = leased.lease().ok_or_else(|| anyhow!("leasing is off"))?;
        expect_eq("lease left", (state.remaining, state.allowed), (0, 2))?;
        match leased.request_response(Payload::from("c")).await {
            Err(RequestError::NoLease(NoLease::Exhausted)) => {}
            other => bail!("a third request: expected NoLease(Exhausted), got {other:?}"),
        }
        let granted = rr_text(&self.client, "lease-grant").await?;
        if !granted.starts_with("granted:") || granted == "granted:0" {
            bail!("lease-grant answered {granted:?}");
        }
        expect_eq("c", rr_text(&patient, "c").await?, "echo:c".to_owned())?;
        let stats: serde_json::Value =
            serde_json::from_str(&rr_text(&leased, "lease-stats").await?)
                .context("lease-stats is not JSON")?;
        expect_eq("requests seen", stats["requests"].as_u64(), Some(3))?;
        expect_eq("requests rejected", stats["rejected"].as_u64(), Some(0))?;
        leased.close();
        Ok(Outcome::Pass)
    }

    /// SETUP with the L flag to a listener configured without lease: the
    /// server refuses it (UNSUPPORTED_SETUP; rsocket-js answers
    /// REJECTED_SETUP).
    async fn case_lease_refused(&self) -> CaseResult {
        let Some(port) = self.caps.no_lease_port else {
            return Ok(Outcome::Skip(format!(
                "server {} has no listener without lease",
                self.caps.implementation
            )));
        };
        let client = connect_port(
            &self.args,
            port,
            ClientBuilder::new().lease(LeaseConfig::new()),
        )
        .await?;
        let want = if self.caps.implementation.starts_with("rsocket-js") {
            ErrorCode::REJECTED_SETUP
        } else {
            ErrorCode::UNSUPPORTED_SETUP
        };
        match client.closed().await {
            ConnectionError::SetupRejected { code, .. } => expect_eq("setup error", code, want)?,
            other => bail!("expected the SETUP to be rejected with {want}, got {other}"),
        }
        Ok(Outcome::Pass)
    }
}

fn skip_server(caps: &Caps, what: &str) -> Outcome {
    Outcome::Skip(format!(
        "server {} does not support {what}",
        caps.implementation
    ))
}

async fn run_case<F>(name: &str, timeout: Duration, totals: &mut (usize, usize, usize), case: F)
where
    F: Future<Output = CaseResult>,
{
    let outcome = match tokio::time::timeout(timeout, case).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Fail(format!("{e:#}")),
        Err(_) => Outcome::Fail(format!("timed out after {timeout:?}")),
    };
    match outcome {
        Outcome::Pass => {
            totals.0 += 1;
            println!("PASS {name}");
        }
        Outcome::Fail(reason) => {
            totals.1 += 1;
            println!("FAIL {name}: {reason}");
        }
        Outcome::Skip(reason) => {
            totals.2 += 1;
            println!("SKIP {name}: {reason}");
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = parse_args()?;
    let timeout = args.case_timeout;
    let mut totals = (0, 0, 0);

    let client = match tokio::time::timeout(timeout, connect(&args, ClientBuilder::new())).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            println!("FAIL connect: {e:#}");
            println!("0 skipped");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
        Err(_) => {
            println!("FAIL connect: timed out after {timeout:?}");
            println!("0 skipped");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };

    // Capabilities first: they decide which cases are skipped.
    let mut caps = None;
    run_case("caps", timeout, &mut totals, async {
        let c = parse_caps(&rr_text(&client, "caps").await?)?;
        caps = Some(c);
        Ok(Outcome::Pass)
    })
    .await;
    let Some(caps) = caps else {
        println!("{} skipped", totals.2);
        println!("{} passed, {} failed", totals.0, totals.1);
        std::process::exit(1);
    };
    let ctx = Ctx { args, client, caps };

    run_case("rr_echo", timeout, &mut totals, ctx.case_rr_echo()).await;
    run_case(
        "rr_no_metadata",
        timeout,
        &mut totals,
        ctx.case_rr_no_metadata(),
    )
    .await;
    run_case("rr_error", timeout, &mut totals, ctx.case_rr_error()).await;
    run_case("stream", timeout, &mut totals, ctx.case_stream()).await;
    run_case(
        "stream_empty",
        timeout,
        &mut totals,
        ctx.case_stream_empty(),
    )
    .await;
    run_case(
        "stream_bad_n",
        timeout,
        &mut totals,
        ctx.case_stream_bad_n(),
    )
    .await;
    run_case(
        "stream_batches",
        timeout,
        &mut totals,
        ctx.case_stream_batches(),
    )
    .await;
    run_case(
        "stream_cancel",
        timeout,
        &mut totals,
        ctx.case_stream_cancel(),
    )
    .await;
    run_case("channel", timeout, &mut totals, ctx.case_channel()).await;
    run_case("fnf", timeout, &mut totals, ctx.case_fnf()).await;
    run_case(
        "metadata_push",
        timeout,
        &mut totals,
        ctx.case_metadata_push(),
    )
    .await;
    for route in ["echo", "stream", "channel", "unknown"] {
        let name = format!("routing_{route}");
        run_case(&name, timeout, &mut totals, ctx.case_routing(route)).await;
    }
    run_case(
        "fragmentation",
        timeout,
        &mut totals,
        ctx.case_fragmentation(),
    )
    .await;
    run_case("lease", timeout, &mut totals, ctx.case_lease()).await;
    run_case(
        "lease_refused",
        timeout,
        &mut totals,
        ctx.case_lease_refused(),
    )
    .await;
    run_case("resume", timeout, &mut totals, ctx.case_resume()).await;

    ctx.client.close();
    println!("{} skipped", totals.2);
    println!("{} passed, {} failed", totals.0, totals.1);
    if totals.1 > 0 {
        std::process::exit(1);
    }
    Ok(())
}
