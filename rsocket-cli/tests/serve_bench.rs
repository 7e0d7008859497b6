//! `rsocket serve --echo` (TCP and WebSocket) driven by the client, and
//! `rsocket bench` for a second against the in-process server.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bin, run, serve_recorder};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// A running `rsocket serve`, killed when dropped.
struct Served {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    uri: String,
}

impl Served {
    /// Starts a server; `verbose` logs requests (then the test must read
    /// them, or the pipe fills up).
    async fn start(uri: &str, verbose: bool) -> Self {
        Self::start_with(uri, if verbose { &["--verbose"] } else { &[] }).await
    }

    /// Starts a server with extra arguments after `serve URI --echo`.
    async fn start_with(uri: &str, extra: &[&str]) -> Self {
        let mut args = vec!["serve", uri, "--echo"];
        args.extend_from_slice(extra);
        let mut child = tokio::process::Command::new(bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn rsocket serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let uri = Self::next_line(&mut lines).await.expect("the bound URI");
        Self { child, lines, uri }
    }

    async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
        tokio::time::timeout(common::RUN_LIMIT, lines.next_line())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// Reads the server's log until a line starting with `prefix`.
    async fn wait_for(&mut self, prefix: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match Self::next_line(&mut self.lines).await {
                Some(line) if line.starts_with(prefix) => return line,
                Some(line) => seen.push(line),
                None => panic!("the server never logged {prefix:?}; it logged {seen:#?}"),
            }
        }
    }
}

