//! Comparative benchmark suite: the same workloads, in the same run, for
//! this project (`rsocket-core` + `rsocket-transport-tcp`), raw TCP framing
//! on tokio (the physical limit), `rsocket_rust` 0.7 and tonic (gRPC).
//!
//! ```text
//! cargo run --release --manifest-path benchmarks/Cargo.toml -- [--quick] [--only rr_seq,stream_64] [--runs 3]
//! ```
//!
//! Every (workload, runtime, implementation, run) is a child process of this
//! binary (`--worker`), so its peak RSS (VmHWM) and CPU time are its own.
//! Medians of the runs go into one markdown table, printed and written to
//! `benchmarks/results.md` (a full run of everything) or
//! `benchmarks/target/last-run.md` (a quick or partial run).

mod common;
mod grpc;
mod ours;
mod raw;
mod rpc;
mod rsr;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    RrSeq,
    RrC64,
    RrC256,
    Stream64,
    Stream16k,
    Channel64,
    Fnf64,
    SlowConsumer,
    HeadOfLine,
    Conn10k,
}

impl Workload {
    const ALL: [Self; 10] = [
        Self::RrSeq,
        Self::RrC64,
        Self::RrC256,
        Self::Stream64,
        Self::Stream16k,
        Self::Channel64,
        Self::Fnf64,
        Self::SlowConsumer,
        Self::HeadOfLine,
        Self::Conn10k,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::RrSeq => "rr_seq",
            Self::RrC64 => "rr_c64",
            Self::RrC256 => "rr_c256",
            Self::Stream64 => "stream_64",
            Self::Stream16k => "stream_16k",
            Self::Channel64 => "channel_64",
            Self::Fnf64 => "fnf_64",
            Self::SlowConsumer => "slow_consumer",
            Self::HeadOfLine => "head_of_line",
            Self::Conn10k => "conn_10k",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }

    pub fn concurrency(self) -> usize {
        match self {
            Self::RrC64 => 64,
            Self::RrC256 => 256,
            _ => 1,
        }
    }

