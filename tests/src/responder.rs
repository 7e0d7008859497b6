//! The test responder: the handler table of the rsocket-tck (rsocket-protocol.md
//! §12.2) plus a few commands, selected by the request's `(data, metadata)`.
//!
//! What the responder observes (fire-and-forget and metadata-push arrivals,
//! items of a channel's inbound half, handlers that started and whose drop
//! the test wants to see) is reported through a [`Probe`] as [`Signal`]s.
//!
//! | `(data, metadata)` | request/response | request/stream | request/channel |
//! |---|---|---|---|
//! | `(a,b)` | `("a","a")` | empty | single vs single: sends `a` |
//! | `(c,d)` | APPLICATION_ERROR | `(jimbo,jones)` | – |
//! | `(e,f)` | never answers (drop-guarded) | `a,b,c` | – |
//! | `(g,h)` | never answers (drop-guarded) | `a..z` | errors once its inbound completed |
//! | `(i,j)` | – | error | – |
//! | `(k,l)` | – | `a` then error | multi vs multi: sends `x,y,z` |
//! | `(o,p)` | – | – | errors at once |
//! | `(q,r)` | – | – | sends `a` and completes at once |
//! | `(y,z)` | – | – | endless output (drop-guarded) |
//! | `(ee,ff)` | – | – | endless output (drop-guarded) |
//! | `(ii,jj)` | – | – | takes 1 inbound item, drops the inbound, sends `x,y,z` |
//! | `("error", code)` | ERROR with that hex code | – | – |
//! | `("empty", _)` | completes without a payload | – | – |
//! | `("barrier", tag)` | `(tag, tag)` once all barrier parties arrived | – | – |
//! | `("endless", _)` | – | `0,1,2,…` counted in [`Probe::produced`] (drop-guarded) | – |
//! | `("hang", _)` | – | one item, then nothing (drop-guarded) | – |
//! | `("count", "tag:n")` | – | `tag-0 … tag-(n-1)` | – |
//! | data starting `echo` | the request | the request 3 times | `first` then `rest` echoed |
//!
//! Unless noted, a channel handler consumes its inbound half in a spawned
//! task and reports every item (the first payload included) as
//! [`Signal::Inbound`], then [`Signal::InboundEnd`].

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use rsocket_core::{
    async_trait, ErrorCode, Payload, PayloadStream, RSocket, RequestError, StreamError,
};
use tokio::sync::{mpsc, oneshot, watch, Barrier};

use crate::within;

