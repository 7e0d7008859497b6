//! A `Greeter` implementation that reports what happens to it through a
//! [`Probe`], for the end-to-end tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures::{Stream, StreamExt};
use rsocket_rpc::{BoxStream, Code, Request, Response, Status, Streaming};
use tokio::sync::mpsc;

use crate::greeter::greeter_server::Greeter;
use crate::greeter::{HelloReply, HelloRequest};
use crate::shared::v1::Item;

/// Request metadata entry the service echoes back in its response metadata.
pub const REQUEST_ID: &str = "text/x.request-id";
/// Characters (two bytes each) of the `long-error` status message: more
/// than the 16 MiB an ERROR frame can hold.
pub const LONG_ERROR_CHARS: usize = 9 << 20;
/// Response metadata entry holding the bearer token the handler saw.
pub const SEEN_TOKEN: &str = "text/x.seen-token";

/// Something the service observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A handler started; the name it was called with.
    Started(String),
    /// A handler's future or stream was dropped before it finished.
    Dropped(String),
    /// `Notify` ran.
    Notified(String),
    /// `Log` ran.
    Logged(String),
    /// A client's outbound message stream was dropped.
    InputDropped,
    /// `LotsOfGreetings` read an `Err` item from its input: its code, and
    /// whether the input had ended after it (the next read gave `None`).
    InputFailed {
        /// The item's code.
        code: Code,
        /// The next read ended the input.
        ended: bool,
    },
}

/// What the tests observe: events in order, and how often the streaming
/// producer was polled.
#[derive(Debug, Clone)]
pub struct Probe {
    events: mpsc::UnboundedSender<Event>,
    /// Times the `LotsOfReplies` producer was polled for an item.
    pub polls: Arc<AtomicUsize>,
}

impl Probe {
    /// A probe and the receiving end of its events.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Self {
                events,
                polls: Arc::new(AtomicUsize::new(0)),
            },
            rx,
        )
    }

    /// Reports an event (ignored once the test stopped listening).
    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// A guard that reports [`Event::Dropped`] unless disarmed.
    pub fn guard(&self, name: &str) -> DropGuard {
        DropGuard {
            probe: self.clone(),
            name: name.to_owned(),
            armed: true,
        }
    }
}

/// Reports [`Event::Dropped`] when dropped while armed.
#[derive(Debug)]
pub struct DropGuard {
    probe: Probe,
    name: String,
    armed: bool,
}

impl DropGuard {
    /// The work finished: do not report a drop.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if self.armed {
            self.probe.send(Event::Dropped(self.name.clone()));
        }
    }
}

/// The test greeter. Behaviour by request name:
///
/// * `not-found`: fails with `NOT_FOUND: no such user`;
/// * `long-error`: fails with `INVALID_ARGUMENT` and a message of
///   [`LONG_ERROR_CHARS`] `é`s, longer than an ERROR frame can carry
///   (`long-error:N`: of `N` of them);
/// * `panic`: panics;
/// * `hang`: never answers (reports [`Event::Started`], then
///   [`Event::Dropped`] when its future is dropped);
/// * `endless` (streaming): an endless stream that counts its polls;
/// * `panic-after-2` (streaming): yields `#0` and `#1`, then panics;
/// * an `Err` item in the `LotsOfGreetings` input: reported as
///   [`Event::InputFailed`], then returned;
/// * anything else: `Hello <name>`.
///
/// Every reply's metadata echoes the request's [`REQUEST_ID`] entry and the
/// bearer token under [`SEEN_TOKEN`].
#[derive(Debug, Clone)]
pub struct TestGreeter {
    probe: Probe,
}

impl TestGreeter {
    /// A greeter reporting to `probe`.
    pub fn new(probe: Probe) -> Self {
        Self { probe }
    }
}

fn reply(message: String) -> HelloReply {
    HelloReply {
        message,
        at: Some(prost_types_now()),
        item: Some(Item { id: "i".into() }),
    }
}

/// A fixed timestamp (tests compare messages).
fn prost_types_now() -> rsocket_rpc::codegen::prost_types::Timestamp {
    rsocket_rpc::codegen::prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    }
}

/// Response metadata built from the request's.
fn echo_metadata<T>(request: &Request<T>) -> rsocket_rpc::Metadata {
    let mut md = rsocket_rpc::Metadata::new();
    if let Some(id) = request.metadata().get(REQUEST_ID) {
        let _ = md.insert(REQUEST_ID, id.clone());
    }
    if let Some(token) = request.metadata().bearer_token() {
        let _ = md.insert(SEEN_TOKEN, token);
    }
    md
}

