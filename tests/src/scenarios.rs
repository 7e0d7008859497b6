//! The end-to-end scenarios, each written once and generic over the
//! transport. [`crate::suite!`] turns them into tests.
//!
//! Scenarios taking a [`Direction`] run once with the client calling the
//! server and once with the server calling the client back through the
//! requester its acceptor was given. The rest exercise server lifecycle
//! (dead peer, graceful shutdown, many clients) and run client → server.
//!
//! Conventions: every wait is guarded by [`within`]; events are ordered by
//! channels ([`Signals`], [`DropWatch`], `watch` counters) and by round
//! trips on the connection under test, never by sleeping.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;
use futures::{Stream, StreamExt};
use rsocket_core::{Config, ErrorCode, Payload, PayloadStream, RSocket, RequestError, Requester};
use tokio::sync::{mpsc, watch};

use crate::responder::{counting, drop_pair, error_message, guarded, items, pd, pm};
use crate::{
    pair, within, Direction, DropWatch, Pair, Probe, Signals, TckResponder, TransportKind,
};

// ----- helpers ---------------------------------------------------------------

/// A pair whose responder is a fresh [`TckResponder`].
async fn tck<K: TransportKind>(
    dir: Direction,
    config: Config,
    barrier: usize,
) -> (Pair<K>, Arc<Probe>, Signals) {
    let (probe, signals) = Probe::new(barrier);
    let responder: Arc<dyn RSocket> = Arc::new(TckResponder::new(probe.clone()));
    (pair::<K>(dir, responder, config).await, probe, signals)
}

/// One request/response round trip that must succeed: proves the
/// connection works, and orders everything sent before it on the wire.
pub(crate) async fn ping(r: &Requester) {
    let reply = within("ping", r.request_response(pm("a", "b")))
        .await
        .expect("ping failed");
    assert_eq!(reply, Some(pm("a", "a")));
}

/// A compact, comparable rendering of stream items: data as text, a
/// stream error as `#<code>:<message>`, anything else as `!<error>`.
pub(crate) fn render(item: &Result<Payload, RequestError>) -> String {
    match item {
        Ok(p) => String::from_utf8_lossy(&p.data).into_owned(),
        Err(RequestError::Stream(e)) => format!("#{:#x}:{}", e.code.0, e.message),
        Err(e) => format!("!{e}"),
    }
}

/// Collects a whole stream (guarded) and renders it.
pub(crate) async fn collect(
    what: &str,
    s: impl Stream<Item = Result<Payload, RequestError>>,
) -> Vec<String> {
    let v: Vec<_> = within(what, s.collect::<Vec<_>>()).await;
    v.iter().map(render).collect()
}