async fn exercise(served: &mut Served) {
    let uri = served.uri.clone();
    let r = run(&[&uri, "-d", "ping"], "").await;
    r.expect_code(0);
    assert_eq!(r.stdout, "ping\n");
    served.wait_for("REQUEST_RESPONSE data=\"ping\"").await;

    let r = run(&[&uri, "--stream", "-d", "4"], "").await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["0", "1", "2", "3"]);
    served.wait_for("COMPLETE stream").await;

    let r = run(
        &[
            &uri,
            "--stream",
            "-d",
            "1000000000",
            "--take",
            "2",
            "-n",
            "1",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["0", "1"]);
    served.wait_for("CANCEL stream").await;

    let r = run(&[&uri, "--channel"], "x\ny\n").await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["x", "y"]);
    served.wait_for("COMPLETE channel").await;

    run(&[&uri, "--fnf", "-d", "f"], "").await.expect_code(0);
    served.wait_for("REQUEST_FNF data=\"f\"").await;

    run(&[&uri, "--metadata-push", "-m", "mp"], "")
        .await
        .expect_code(0);
    served.wait_for("METADATA_PUSH").await;

    let r = run(&[&uri, "--route", "error", "-d", "nope"], "").await;
    r.expect_code(1);
    assert!(r.stderr.contains("APPLICATION_ERROR"), "{}", r.stderr);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_over_tcp_answers_every_interaction() {
    let mut served = Served::start("tcp://127.0.0.1:0", true).await;
    assert!(served.uri.starts_with("tcp://127.0.0.1:"), "{}", served.uri);
    assert!(!served.uri.ends_with(":0"));
    exercise(&mut served).await;
    let _ = served.child.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_over_websocket_answers_every_interaction() {
    let mut served = Served::start("ws://127.0.0.1:0/echo", true).await;
    assert!(served.uri.starts_with("ws://127.0.0.1:"), "{}", served.uri);
    assert!(served.uri.ends_with("/echo"), "{}", served.uri);
    exercise(&mut served).await;
    let _ = served.child.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_echo_or_on_a_bad_uri_fails() {
    run(&["serve", "tcp://127.0.0.1:0"], "")
        .await
        .expect_code(2);
    run(&["serve", "http://127.0.0.1:0", "--echo"], "")
        .await
        .expect_code(2);
    // The library's advice (a crate feature, TransportOptions::tls) is no
    // use to someone at a shell.
    let r = run(&["serve", "wss://127.0.0.1:0/rs", "--echo"], "").await;
    r.expect_code(2);
    assert_eq!(
        r.stderr,
        "error: serve does not do TLS yet: listen on tcp:// or ws://\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_refuses_a_request_size_it_cannot_send() {
    // Checked before connecting: nothing listens there.
    for size in ["99999999999999", "67108865", "64k"] {
        let r = run(&["bench", "tcp://127.0.0.1:1", "--size", size], "").await;
        r.expect_code(2);
        assert!(
            r.stderr.contains("invalid value") && r.stderr.contains("--size"),
            "--size {size}: {}",
            r.stderr
        );
    }
}

/// Runs a one-second benchmark and returns its JSON report.
async fn bench(uri: &str, interaction: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        uri,
        "--interaction",
        interaction,
        "--concurrency",
        "8",
        "--duration",
        "1s",
        "--size",
        "32",
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = run(&args, "").await;
    r.expect_code(0);
    // The progress line went to standard error at least once.
    assert!(r.stderr.contains(" ops, "), "{}", r.stderr);
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn assert_sane(report: &Value) {
    let ops = report["operations"].as_u64().unwrap();
    assert!(ops > 10, "{report}");
    let secs = report["duration_s"].as_f64().unwrap();
    assert!((0.9..5.0).contains(&secs), "{report}");
    let rate = report["throughput"].as_f64().unwrap();
    assert!((rate - ops as f64 / secs).abs() < 1.0, "{report}");
    let l = &report["latency_us"];
    let (p50, p90, p99, p999, max) = (
        l["p50"].as_f64().unwrap(),
        l["p90"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["p99_9"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(
        p50 > 0.0 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{report}"
    );
    assert!(max < 10_000_000.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_sane_figures_for_each_interaction() {
    let (uri, _events) = serve_recorder("tcp://127.0.0.1:0").await;
    let rr = bench(&uri, "rr", &[]).await;
    eprintln!("{rr}");
    assert_sane(&rr);
    assert_eq!(rr["errors"], 0, "{rr}");
    assert_eq!(rr["interaction"], "rr");

    let channel = bench(&uri, "channel", &[]).await;
    assert_sane(&channel);
    assert_eq!(channel["errors"], 0, "{channel}");

    let fnf = bench(&uri, "fnf", &[]).await;
    assert!(fnf["operations"].as_u64().unwrap() > 10, "{fnf}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_errors_by_code() {
    let (uri, _events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(
        &[
            "bench",
            &uri,
            "--duration",
            "1s",
            "--concurrency",
            "4",
            "--route",
            "fail",
            "--json",
        ],
        "",
    )
    .await;
    // Every request failed: the report is printed, the exit status says so.
    r.expect_code(2);
    let report: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(report["operations"], 0);
    let n = report["errors_by_code"]["APPLICATION_ERROR"]
        .as_u64()
        .unwrap();
    assert!(n > 0 && n == report["errors"].as_u64().unwrap(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_streams_against_the_echo_server_in_text() {
    let served = Served::start("tcp://127.0.0.1:0", false).await;
    let r = run(
        &[
            "bench",
            &served.uri,
            "-i",
            "stream",
            "--items",
            "50",
            "-c",
            "4",
            "-d",
            "1s",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert!(
        r.stdout.starts_with("stream against tcp://127.0.0.1:"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("latency µs  p50 "), "{}", r.stdout);
    assert!(r.stdout.contains("errors      0"), "{}", r.stdout);
    let items = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("items       "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let ops = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("operations  "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(ops > 0 && items == ops * 50, "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_resume_are_negotiated_or_refused() {
    let plain = Served::start("tcp://127.0.0.1:0", false).await;
    let leasing = Served::start_with("tcp://127.0.0.1:0", &["--lease", "2/60s", "--resume"]).await;
    // A leasing, resuming server: SETUP carries L and a resume token, the
    // request waits for the server's LEASE, then goes out.
    let r = run(
        &[
            &leasing.uri,
            "--lease",
            "--resume",
            "--debug",
            "-d",
            "granted",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.stdout, "granted\n");
    assert!(
        r.stderr.contains("LEASE"),
        "no LEASE frame logged:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("resume-token=<16 bytes>"),
        "no resume token in SETUP:\n{}",
        r.stderr
    );
    // A server without either refuses the SETUP, and the exit status says
    // the server answered with an ERROR frame.
    let r = run(&[&plain.uri, "--lease", "-d", "x"], "").await;
    r.expect_code(1);
    assert!(r.stderr.contains("UNSUPPORTED_SETUP"), "{}", r.stderr);
    let r = run(&[&plain.uri, "--resume", "-d", "x"], "").await;
    r.expect_code(1);
    assert!(r.stderr.contains("REJECTED_SETUP"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_debug_prints_the_frames_it_reads_and_writes() {
    let mut child = tokio::process::Command::new(bin())
        .args(["serve", "tcp://127.0.0.1:0", "--echo", "--debug"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rsocket serve");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let uri = Served::next_line(&mut out).await.expect("the bound URI");
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
    run(&[&uri, "-d", "dbg"], "").await.expect_code(0);
    // In this order: the SETUP and the request read, the reply written,
    // each followed by its hex dump.
    let want = [
        "server <-- SETUP stream=0 ",
        "    0000  00 00 00 00 04 00 ",
        "server <-- REQUEST_RESPONSE stream=1 flags=0x000 [] length=9",
        "    0000  00 00 00 01 10 00 64 62 67 ",
        "server --> PAYLOAD stream=1 flags=0x060 [C N] length=9",
        "    0000  00 00 00 01 28 60 64 62 67 ",
    ];
    let mut seen = Vec::new();
    for prefix in want {
        loop {
            // The client is done: its frames are logged already.
            let line = tokio::time::timeout(Duration::from_secs(10), err.next_line())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_else(|| panic!("no {prefix:?} in the server's log: {seen:#?}"));
            let found = line.starts_with(prefix);
            seen.push(line);
            if found {
                break;
            }
        }
    }
    let _ = child.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_opens_the_connections_it_is_asked_for() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let report = bench(&uri, "rr", &["--connections", "3"]).await;
    assert_sane(&report);
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connections"], 3, "{report}");
    // The recorder reports one SETUP per connection; each connection
    // carried requests, so its SETUP was handled before the run ended.
    let mut setups = 0;
    while let Ok(event) = events.try_recv() {
        if event.starts_with("setup ") {
            setups += 1;
        }
    }
    assert_eq!(setups, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_connection_sends_the_same_setup() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let args = [
        "bench",
        &uri,
        "--connections",
        "3",
        "--concurrency",
        "3",
        "--duration",
        "300ms",
        "--setup-data",
        "-",
        "--json",
    ];
    let r = run(&args, "from stdin").await;
    r.expect_code(0);
    let mut setups = Vec::new();
    while let Ok(event) = events.try_recv() {
        if event.starts_with("setup ") {
            setups.push(event);
        }
    }
    let want = "setup application/octet-stream application/octet-stream from stdin -";
    assert_eq!(setups, [want, want, want]);
    // Both from standard input: refused, as the client does.
    let mut args = args.to_vec();
    args.extend(["--setup-metadata", "-"]);
    let r = run(&args, "from stdin").await;
    r.expect_code(2);
    assert!(
        r.stderr.contains("standard input can feed only one thing"),
        "{}",
        r.stderr
    );
}

/// One progress line of `bench`: `[  1.0s] 123 ops, 123/s, 0 errors`, as
/// (seconds, operations, errors).
fn progress_line(line: &str) -> Option<(f64, u64, u64)> {
    let (secs, rest) = line.strip_prefix('[')?.split_once("s] ")?;
    let mut parts = rest.split(", ");
    let ops = parts.next()?.strip_suffix(" ops")?.parse().ok()?;
    parts.next()?.strip_suffix("/s")?.parse::<u64>().ok()?;
    let errors = parts.next()?.strip_suffix(" errors")?.parse().ok()?;
    Some((secs.trim().parse().ok()?, ops, errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_prints_progress_every_second_to_standard_error() {
    let (uri, _events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(
        &["bench", &uri, "-c", "4", "--duration", "3s", "--json"],
        "",
    )
    .await;
    r.expect_code(0);
    let report: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let lines: Vec<_> = r
        .stderr
        .lines()
        .map(|l| progress_line(l).unwrap_or_else(|| panic!("not a progress line: {l:?}")))
        .collect();
    // After about 1 s and 2 s (3 s races with the end), then the final one.
    assert!(lines.len() >= 3, "{}", r.stderr);
    assert!((1.0..2.0).contains(&lines[0].0), "{}", r.stderr);
    // Times and counts never go back (the last tick and the final line
    // may both read 3.0 s).
    for pair in lines.windows(2) {
        assert!(
            pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1,
            "{}",
            r.stderr
        );
    }
    let (secs, ops, errors) = lines[lines.len() - 1];
    assert!(secs >= 3.0, "{}", r.stderr);
    assert!(ops > 0 && errors == 0, "{}", r.stderr);
    assert!(
        ops <= report["operations"].as_u64().unwrap() + 4,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_wait_bounds_how_long_a_request_waits_for_a_lease() {
    // A server that grants no request at all.
    let none = Served::start_with("tcp://127.0.0.1:0", &["--lease", "0/60s"]).await;
    let started = Instant::now();
    let r = run(&[&none.uri, "--lease", "--lease-wait", "0s", "-d", "x"], "").await;
    let waited = started.elapsed();
    r.expect_code(2);
    assert!(
        r.stderr.contains("no valid lease") && r.stderr.contains("request not sent"),
        "{}",
        r.stderr
    );
    // Not the default 10 s.
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // A wait of 1.5 s sees the LEASE (of no request) arrive and then
    // gives up.
    let started = Instant::now();
    let r = run(
        &[&none.uri, "--lease", "--lease-wait", "1500ms", "-d", "x"],
        "",
    )
    .await;
    let waited = started.elapsed();
    r.expect_code(2);
    assert!(r.stderr.contains("requests are used up"), "{}", r.stderr);
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    // Two requests a second: requests beyond a lease wait for the next
    // one and go out then, none fails.
    let two = Served::start_with("tcp://127.0.0.1:0", &["--lease", "2/1s"]).await;
    // A leasing bench run of four in flight for `duration`, each request
    // waiting up to `wait` for a lease: its report.
    let leased_bench = |duration: &'static str, wait: &'static str| {
        let uri = two.uri.clone();
        async move {
            let args = [
                "bench",
                &uri,
                "-c",
                "4",
                "--duration",
                duration,
                "--lease",
                "--lease-wait",
                wait,
                "--json",
            ];
            let r = run(&args, "").await;
            r.expect_code(0);
            serde_json::from_str::<Value>(r.stdout.trim()).unwrap()
        }
    };
    let report = leased_bench("2500ms", "10s").await;
    let ops = report["operations"].as_u64().unwrap();
    assert!((3..=8).contains(&ops), "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // Without waiting, requests beyond the lease fail at once and are
    // counted as NO_LEASE; the run still ends on time.
    let report = leased_bench("1s", "0s").await;
    let ops = report["operations"].as_u64().unwrap();
    assert!((1..=4).contains(&ops), "{report}");
    let refused = report["errors_by_code"]["NO_LEASE"].as_u64().unwrap_or(0);
    assert!(
        refused > 0 && refused == report["errors"].as_u64().unwrap(),
        "{report}"
    );
}
