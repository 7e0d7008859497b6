//! The binary against the interop servers of rsocket-py and rsocket-js
//! (interop/python/server.py, interop/js/server.js) over TCP and
//! WebSocket. The peers are installed by `interop/run.sh`, so these tests
//! are ignored by a plain `cargo test`; `scripts/test.sh` runs them with
//! `--ignored` after the interop step, and they fail if a peer is missing.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::run;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running interop server, killed when dropped.
struct Peer {
    _child: Child,
    uri: String,
}

impl Peer {
    async fn start(implementation: &str, transport: &str) -> Self {
        let root = root();
        let (program, script) = match implementation {
            "py" => (
                root.join("target/interop/venv/bin/python"),
                root.join("interop/python/server.py"),
            ),
            _ => (PathBuf::from("node"), root.join("interop/js/server.js")),
        };
        let installed = if implementation == "py" {
            program.exists()
        } else {
            root.join("interop/js/node_modules/rsocket-core").exists()
        };
        assert!(
            installed,
            "the {implementation} peer is not installed: run interop/run.sh first"
        );
        let mut child = tokio::process::Command::new(program)
            .arg(script)
            .args([
                "--transport",
                transport,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .current_dir(root.join(if implementation == "py" {
                "interop/python"
            } else {
                "interop/js"
            }))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the peer server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(common::RUN_LIMIT, async {
            while let Some(line) = lines.next_line().await.expect("peer output") {
                if line.starts_with("READY ") {
                    return line;
                }
            }
            panic!("the {implementation} server exited before READY");
        })
        .await
        .expect("the peer server did not print READY");
        let port = ready.rsplit(' ').next().expect("port");
        let uri = match transport {
            "tcp" => format!("tcp://127.0.0.1:{port}"),
            _ => format!("ws://127.0.0.1:{port}/"),
        };
        // Keep reading (and discarding) its output so that it never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { _child: child, uri }
    }
}

async fn against(implementation: &str, transport: &str) {
    let peer = Peer::start(implementation, transport).await;
    let uri = peer.uri.as_str();

    // Request/response, plain and routed with an extra metadata entry.
    let r = run(&[uri, "-d", "hi"], "").await;
    r.expect_code(0);
    assert_eq!(r.stdout, "echo:hi\n", "{r:#?}");
    let r = run(
        &[
            uri,
            "--route",
            "echo",
            "-d",
            "hi",
            "-m",
            "note",
            "--metadata-mime",
            "text/plain",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.stdout, "echo:hi\n", "{r:#?}");

    // ERROR frames: a wrong route and a requested failure.
    let r = run(&[uri, "--route", "elsewhere", "-d", "hi"], "").await;
    r.expect_code(1);
    assert!(r.stderr.contains("APPLICATION_ERROR"), "{}", r.stderr);
    assert!(
        r.stderr.contains("unknown route: elsewhere"),
        "{}",
        r.stderr
    );
    let r = run(&[uri, "-d", "fail", "--json"], "").await;
    r.expect_code(1);
    let event: Value = serde_json::from_str(r.lines()[0]).expect("json error event");
    assert_eq!(event["code"], "APPLICATION_ERROR");
    assert_eq!(event["message"], "requested failure");

    // Streams: complete, and cancelled by --take with explicit credit.
    let r = run(&[uri, "--stream", "--route", "stream", "-d", "5"], "").await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["0", "1", "2", "3", "4"]);
    let r = run(
        &[
            uri,
            "--stream",
            "-d",
            "100",
            "--request-n",
            "2",
            "--take",
            "3",
            "--debug",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["0", "1", "2"]);
    assert!(r.stderr.contains("initial-request-n=2"), "{}", r.stderr);
    assert!(
        r.stderr.contains("client --> REQUEST_N stream=1"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("client --> CANCEL stream=1"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("client <-- PAYLOAD stream=1"),
        "{}",
        r.stderr
    );

    // Channel: lines of standard input, answered upper-cased.
    let r = run(&[uri, "--channel", "--route", "channel"], "ab\ncd\n").await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["AB", "CD"]);

    // Fire-and-forget and metadata push are accepted.
    run(&[uri, "--fnf", "-d", "x"], "").await.expect_code(0);
    run(&[uri, "--metadata-push", "-m", "pushed"], "")
        .await
        .expect_code(0);

    // A short benchmark.
    let r = run(
        &[
            "bench", uri, "-c", "4", "-d", "1s", "--size", "16", "--json",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    let report: Value = serde_json::from_str(r.stdout.trim()).expect("bench json");
    assert!(report["operations"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the rsocket-py peer: run after interop/run.sh (scripts/test.sh does)"]
async fn python_server_over_tcp() {
    against("py", "tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the rsocket-py peer: run after interop/run.sh (scripts/test.sh does)"]
async fn python_server_over_websocket() {
    against("py", "ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the rsocket-js peer: run after interop/run.sh (scripts/test.sh does)"]
async fn javascript_server_over_tcp() {
    against("js", "tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the rsocket-js peer: run after interop/run.sh (scripts/test.sh does)"]
async fn javascript_server_over_websocket() {
    against("js", "ws").await;
}