/// The next item of a stream, which must be a payload.
pub(crate) async fn next_item<S>(what: &str, s: &mut S) -> Payload
where
    S: Stream<Item = Result<Payload, RequestError>> + Unpin,
{
    match within(what, s.next()).await {
        Some(Ok(p)) => p,
        other => panic!("expected an item for {what}, got {other:?}"),
    }
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A requester-side outbound stream the test feeds item by item; it ends
/// when the sender is dropped, and the watch fires when the engine drops it.
fn controlled() -> (
    mpsc::UnboundedSender<Result<Payload, RequestError>>,
    PayloadStream,
    DropWatch,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (guard, watch) = drop_pair();
    let s = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    (tx, guarded(s, guard), watch)
}

/// The requester handle of the side whose responder is under test.
fn responder_side<K: TransportKind>(p: &Pair<K>, dir: Direction) -> &Requester {
    match dir {
        Direction::ClientToServer => &p.server_side,
        Direction::ServerToClient => &p.client,
    }
}

/// Waits until the engine of `side` has parked at least `n` producers for
/// lack of credit. A producer runs on its own task, so a round trip proves
/// nothing about what it will still make; a parked one makes nothing until
/// the peer grants more, so counting what it produced is now exact.
async fn parked(side: &Requester, n: usize) {
    within("producers to wait for credit", async {
        while side.stats().producers_awaiting_credit < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// `len` bytes of a pattern that differs per `seed` and never repeats with
/// a short period, so a misplaced fragment shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i.wrapping_mul(31) + i / 251 + usize::from(seed)) % 251) as u8)
        .collect()
}

/// An `echo` payload with `len` bytes of data and of metadata.
fn big(seed: u8, len: usize) -> Payload {
    let mut data = b"echo".to_vec();
    data.extend(pattern(seed, len));
    Payload::new(data).with_metadata(pattern(seed.wrapping_add(100), len))
}

// ----- request/response ----------------------------------------------------

/// TCK requestResponsePass: `(a,b)` answers exactly `("a","a")`.
pub async fn rr_pass<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let reply = within("response", p.requester.request_response(pm("a", "b"))).await;
    assert_eq!(reply.expect("response"), Some(pm("a", "a")));
}

/// TCK requestResponseError, plus code and message round trips for the
/// stream-level codes, an application-defined code and codes ≥ 0x80000000.
pub async fn rr_error<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    match within("error", p.requester.request_response(pm("c", "d"))).await {
        Err(RequestError::Stream(e)) => {
            assert_eq!(e.code, ErrorCode::APPLICATION_ERROR);
            assert_eq!(e.message, "c-d failed");
        }
        other => panic!("expected APPLICATION_ERROR, got {other:?}"),
    }
    for code in [
        0x201u32,
        0x202,
        0x203,
        0x204,
        0x301,
        0x7FFF_FFFF,
        0x8000_0000,
        0xDEAD_BEEF,
        0xFFFF_FFFE,
    ] {
        let req = pm("error", &format!("{code:#x}"));
        match within("error", p.requester.request_response(req)).await {
            Err(RequestError::Stream(e)) => {
                assert_eq!(e.code, ErrorCode(code), "code {code:#x}");
                assert_eq!(e.message, error_message(code), "message for {code:#x}");
            }
            other => panic!("expected error {code:#x}, got {other:?}"),
        }
    }
}

/// A PAYLOAD with only C set answers `Ok(None)`.
pub async fn rr_empty<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let reply = within(
        "empty response",
        p.requester.request_response(pm("empty", "")),
    )
    .await;
    assert_eq!(reply.expect("empty completion"), None);
    ping(&p.requester).await;
}

/// TCK requestResponseCancel: dropping the future sends CANCEL, and the
/// responder's handler future is dropped; the connection stays usable.
pub async fn rr_cancel<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let mut fut = Box::pin(p.requester.request_response(pm("e", "f")));
    let dropped = tokio::select! {
        r = &mut fut => panic!("the never-answering handler answered: {r:?}"),
        w = signals.started("e") => w,
    };
    drop(fut);
    assert_eq!(p.requester.open_streams(), 0, "cancelled stream forgotten");
    dropped
        .dropped("the responder's handler to be dropped after CANCEL")
        .await;
    ping(&p.requester).await;
}

/// TCK requestResponseInterleave/MultipleSuccession, scaled up: 64
/// requests in flight at once (the responder holds every answer until all
/// 64 handlers are running), each gets its own answer.
pub async fn rr_concurrent<K: TransportKind>(dir: Direction) {
    const N: usize = 64;
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), N).await;
    let requests = (0..N).map(|i| {
        let r = p.requester.clone();
        async move { r.request_response(pm("barrier", &format!("t{i}"))).await }
    });
    let replies = within("64 concurrent responses", join_all(requests)).await;
    for (i, reply) in replies.into_iter().enumerate() {
        let tag = format!("t{i}");
        assert_eq!(reply.expect("response"), Some(pm(&tag, &tag)));
    }
}

// ----- fire-and-forget, metadata push ----------------------------------------

/// Fire-and-forget requests reach the responder intact.
pub async fn fire_and_forget<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let sent: Vec<_> = (0..3).map(|i| pm(&format!("f{i}"), "fnf")).collect();
    for req in &sent {
        within(
            "fire-and-forget to be queued",
            p.requester.fire_and_forget(req.clone()),
        )
        .await
        .expect("fire-and-forget");
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(signals.fire_and_forget().await);
    }
    // Handlers run concurrently, so arrival order is not defined.
    got.sort_by(|a, b| a.data.cmp(&b.data));
    assert_eq!(got, sent);
}