    pub fn stream_shape(self, s: Sizes) -> (u64, usize) {
        match self {
            Self::Stream16k => (s.stream_16k, LARGE),
            _ => (s.stream_64, SMALL),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Impl {
    Ours,
    Rpc,
    Raw,
    Rsr,
    Tonic,
}

impl Impl {
    const ALL: [Self; 5] = [Self::Ours, Self::Rpc, Self::Raw, Self::Rsr, Self::Tonic];

    fn name(self) -> &'static str {
        match self {
            Self::Ours => "rsocket-core",
            Self::Rpc => "rsocket-rpc",
            Self::Raw => "raw-tcp",
            Self::Rsr => "rsocket_rust",
            Self::Tonic => "tonic",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "rsocket-core" | "ours" => Some(Self::Ours),
            "rsocket-rpc" | "rpc" => Some(Self::Rpc),
            "raw-tcp" | "raw" => Some(Self::Raw),
            "rsocket_rust" | "rsr" => Some(Self::Rsr),
            "tonic" => Some(Self::Tonic),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// worker side

fn worker(w: Workload, imp: Impl, flavor: Flavor, sizes: Sizes) -> ! {
    raise_fd_limit();
    // A watchdog on its own thread: a runtime whose threads are blocked
    // (a lock held across an await, say) cannot fire its own timeouts.
    let limit = match (w, sizes.quick) {
        (Workload::HeadOfLine, true) => Duration::from_secs(10),
        (Workload::HeadOfLine, false) => Duration::from_secs(30),
        (_, true) => Duration::from_secs(30),
        (_, false) => Duration::from_secs(240),
    };
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        let mut note = format!(
            "HUNG: no result after {} s, the runtime's threads are blocked",
            limit.as_secs()
        );
        if imp == Impl::Rsr && w == Workload::HeadOfLine {
            // seen with gdb: the request's task waits in DashMap::insert while the
            // dispatch loop holds that shard's write lock across the await on the
            // stalled stream's full channel (transport/socket.rs on_payload)
            note.push_str(" (rsocket_rust: dispatch loop holds a DashMap shard lock while awaiting the stalled stream's full channel; the request's task blocks on that lock)");
        }
        let mut o = Outcome::failed(note);
        o.peak_rss_kb = mem().hwm_kb;
        println!("{}", o.to_line());
        let _ = std::io::stdout().flush();
        std::process::exit(0)
    });
    let o = if w == Workload::Conn10k && imp == Impl::Rpc {
        Outcome {
            failed: true,
            note: "n/a: only the RPC targets (unary, server streaming) are measured".into(),
            ..Outcome::default()
        }
    } else if w == Workload::Conn10k {
        conn_10k(imp, flavor, sizes)
    } else {
        flavor.run(async move {
            match imp {
                Impl::Ours => ours::run(w, sizes).await,
                Impl::Rpc => rpc::run(w, sizes).await,
                Impl::Raw => raw::run(w, sizes).await,
                Impl::Rsr => rsr::run(w, sizes).await,
                Impl::Tonic => grpc::run(w, sizes).await,
            }
        })
    };
    println!("{}", o.to_line());
    let _ = std::io::stdout().flush();
    // Do not wait for connections, tasks and runtimes to wind down.
    std::process::exit(0)
}

/// The server process of conn_10k: prints its address, then answers
/// `STAT` lines on stdin with `STAT <rss kB> <hwm kB> <cpu µs>` until EOF.
fn conn_server_process(imp: Impl, flavor: Flavor) -> ! {
    raise_fd_limit();
    flavor.run(async move {
        let addr = match imp {
            Impl::Ours | Impl::Rpc => ours::conn_server().await,
            Impl::Raw => raw::conn_server().await,
            Impl::Rsr => rsr::conn_server().await,
            Impl::Tonic => grpc::conn_server().await,
        };
        println!("ADDR {addr}");
        let _ = std::io::stdout().flush();
        loop {
            let line = tokio::task::spawn_blocking(|| {
                let mut l = String::new();
                match std::io::stdin().read_line(&mut l) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(l),
                }
            })
            .await
            .ok()
            .flatten();
            match line {
                Some(l) if l.trim() == "STAT" => {
                    let m = mem();
                    println!("STAT {} {} {}", m.rss_kb, m.hwm_kb, cpu_us());
                    let _ = std::io::stdout().flush();
                }
                Some(_) => {}
                None => std::process::exit(0),
            }
        }
    })
}

/// conn_10k: a server in its own process (so its memory is its own), this
/// process opens the connections, each with one open request/stream.
fn conn_10k(imp: Impl, flavor: Flavor, sizes: Sizes) -> Outcome {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--conn-server", imp.name(), flavor.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let mut to_server = child.stdin.take().expect("stdin");
    let mut from_server = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    from_server.read_line(&mut line).expect("server address");
    let addr: SocketAddr = match line
        .trim()
        .strip_prefix("ADDR ")
        .and_then(|a| a.parse().ok())
    {
        Some(a) => a,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::failed(format!("server said {line:?}"));
        }
    };
    let mut stat = move || -> (f64, f64, f64) {
        writeln!(to_server, "STAT").expect("ask server");
        to_server.flush().expect("flush");
        let mut l = String::new();
        from_server.read_line(&mut l).expect("server stat");
        let v: Vec<f64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v[0], v[1], v[2])
    };
    let n = sizes.conns;
    let o = flavor.run(async move {
        // let the server settle before its baseline
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (base_rss, _, base_cpu) = stat();
        let cpu0 = cpu_us();
        let t0 = Instant::now();
        let opened: Vec<Result<Box<dyn std::any::Any + Send>, String>> =
            futures::stream::iter(0..n)
                .map(|_| async move {
                    match imp {
                        Impl::Ours | Impl::Rpc => ours::conn_open(addr).await,
                        Impl::Raw => raw::conn_open(addr).await,
                        Impl::Rsr => rsr::conn_open(addr).await,
                        Impl::Tonic => grpc::conn_open(addr).await,
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
        let elapsed = t0.elapsed().as_secs_f64();
        let ok = opened.iter().filter(|r| r.is_ok()).count() as u64;
        let first_err = opened.iter().find_map(|r| r.as_ref().err().cloned());
        // let the server settle (allocator, lazily created buffers)
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss, hwm, cpu) = stat();
        let client_cpu = cpu_us() - cpu0;
        let mut o = Outcome {
            ops: ok,
            secs: elapsed,
            conn_secs: Some(elapsed),
            server_kb_per_conn: (ok > 0).then(|| (rss - base_rss) / ok as f64),
            cpu_us: (client_cpu + cpu - base_cpu) / ok.max(1) as f64,
            peak_rss_kb: hwm as u64,
            ..Outcome::default()
        };
        if let Some(e) = first_err {
            o.failed = ok == 0;
            o.add_note(&format!("{} of {n} failed, first: {e}", n - ok));
        }
        // keep the connections until the process exits
        std::mem::forget(opened);
        o
    });
    let _ = child.kill();
    let _ = child.wait();
    o
}

// ---------------------------------------------------------------------------
// parent side

struct Args {
    quick: bool,
    runs: usize,
    only: Vec<Workload>,
    impls: Vec<Impl>,
    flavors: Vec<Flavor>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--quick] [--runs N] [--only w1,w2,...] [--impls rsocket-core,raw-tcp,rsocket_rust,tonic] [--flavors ct,mt2]\n\
         workloads: {}",
        Workload::ALL.map(|w| w.name()).join(",")
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let quick = argv.iter().any(|a| a == "--quick");
    if let Some(i) = argv.iter().position(|a| a == "--worker") {
        let w = argv
            .get(i + 1)
            .and_then(|s| Workload::parse(s))
            .unwrap_or_else(|| usage());
        let imp = argv
            .get(i + 2)
            .and_then(|s| Impl::parse(s))
            .unwrap_or_else(|| usage());
        let fl = argv
            .get(i + 3)
            .and_then(|s| Flavor::parse(s))
            .unwrap_or_else(|| usage());
        worker(w, imp, fl, Sizes::new(quick));
    }
    if let Some(i) = argv.iter().position(|a| a == "--conn-server") {
        let imp = argv
            .get(i + 1)
            .and_then(|s| Impl::parse(s))
            .unwrap_or_else(|| usage());
        let fl = argv
            .get(i + 2)
            .and_then(|s| Flavor::parse(s))
            .unwrap_or_else(|| usage());
        conn_server_process(imp, fl);
    }
    let mut args = Args {
        quick,
        runs: if quick { 1 } else { 3 },
        only: Workload::ALL.to_vec(),
        impls: Impl::ALL.to_vec(),
        flavors: vec![Flavor::Ct, Flavor::Mt2],
    };
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--runs" => {
                args.runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--only" => {
                args.only = it
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(|s| Workload::parse(s.trim()).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--impls" => {
                args.impls = it
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(|s| Impl::parse(s.trim()).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--flavors" => {
                args.flavors = it
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(|s| Flavor::parse(s.trim()).unwrap_or_else(|| usage()))
                    .collect()
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    args
}

/// Runs one worker child, with a wall-clock limit.
fn run_child(w: Workload, imp: Impl, flavor: Flavor, quick: bool, limit: Duration) -> Outcome {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--worker", w.name(), imp.name(), flavor.name()]);
    if quick {
        cmd.arg("--quick");
    }
    let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("spawn: {e}")),
    };
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let status = child.wait().ok();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if let Some(o) = stdout.lines().find_map(Outcome::parse) {
        return o;
    }
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned();
    if timed_out {
        Outcome::failed(format!(
            "killed after {} s without finishing",
            limit.as_secs()
        ))
    } else {
        Outcome::failed(format!("worker exited ({status:?}): {last}"))
    }
}

/// Medians over the runs of one (workload, runtime, implementation).
#[derive(Debug, Default, Clone)]
struct Agg {
    runs: usize,
    ok_runs: usize,
    rate: Option<f64>,
    mbps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    cpu: Option<f64>,
    rss_mb: Option<f64>,
    growth_mb: Option<f64>,
    produced: Option<f64>,
    credit: Option<f64>,
    conn_secs: Option<f64>,
    kb_per_conn: Option<f64>,
    conns: Option<f64>,
    notes: Vec<String>,
}

/// The run a cell shows: the median run by its main figure (rate, else RSS
/// growth, else server memory per connection), with every column taken
/// from that same run, so that the figures of a row belong together. With
/// an even number of runs, the lower of the two middle ones.
fn median_run<'a>(ok: &[&'a Outcome]) -> Option<&'a Outcome> {
    let key = |o: &Outcome| -> f64 {
        if o.secs > 0.0 && o.ops > 0 && o.rss_growth_kb.is_none() && o.server_kb_per_conn.is_none()
        {
            o.ops as f64 / o.secs
        } else if let Some(g) = o.rss_growth_kb {
            g
        } else {
            o.server_kb_per_conn.unwrap_or(0.0)
        }
    };
    let mut runs = ok.to_vec();
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs.get(runs.len().saturating_sub(1) / 2).copied()
}

