//! Shared test support: running the `rsocket` binary, and an in-process
//! server that records what it receives.
#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, Stream, StreamExt};
use rsocket::metadata::{CompositeMetadata, RoutingMetadata, WellKnownMimeType};
use rsocket::prelude::*;
use rsocket::{
    BoxedTransport, Frame, Listener, Payload, PayloadStream, PeerInfo, RequestError, Server,
    SetupInfo, StreamError, Transport, TransportError,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// How long one run of the binary may take before the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Panics with the whole output unless the exit status is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit status; {self:#?}");
        self
    }
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rsocket")
}

/// Runs the binary with `args`, feeding `stdin`.
pub async fn run(args: &[&str], stdin: &str) -> Run {
    run_bytes(args, stdin.as_bytes()).await
}

/// Runs the binary with `args`, feeding `stdin` (any bytes).
pub async fn run_bytes(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = tokio::process::Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rsocket");
    let mut input = child.stdin.take().expect("stdin");
    let bytes = stdin.to_owned();
    tokio::spawn(async move {
        let _ = input.write_all(&bytes).await;
        // Dropping closes standard input.
    });
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("rsocket {args:?} did not finish within {RUN_LIMIT:?}"))
        .expect("wait for rsocket");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits for the next recorded event, failing the test after 10 s.
pub async fn next_event(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for a server event")
        .expect("server gone")
}

/// Waits until an event equal to `want` arrives; returns those before it.
pub async fn wait_for(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let e = next_event(rx).await;
        if e == want {
            return seen;
        }
        seen.push(e);
    }
}

/// The routing tag of composite metadata, if any.
pub fn route_of(md: Option<&Bytes>) -> Option<String> {
    let md = CompositeMetadata::new(md?.clone());
    let routing = md.find(WellKnownMimeType::MessageRSocketRouting).ok()??;
    let tag = RoutingMetadata::new(routing).iter().next()?.ok()?;
    Some(tag.as_str().to_owned())
}

/// A responder that reports every request, as a line, to the test:
/// `rr <route> <data>`, `fnf <data>`, `stream <data>`, `channel <data>`,
/// `push <metadata>`, and `stream dropped` when a stream's producer is
/// dropped. Request/response echoes (route `fail` answers
/// `ERROR[APPLICATION_ERROR]`); a stream counts up without end; a channel
/// echoes.
pub struct Recorder {
    pub events: mpsc::UnboundedSender<String>,
}

struct OnDrop(mpsc::UnboundedSender<String>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send("stream dropped".into());
    }
}

type BoxReader = Pin<Box<dyn Stream<Item = Result<Frame, TransportError>> + Send>>;
type BoxWriter = Pin<Box<dyn Sink<Frame, Error = TransportError> + Send>>;

/// A server-side transport that reports the CANCEL and REQUEST_N frames
/// it reads: `frame CANCEL <stream>`, `frame REQUEST_N <stream> <n>`.
pub struct Spy {
    reader: BoxReader,
    writer: BoxWriter,
    peer: PeerInfo,
}

impl Spy {
    fn new(inner: BoxedTransport, events: mpsc::UnboundedSender<String>) -> Self {
        let peer = inner.peer_info();
        let (reader, writer) = inner.split();
        let reader = reader.inspect(move |f| match f {
            Ok(Frame::Cancel(c)) => {
                let _ = events.send(format!("frame CANCEL {}", c.stream_id.get()));
            }
            Ok(Frame::RequestN(r)) => {
                let _ = events.send(format!(
                    "frame REQUEST_N {} {}",
                    r.stream_id.get(),
                    r.request_n.get()
                ));
            }
            _ => {}
        });
        Self {
            reader: Box::pin(reader),
            writer: Box::pin(writer),
            peer,
        }
    }
}

impl Transport for Spy {
    type Reader = BoxReader;
    type Writer = BoxWriter;

    fn split(self) -> (BoxReader, BoxWriter) {
        (self.reader, self.writer)
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[async_trait]
impl RSocket for Recorder {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        let route = route_of(req.metadata.as_ref()).unwrap_or_else(|| "-".into());
        let _ = self.events.send(format!("rr {route} {}", text(&req.data)));
        if route == "fail" {
            return Err(StreamError::application(format!("failed: {}", text(&req.data))).into());
        }
        Ok(Some(req))
    }

    async fn fire_and_forget(&self, req: Payload) -> Result<(), RequestError> {
        let _ = self.events.send(format!("fnf {}", text(&req.data)));
        Ok(())
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        let _ = self.events.send(format!("stream {}", text(&req.data)));
        let guard = OnDrop(self.events.clone());
        futures::stream::iter(0u64..)
            .map(move |i| {
                let _keep = &guard;
                Ok(Payload::from(i.to_string()))
            })
            .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        let _ = self.events.send(format!("channel {}", text(&first.data)));
        futures::stream::once(async { Ok(first) })
            .chain(rest)
            .boxed()
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        let _ = self.events.send(format!("push {}", text(&metadata)));
        Ok(())
    }
}

/// Serves a [`Recorder`] on `uri`; returns the bound URI and the events
/// (the transport is a [`Spy`]; a SETUP is reported as `setup <metadata-mime> <data-mime> <data>
/// <header x-test>`).
pub async fn serve_recorder(uri: &str) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = Listener::bind(uri).await.expect("bind");
    let bound = listener.local_uri();
    let (tx, rx) = mpsc::unbounded_channel();
    let spy_events = tx.clone();
    let server = Server::new(move |setup: SetupInfo, _requester| {
        let events = tx.clone();
        async move {
            let _ = events.send(format!(
                "setup {} {} {} {}",
                String::from_utf8_lossy(setup.metadata_mime_type.as_bytes()),
                String::from_utf8_lossy(setup.data_mime_type.as_bytes()),
                text(&setup.payload.data),
                setup.peer.header("x-test").unwrap_or("-"),
            ));
            Ok(Recorder { events })
        }
    });
    let incoming = listener.map(move |t| t.map(|t| Spy::new(t, spy_events.clone())));
    tokio::spawn(server.serve(incoming));
    (bound, rx)
}
