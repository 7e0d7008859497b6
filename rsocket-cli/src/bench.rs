//! `rsocket bench`: drives a server with concurrent workers for a fixed
//! time and reports throughput, latency percentiles (HDR histogram) and
//! errors by code.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rsocket::{Payload, RequestError, Requester};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::{BenchArgs, Interaction};
use crate::connect::connect;
use crate::input::{parse_auth, plan_metadata, setup_params};
use crate::output::remote_parts;

/// Longest latency the histogram holds (longer ones are clamped).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Counters the progress line reads while the workers run.
#[derive(Debug, Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// What one worker measured.
struct Tally {
    latency: Histogram<u64>,
    ops: u64,
    items: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .context("latency histogram")?,
            ops: 0,
            items: 0,
            errors: BTreeMap::new(),
        })
    }

    fn ok(&mut self, started: Instant, live: &Live) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(ns.max(1));
        self.ops += 1;
        live.ops.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&mut self, e: &RequestError, live: &Live) {
        let key = match (remote_parts(e), e) {
            (Some((code, _)), _) => code.to_string(),
            (None, RequestError::Connection(_)) => "CONNECTION_LOST".to_owned(),
            (None, RequestError::ConnectionClosing { .. }) => "CONNECTION_CLOSING".to_owned(),
            (None, RequestError::Cancelled) => "CANCELLED".to_owned(),
            (None, RequestError::NoLease(_)) => "NO_LEASE".to_owned(),
            (None, _) => "OTHER".to_owned(),
        };
        *self.errors.entry(key).or_default() += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        self.latency
            .add(&other.latency)
            .context("merging histograms")?;
        self.ops += other.ops;
        self.items += other.items;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        Ok(())
    }
}

/// Runs `op` unless `stop` fires first; `None` when stopped.
async fn until_stop<F: std::future::Future>(
    stop: &mut watch::Receiver<bool>,
    op: F,
) -> Option<F::Output> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        out = op => Some(out),
        _ = stop.changed() => None,
    }
}

/// One worker: operations back to back until `stop`.
async fn worker(
    client: Requester,
    kind: Interaction,
    request: Payload,
    items: u32,
    mut stop: watch::Receiver<bool>,
    live: Arc<Live>,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    if kind == Interaction::Channel {
        channel_worker(&client, request, &mut stop, &live, &mut tally).await;
        return Ok(tally);
    }
    while !client.is_closed() {
        let started = Instant::now();
        let outcome = match kind {
            Interaction::Rr => until_stop(&mut stop, client.request_response(request.clone()))
                .await
                .map(|r| r.map(|_| 0)),
            Interaction::Fnf => until_stop(&mut stop, client.fire_and_forget(request.clone()))
                .await
                .map(|r| r.map(|()| 0)),
            Interaction::Stream => {
                let stream = client.request_stream(request.clone());
                until_stop(&mut stop, count_items(stream)).await
            }
            Interaction::Channel => None,
        };
        match outcome {
            None => break,
            Some(Ok(n)) => {
                tally.ok(started, &live);
                tally.items += n;
                if kind == Interaction::Stream && n != u64::from(items) {
                    *tally.errors.entry("SHORT_STREAM".into()).or_default() += 1;
                }
            }
            Some(Err(e)) => {
                tally.error(&e, &live);
                // A request refused on the spot (no lease) completes
                // without ever waiting: without a yield the workers would
                // spin and starve the timers, the stop signal included.
                tokio::task::yield_now().await;
            }
        }
    }
    Ok(tally)
}

async fn count_items(mut stream: rsocket::ResponseStream) -> Result<u64, RequestError> {
    let mut n = 0;
    while let Some(item) = stream.next().await {
        item?;
        n += 1;
    }
    Ok(n)
}

/// Ping-pong on one channel: send a payload, wait for the reply, repeat.
async fn channel_worker(
    client: &Requester,
    request: Payload,
    stop: &mut watch::Receiver<bool>,
    live: &Live,
    tally: &mut Tally,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Payload>(1);
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    let data = Payload::new(request.data.clone());
    let mut replies = client.request_channel(request, outbound);
    let mut started = Instant::now();
    loop {
        match until_stop(stop, replies.next()).await {
            None => break,
            Some(Some(Ok(_))) => {
                tally.ok(started, live);
                started = Instant::now();
                if tx.send(data.clone()).await.is_err() {
                    break;
                }
            }
            Some(Some(Err(e))) => {
                tally.error(&e, live);
                break;
            }
            Some(None) => {
                *tally.errors.entry("CHANNEL_COMPLETED".into()).or_default() += 1;
                break;
            }
        }
    }
}