/// Metadata pushes reach the responder intact.
pub async fn metadata_push<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let sent = [Bytes::from_static(b"md-1"), Bytes::from(pattern(7, 300))];
    for m in &sent {
        p.requester
            .metadata_push(m.clone())
            .await
            .expect("metadata push");
    }
    let mut got = vec![signals.metadata_push().await, signals.metadata_push().await];
    got.sort();
    let mut want = sent.to_vec();
    want.sort();
    assert_eq!(got, want);
}

// ----- request/stream --------------------------------------------------------

/// TCK requestStreamEmpty.
pub async fn stream_empty<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let got = collect("empty stream", p.requester.request_stream(pm("a", "b"))).await;
    assert!(got.is_empty(), "{got:?}");
}

/// TCK requestStreamSingle: one `(jimbo,jones)`, metadata intact.
pub async fn stream_single<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let got: Vec<_> = within(
        "single-item stream",
        p.requester.request_stream(pm("c", "d")).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].as_ref().expect("item"), &pm("jimbo", "jones"));
}

/// TCK requestStreamMultivalue: request(3) → a, b, c, completed.
pub async fn stream_multi<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let s = p.requester.with_prefetch(3).request_stream(pm("e", "f"));
    assert_eq!(collect("a,b,c", s).await, strings(&["a", "b", "c"]));
}

/// 26 items a..z with a window of 4 (many REQUEST_N round trips).
pub async fn stream_alphabet<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let s = p.requester.with_prefetch(4).request_stream(pm("g", "h"));
    let want: Vec<String> = (b'a'..=b'z').map(|c| char::from(c).to_string()).collect();
    assert_eq!(collect("a..z", s).await, want);
}

/// TCK requestStreamError: the error and nothing else.
pub async fn stream_error<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let got = collect("error stream", p.requester.request_stream(pm("i", "j"))).await;
    assert_eq!(got, strings(&["#0x201:i-j failed"]));
}

/// TCK requestStreamValueThenError.
pub async fn stream_value_then_error<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let got = collect("value then error", p.requester.request_stream(pm("k", "l"))).await;
    assert_eq!(got, strings(&["a", "#0x201:k-l failed"]));
}

/// TCK requestStreamFlowControl, exact: with a window of 4, taking exactly
/// 4 items grants REQUEST_N(2) twice (half-window rule), so an endless
/// producer makes exactly 4 + 2 + 2 = 8 items and no more.
pub async fn stream_exact_credit<K: TransportKind>(dir: Direction) {
    let (p, probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let mut produced = probe.produced();
    let mut s = p.requester.with_prefetch(4).request_stream(pd("endless"));
    for i in 0..4 {
        let item = next_item("stream item", &mut s).await;
        assert_eq!(item.data, i.to_string());
    }
    let handler = signals.started("endless").await;
    within(
        "the producer to use its 8 credits",
        produced.wait_for(|n| *n >= 8),
    )
    .await
    .expect("probe alive");
    parked(responder_side(&p, dir), 1).await;
    assert_eq!(
        *produced.borrow(),
        8,
        "window 4 + REQUEST_N(2) after 2 and after 4 consumed"
    );
    drop(s);
    handler
        .dropped("the producer to be dropped after CANCEL")
        .await;
}

/// TCK requestStreamCancel: cancelling mid-stream drops the responder's
/// stream, and the connection keeps working for new requests.
pub async fn stream_cancel_then_reuse<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let mut s = p.requester.with_prefetch(8).request_stream(pd("endless"));
    for i in 0..3 {
        assert_eq!(next_item("stream item", &mut s).await.data, i.to_string());
    }
    let handler = signals.started("endless").await;
    drop(s);
    assert_eq!(p.requester.open_streams(), 0, "cancelled stream forgotten");
    handler
        .dropped("the producer to be dropped after CANCEL")
        .await;
    ping(&p.requester).await;
    let again = collect("a new stream", p.requester.request_stream(pm("e", "f"))).await;
    assert_eq!(again, strings(&["a", "b", "c"]));
}

