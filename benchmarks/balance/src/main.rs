//! Load-balancer overhead: request/response with 256 in flight over
//! loopback TCP, through
//!
//! * `direct`: one `Requester` (the baseline),
//! * `balanced-1`: a weighted-p2c balancer with one member (the cost of the
//!   balancer itself: pick, statistics, retry bookkeeping),
//! * `balanced-3`: a weighted-p2c balancer over three servers,
//! * `balanced-3-rr`: round robin over the same three,
//! * `direct-3-rr`: the three connections taken in turn by hand (what three
//!   connections cost without a balancer).
//!
//! ```text
//! cargo run --release --manifest-path benchmarks/Cargo.toml -p rsocket-balance-bench -- [--runs 3] [--secs 3] [--flavor ct|mt2] [--only direct,balanced-1,balanced-3,balanced-3-rr,direct-3-rr] [--requests N] [--busy-rate N]
//! ```
//!
//! Each cell is a warm-up of 0.3 s then `--secs` of requests; runs are
//! interleaved across setups and the table shows medians. CPU is the
//! process's user+system time per request (client and servers share the
//! process, as in the main suite).
//!
//! `--clock` prints what one clock reading costs instead: the system clock
//! (`Instant::now`) and the balancer's default, the calibrated time-stamp
//! counter (a raw reading converted to nanoseconds, as the balancer does).
//!
//! `--requests N` runs exactly `N` requests per cell instead (no warm-up),
//! for instruction counts: under `valgrind --tool=cachegrind`, the
//! difference between two runs with different `N` divided by the
//! difference in `N` is the instructions per request, without the set-up.
//! A balancer times only one request in eight above 50,000 requests a
//! second; under valgrind everything runs some 50 times slower, so give
//! `--busy-rate 1000` there to count what a native run does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rsocket_balance::{
    Balancer, BalancerConfig, CallOptions, RoundRobin, TcpConnector, WeightedP2c,
};
use rsocket_core::{request_response_fn, ClientBuilder, Payload, Requester, Server};

const IN_FLIGHT: usize = 256;

fn cpu_micros() -> f64 {
    // SAFETY-free: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
    t(ru.ru_utime) + t(ru.ru_stime)
}

async fn start_server() -> SocketAddr {
    let listener = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::new(|_setup, _requester| async {
        Ok(request_response_fn(
            |req: Payload| async move { Ok(Some(req)) },
        ))
    });
    tokio::spawn(server.serve(listener));
    addr
}

#[derive(Clone)]
enum Client {
    Direct(Requester),
    /// Three connections taken in turn by hand: what three connections
    /// cost without a balancer.
    DirectRr(Arc<[Requester; 3]>, Arc<AtomicUsize>),
    Balanced(Balancer<SocketAddr>),
}

impl Client {
    async fn call(&self, p: Payload) {
        let r = match self {
            Self::Direct(r) => r.request_response(p).await,
            Self::DirectRr(rs, next) => {
                let i = next.fetch_add(1, Ordering::Relaxed) % 3;
                rs[i].request_response(p).await
            }
            Self::Balanced(b) => b.request_response_with(p, CallOptions::new()).await,
        };
        r.expect("request failed");
    }
}

/// How long a cell runs: a time, or an exact number of requests.
#[derive(Clone, Copy)]
enum Span {
    Time(Duration),
    Requests(u64),
}