/// Prints the progress line every second until `stop`, and once more
/// with the final counts.
async fn progress(live: Arc<Live>, mut stop: watch::Receiver<bool>, began: Instant) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (0, began);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let ops = live.ops.load(Ordering::Relaxed);
        let now = Instant::now();
        // The last line reports the average: its interval may be short.
        let (base, since) = if stopping { (0, began) } else { last };
        let rate = (ops - base) as f64 / (now - since).as_secs_f64().max(1e-3);
        last = (ops, now);
        let line = format!(
            "[{:>5.1}s] {ops} ops, {rate:.0}/s, {} errors",
            (now - began).as_secs_f64(),
            live.errors.load(Ordering::Relaxed)
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty && !stopping {
            write!(err, "\r\x1b[2K{line}")
        } else if tty {
            writeln!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        if stopping {
            break;
        }
    }
}

/// Runs the benchmark and prints the report.
pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    let auth = args.conn.auth.as_deref().map(parse_auth).transpose()?;
    let plan = plan_metadata(
        args.route.as_deref(),
        auth.as_ref(),
        None,
        &args.mime.metadata_mime,
    )?;
    let data = match args.interaction {
        Interaction::Stream => Bytes::from(args.items.to_string()),
        _ => Bytes::from(vec![b'x'; args.size]),
    };
    let request = crate::input::payload(data, &plan);

    if args.conn.setup_data.as_deref() == Some("-")
        && args.conn.setup_metadata.as_deref() == Some("-")
    {
        bail!("standard input can feed only one thing");
    }
    // Read once (standard input can be read only once): every connection
    // sends the same SETUP.
    let setup = setup_params(&args.conn, &args.mime, plan.setup_mime.clone()).await?;
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(
            connect(&args.uri, &args.conn, setup.clone())
                .await?
                .requester,
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let live = Arc::new(Live::default());
    let began = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.concurrency as usize {
        workers.spawn(worker(
            clients[i % clients.len()].clone(),
            args.interaction,
            request.clone(),
            args.items,
            stop_rx.clone(),
            live.clone(),
        ));
    }
    let ticker = tokio::spawn(progress(live.clone(), stop_rx, began));
    tokio::time::sleep_until(began + args.duration).await;
    let _ = stop_tx.send(true);
    let elapsed = began.elapsed();
    let mut total = Tally::new()?;
    while let Some(done) = workers.join_next().await {
        total.merge(done.context("worker panicked")??)?;
    }
    let _ = ticker.await;
    for c in &clients {
        c.close();
    }
    for c in &clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
    }
    report(&args, &total, elapsed)?;
    if total.ops == 0 {
        bail!("no operation succeeded");
    }
    Ok(())
}

fn report(args: &BenchArgs, t: &Tally, elapsed: Duration) -> Result<()> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let us = |q: f64| t.latency.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p90, p99, p999) = (us(0.5), us(0.9), us(0.99), us(0.999));
    let max = t.latency.max() as f64 / 1000.0;
    let mean = t.latency.mean() / 1000.0;
    let errors: u64 = t.errors.values().sum();
    let interaction = format!("{:?}", args.interaction).to_lowercase();
    let text = if args.json {
        json!({
            "uri": args.uri,
            "interaction": interaction,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "size": args.size,
            "items_per_stream": (args.interaction == Interaction::Stream).then_some(args.items),
            "duration_s": secs,
            "operations": t.ops,
            "throughput": t.ops as f64 / secs,
            "items": t.items,
            "items_per_s": t.items as f64 / secs,
            "errors": errors,
            "errors_by_code": t.errors,
            "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max, "mean": mean},
        })
        .to_string()
    } else {
        let mut s = format!(
            "{interaction} against {}: {} workers on {} connection(s), {:.2} s\n",
            args.uri, args.concurrency, args.connections, secs
        );
        s += &format!("operations  {} ({:.1}/s)\n", t.ops, t.ops as f64 / secs);
        if args.interaction == Interaction::Stream {
            s += &format!("items       {} ({:.1}/s)\n", t.items, t.items as f64 / secs);
        }
        s += &format!(
            "latency µs  p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}  (mean {mean:.1})\n"
        );
        s += &format!("errors      {errors}");
        for (code, n) in &t.errors {
            s += &format!("\n  {code}: {n}");
        }
        s
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).ok();
    Ok(())
}