/// TCK requestStreamInterleave/MultipleSuccession, scaled up: 20 streams
/// with small windows run at once; each gets exactly its own items.
pub async fn stream_concurrent<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let r = p.requester.with_prefetch(2);
    let streams = (0..20).map(|i| {
        let r = r.clone();
        async move {
            let n = 10 + i;
            let s = r.request_stream(pm("count", &format!("s{i}:{n}")));
            let got: Vec<_> = s.collect::<Vec<_>>().await;
            (i, n, got)
        }
    });
    for (i, n, got) in within("20 concurrent streams", join_all(streams)).await {
        let want: Vec<String> = (0..n).map(|j| format!("s{i}-{j}")).collect();
        let got: Vec<String> = got.iter().map(render).collect();
        assert_eq!(got, want, "stream {i}");
    }
}

// ----- request/channel -------------------------------------------------------

/// TCK requestChannelSingleVsSingle: each side sends one item and
/// completes; the responder sees the initial payload plus one.
pub async fn channel_single_vs_single<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let s = p
        .requester
        .request_channel_fallible(pm("a", "b"), items(&["a"]));
    assert_eq!(collect("responder's half", s).await, strings(&["a"]));
    let (inbound, end) = signals.inbound().await;
    assert_eq!(inbound, vec![pm("a", "b"), pd("a")]);
    assert!(end.is_ok(), "{end:?}");
}

/// TCK requestChannelMultiVsMulti.
pub async fn channel_multi_vs_multi<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let s = p
        .requester
        .request_channel_fallible(pm("k", "l"), items(&["a", "b", "c"]));
    assert_eq!(
        collect("responder's half", s).await,
        strings(&["x", "y", "z"])
    );
    let (inbound, end) = signals.inbound().await;
    assert_eq!(inbound, vec![pm("k", "l"), pd("a"), pd("b"), pd("c")]);
    assert!(end.is_ok(), "{end:?}");
}

/// TCK requestChannelSingleVsError: the requester completes its half, then
/// the responder errors; the requester sees only the error.
pub async fn channel_requester_completes_responder_errors<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let s = p
        .requester
        .request_channel_fallible(pm("g", "h"), items(&["a"]));
    assert_eq!(
        collect("responder's half", s).await,
        strings(&["#0x201:g-h failed"])
    );
    let (inbound, end) = signals.inbound().await;
    assert_eq!(inbound, vec![pm("g", "h"), pd("a")]);
    assert!(end.is_ok(), "{end:?}");
}

/// TCK requestChannelNoResponseVsSingle turned around: the responder
/// completes at once; the requester's half stays open and keeps
/// delivering (even after the requester dropped the finished inbound
/// stream) until the requester completes it.
pub async fn channel_responder_completes_requester_continues<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let (tx, out, out_dropped) = controlled();
    tx.send(Ok(pd("1"))).expect("queue item");
    let s = p.requester.request_channel_fallible(pm("q", "r"), out);
    assert_eq!(collect("responder's half", s).await, strings(&["a"]));
    assert_eq!(signals.next_inbound().await.expect("first"), pm("q", "r"));
    assert_eq!(signals.next_inbound().await.expect("item 1"), pd("1"));
    tx.send(Ok(pd("2"))).expect("queue item");
    assert_eq!(signals.next_inbound().await.expect("item 2"), pd("2"));
    drop(tx);
    let end = signals.next_inbound().await.expect_err("completion");
    assert!(end.is_ok(), "{end:?}");
    out_dropped
        .dropped("the requester's outbound to be released after completing")
        .await;
}

/// TCK requestChannelMultiVsError: the responder's ERROR ends both halves:
/// the requester sees the error and its outbound stream is dropped.
pub async fn channel_responder_error_terminates_both<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let (tx, out, out_dropped) = controlled();
    let s = p.requester.request_channel_fallible(pm("o", "p"), out);
    assert_eq!(
        collect("responder's half", s).await,
        strings(&["#0x201:o-p failed"])
    );
    out_dropped
        .dropped("the requester's outbound to be dropped after the responder's ERROR")
        .await;
    let (inbound, end) = signals.inbound().await;
    assert_eq!(inbound, vec![pm("o", "p")]);
    assert!(
        matches!(end, Err(RequestError::Cancelled)),
        "the responder's inbound ends as cancelled by its own ERROR: {end:?}"
    );
    drop(tx);
}