/// Held by a handler (or a stream) whose drop the test wants to observe.
#[derive(Debug)]
pub struct DropGuard(#[allow(dead_code)] oneshot::Sender<()>);

/// Resolves once the matching [`DropGuard`] is dropped.
#[derive(Debug)]
pub struct DropWatch(oneshot::Receiver<()>);

/// A connected [`DropGuard`] and [`DropWatch`].
pub fn drop_pair() -> (DropGuard, DropWatch) {
    let (tx, rx) = oneshot::channel();
    (DropGuard(tx), DropWatch(rx))
}

impl DropWatch {
    /// Waits (guarded by [`crate::GUARD`]) until the guard is dropped.
    pub async fn dropped(self, what: &str) {
        let _ = within(what, self.0).await;
    }
}

/// Wraps `stream` so that `guard` is dropped exactly when the stream is.
pub fn guarded(stream: PayloadStream, guard: DropGuard) -> PayloadStream {
    stream
        .map(move |item| {
            let _keep = &guard;
            item
        })
        .boxed()
}

/// Something the responder observed.
#[derive(Debug)]
pub enum Signal {
    /// A fire-and-forget request arrived.
    FireAndForget(Payload),
    /// A metadata push arrived.
    MetadataPush(Bytes),
    /// A long-running handler (or its output stream) was created; `dropped`
    /// resolves when it is dropped. `what` is the handler's key.
    Started {
        /// The handler's key (request data).
        what: String,
        /// Resolves when the handler or its stream is dropped.
        dropped: DropWatch,
    },
    /// A channel handler took this item from its inbound half (the first
    /// payload included).
    Inbound(Payload),
    /// A channel handler's inbound half ended: `Ok` on completion.
    InboundEnd(Result<(), RequestError>),
}

/// Shared between a [`TckResponder`] and the test: the responder's report
/// channel and counters.
#[derive(Debug)]
pub struct Probe {
    tx: mpsc::Sender<Signal>,
    produced: watch::Sender<u64>,
    barrier: Barrier,
}

/// Capacity of the signal channel. Fire-and-forget handlers wait for room;
/// synchronous reports (from inside `request_stream`) are dropped if it is
/// full, which no scenario comes near.
const SIGNAL_CAPACITY: usize = 1024;

impl Probe {
    /// A probe whose `barrier` handler releases once `barrier_parties`
    /// requests wait on it, and the receiving end of its signals.
    pub fn new(barrier_parties: usize) -> (Arc<Self>, Signals) {
        let (tx, rx) = mpsc::channel(SIGNAL_CAPACITY);
        let probe = Arc::new(Self {
            tx,
            produced: watch::Sender::new(0),
            barrier: Barrier::new(barrier_parties.max(1)),
        });
        (
            probe,
            Signals {
                rx,
                backlog: VecDeque::new(),
            },
        )
    }

    /// A watch on the number of items the `endless` stream handlers have
    /// produced (polled out of the generator) so far.
    pub fn produced(&self) -> watch::Receiver<u64> {
        self.produced.subscribe()
    }

    fn report(&self, signal: Signal) {
        let _ = self.tx.try_send(signal);
    }

    fn started(&self, what: &str) -> DropGuard {
        let (guard, dropped) = drop_pair();
        self.report(Signal::Started {
            what: what.to_owned(),
            dropped,
        });
        guard
    }
}

/// The test's end of a [`Probe`]: signals in arrival order, with lookup by
/// kind that keeps the ones skipped over for later calls.
#[derive(Debug)]
pub struct Signals {
    rx: mpsc::Receiver<Signal>,
    backlog: VecDeque<Signal>,
}

impl Signals {
    /// The first signal (oldest first) matching `pred`, waiting for it.
    pub async fn take(&mut self, what: &str, pred: impl Fn(&Signal) -> bool) -> Signal {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).expect("index in range");
        }
        loop {
            let s = within(what, self.rx.recv())
                .await
                .expect("probe sender dropped");
            if pred(&s) {
                return s;
            }
            self.backlog.push_back(s);
        }
    }

    /// The next [`Signal::Started`] for handler `what`: its drop watch.
    pub async fn started(&mut self, what: &str) -> DropWatch {
        let label = format!("handler {what:?} to start");
        match self
            .take(
                &label,
                |s| matches!(s, Signal::Started { what: w, .. } if w == what),
            )
            .await
        {
            Signal::Started { dropped, .. } => dropped,
            _ => unreachable!(),
        }
    }

    /// The next fire-and-forget payload.
    pub async fn fire_and_forget(&mut self) -> Payload {
        match self
            .take("a fire-and-forget", |s| {
                matches!(s, Signal::FireAndForget(_))
            })
            .await
        {
            Signal::FireAndForget(p) => p,
            _ => unreachable!(),
        }
    }

    /// The next metadata push.
    pub async fn metadata_push(&mut self) -> Bytes {
        match self
            .take("a metadata push", |s| matches!(s, Signal::MetadataPush(_)))
            .await
        {
            Signal::MetadataPush(m) => m,
            _ => unreachable!(),
        }
    }

    /// Everything a channel handler's inbound half delivered, up to and
    /// including its end.
    pub async fn inbound(&mut self) -> (Vec<Payload>, Result<(), RequestError>) {
        let mut items = Vec::new();
        loop {
            match self.next_inbound().await {
                Ok(p) => items.push(p),
                Err(end) => return (items, end),
            }
        }
    }

    /// The next inbound item (`Ok`) or the inbound end (`Err(end)`).
    pub async fn next_inbound(&mut self) -> Result<Payload, Result<(), RequestError>> {
        match self
            .take("the channel handler's inbound", |s| {
                matches!(s, Signal::Inbound(_) | Signal::InboundEnd(_))
            })
            .await
        {
            Signal::Inbound(p) => Ok(p),
            Signal::InboundEnd(end) => Err(end),
            _ => unreachable!(),
        }
    }
}

/// The TCK responder. See the module docs for the handler table.
#[derive(Debug, Clone)]
pub struct TckResponder {
    probe: Arc<Probe>,
}

impl TckResponder {
    /// A responder reporting through `probe`.
    pub fn new(probe: Arc<Probe>) -> Self {
        Self { probe }
    }
}

/// `(data, metadata)` as text (empty when absent or not UTF-8).
fn key(p: &Payload) -> (&str, &str) {
    (p.data_utf8().unwrap_or(""), p.metadata_utf8().unwrap_or(""))
}

fn is_echo(p: &Payload) -> bool {
    p.data.starts_with(b"echo")
}

/// A payload with text data and metadata.
pub fn pm(data: &str, metadata: &str) -> Payload {
    Payload::new(Bytes::copy_from_slice(data.as_bytes()))
        .with_metadata(Bytes::copy_from_slice(metadata.as_bytes()))
}

/// A payload with text data only.
pub fn pd(data: &str) -> Payload {
    Payload::new(Bytes::copy_from_slice(data.as_bytes()))
}

/// A stream of data-only payloads.
pub fn items(data: &[&str]) -> PayloadStream {
    let v: Vec<_> = data.iter().map(|d| Ok(pd(d))).collect();
    futures::stream::iter(v).boxed()
}

fn failing(message: &str) -> PayloadStream {
    let e = RequestError::from(StreamError::application(message));
    futures::stream::iter([Err(e)]).boxed()
}

/// `0, 1, 2, …`, each item counted in `counter` as it is produced.
pub fn counting(counter: watch::Sender<u64>) -> PayloadStream {
    futures::stream::iter(0u64..)
        .map(move |i| {
            counter.send_modify(|n| *n += 1);
            Ok(pd(&i.to_string()))
        })
        .boxed()
}