fn aggregate(outs: &[Outcome]) -> Agg {
    let ok: Vec<&Outcome> = outs.iter().filter(|o| !o.failed).collect();
    let mut notes: Vec<String> = Vec::new();
    for o in outs {
        if !o.note.is_empty() && !notes.contains(&o.note) {
            notes.push(o.note.clone());
        }
    }
    let mut agg = Agg {
        runs: outs.len(),
        ok_runs: ok.len(),
        notes,
        ..Agg::default()
    };
    let Some(o) = median_run(&ok) else {
        return agg;
    };
    agg.rate = (o.secs > 0.0 && o.ops > 0).then(|| o.ops as f64 / o.secs);
    agg.mbps = (o.secs > 0.0 && o.bytes > 0).then(|| o.bytes as f64 / o.secs / 1e6);
    agg.p50 = o.p50_us;
    agg.p99 = o.p99_us;
    agg.cpu = (o.ops > 0).then_some(o.cpu_us);
    agg.rss_mb = (o.peak_rss_kb > 0).then(|| o.peak_rss_kb as f64 / 1024.0);
    agg.growth_mb = o.rss_growth_kb.map(|k| k / 1024.0);
    agg.produced = o.produced.map(|v| v as f64);
    agg.credit = o.credit.map(|v| v as f64);
    agg.conn_secs = o.conn_secs;
    agg.kb_per_conn = o.server_kb_per_conn;
    agg.conns = o.conn_secs.map(|_| o.ops as f64);
    agg
}