/// TCK requestChannelErrorVsMulti: the requester's ERROR ends both halves:
/// the responder's inbound fails with it, the responder's (endless) output
/// is dropped, and the requester's inbound ends with an error.
pub async fn channel_requester_error_terminates_both<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let out = items(&["a"])
        .chain(futures::stream::iter([Err(RequestError::from(
            rsocket_core::StreamError::application("rq failed"),
        ))]))
        .boxed();
    let s = p.requester.request_channel_fallible(pm("y", "z"), out);
    let got = collect("responder's half", s).await;
    let (last, before) = got.split_last().expect("at least the end");
    assert_eq!(
        last, "!stream cancelled",
        "the requester's inbound ends as cancelled by its own ERROR: {got:?}"
    );
    for (i, item) in before.iter().enumerate() {
        assert_eq!(item, &i.to_string(), "{got:?}");
    }
    signals
        .started("y")
        .await
        .dropped("the responder's output to be dropped after the requester's ERROR")
        .await;
    let (inbound, end) = signals.inbound().await;
    assert_eq!(inbound, vec![pm("y", "z"), pd("a")]);
    match end {
        Err(RequestError::Stream(e)) => {
            assert_eq!(e.code, ErrorCode::APPLICATION_ERROR);
            assert_eq!(e.message, "rq failed");
        }
        other => panic!("the responder's inbound must fail with the requester's error: {other:?}"),
    }
}

/// TCK requestChannelCancel: the requester dropping the channel stops the
/// responder's output, fails the responder's inbound with a cancellation
/// and releases the requester's own outbound stream.
pub async fn channel_requester_cancel<K: TransportKind>(dir: Direction) {
    let (p, _probe, mut signals) = tck::<K>(dir, Config::default(), 1).await;
    let (tx, out, out_dropped) = controlled();
    let mut s = p.requester.request_channel_fallible(pm("ee", "ff"), out);
    assert_eq!(next_item("first item", &mut s).await.data, "0");
    let handler = signals.started("ee").await;
    drop(s);
    handler
        .dropped("the responder's output to be dropped after CANCEL")
        .await;
    out_dropped
        .dropped("the requester's outbound to be dropped on cancel")
        .await;
    let (inbound, end) = signals.inbound().await;
    assert_eq!(inbound, vec![pm("ee", "ff")]);
    assert!(matches!(end, Err(RequestError::Cancelled)), "{end:?}");
    drop(tx);
    ping(&p.requester).await;
}

/// TCK requestChannelCancel3 / AfterCancelServer: a responder that drops
/// its inbound after one item closes only the requester → responder half:
/// the requester's outbound is released (no longer polled), while the
/// responder's output still arrives and completes.
pub async fn channel_responder_drops_inbound<K: TransportKind>(dir: Direction) {
    const RESPONDER_WINDOW: u32 = 4;
    let config = Config {
        default_prefetch: RESPONDER_WINDOW,
        ..Config::default()
    };
    let (p, _probe, mut signals) = tck::<K>(dir, config, 1).await;
    let (counter, mut produced) = {
        let c = watch::Sender::new(0u64);
        let rx = c.subscribe();
        (c, rx)
    };
    let (guard, out_dropped) = drop_pair();
    let out = guarded(counting(counter), guard);
    let s = p.requester.request_channel_fallible(pm("ii", "jj"), out);
    assert_eq!(
        collect("responder's half", s).await,
        strings(&["x", "y", "z"])
    );
    out_dropped
        .dropped("the requester's outbound to be released after the responder's CANCEL")
        .await;
    // The responder took one item; the requester's outbound was released,
    // having produced no more than the responder's window plus the
    // one-item look-ahead.
    let n = *produced.borrow_and_update();
    assert!(
        (1..=u64::from(RESPONDER_WINDOW) + 1).contains(&n),
        "requester produced {n} items"
    );
    assert_eq!(signals.next_inbound().await.expect("first"), pm("ii", "jj"));
    assert_eq!(signals.next_inbound().await.expect("item"), pd("0"));
    ping(&p.requester).await;
}

