//! The binary against an in-process server that records what it receives:
//! every interaction, route and metadata, SETUP, credit on the wire,
//! cancellation, --debug, ERROR exit status, bad input.

mod common;

use common::{next_event, run, run_bytes, serve_recorder, wait_for};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_with_route_auth_metadata_and_setup() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(
        &[
            &uri,
            "-d",
            "hello",
            "--route",
            "greet",
            "--auth",
            "bearer:tok",
            "-m",
            "note",
            "--metadata-mime",
            "text/plain",
            "--setup-data",
            "hi-server",
            "--data-mime",
            "application/json",
            "--json",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(
        next_event(&mut events).await,
        "setup message/x.rsocket.composite-metadata.v0 application/json hi-server -"
    );
    assert_eq!(next_event(&mut events).await, "rr greet hello");
    let lines = r.lines();
    assert_eq!(lines.len(), 2, "{r:#?}");
    let reply: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(reply["event"], "next");
    assert_eq!(reply["data"], "hello");
    // The echoed metadata holds routing, bearer auth and the text entry.
    let md = hex_decode(reply["metadata_hex"].as_str().expect("binary metadata"));
    let entries = rsocket::metadata::CompositeMetadata::new(md)
        .to_vec()
        .unwrap();
    let mimes: Vec<_> = entries
        .iter()
        .map(|e| e.mime.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        mimes,
        [
            "message/x.rsocket.routing.v0",
            "message/x.rsocket.authentication.v0",
            "text/plain"
        ]
    );
    assert_eq!(&entries[2].content[..], b"note");
    let done: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(done["event"], "complete");
}

fn hex_decode(s: &str) -> bytes::Bytes {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_metadata_and_data_from_a_file() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let file = std::env::temp_dir().join(format!("rsocket-cli-data-{}", std::process::id()));
    std::fs::write(&file, "from a file").unwrap();
    let at = format!("@{}", file.display());
    let r = run(
        &[&uri, "-d", &at, "-m", "-", "--metadata-mime", "text/plain"],
        "stdin-md",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.stdout, "from a file\n");
    assert_eq!(
        next_event(&mut events).await,
        "setup text/plain application/octet-stream  -"
    );
    assert_eq!(next_event(&mut events).await, "rr - from a file");
    // The metadata read from standard input went out as is (the server
    // echoes it back).
    let r = run(&[&uri, "-d", &at, "-m", "-", "--json"], "stdin-md").await;
    r.expect_code(0);
    let reply: Value = serde_json::from_str(r.lines()[0]).unwrap();
    assert_eq!(reply["data"], "from a file", "{r:#?}");
    assert_eq!(reply["metadata"], "stdin-md", "{r:#?}");
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_sends_lines_that_are_not_utf8() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run_bytes(&[&uri, "--channel", "--json"], b"a\n\xff\x00\nb\r\n").await;
    r.expect_code(0);
    assert_eq!(
        r.lines(),
        [
            r#"{"data":"a","event":"next"}"#,
            r#"{"data_hex":"ff00","event":"next"}"#,
            r#"{"data":"b","event":"next"}"#,
            r#"{"event":"complete","items":3}"#,
        ],
        "{r:#?}"
    );
    wait_for(&mut events, "channel a").await;
    // Standard input that cannot be read (a directory): the channel is
    // cut short and the run fails.
    let out = tokio::process::Command::new(common::bin())
        .args([&uri, "--channel", "-d", "first"])
        .stdin(std::fs::File::open("/").unwrap())
        .output();
    let out = tokio::time::timeout(common::RUN_LIMIT, out)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("reading standard input"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_standard_input() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(&[&uri, "-d", "-"], "all of\nstdin").await;
    r.expect_code(0);
    assert_eq!(r.stdout, "all of\nstdin\n");
    wait_for(&mut events, "rr - all of\nstdin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_shows_binary_data_in_hex() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let file = std::env::temp_dir().join(format!("rsocket-cli-binary-{}", std::process::id()));
    std::fs::write(&file, [0xff, 0x00, 0xfe, b'a']).unwrap();
    let at = format!("@{}", file.display());
    let r = run(&[&uri, "-d", &at, "--json"], "").await;
    let _ = std::fs::remove_file(&file);
    r.expect_code(0);
    let reply: Value = serde_json::from_str(r.lines()[0]).unwrap();
    assert_eq!(reply["event"], "next", "{r:#?}");
    assert_eq!(reply["data_hex"], "ff00fe61", "{r:#?}");
    assert!(reply.get("data").is_none(), "{r:#?}");
    // The recorder saw the same bytes (lossily decoded).
    assert_eq!(
        wait_for(&mut events, "rr - \u{fffd}\0\u{fffd}a")
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_authentication_is_encoded_in_the_composite_metadata() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    // The password may hold a colon: only the first one after the user
    // separates.
    let r = run(
        &[&uri, "-d", "x", "--auth", "simple:alice:pa:ss", "--json"],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(
        next_event(&mut events).await,
        "setup message/x.rsocket.composite-metadata.v0 application/octet-stream  -"
    );
    let reply: Value = serde_json::from_str(r.lines()[0]).unwrap();
    let md = hex_decode(reply["metadata_hex"].as_str().expect("binary metadata"));
    let entries = rsocket::metadata::CompositeMetadata::new(md)
        .to_vec()
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        entries[0].mime.as_str(),
        Some("message/x.rsocket.authentication.v0")
    );
    // Simple (0x80 | 0), the user's length as a big-endian u16, the user,
    // the password.
    assert_eq!(&entries[0].content[..], b"\x80\x00\x05alicepa:ss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_and_metadata_push_arrive() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(&[&uri, "--fnf", "-d", "fired"], "").await;
    r.expect_code(0);
    assert_eq!(r.stdout, "");
    wait_for(&mut events, "fnf fired").await;
    run(&[&uri, "--metadata-push", "-m", "pushed"], "")
        .await
        .expect_code(0);
    wait_for(&mut events, "push pushed").await;
    // With --json each prints one `sent` event.
    for (args, interaction, event) in [
        (
            ["--fnf", "-d", "json-fired"],
            "fire_and_forget",
            "fnf json-fired",
        ),
        (
            ["--metadata-push", "-m", "json-pushed"],
            "metadata_push",
            "push json-pushed",
        ),
    ] {
        let mut argv = vec![uri.as_str(), "--json"];
        argv.extend(args);
        let r = run(&argv, "").await;
        r.expect_code(0);
        assert_eq!(r.lines().len(), 1, "{r:#?}");
        let sent: Value = serde_json::from_str(r.lines()[0]).unwrap();
        assert_eq!(sent["event"], "sent", "{r:#?}");
        assert_eq!(sent["interaction"], interaction, "{r:#?}");
        wait_for(&mut events, event).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_cancels_the_stream_and_request_n_is_on_the_wire() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(
        &[
            &uri,
            "--stream",
            "-d",
            "go",
            "--request-n",
            "2",
            "--take",
            "5",
            "--debug",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["0", "1", "2", "3", "4"]);
    // The initial credit and the batches of 2 are visible in --debug.
    assert!(
        r.stderr.contains(
            "client --> REQUEST_STREAM stream=1 flags=0x000 [] length=12 initial-request-n=2"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("client --> REQUEST_N stream=1").count(),
        2,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("request-n=2"), "{}", r.stderr);
    assert!(
        r.stderr.contains("client --> CANCEL stream=1"),
        "{}",
        r.stderr
    );
    // Hex of the CANCEL frame: stream 1, type 0x09 << 2.
    assert!(
        r.stderr.contains("    0000  00 00 00 01 24 00"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("client <-- PAYLOAD stream=1 flags=0x020 [N]"),
        "{}",
        r.stderr
    );
    // The server read the two REQUEST_N(2) and the CANCEL, and dropped
    // the stream's producer.
    assert_eq!(wait_for(&mut events, "stream go").await.len(), 1); // the SETUP
    let before = wait_for(&mut events, "frame CANCEL 1").await;
    assert_eq!(before, ["frame REQUEST_N 1 2", "frame REQUEST_N 1 2"]);
    wait_for(&mut events, "stream dropped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_sets_the_window_and_json_reports_cancel() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(
        &[
            &uri,
            "--stream",
            "--prefetch",
            "7",
            "--take",
            "3",
            "--json",
            "--debug",
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert!(r.stderr.contains("initial-request-n=7"), "{}", r.stderr);
    let last: Value = serde_json::from_str(r.lines()[3]).unwrap();
    assert_eq!(last["event"], "cancel");
    assert_eq!(last["after"], 3);
    wait_for(&mut events, "frame CANCEL 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_sends_standard_input_lines() {
    let (uri, mut events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(&[&uri, "--channel"], "one\ntwo\nthree\n").await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["one", "two", "three"]);
    wait_for(&mut events, "channel one").await;
    // --data is the first payload, then the lines; --take cancels.
    let r = run(
        &[&uri, "--channel", "-d", "first", "--take", "2"],
        "a\nb\nc\n",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.lines(), ["first", "a"]);
    wait_for(&mut events, "channel first").await;
    // Nothing to send: an error, not a hang.
    run(&[&uri, "--channel"], "").await.expect_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frame_gives_exit_status_1_with_code_and_message() {
    let (uri, _events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(&[&uri, "--route", "fail", "-d", "boom"], "").await;
    r.expect_code(1);
    assert!(
        r.stderr
            .contains("ERROR APPLICATION_ERROR (0x00000201): failed: boom"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
    let r = run(&[&uri, "--route", "fail", "-d", "boom", "--json"], "").await;
    r.expect_code(1);
    let event: Value = serde_json::from_str(r.lines()[0]).unwrap();
    assert_eq!(event["event"], "error");
    assert_eq!(event["code"], "APPLICATION_ERROR");
    assert_eq!(event["code_value"], 0x201);
    assert_eq!(event["message"], "failed: boom");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_with_header_and_debug_setup() {
    let (uri, mut events) = serve_recorder("ws://127.0.0.1:0/rs").await;
    let r = run(&[&uri, "-d", "over ws", "-H", "X-Test: yes", "--debug"], "").await;
    r.expect_code(0);
    assert_eq!(r.stdout, "over ws\n");
    assert!(
        r.stderr.contains("client --> SETUP stream=0"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("keepalive=20000ms lifetime=90000ms"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("client <-- PAYLOAD stream=1 flags=0x060 [C N]"),
        "{}",
        r.stderr
    );
    assert_eq!(
        next_event(&mut events).await,
        "setup application/octet-stream application/octet-stream  yes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_and_lifetime_go_into_setup() {
    let (uri, _events) = serve_recorder("tcp://127.0.0.1:0").await;
    let r = run(
        &[&uri, "--keepalive", "1500ms", "--lifetime", "1m", "--debug"],
        "",
    )
    .await;
    r.expect_code(0);
    assert!(
        r.stderr.contains("keepalive=1500ms lifetime=60000ms"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_cleanly() {
    for args in [
        &["udp://127.0.0.1:1"][..],
        &["tcp://127.0.0.1:1", "--auth", "digest:x"],
        &["tcp://127.0.0.1:1", "--route", ""],
        &["tcp://127.0.0.1:1", "--keepalive", "soon"],
        &["tcp://127.0.0.1:1", "-d", "@/nonexistent/file"],
        &["tcp://127.0.0.1:1", "--data-mime", "é"],
        &["tcp://127.0.0.1:1", "-d", "-", "-m", "-"],
        &["rpc", "--proto", "/nonexistent.proto", "--list"],
    ] {
        let r = run(args, "").await;
        assert_eq!(r.code, 2, "{args:?}: {r:#?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:#?}");
        assert!(!r.stderr.is_empty(), "{args:?}");
    }
    // Longer than SETUP's 31 bits of milliseconds: refused, not cut short.
    for flag in ["--keepalive", "--lifetime"] {
        let r = run(&["tcp://127.0.0.1:1", flag, "1000h"], "").await;
        assert_eq!(r.code, 2, "{r:#?}");
        assert!(r.stderr.contains("at most 2147483647ms"), "{r:#?}");
    }
    // Nobody listening: a connection error, exit 2.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let r = run(&[&format!("tcp://127.0.0.1:{port}")], "").await;
    assert_eq!(r.code, 2, "{r:#?}");
    assert!(r.stderr.contains("connecting to"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_message_says_each_cause_once() {
    // The URI error's text includes its cause, which is also its source.
    let r = run(&["udp://127.0.0.1:1"], "").await;
    r.expect_code(2);
    assert_eq!(
        r.stderr,
        "error: connecting to udp://127.0.0.1:1: invalid transport URI: \
         unsupported scheme \"udp\": expected tcp, ws or wss\n"
    );
    let r = run(&["serve", "127.0.0.1:0", "--echo"], "").await;
    r.expect_code(2);
    assert_eq!(
        r.stderr,
        "error: listening on 127.0.0.1:0: invalid transport URI: \
         missing scheme: expected tcp://, ws:// or wss://\n"
    );
    // So does the WebSocket handshake's.
    let (uri, _events) = serve_recorder("ws://127.0.0.1:0/rs").await;
    let wrong = format!("{}/elsewhere", uri.trim_end_matches("/rs"));
    let r = run(&[&wrong, "-d", "x"], "").await;
    r.expect_code(2);
    assert_eq!(
        r.stderr,
        format!(
            "error: connecting to {wrong}: WebSocket handshake failed: \
             HTTP error: 404 Not Found\n"
        )
    );
}
