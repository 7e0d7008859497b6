//! Shared test helpers: a responder, a server on an ephemeral port, raw
//! WebSocket handshakes.
#![allow(dead_code, unreachable_pub)] // each test binary uses a subset

use rsocket_core::async_trait;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rsocket_core::{
    Payload, PayloadStream, RSocket, RequestError, Requester, Server, SetupInfo, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Upper bound for anything a test waits on; a hang fails instead of
/// blocking forever.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Fails the test if `fut` takes longer than [`LIMIT`].
pub async fn within<F: std::future::Future>(fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {LIMIT:?}"),
    }
}

/// What the responder saw.
#[derive(Debug)]
pub enum Seen {
    Fnf(String),
    MetadataPush(Bytes),
}

/// Echo for request/response, a counting producer for streams, upper-case
/// echo for channels; fire-and-forget and metadata push are reported.
pub struct Echo {
    pub produced: Arc<AtomicUsize>,
    pub seen: mpsc::Sender<Seen>,
}

#[async_trait]

impl RSocket for Echo {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }

    async fn fire_and_forget(&self, req: Payload) -> Result<(), RequestError> {
        let seen = self.seen.clone();
        Box::pin(async move {
            let _ = seen
                .send(Seen::Fnf(req.data_utf8().unwrap_or_default().to_owned()))
                .await;
            Ok(())
        })
        .await
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        let seen = self.seen.clone();
        Box::pin(async move {
            let _ = seen.send(Seen::MetadataPush(metadata)).await;
            Ok(())
        })
        .await
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        let n: usize = req.data_utf8().and_then(|s| s.parse().ok()).unwrap_or(0);
        let produced = self.produced.clone();
        futures::stream::iter(0..n)
            .map(move |i| {
                produced.fetch_add(1, Ordering::SeqCst);
                Ok(Payload::from(i.to_string()))
            })
            .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .map_ok(|p| Payload::from(p.data_utf8().unwrap_or_default().to_uppercase()))
            .boxed()
    }
}

/// Handles to a running test server.
pub struct TestServer {
    pub produced: Arc<AtomicUsize>,
    pub seen: mpsc::Receiver<Seen>,
    /// What each accepted connection's acceptor saw, with its requester.
    pub setups: mpsc::Receiver<(SetupInfo, Requester)>,
}

/// Serves `incoming` with [`Echo`]; the acceptor rejects a SETUP whose
/// `authorization` handshake header is present and is not `Bearer good`.
pub fn serve<S, T>(incoming: S) -> TestServer
where
    S: futures::Stream<Item = std::io::Result<T>> + Send + 'static,
    T: Transport,
{
    let produced = Arc::new(AtomicUsize::new(0));
    let (seen_tx, seen) = mpsc::channel(16);
    let (setup_tx, setups) = mpsc::channel(16);
    let counter = produced.clone();
    let server = Server::new(move |setup: SetupInfo, requester: Requester| {
        let echo = Echo {
            produced: counter.clone(),
            seen: seen_tx.clone(),
        };
        let setup_tx = setup_tx.clone();
        async move {
            let auth = setup.peer.header("authorization").map(str::to_owned);
            let _ = setup_tx.send((setup, requester)).await;
            match auth.as_deref() {
                None | Some("Bearer good") => Ok(Arc::new(echo) as Arc<dyn RSocket>),
                Some(_) => Err(rsocket_core::StreamError::rejected("bad token")),
            }
        }
    });
    tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));
    TestServer {
        produced,
        seen,
        setups,
    }
}

/// Performs a WebSocket upgrade by hand; returns the socket and the
/// response head (status line and headers).
pub async fn raw_handshake(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> (TcpStream, String) {
    within(raw_handshake_inner(addr, path, extra_headers)).await
}

async fn raw_handshake_inner(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    // The server sends nothing after its response until we do, so reading
    // byte by byte up to the blank line leaves no WebSocket data behind.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tcp.read(&mut b).await.unwrap();
        assert_eq!(n, 1, "connection closed during the handshake: {head:?}");
        head.push(b[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}