/// Channel echo with credit honoured end to end: the requester's endless
/// outbound is pulled only as fast as the requester consumes the echo.
pub async fn channel_echo_credit<K: TransportKind>(dir: Direction) {
    const WINDOW: u32 = 2;
    const RESPONDER_WINDOW: u32 = 4;
    // Fixed windows: the bound below counts them.
    let config = Config {
        default_prefetch: RESPONDER_WINDOW,
        max_prefetch: RESPONDER_WINDOW,
        ..Config::default()
    };
    let (p, _probe, _signals) = tck::<K>(dir, config, 1).await;
    let counter = watch::Sender::new(0u64);
    let produced = counter.subscribe();
    let mut s = p
        .requester
        .with_prefetch(WINDOW)
        .request_channel_fallible(pd("echo"), counting(counter));
    assert_eq!(next_item("echoed first", &mut s).await.data, "echo");
    let taken = 10u64;
    for i in 0..taken - 1 {
        assert_eq!(next_item("echoed item", &mut s).await.data, i.to_string());
    }
    // Both producers used their credit: the requester's outbound (window of
    // the responder's inbound) and the responder's echo (the requester's
    // window).
    parked(&p.requester, 1).await;
    parked(responder_side(&p, dir), 1).await;
    // Taken, plus what the requester's window lets the echo send ahead, plus
    // the responder's inbound window, plus the one-item look-ahead of a
    // requester's channel outbound.
    let bound = taken + u64::from(WINDOW) + u64::from(RESPONDER_WINDOW) + 1;
    let n = *produced.borrow();
    assert!(
        n <= bound,
        "requester produced {n} items, credit allows at most {bound}"
    );
    // And credit keeps flowing.
    for i in taken - 1..taken + 200 {
        assert_eq!(next_item("echoed item", &mut s).await.data, i.to_string());
    }
}

// ----- payload sizes ---------------------------------------------------------

/// With an MTU of 64 on both sides, 10 KiB metadata + data payloads cross
/// intact in request/response, request/stream and request/channel.
pub async fn fragmentation<K: TransportKind>(dir: Direction) {
    const LEN: usize = 10 << 10;
    let config = Config {
        mtu: Some(64),
        ..Config::default()
    };
    let (p, _probe, _signals) = tck::<K>(dir, config, 1).await;
    let sides = [&p.requester, responder_side(&p, dir)];
    let before = sides.map(|s| s.stats());
    let req = big(1, LEN);
    let reply = within(
        "fragmented response",
        p.requester.request_response(req.clone()),
    )
    .await;
    assert!(reply.expect("response") == Some(req), "RR payload mangled");

    let req = big(2, LEN);
    let got: Vec<_> = within(
        "fragmented stream",
        p.requester.request_stream(req.clone()).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.len(), 3);
    for item in got {
        assert!(item.expect("item") == req, "stream payload mangled");
    }

    let sent = [big(3, LEN), big(4, LEN), big(5, LEN)];
    let rest = futures::stream::iter(sent[1..].iter().cloned().map(Ok).collect::<Vec<_>>()).boxed();
    let got: Vec<_> = within(
        "fragmented channel",
        p.requester
            .request_channel_fallible(sent[0].clone(), rest)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.len(), 3);
    for (item, want) in got.into_iter().zip(&sent) {
        assert!(&item.expect("item") == want, "channel payload mangled");
    }
    // Both ends really fragmented: no frame went out longer than the MTU
    // (on average, counting every frame each side sent).
    for (side, before) in sides.iter().zip(before) {
        let after = side.stats();
        let frames = after.frames_out - before.frames_out;
        let bytes = after.bytes_out - before.bytes_out;
        assert!(
            bytes <= 64 * frames && frames > 2 * (LEN as u64) / 64,
            "{frames} frames, {bytes} bytes: not fragmented at 64"
        );
    }
}

/// A 1 MiB request/response round trip without an MTU.
pub async fn large_payload<K: TransportKind>(dir: Direction) {
    let (p, _probe, _signals) = tck::<K>(dir, Config::default(), 1).await;
    let req = big(9, 1 << 20);
    let reply = within("1 MiB echo", p.requester.request_response(req.clone())).await;
    let reply = reply.expect("response").expect("payload");
    assert_eq!(reply.data.len(), req.data.len());
    assert!(reply == req, "1 MiB payload mangled");
}

pub use crate::lifecycle::{
    dead_peer, graceful_shutdown_drains, graceful_shutdown_grace_expires, many_connections,
};
