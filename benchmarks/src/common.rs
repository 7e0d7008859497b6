//! Shared pieces: workload sizes, the result record a worker prints, latency
//! histograms, CPU and memory probes, runtime construction and the generic
//! request/response driver.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

/// Payload size of the small-message workloads.
pub const SMALL: usize = 64;
/// Payload size of `stream_16k`.
pub const LARGE: usize = 16 * 1024;

/// Counts and durations of one suite run (`--quick` scales them down).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub quick: bool,
    /// Measured time of each request/response workload.
    pub rr_time: Duration,
    /// Unmeasured warm-up before it.
    pub rr_warmup: Duration,
    pub stream_64: u64,
    pub stream_16k: u64,
    pub channel_64: u64,
    pub fnf_64: u64,
    pub slow_total: u64,
    pub slow_consume: u64,
    pub slow_hold: Duration,
    /// Request/response samples taken while a stream is stalled.
    pub hol_samples: u64,
    pub conns: u64,
    /// A throughput workload stops after this long and reports what it did.
    pub cap: Duration,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        let mut sizes = Self::preset(quick);
        // For instruction counts: two runs with different times give the
        // marginal cost of a request, start-up and warm-up cancelled out.
        if let Some(ms) = std::env::var("BENCH_RR_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            sizes.rr_time = Duration::from_millis(ms);
        }
        sizes
    }

    fn preset(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rr_time: Duration::from_millis(300),
                rr_warmup: Duration::from_millis(50),
                stream_64: 200_000,
                stream_16k: 10_000,
                channel_64: 100_000,
                fnf_64: 200_000,
                slow_total: 2_000_000,
                slow_consume: 10,
                slow_hold: Duration::from_millis(300),
                hol_samples: 200,
                conns: 1_000,
                cap: Duration::from_secs(5),
            }
        } else {
            Self {
                quick,
                rr_time: Duration::from_secs(3),
                rr_warmup: Duration::from_millis(300),
                stream_64: 10_000_000,
                stream_16k: 500_000,
                channel_64: 5_000_000,
                fnf_64: 10_000_000,
                slow_total: 2_000_000,
                slow_consume: 10,
                slow_hold: Duration::from_secs(3),
                hol_samples: 2_000,
                conns: 10_000,
                cap: Duration::from_secs(60),
            }
        }
    }
}

/// The 64-byte (or 16 KiB) payload every implementation sends.
pub fn payload(size: usize) -> Bytes {
    Bytes::from(vec![0xA5u8; size])
}

/// What a worker measured. Printed as one `RESULT` line of `key=value`
/// fields (the note last, it may hold spaces).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Messages (or operations) completed in the measured phase.
    pub ops: u64,
    /// Payload bytes delivered in the measured phase.
    pub bytes: u64,
    pub secs: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub cpu_us: f64,
    pub peak_rss_kb: u64,
    pub rss_growth_kb: Option<f64>,
    pub produced: Option<u64>,
    pub credit: Option<u64>,
    pub conn_secs: Option<f64>,
    pub server_kb_per_conn: Option<f64>,
    pub failed: bool,
    pub note: String,
}

impl Outcome {
    pub fn failed(note: impl Into<String>) -> Self {
        Self {
            failed: true,
            note: note.into(),
            peak_rss_kb: mem().hwm_kb,
            ..Self::default()
        }
    }

    pub fn add_note(&mut self, note: &str) {
        if !self.note.is_empty() {
            self.note.push_str("; ");
        }
        self.note.push_str(note);
    }

    pub fn to_line(&self) -> String {
        let mut s = String::from("RESULT");
        let _ = write!(
            s,
            " ops={} bytes={} secs={:.6} cpu_us={:.4} peak_rss_kb={}",
            self.ops, self.bytes, self.secs, self.cpu_us, self.peak_rss_kb
        );
        let opt = |s: &mut String, k: &str, v: Option<f64>| {
            if let Some(v) = v {
                let _ = write!(s, " {k}={v:.6}");
            }
        };
        opt(&mut s, "p50_us", self.p50_us);
        opt(&mut s, "p99_us", self.p99_us);
        opt(&mut s, "rss_growth_kb", self.rss_growth_kb);
        opt(&mut s, "produced", self.produced.map(|v| v as f64));
        opt(&mut s, "credit", self.credit.map(|v| v as f64));
        opt(&mut s, "conn_secs", self.conn_secs);
        opt(&mut s, "server_kb_per_conn", self.server_kb_per_conn);
        if self.failed {
            s.push_str(" failed=1");
        }
        let _ = write!(s, " note={}", self.note.replace('\n', " "));
        s
    }

    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("RESULT ")?;
        let (fields, note) = match rest.find(" note=") {
            Some(i) => (&rest[..i], &rest[i + 6..]),
            None => (rest, ""),
        };
        let mut o = Self {
            note: note.trim().to_owned(),
            ..Self::default()
        };
        for kv in fields.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let f: f64 = v.parse().ok()?;
            match k {
                "ops" => o.ops = f as u64,
                "bytes" => o.bytes = f as u64,
                "secs" => o.secs = f,
                "cpu_us" => o.cpu_us = f,
                "peak_rss_kb" => o.peak_rss_kb = f as u64,
                "p50_us" => o.p50_us = Some(f),
                "p99_us" => o.p99_us = Some(f),
                "rss_growth_kb" => o.rss_growth_kb = Some(f),
                "produced" => o.produced = Some(f as u64),
                "credit" => o.credit = Some(f as u64),
                "conn_secs" => o.conn_secs = Some(f),
                "server_kb_per_conn" => o.server_kb_per_conn = Some(f),
                "failed" => o.failed = f != 0.0,
                _ => {}
            }
        }
        Some(o)
    }
}