type Results = BTreeMap<(Workload, &'static str, Impl), Agg>;

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 1e6 => format!("{:.2} M", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.0} k", v / 1e3),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) if v >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.0}×")
            } else {
                format!("{r:.2}×")
            }
        }
        _ => "–".into(),
    }
}

fn notes_of(a: &Agg) -> String {
    let mut s = a.notes.join("; ").replace('|', "/");
    if a.ok_runs < a.runs && !a.notes.iter().any(|n| n.starts_with("n/a")) {
        if !s.is_empty() {
            s.push_str("; ");
        }
        let _ = write!(s, "{}/{} runs failed", a.runs - a.ok_runs, a.runs);
    }
    s
}

fn render(args: &Args, res: &Results, started: Instant) -> String {
    let mut s = String::new();
    let get = |w: Workload, fl: &'static str, i: Impl| res.get(&(w, fl, i));
    let flavors: Vec<&'static str> = args.flavors.iter().map(|f| f.name()).collect();
    let has = |w: Workload| args.only.contains(&w);
    let _ = writeln!(s, "# RSocket benchmark results\n");
    let _ = writeln!(s, "{}\n", machine());
    let _ = writeln!(
        s,
        "Mode: {}; {} run(s) per cell, medians shown; suite time {:.0} s. \
         Runtimes: `ct` = current-thread, `mt2` = multi-thread with 2 workers; client and server in one process \
         on one loopback TCP connection (conn_10k: server in its own process). \
         CPU = user+system time of the whole process per message (per operation for rr, per connection for conn_10k); \
         peak RSS = VmHWM of the worker process (conn_10k: of the server process). \
         64-byte payloads unless noted.\n",
        if args.quick { "**quick** (scaled-down counts, not for comparison)" } else { "full" },
        args.runs,
        started.elapsed().as_secs_f64()
    );

    let rr: Vec<Workload> = [
        Workload::RrSeq,
        Workload::RrC64,
        Workload::RrC256,
        Workload::HeadOfLine,
    ]
    .into_iter()
    .filter(|w| has(*w))
    .collect();
    if !rr.is_empty() {
        let _ = writeln!(s, "## Request/response\n");
        let _ = writeln!(s, "| workload | rt | implementation | ops/s | p50 µs | p99 µs | CPU µs/op | peak RSS MiB | ops/s vs raw | notes |");
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---|");
        for &w in &rr {
            for &fl in &flavors {
                let raw = get(w, fl, Impl::Raw).and_then(|a| a.rate);
                for &i in &args.impls {
                    let Some(a) = get(w, fl, i) else { continue };
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        w.name(),
                        fl,
                        i.name(),
                        fmt_num(a.rate),
                        fmt_num(a.p50),
                        fmt_num(a.p99),
                        fmt_num(a.cpu),
                        fmt_num(a.rss_mb),
                        fmt_ratio(a.rate, raw),
                        notes_of(a)
                    );
                }
            }
        }
        s.push('\n');
    }

    let tp: Vec<Workload> = [
        Workload::Stream64,
        Workload::Stream16k,
        Workload::Channel64,
        Workload::Fnf64,
    ]
    .into_iter()
    .filter(|w| has(*w))
    .collect();
    if !tp.is_empty() {
        let _ = writeln!(s, "## Throughput\n");
        let _ = writeln!(s, "| workload | rt | implementation | msgs/s | payload MB/s | CPU µs/msg | peak RSS MiB | msgs/s vs raw | notes |");
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---|");
        for &w in &tp {
            for &fl in &flavors {
                let raw = get(w, fl, Impl::Raw).and_then(|a| a.rate);
                for &i in &args.impls {
                    let Some(a) = get(w, fl, i) else { continue };
                    let mb = match (w, a.mbps) {
                        (Workload::Stream16k, Some(v)) => {
                            format!("{v:.0} ({:.2} GB/s)", v / 1000.0)
                        }
                        _ => fmt_num(a.mbps),
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        w.name(),
                        fl,
                        i.name(),
                        fmt_num(a.rate),
                        mb,
                        fmt_num(a.cpu),
                        fmt_num(a.rss_mb),
                        fmt_ratio(a.rate, raw),
                        notes_of(a)
                    );
                }
            }
        }
        s.push('\n');
    }

    if has(Workload::SlowConsumer) {
        let _ = writeln!(
            s,
            "## slow_consumer (consume 10 of a 2,000,000-item stream, then hold it)\n"
        );
        let _ = writeln!(s, "| rt | implementation | RSS growth MiB | items produced | credit granted | peak RSS MiB | notes |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|");
        for &fl in &flavors {
            for &i in &args.impls {
                let Some(a) = get(Workload::SlowConsumer, fl, i) else {
                    continue;
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    fl,
                    i.name(),
                    a.growth_mb.map_or("–".into(), |v| format!("{v:.2}")),
                    a.produced.map_or("–".into(), |v| format!("{v:.0}")),
                    a.credit.map_or("–".into(), |v| format!("{v:.0}")),
                    fmt_num(a.rss_mb),
                    notes_of(a)
                );
            }
        }
        s.push('\n');
    }

    if has(Workload::Conn10k) {
        let _ = writeln!(s, "## conn_10k (concurrent connections, each with one open stream; server in its own process)\n");
        let _ = writeln!(s, "| rt | implementation | connections | time to establish s | server KiB/conn | CPU µs/conn | server peak RSS MiB | notes |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|");
        for &fl in &flavors {
            for &i in &args.impls {
                let Some(a) = get(Workload::Conn10k, fl, i) else {
                    continue;
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    fl,
                    i.name(),
                    a.conns.map_or("–".into(), |v| format!("{v:.0}")),
                    a.conn_secs.map_or("–".into(), |v| format!("{v:.2}")),
                    a.kb_per_conn.map_or("–".into(), |v| format!("{v:.1}")),
                    fmt_num(a.cpu),
                    fmt_num(a.rss_mb),
                    notes_of(a)
                );
            }
        }
        s.push('\n');
    }

    // ratios of ours to each peer
    let _ = writeln!(s, "## Ratios: rsocket-core ÷ each peer (same run)\n");
    let _ = writeln!(
        s,
        "Throughput ratios above 1 and latency ratios below 1 favour rsocket-core.\n"
    );
    let _ = writeln!(
        s,
        "| workload | rt | metric | rsocket-core | ÷ raw-tcp | ÷ rsocket_rust | ÷ tonic |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|");
    type Metric = (&'static str, fn(&Agg) -> Option<f64>);
    let rate: Metric = ("ops/s", |a| a.rate);
    let p50: Metric = ("p50 µs", |a| a.p50);
    let p99: Metric = ("p99 µs", |a| a.p99);
    let cpu: Metric = ("CPU µs/msg", |a| a.cpu);
    for w in Workload::ALL.into_iter().filter(|w| has(*w)) {
        let metrics: Vec<Metric> = match w {
            Workload::RrSeq | Workload::RrC64 | Workload::RrC256 => vec![rate, p50, p99, cpu],
            Workload::HeadOfLine => vec![p50, p99],
            Workload::SlowConsumer => vec![("RSS growth MiB", |a| a.growth_mb)],
            Workload::Conn10k => vec![
                ("server KiB/conn", |a| a.kb_per_conn),
                ("establish s", |a| a.conn_secs),
            ],
            _ => vec![rate, cpu],
        };
        for &fl in &flavors {
            let Some(o) = get(w, fl, Impl::Ours) else {
                continue;
            };
            for (name, f) in &metrics {
                let ov = f(o);
                let cell = |i: Impl| {
                    if !args.impls.contains(&i) {
                        return "–".to_owned();
                    }
                    fmt_ratio(ov, get(w, fl, i).and_then(f))
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    w.name(),
                    fl,
                    name,
                    fmt_num(ov),
                    cell(Impl::Raw),
                    cell(Impl::Rsr),
                    cell(Impl::Tonic)
                );
            }
        }
    }
    s.push('\n');

    // targets
    let _ = writeln!(s, "## Targets (rsocket-core, ratios from this run)\n");
    let _ = writeln!(s, "| target | rt | measured | met |");
    let _ = writeln!(s, "|---|---|---|---|");
    let yes = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    };
    for &fl in &flavors {
        let o = |w| get(w, fl, Impl::Ours);
        let p = |w, i| get(w, fl, i);
        let ratio = |w, i: Impl, f: fn(&Agg) -> Option<f64>| match (
            o(w).and_then(f),
            p(w, i).and_then(f),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let mut row = |name: &str, measured: String, met: Option<bool>| {
            let _ = writeln!(s, "| {name} | {fl} | {measured} | {} |", yes(met));
        };
        let r2 = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}×"));
        if has(Workload::Stream64) {
            let t = ratio(Workload::Stream64, Impl::Tonic, |a| a.rate);
            row("stream_64 ≥ 2× tonic", r2(t), t.map(|v| v >= 2.0));
            let r = ratio(Workload::Stream64, Impl::Raw, |a| a.rate);
            row("stream_64 ≥ 0.5× raw TCP", r2(r), r.map(|v| v >= 0.5));
        }
        if has(Workload::Stream16k) {
            let r = ratio(Workload::Stream16k, Impl::Raw, |a| a.rate);
            row("stream_16k ≥ 0.8× raw TCP", r2(r), r.map(|v| v >= 0.8));
        }
        if has(Workload::Fnf64) {
            let t = ratio(Workload::Fnf64, Impl::Tonic, |a| a.rate);
            row("fnf_64 ≥ 2× tonic", r2(t), t.map(|v| v >= 2.0));
            let r = ratio(Workload::Fnf64, Impl::Raw, |a| a.rate);
            row("fnf_64 ≥ 0.3× raw TCP", r2(r), r.map(|v| v >= 0.3));
        }
        // The RPC layer: its cost over raw payloads on the same engine, and
        // RPC against RPC.
        let rpc_ratio = |w, i: Impl| match (
            p(w, Impl::Rpc).and_then(|a| a.rate),
            p(w, i).and_then(|a| a.rate),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        for w in [Workload::RrC256, Workload::Stream64] {
            if has(w) {
                let r = rpc_ratio(w, Impl::Ours);
                row(
                    &format!(
                        "rsocket-rpc {} costs ≤ 15% over rsocket-core (rate ≥ 0.87×)",
                        w.name()
                    ),
                    r2(r),
                    r.map(|v| v >= 1.0 / 1.15),
                );
            }
        }
        if has(Workload::RrC256) {
            let t = rpc_ratio(Workload::RrC256, Impl::Tonic);
            row(
                "rsocket-rpc rr_c256 ≥ 10× tonic",
                r2(t),
                t.map(|v| v >= 10.0),
            );
        }
        if has(Workload::RrC256) {
            let t = ratio(Workload::RrC256, Impl::Tonic, |a| a.rate);
            row("rr_c256 ≥ 30× tonic", r2(t), t.map(|v| v >= 30.0));
            let r = ratio(Workload::RrC256, Impl::Raw, |a| a.rate);
            row("rr_c256 ≥ 0.25× raw TCP", r2(r), r.map(|v| v >= 0.25));
        }
        if has(Workload::RrSeq) {
            let r = ratio(Workload::RrSeq, Impl::Raw, |a| a.p50);
            // Current-thread: 1.2× raw; two workers: 2× (a cross-thread
            // wake is most of a loopback round trip there).
            let limit = if fl == "ct" { 1.2 } else { 2.0 };
            row(
                &format!("rr_seq p50 ≤ {limit}× raw TCP"),
                r2(r),
                r.map(|v| v <= limit),
            );
        }
        if has(Workload::Channel64) {
            let t = ratio(Workload::Channel64, Impl::Tonic, |a| a.rate);
            row("channel_64 ≥ 2× tonic", r2(t), t.map(|v| v >= 2.0));
        }
        if has(Workload::SlowConsumer) {
            let a = o(Workload::SlowConsumer);
            let g = a.and_then(|a| a.growth_mb);
            // 2 MB is 2·10^6 bytes; RSS is read in KiB and shown in MiB.
            let limit_mib = 2e6 / 1_048_576.0;
            row(
                "slow_consumer RSS growth < 2 MB (1.91 MiB)",
                g.map_or("–".into(), |v| format!("{v:.2} MiB")),
                g.map(|v| v < limit_mib),
            );
            let pc = a.and_then(|a| Some((a.produced?, a.credit?)));
            row(
                "slow_consumer produced ≤ credit",
                pc.map_or("–".into(), |(p, c)| {
                    format!("{p:.0} produced, {c:.0} granted")
                }),
                pc.map(|(p, c)| p <= c),
            );
        }
        if has(Workload::HeadOfLine) {
            let v = o(Workload::HeadOfLine).and_then(|a| a.p99);
            row(
                "head_of_line p99 < 1 ms",
                v.map_or("–".into(), |v| format!("{v:.0} µs")),
                v.map(|v| v < 1000.0),
            );
        }
        if has(Workload::Conn10k) {
            let v = o(Workload::Conn10k).and_then(|a| a.kb_per_conn);
            row(
                "conn_10k ≤ 8 KiB/conn",
                v.map_or("–".into(), |v| format!("{v:.1} KiB")),
                v.map(|v| v <= 8.0),
            );
        }
    }
    s.push('\n');
    let mut extra = Vec::new();
    if args.quick {
        extra.push("--quick".to_owned());
    }
    if args.runs != if args.quick { 1 } else { 3 } {
        extra.push(format!("--runs {}", args.runs));
    }
    if args.only.len() != Workload::ALL.len() {
        extra.push(format!(
            "--only {}",
            args.only
                .iter()
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let _ = writeln!(
        s,
        "Reproduce: `cargo run --release --manifest-path benchmarks/Cargo.toml{}{}`",
        if extra.is_empty() { "" } else { " -- " },
        extra.join(" ")
    );
    s
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_owned(), |s| s.trim().to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs (nproc), {model}, {:.0} GiB RAM, Linux {}, {rustc}.",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

fn main() {
    let args = parse_args();
    let limit = if args.quick {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(300)
    };
    let started = Instant::now();
    let mut res: Results = BTreeMap::new();
    eprintln!(
        "building done; running {} workload(s) × {} runtime(s) × {} implementation(s) × {} run(s){}",
        args.only.len(),
        args.flavors.len(),
        args.impls.len(),
        args.runs,
        if args.quick { " (quick)" } else { "" }
    );
    for &w in &args.only {
        for &fl in &args.flavors {
            let mut outs: BTreeMap<Impl, Vec<Outcome>> = BTreeMap::new();
            // runs interleaved across implementations, so drifting machine
            // load hits all of them alike
            for run in 0..args.runs {
                for &i in &args.impls {
                    let t = Instant::now();
                    let o = run_child(w, i, fl, args.quick, limit);
                    eprintln!(
                        "[{:>5.0} s] {:<13} {:<3} {:<12} run {}: {} ({:.1} s){}",
                        started.elapsed().as_secs_f64(),
                        w.name(),
                        fl.name(),
                        i.name(),
                        run + 1,
                        summary(w, &o),
                        t.elapsed().as_secs_f64(),
                        if o.note.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", o.note)
                        }
                    );
                    outs.entry(i).or_default().push(o);
                }
            }
            for (i, v) in outs {
                res.insert((w, fl.name(), i), aggregate(&v));
            }
        }
    }
    let table = render(&args, &res, started);
    println!("{table}");
    // Only a full run of everything replaces the recorded results; a quick
    // or partial one goes beside the build.
    let full = !args.quick
        && args.only.len() == Workload::ALL.len()
        && args.impls.len() == Impl::ALL.len()
        && args.flavors.len() == 2;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = if full {
        dir.join("results.md")
    } else {
        dir.join("target").join("last-run.md")
    };
    match std::fs::write(&path, &table) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

fn summary(w: Workload, o: &Outcome) -> String {
    if o.failed {
        return "FAILED".into();
    }
    let rate = if o.secs > 0.0 {
        o.ops as f64 / o.secs
    } else {
        0.0
    };
    match w {
        Workload::RrSeq | Workload::RrC64 | Workload::RrC256 | Workload::HeadOfLine => format!(
            "{} ops/s p50 {} µs p99 {} µs",
            fmt_num(Some(rate)),
            fmt_num(o.p50_us),
            fmt_num(o.p99_us)
        ),
        Workload::SlowConsumer => format!(
            "growth {:.2} MiB, produced {}",
            o.rss_growth_kb.unwrap_or(0.0) / 1024.0,
            o.produced.unwrap_or(0)
        ),
        Workload::Conn10k => format!(
            "{} conns in {:.2} s, {:.1} KiB/conn",
            o.ops,
            o.conn_secs.unwrap_or(0.0),
            o.server_kb_per_conn.unwrap_or(0.0)
        ),
        _ => format!(
            "{} msgs/s, {:.0} MB/s",
            fmt_num(Some(rate)),
            o.bytes as f64 / o.secs.max(1e-9) / 1e6
        ),
    }
}