fn code_from_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// The message the `error` handler sends for `code`.
pub fn error_message(code: u32) -> String {
    format!("error {code:#010x} ✓")
}

impl TckResponder {
    /// Spawns a task reporting `first` and every item of `rest`, then the
    /// end; `done` (if any) fires after the end was reported.
    fn consume(&self, first: Payload, mut rest: PayloadStream, done: Option<oneshot::Sender<()>>) {
        let tx = self.probe.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Signal::Inbound(first)).await;
            let end = loop {
                match rest.next().await {
                    Some(Ok(p)) => {
                        let _ = tx.send(Signal::Inbound(p)).await;
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                }
            };
            let _ = tx.send(Signal::InboundEnd(end)).await;
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }
}

#[async_trait]
impl RSocket for TckResponder {
    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        let _ = self.probe.tx.send(Signal::FireAndForget(request)).await;
        Ok(())
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        let _ = self.probe.tx.send(Signal::MetadataPush(metadata)).await;
        Ok(())
    }

    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        if is_echo(&request) {
            return Ok(Some(request));
        }
        match key(&request) {
            ("a", "b") => Ok(Some(pm("a", "a"))),
            ("c", "d") => Err(StreamError::application("c-d failed").into()),
            (w @ ("e" | "g"), "f" | "h") => {
                let _guard = self.probe.started(w);
                futures::future::pending().await
            }
            ("empty", _) => Ok(None),
            ("error", code) => match code_from_hex(code) {
                Some(c) => Err(StreamError::new(ErrorCode(c), error_message(c)).into()),
                None => Err(StreamError::invalid("bad code").into()),
            },
            ("barrier", tag) => {
                self.probe.barrier.wait().await;
                Ok(Some(pm(tag, tag)))
            }
            _ => Err(StreamError::invalid("no such request/response handler").into()),
        }
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        if is_echo(&request) {
            return futures::stream::iter(vec![Ok(request); 3]).boxed();
        }
        match key(&request) {
            ("a", "b") => futures::stream::empty().boxed(),
            ("c", "d") => futures::stream::iter([Ok(pm("jimbo", "jones"))]).boxed(),
            ("e", "f") => items(&["a", "b", "c"]),
            ("g", "h") => {
                let v: Vec<_> = (b'a'..=b'z')
                    .map(|c| Ok(pd(&char::from(c).to_string())))
                    .collect();
                futures::stream::iter(v).boxed()
            }
            ("i", "j") => failing("i-j failed"),
            ("k", "l") => items(&["a"]).chain(failing("k-l failed")).boxed(),
            ("endless", _) => {
                let guard = self.probe.started("endless");
                guarded(counting(self.probe.produced.clone()), guard)
            }
            ("hang", _) => {
                let guard = self.probe.started("hang");
                guarded(
                    items(&["first"]).chain(futures::stream::pending()).boxed(),
                    guard,
                )
            }
            ("count", spec) => {
                let Some((tag, n)) = spec.split_once(':') else {
                    return failing("bad count spec");
                };
                let n: usize = n.parse().unwrap_or(0);
                let v: Vec<_> = (0..n).map(|i| Ok(pd(&format!("{tag}-{i}")))).collect();
                futures::stream::iter(v).boxed()
            }
            _ => {
                let e = StreamError::invalid("no such request/stream handler");
                futures::stream::iter([Err(e.into())]).boxed()
            }
        }
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        if is_echo(&first) {
            return futures::stream::iter([Ok(first)]).chain(rest).boxed();
        }
        let k = key(&first);
        let k = (k.0.to_owned(), k.1.to_owned());
        match (k.0.as_str(), k.1.as_str()) {
            ("a", "b") | ("q", "r") => {
                self.consume(first, rest, None);
                items(&["a"])
            }
            ("k", "l") => {
                self.consume(first, rest, None);
                items(&["x", "y", "z"])
            }
            ("g", "h") => {
                let (tx, rx) = oneshot::channel();
                self.consume(first, rest, Some(tx));
                futures::stream::once(async move {
                    let _ = rx.await;
                    Err(StreamError::application("g-h failed").into())
                })
                .boxed()
            }
            ("o", "p") => {
                self.consume(first, rest, None);
                failing("o-p failed")
            }
            (w @ ("y" | "ee"), _) => {
                let guard = self.probe.started(w);
                self.consume(first, rest, None);
                guarded(counting(self.probe.produced.clone()), guard)
            }
            ("ii", "jj") => {
                let tx = self.probe.tx.clone();
                let mut rest = rest;
                futures::stream::once(async move {
                    let _ = tx.send(Signal::Inbound(first)).await;
                    if let Some(Ok(p)) = rest.next().await {
                        let _ = tx.send(Signal::Inbound(p)).await;
                    }
                    // Stop consuming: only the requester's half ends.
                    drop(rest);
                    items(&["x", "y", "z"])
                })
                .flatten()
                .boxed()
            }
            _ => failing("no such request/channel handler"),
        }
    }
}