// ---------------------------------------------------------------------------
// probes

/// CPU time (user + system) of this process so far, in microseconds.
pub fn cpu_us() -> f64 {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// VmRSS and VmHWM of this process, from /proc/self/status.
pub fn mem() -> Mem {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
    }
}

/// Raises the soft open-file limit to the hard limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
        rl.rlim_cur as u64
    }
}

/// CPU and wall clock of a measured phase.
pub struct Meter {
    start: Instant,
    cpu: f64,
}

impl Meter {
    pub fn start() -> Self {
        Self {
            cpu: cpu_us(),
            start: Instant::now(),
        }
    }

    /// Fills `secs`, `cpu_us` (per op) and `peak_rss_kb`.
    pub fn finish(&self, o: &mut Outcome) {
        o.secs = self.start.elapsed().as_secs_f64();
        let cpu = cpu_us() - self.cpu;
        o.cpu_us = if o.ops > 0 { cpu / o.ops as f64 } else { cpu };
        o.peak_rss_kb = mem().hwm_kb;
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

// ---------------------------------------------------------------------------
// latency histogram: log-linear buckets, under 1.6 % relative error

const SUB: u32 = 64;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; (2 * SUB + 58 * SUB) as usize],
            total: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB as u64 {
            return v as usize;
        }
        let b = 63 - v.leading_zeros(); // >= 7
        let shift = b - 6;
        let mant = ((v >> shift) & (SUB as u64 - 1)) as u32;
        (2 * SUB + (b - 7) * SUB + mant) as usize
    }

    fn value(i: usize) -> u64 {
        let i = i as u32;
        if i < 2 * SUB {
            return i as u64;
        }
        let b = (i - 2 * SUB) / SUB + 7;
        let mant = ((i - 2 * SUB) % SUB) as u64;
        let shift = b - 6;
        let lo = (SUB as u64 + mant) << shift;
        lo + (1u64 << shift) / 2
    }

    pub fn record(&mut self, d: Duration) {
        let i = Self::index(d.as_nanos() as u64);
        self.counts[i] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// Quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i) as f64 / 1000.0);
            }
        }
        None
    }

    pub fn fill(&self, o: &mut Outcome) {
        o.p50_us = self.quantile_us(0.50);
        o.p99_us = self.quantile_us(0.99);
    }
}

// ---------------------------------------------------------------------------
// runtimes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// current-thread runtime
    Ct,
    /// multi-thread runtime, 2 workers
    Mt2,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ct => "ct",
            Self::Mt2 => "mt2",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ct" => Some(Self::Ct),
            "mt2" => Some(Self::Mt2),
            _ => None,
        }
    }

    pub fn runtime(self) -> tokio::runtime::Runtime {
        match self {
            Self::Ct => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Self::Mt2 => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        }
        .expect("runtime")
    }

    /// Runs `f` as a spawned task, so that on the multi-thread runtime all of
    /// the work (client and server) happens on its 2 workers and none on the
    /// main thread.
    pub fn run<F>(self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.runtime();
        rt.block_on(async move { tokio::spawn(f).await.expect("workload task panicked") })
    }
}

// ---------------------------------------------------------------------------
// generic drivers