impl Greeter for TestGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let metadata = echo_metadata(&request);
        let name = request.into_inner().name;
        match name.as_str() {
            "not-found" => Err(Status::not_found("no such user")),
            long if long.starts_with("long-error") => {
                let chars = long
                    .strip_prefix("long-error:")
                    .and_then(|n| n.parse().ok());
                Err(Status::invalid_argument(
                    "é".repeat(chars.unwrap_or(LONG_ERROR_CHARS)),
                ))
            }
            "panic" => panic!("the test handler panics on purpose"),
            "hang" => {
                let _guard = self.probe.guard("hang");
                self.probe.send(Event::Started(name));
                futures::future::pending().await
            }
            _ => Ok(Response::from_parts(
                metadata,
                reply(format!("Hello {name}")),
            )),
        }
    }

    type LotsOfRepliesStream = BoxStream<HelloReply>;

    async fn lots_of_replies(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::LotsOfRepliesStream>, Status> {
        let metadata = echo_metadata(&request);
        let HelloRequest { name, count } = request.into_inner();
        if name == "not-found" {
            return Err(Status::not_found("no such user"));
        }
        let stream: Self::LotsOfRepliesStream = if name == "endless" {
            let polls = self.probe.polls.clone();
            let guard = self.probe.guard("endless");
            Box::pin(futures::stream::poll_fn(move |_| {
                let _keep = &guard;
                let n = polls.fetch_add(1, Ordering::SeqCst);
                Poll::Ready(Some(Ok(reply(format!("#{n}")))))
            }))
        } else if name == "fail-after-2" {
            Box::pin(futures::stream::iter(vec![
                Ok(reply("#0".into())),
                Ok(reply("#1".into())),
                Err(Status::aborted("stopped after 2")),
            ]))
        } else if name == "panic-after-2" {
            let items = futures::stream::iter(vec![Ok(reply("#0".into())), Ok(reply("#1".into()))]);
            let panics =
                futures::stream::poll_fn(|_| -> Poll<Option<Result<HelloReply, Status>>> {
                    panic!("the test stream panics on purpose")
                });
            Box::pin(items.chain(panics))
        } else {
            Box::pin(futures::stream::iter(
                (0..count).map(move |i| Ok(reply(format!("Hello {name} #{i}")))),
            ))
        };
        Ok(Response::from_parts(metadata, stream))
    }

    async fn lots_of_greetings(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        let metadata = echo_metadata(&request);
        let mut input = request.into_inner();
        let mut names = Vec::new();
        loop {
            match input.message().await {
                Ok(Some(m)) => names.push(m.name),
                Ok(None) => break,
                Err(status) => {
                    let ended = matches!(input.message().await, Ok(None));
                    self.probe.send(Event::InputFailed {
                        code: status.code(),
                        ended,
                    });
                    return Err(status);
                }
            }
        }
        let text = if names.is_empty() {
            "Hello nobody".to_owned()
        } else {
            format!("Hello {} ({})", names.join(", "), names.len())
        };
        Ok(Response::from_parts(metadata, reply(text)))
    }

    type ChatStream = BoxStream<HelloReply>;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let metadata = echo_metadata(&request);
        let input = request.into_inner();
        let probe = self.probe.clone();
        let guard = probe.guard("chat");
        let out = chat_stream(input, probe, guard);
        Ok(Response::from_parts(metadata, Box::pin(out)))
    }

    async fn notify(&self, request: Request<HelloRequest>) -> Result<(), Status> {
        self.probe.send(Event::Notified(request.into_inner().name));
        Ok(())
    }

    async fn log(&self, request: Request<HelloRequest>) -> Result<(), Status> {
        self.probe.send(Event::Logged(request.into_inner().name));
        Ok(())
    }
}

/// Answers each name; on `stop` it stops reading (dropping its input, so
/// the client's outbound half is cancelled) and answers `bye`.
fn chat_stream(
    input: Streaming<HelloRequest>,
    probe: Probe,
    guard: DropGuard,
) -> impl Stream<Item = Result<HelloReply, Status>> + Send + 'static {
    futures::stream::unfold(
        (Some(input), Some(guard), probe),
        |(input, guard, probe)| async move {
            let mut input = input?;
            match input.next().await {
                Some(Ok(m)) if m.name == "stop" => {
                    drop(input);
                    if let Some(g) = guard {
                        g.disarm();
                    }
                    Some((Ok(reply("bye".into())), (None, None, probe)))
                }
                Some(Ok(m)) => Some((
                    Ok(reply(format!("Hello {}", m.name))),
                    (Some(input), guard, probe),
                )),
                Some(Err(e)) => Some((Err(e), (None, guard, probe))),
                None => {
                    if let Some(g) = guard {
                        g.disarm();
                    }
                    None
                }
            }
        },
    )
}