/// Requests completed and CPU µs per request over `span`.
async fn measure(client: &Client, span: Span) -> (f64, f64) {
    let payload = Payload::from(vec![7u8; 64]);
    let one = || {
        let c = client.clone();
        let p = payload.clone();
        async move { c.call(p).await }
    };
    let (t0, c0) = (Instant::now(), cpu_micros());
    let (deadline, limit) = match span {
        Span::Time(time) => (Some(t0 + time), u64::MAX),
        Span::Requests(n) => (None, n),
    };
    let mut inflight = FuturesUnordered::new();
    let mut issued = 0u64;
    while issued < limit && inflight.len() < IN_FLIGHT {
        inflight.push(one());
        issued += 1;
    }
    let mut n = 0u64;
    while inflight.next().await.is_some() {
        n += 1;
        if issued < limit && deadline.is_none_or(|d| Instant::now() < d) {
            inflight.push(one());
            issued += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_micros() - c0;
    (n as f64 / secs, cpu / n as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn bench(
    runs: usize,
    span: Span,
    only: Option<String>,
    config: BalancerConfig,
) -> Vec<(String, f64, f64)> {
    let servers = [
        start_server().await,
        start_server().await,
        start_server().await,
    ];
    let mut direct = Vec::new();
    for addr in servers {
        direct.push(
            ClientBuilder::new()
                .connect(rsocket_transport_tcp::connect(addr).await.expect("connect"))
                .expect("client"),
        );
    }
    let direct3: [Requester; 3] = [direct[0].clone(), direct[1].clone(), direct[2].clone()];
    let one = Balancer::builder()
        .config(config.clone())
        .strategy(WeightedP2c::new())
        .build_from_list([(servers[0], TcpConnector::new(servers[0]))]);
    let three = Balancer::builder()
        .config(config.clone())
        .strategy(WeightedP2c::new())
        .build_from_list(servers.map(|a| (a, TcpConnector::new(a))));
    let three_rr = Balancer::builder()
        .config(config)
        .strategy(RoundRobin::new())
        .build_from_list(servers.map(|a| (a, TcpConnector::new(a))));
    for b in [&one, &three, &three_rr] {
        let n = b.members().len();
        b.wait_until(|m| {
            m.iter()
                .filter(|m| m.state == rsocket_balance::MemberState::Ready)
                .count()
                == n
        })
        .await;
    }
    let setups = [
        ("direct", Client::Direct(direct[0].clone())),
        ("balanced-1", Client::Balanced(one)),
        ("balanced-3", Client::Balanced(three)),
        ("balanced-3-rr", Client::Balanced(three_rr)),
        (
            "direct-3-rr",
            Client::DirectRr(Arc::new(direct3), Arc::new(AtomicUsize::new(0))),
        ),
    ];
    let setups: Vec<_> = setups
        .into_iter()
        .filter(|(name, _)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|o| o == *name))
        })
        .collect();
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); setups.len()];
    for _ in 0..runs {
        for (i, (_, client)) in setups.iter().enumerate() {
            if let Span::Time(_) = span {
                measure(client, Span::Time(Duration::from_millis(300))).await;
            }
            let (ops, cpu) = measure(client, span).await;
            results[i].0.push(ops);
            results[i].1.push(cpu);
        }
    }
    setups
        .iter()
        .zip(results)
        .map(|((name, _), (ops, cpu))| (name.to_string(), median(ops), median(cpu)))
        .collect()
}

/// Nanoseconds per call of `read`, over 20 million calls.
fn per_reading<T>(mut read: impl FnMut() -> T) -> f64 {
    const N: u32 = 20_000_000;
    let t0 = Instant::now();
    for _ in 0..N {
        std::hint::black_box(read());
    }
    t0.elapsed().as_nanos() as f64 / f64::from(N)
}

fn clock_costs() {
    let system = per_reading(Instant::now);
    let counter = quanta::Clock::new();
    let epoch = counter.raw();
    let tsc = per_reading(|| counter.delta_as_nanos(epoch, counter.raw()) / 1000);
    println!("system clock (Instant::now): {system:.1} ns per reading");
    println!("time-stamp counter (the balancer's default): {tsc:.1} ns per reading");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--clock") {
        clock_costs();
        return;
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    let secs: f64 = arg("--secs").and_then(|v| v.parse().ok()).unwrap_or(3.0);
    // `--only direct,balanced-1` etc.: some setups only.
    let only = arg("--only");
    let mut config = BalancerConfig::default();
    if let Some(rate) = arg("--busy-rate").and_then(|v| v.parse().ok()) {
        config.busy_rate = rate;
    }
    let span = match arg("--requests").and_then(|v| v.parse().ok()) {
        Some(n) => Span::Requests(n),
        None => Span::Time(Duration::from_secs_f64(secs)),
    };
    let flavors: Vec<String> = match arg("--flavor") {
        Some(f) => vec![f],
        None => vec!["ct".into(), "mt2".into()],
    };
    println!("| rt | setup | ops/s | CPU µs/op | ops/s vs direct |");
    println!("|---|---|---:|---:|---:|");
    for flavor in flavors {
        let rt = match flavor.as_str() {
            "mt2" => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            _ => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .expect("runtime");
        let only = only.clone();
        let config = config.clone();
        let rows = rt.block_on(async move {
            tokio::spawn(bench(runs, span, only, config))
                .await
                .expect("bench")
        });
        let base = rows[0].1;
        for (name, ops, cpu) in rows {
            println!(
                "| {flavor} | {name} | {:.0} k | {cpu:.3} | {:.3}× |",
                ops / 1000.0,
                ops / base
            );
        }
    }
}