/// Request/response with `concurrency` in flight: a warm-up, then
/// `sizes.rr_time` of measured requests. `call` issues one request and
/// resolves when its response arrived (an error ends the run).
pub async fn rr_driver<F, Fut>(sizes: Sizes, concurrency: usize, call: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    // No timer per request (it would cost as much as a raw round trip):
    // a phase that does not end 10 s after its deadline has hung.
    let limit = |t: Duration| t + Duration::from_secs(10);
    let warm = tokio::time::timeout(
        limit(sizes.rr_warmup),
        rr_phase(concurrency, sizes.rr_warmup, &call, &mut Histogram::new()),
    )
    .await;
    match warm {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Outcome::failed(format!("warm-up: {e}")),
        Err(_) => {
            return Outcome::failed("warm-up hung: requests unanswered 10 s after the deadline")
        }
    }
    let mut hist = Histogram::new();
    let meter = Meter::start();
    let res = match tokio::time::timeout(
        limit(sizes.rr_time),
        rr_phase(concurrency, sizes.rr_time, &call, &mut hist),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err("hung: requests unanswered 10 s after the deadline".to_owned()),
    };
    let mut o = Outcome {
        ops: hist.count(),
        ..Outcome::default()
    };
    meter.finish(&mut o);
    hist.fill(&mut o);
    if let Err(e) = res {
        o.failed = true;
        o.add_note(&e);
    }
    o
}

async fn rr_phase<F, Fut>(
    concurrency: usize,
    time: Duration,
    call: &F,
    hist: &mut Histogram,
) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + time;
    let one = || {
        let fut = call();
        async move {
            let t = Instant::now();
            fut.await.map(|()| t.elapsed())
        }
    };
    let mut inflight = FuturesUnordered::new();
    for _ in 0..concurrency {
        inflight.push(one());
    }
    let mut stop = false;
    let mut n = 0u64;
    while let Some(r) = inflight.next().await {
        hist.record(r?);
        n += 1;
        if !stop && n.is_multiple_of(64) && Instant::now() >= deadline {
            stop = true;
        }
        if !stop {
            inflight.push(one());
        }
    }
    Ok(())
}

/// Counts items produced by a server-side stream.
#[derive(Debug, Default)]
pub struct Produced(pub AtomicU64);

impl Produced {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts fire-and-forget arrivals and wakes the waiter at the target.
#[derive(Debug, Default)]
pub struct Arrivals {
    count: AtomicU64,
    target: AtomicU64,
    notify: tokio::sync::Notify,
}

impl Arrivals {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            target: AtomicU64::new(u64::MAX),
            ..Self::default()
        })
    }
    pub fn arrive(&self) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    pub fn set_target(&self, n: u64) {
        self.target.store(n, Ordering::Relaxed);
        if self.get() >= n {
            self.notify.notify_one();
        }
    }
    /// Waits until `target` arrivals or `timeout`; returns the count.
    pub async fn wait(&self, target: u64, timeout: Duration) -> u64 {
        self.set_target(target);
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
        self.get()
    }
}

/// Consumes a stream of `Result` items counting them and their bytes, until
/// `count` items, the end, an error or the cap.
pub async fn consume<S, T, E>(
    mut stream: S,
    count: u64,
    cap: Duration,
    len: impl Fn(&T) -> usize,
) -> (u64, u64, Option<String>)
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + cap;
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < count {
        match stream.next().await {
            Some(Ok(item)) => {
                n += 1;
                bytes += len(&item) as u64;
                if n.is_multiple_of(4096) && Instant::now() >= deadline {
                    return (n, bytes, Some(format!("capped at {} s", cap.as_secs())));
                }
            }
            Some(Err(e)) => return (n, bytes, Some(format!("error after {n}: {e}"))),
            None => return (n, bytes, Some(format!("ended early after {n}"))),
        }
    }
    (n, bytes, None)
}

/// Standard finish of a throughput outcome.
pub fn throughput(
    meter: &Meter,
    n: u64,
    bytes: u64,
    problem: Option<String>,
    expected: u64,
) -> Outcome {
    let mut o = Outcome {
        ops: n,
        bytes,
        ..Outcome::default()
    };
    meter.finish(&mut o);
    if let Some(p) = problem {
        if n < expected && !p.starts_with("capped") {
            o.failed = n == 0;
        }
        o.add_note(&p);
        if n < expected {
            o.add_note(&format!("{n} of {expected} done"));
        }
    }
    o
}

/// Slow consumer bookkeeping: RSS before opening the stream.
pub fn rss_kb() -> u64 {
    mem().rss_kb
}

/// Samples `sizes.hol_samples` sequential request/responses (after the
/// caller stalled a stream on the same connection).
pub async fn head_of_line<F, Fut>(sizes: Sizes, call: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut hist = Histogram::new();
    let meter = Meter::start();
    let mut problem = None;
    for _ in 0..sizes.hol_samples {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(2), call()).await {
            Ok(Ok(())) => hist.record(t.elapsed()),
            Ok(Err(e)) => {
                problem = Some(format!("request failed: {e}"));
                break;
            }
            Err(_) => {
                problem = Some("request/response blocked: no reply in 2 s".to_owned());
                break;
            }
        }
    }
    let mut o = Outcome {
        ops: hist.count(),
        ..Outcome::default()
    };
    meter.finish(&mut o);
    hist.fill(&mut o);
    if let Some(p) = problem {
        o.failed = true;
        o.add_note(&p);
    }
    o
}
