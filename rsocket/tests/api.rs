//! The public API as a user meets it: one-step connect by URI over TCP and
//! WebSocket, serve forever, closure responders, and the connection
//! lifecycle (closed, is_closed, graceful close both ways, abort).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use rsocket::prelude::*;
use rsocket::{
    fire_and_forget_fn, request_channel_fn, request_response_fn, request_stream_fn, ClientBuilder,
    Config, ConnectError, ConnectionError, ErrorCode, Initiator, Listener, Payload, PayloadStream,
    RequestError, Requester, Server, SetupInfo,
};
use tokio::sync::{mpsc, Semaphore};

/// Fails a test that would otherwise hang.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A responder whose `gated` stream sends one item per permit.
struct Gated {
    gate: Arc<Semaphore>,
}

#[async_trait]
impl RSocket for Gated {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }

    fn request_stream(&self, _req: Payload) -> PayloadStream {
        let gate = self.gate.clone();
        futures::stream::unfold(0u32, move |i| {
            let gate = gate.clone();
            async move {
                if i == 3 {
                    return None;
                }
                gate.acquire().await.ok()?.forget();
                Some((Ok(Payload::from(i.to_string())), i + 1))
            }
        })
        .boxed()
    }
}

/// Serves `Gated` forever on `uri`; returns the bound URI and the
/// server-side requesters as they are accepted.
async fn serve_gated(uri: &str, gate: Arc<Semaphore>) -> (String, mpsc::Receiver<Requester>) {
    let listener = Listener::bind(uri).await.expect("bind");
    let bound = listener.local_uri();
    let (tx, rx) = mpsc::channel(4);
    let server = Server::new(move |_setup: SetupInfo, requester: Requester| {
        let (tx, gate) = (tx.clone(), gate.clone());
        async move {
            let _ = tx.send(requester).await;
            Ok(Gated { gate })
        }
    });
    tokio::spawn(server.serve(listener));
    (bound, rx)
}

#[tokio::test]
async fn connect_by_uri_over_tcp_and_websocket() {
    for uri in ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/rsocket"] {
        let (bound, _rx) = serve_gated(uri, Arc::new(Semaphore::new(0))).await;
        let client = within("connect", rsocket::connect(&bound))
            .await
            .expect(uri);
        let reply = within("reply", client.request_response(Payload::from(uri)))
            .await
            .expect("reply");
        assert_eq!(reply.expect("payload").data_utf8(), Some(uri));
    }
    let (bound, _rx) = serve_gated("tcp://127.0.0.1:0", Arc::new(Semaphore::new(0))).await;
    let addr = bound.trim_start_matches("tcp://").to_owned();
    let client = rsocket::connect_tcp(addr).await.expect("connect_tcp");
    assert!(client.request_response(Payload::from("x")).await.is_ok());

    let (bound, _rx) = serve_gated("ws://127.0.0.1:0/p", Arc::new(Semaphore::new(0))).await;
    let client = rsocket::connect_ws(&bound).await.expect("connect_ws");
    assert!(client.request_response(Payload::from("x")).await.is_ok());
}

/// Schemes are case-insensitive (RFC 3986): `WS://` and `TCP://` connect
/// like their lower-case spellings.
#[tokio::test]
async fn upper_case_schemes_connect() {
    for uri in ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/rsocket"] {
        let (bound, _rx) = serve_gated(uri, Arc::new(Semaphore::new(0))).await;
        let (scheme, rest) = bound.split_once("://").expect("a scheme");
        let upper = format!("{}://{rest}", scheme.to_ascii_uppercase());
        let client = within("connect", rsocket::connect(&upper))
            .await
            .expect(&upper);
        let reply = within("reply", client.request_response(Payload::from("x")))
            .await
            .expect("reply");
        assert_eq!(reply.expect("payload").data_utf8(), Some("x"), "{upper}");
    }
    // The WebSocket transport itself, called with the URL as it is.
    let (bound, _rx) = serve_gated("ws://127.0.0.1:0/p", Arc::new(Semaphore::new(0))).await;
    let upper = bound.replacen("ws://", "Ws://", 1);
    let client = within("connect_ws", rsocket::connect_ws(&upper))
        .await
        .expect(&upper);
    assert!(client.request_response(Payload::from("x")).await.is_ok());
}

#[tokio::test]
async fn connect_errors_are_typed() {
    assert!(matches!(
        rsocket::connect("udp://127.0.0.1:1").await,
        Err(ConnectError::Uri(_))
    ));
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port();
    assert!(matches!(
        rsocket::connect(&format!("tcp://127.0.0.1:{port}")).await,
        Err(ConnectError::Io(_))
    ));
    // wss:// without TLS settings, with the `tls` feature or without it;
    // and a wss:// listener, which the facade does not offer.
    assert!(matches!(
        rsocket::connect("wss://127.0.0.1:1/").await,
        Err(ConnectError::TlsNotConfigured)
    ));
    assert!(matches!(
        Listener::bind("wss://127.0.0.1:0/").await,
        Err(ConnectError::TlsNotConfigured)
    ));
    // The same for a resumable connection, whose transports are opened
    // later too: the missing settings are reported as such.
    let resumable = ClientBuilder::new()
        .connect_resumable_to("wss://127.0.0.1:1/")
        .await;
    assert!(
        matches!(resumable, Err(ConnectError::TlsNotConfigured)),
        "{resumable:?}"
    );
    let bad = Config {
        default_prefetch: 0,
        ..Config::default()
    };
    let (bound, _rx) = serve_gated("tcp://127.0.0.1:0", Arc::new(Semaphore::new(0))).await;
    assert!(matches!(
        ClientBuilder::new().config(bad).connect_to(&bound).await,
        Err(ConnectError::Config(_))
    ));
}

#[tokio::test]
async fn closure_responders_serve_one_interaction() {
    let listener = Listener::bind("tcp://127.0.0.1:0").await.expect("bind");
    let uri = listener.local_uri();
    let server = Server::new(|_s: SetupInfo, _r| async {
        Ok(request_stream_fn(|req: Payload| {
            let n: u32 = req.data_utf8().and_then(|s| s.parse().ok()).unwrap_or(0);
            futures::stream::iter((0..n).map(|i| Ok(Payload::from(i.to_string()))))
        }))
    });
    tokio::spawn(server.serve(listener));
    let client = rsocket::connect(&uri).await.expect("connect");
    let items: Vec<_> = within(
        "stream",
        client.request_stream(Payload::from("4")).collect(),
    )
    .await;
    assert_eq!(items.len(), 4);
    // Interactions the closure does not serve are rejected, not processed.
    match client.request_response(Payload::from("x")).await {
        Err(RequestError::Stream(e)) => assert_eq!(e.code, ErrorCode::REJECTED),
        other => panic!("expected REJECTED, got {other:?}"),
    }
    // A fire-and-forget or metadata push it does not serve is dropped:
    // the connection goes on.
    client
        .fire_and_forget(Payload::from("f"))
        .await
        .expect("queued");
    client
        .metadata_push(Bytes::from_static(b"m"))
        .await
        .expect("queued");
    let items: Vec<_> = within(
        "a stream after them",
        client.request_stream(Payload::from("2")).collect(),
    )
    .await;
    assert_eq!(items.len(), 2);
    assert!(!client.is_closed());
}

#[tokio::test]
async fn fire_and_forget_and_channel_closures_serve_theirs_only() {
    // Fire-and-forget: the closure gets each payload; other interactions
    // are rejected.
    let (tx, mut got) = mpsc::unbounded_channel::<Bytes>();
    let listener = Listener::bind("tcp://127.0.0.1:0").await.expect("bind");
    let uri = listener.local_uri();
    let server = Server::new(move |_s: SetupInfo, _r| {
        let tx = tx.clone();
        async move {
            Ok(fire_and_forget_fn(move |req: Payload| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(req.data);
                }
            }))
        }
    });
    tokio::spawn(server.serve(listener));
    let client = rsocket::connect(&uri).await.expect("connect");
    client
        .fire_and_forget(Payload::from("one-way"))
        .await
        .expect("queued");
    assert_eq!(
        within("the payload", got.recv()).await.as_deref(),
        Some(&b"one-way"[..])
    );
    match client.request_response(Payload::from("x")).await {
        Err(RequestError::Stream(e)) => assert_eq!(e.code, ErrorCode::REJECTED),
        other => panic!("expected REJECTED, got {other:?}"),
    }

    // Channel: the closure gets the first payload and the rest.
    let listener = Listener::bind("tcp://127.0.0.1:0").await.expect("bind");
    let uri = listener.local_uri();
    let server = Server::new(|_s: SetupInfo, _r| async {
        Ok(request_channel_fn(|first: Payload, rest: PayloadStream| {
            futures::stream::once(async { Ok(first) })
                .chain(rest)
                .map(|p| {
                    let p = p?;
                    Ok(Payload::from(format!(
                        "echo {}",
                        p.data_utf8().unwrap_or("")
                    )))
                })
        }))
    });
    tokio::spawn(server.serve(listener));
    let client = rsocket::connect(&uri).await.expect("connect");
    let rest = futures::stream::iter(["b", "c"].map(Payload::from));
    let echoed: Vec<String> = within(
        "channel",
        client
            .request_channel(Payload::from("a"), rest)
            .map(|p| p.expect("item").data_utf8().unwrap_or("").to_owned())
            .collect(),
    )
    .await;
    assert_eq!(echoed, ["echo a", "echo b", "echo c"]);
    let items: Vec<_> = within(
        "a stream the channel closure does not serve",
        client.request_stream(Payload::from("s")).collect(),
    )
    .await;
    assert!(
        matches!(&items[..], [Err(RequestError::Stream(e))] if e.code == ErrorCode::REJECTED),
        "{items:?}"
    );
}

#[tokio::test]
async fn abort_ends_both_sides_at_once() {
    let (uri, mut accepted) = serve_gated("tcp://127.0.0.1:0", Arc::new(Semaphore::new(0))).await;
    let client = rsocket::connect(&uri).await.expect("connect");
    let server_side = within("accept", accepted.recv()).await.expect("accepted");
    let mut pending = client.request_stream(Payload::from("s"));
    assert!(!client.is_closed());
    client.abort();
    assert!(client.is_closed());
    assert!(matches!(
        client.closed().await,
        ConnectionError::LocallyClosed
    ));
    // The open stream failed with the connection error.
    assert!(matches!(
        within("stream end", pending.next()).await,
        Some(Err(RequestError::Connection(_)))
    ));
    let end = within("server side to end", server_side.closed()).await;
    assert!(
        matches!(&end, ConnectionError::Remote { code, .. } if *code == ErrorCode::CONNECTION_ERROR),
        "{end:?}"
    );
    assert_eq!(end.initiator(), Initiator::Remote);
}

#[tokio::test]
async fn graceful_close_lets_open_streams_finish_on_both_sides() {
    let gate = Arc::new(Semaphore::new(0));
    let (uri, mut accepted) = serve_gated("tcp://127.0.0.1:0", gate.clone()).await;
    let client = rsocket::connect(&uri).await.expect("connect");
    let server_side = within("accept", accepted.recv()).await.expect("accepted");
    let mut stream = client.request_stream(Payload::from("s"));
    gate.add_permits(1);
    let first = within("first item", stream.next()).await;
    assert_eq!(first.expect("item").expect("ok").data, "0");

    client.close();
    // New requests are refused locally, at once, on this side...
    match client.request_response(Payload::from("late")).await {
        Err(RequestError::ConnectionClosing { initiator }) => {
            assert_eq!(initiator, Initiator::Local);
        }
        other => panic!("expected a local refusal, got {other:?}"),
    }
    // ...and on the peer's once CONNECTION_CLOSE has arrived.
    within("the server to see CONNECTION_CLOSE", async {
        loop {
            match server_side.request_response(Payload::from("x")).await {
                Err(RequestError::ConnectionClosing {
                    initiator: Initiator::Remote,
                }) => break,
                // Served by the client (its default responder rejects) until
                // the frame arrives.
                Err(RequestError::Stream(_)) => tokio::task::yield_now().await,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(!client.is_closed() && !server_side.is_closed());

    // The open stream still completes.
    gate.add_permits(2);
    let rest: Vec<_> = within("the rest of the stream", stream.collect()).await;
    let rest: Vec<_> = rest.into_iter().map(|r| r.expect("item").data).collect();
    assert_eq!(rest, ["1", "2"]);

    let end = within("client closed", client.closed()).await;
    assert!(matches!(end, ConnectionError::LocallyClosed), "{end:?}");
    let end = within("server closed", server_side.closed()).await;
    assert!(
        matches!(&end, ConnectionError::Remote { code, .. } if *code == ErrorCode::CONNECTION_CLOSE),
        "{end:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_close_gives_up_after_the_close_timeout() {
    let (client_end, server_end) = rsocket::memory_pair(64 * 1024);
    let gate = Arc::new(Semaphore::new(0));
    let server = Server::new(move |_s: SetupInfo, _r| {
        let gate = gate.clone();
        async move { Ok(Gated { gate }) }
    });
    tokio::spawn(server.serve(futures::stream::iter([Ok::<_, std::io::Error>(server_end)])));
    let config = Config {
        close_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let client = ClientBuilder::new()
        .config(config)
        .connect(client_end)
        .expect("connect");
    // Make sure the stream is open on both sides before closing.
    let mut stream = client.request_stream(Payload::from("never"));
    assert!(stream.next().now_or_never().is_none());
    assert_eq!(
        client
            .request_response(Payload::from("sync"))
            .await
            .expect("rr")
            .expect("p")
            .data,
        "sync"
    );
    let start = tokio::time::Instant::now();
    client.close();
    let end = client.closed().await;
    assert!(matches!(end, ConnectionError::LocallyClosed), "{end:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(matches!(
        stream.next().await,
        Some(Err(RequestError::Connection(_)))
    ));
}

/// A responder that counts metadata pushes.
struct CountPushes(Arc<AtomicUsize>);

#[async_trait]
impl RSocket for CountPushes {
    async fn metadata_push(&self, _m: Bytes) -> Result<(), RequestError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn metadata_push_waits_for_room_in_the_outbound_queue() {
    const CAP: usize = 4096;
    // The server end is not served yet, so nothing reads what the client
    // writes: once the pipe's buffer is full, frames stay queued.
    let (client_end, server_end) = rsocket::memory_pair(1024);
    let config = Config {
        max_outbound_queue_bytes: CAP,
        ..Config::default()
    };
    let client = ClientBuilder::new()
        .config(config)
        .connect(client_end)
        .expect("connect");
    let chunk = Bytes::from(vec![7u8; 256]);
    let mut queued = 0usize;
    let blocked = loop {
        let mut push = Box::pin(client.metadata_push(chunk.clone()));
        // Let the driver write what it can.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        match (&mut push).now_or_never() {
            Some(r) => {
                r.expect("push");
                queued += 1;
                assert!(queued < 1000, "metadata push never waited for room");
            }
            None => break push,
        }
    };
    // The pushes stopped being accepted (the loop above fails after 1,000):
    // the bound itself, with the writer's own buffers, is checked by the
    // hostile-peer suite.
    assert!(queued > 0);

    // Once the peer reads, the waiting push completes and every push
    // arrives.
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = Server::new(move |_s: SetupInfo, _r| {
        let c = c.clone();
        async move { Ok(CountPushes(c)) }
    });
    tokio::spawn(server.serve(futures::stream::iter([Ok::<_, std::io::Error>(server_end)])));
    within("the blocked push", blocked).await.expect("push");
    within("every push to arrive", async {
        while count.load(Ordering::SeqCst) < queued + 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[test]
fn payload_builder_keeps_data_and_metadata_apart() {
    let p = Payload::new("data").with_metadata("meta");
    assert_eq!(
        (p.data_utf8(), p.metadata_utf8()),
        (Some("data"), Some("meta"))
    );
    let m = Payload::metadata_only("m");
    assert!(m.data.is_empty() && m.metadata_utf8() == Some("m"));
    // A closure responder is an ordinary value.
    let _ = request_response_fn(|p: Payload| async move { Ok(Some(p)) });
}

#[tokio::test]
async fn closed_resolves_after_what_was_queued_is_written() {
    use rsocket::{Frame, Transport};
    let (client_end, server_end) = rsocket::memory_pair(64 * 1024);
    let client = ClientBuilder::new().connect(client_end).expect("connect");
    client
        .fire_and_forget(Payload::from("last words"))
        .await
        .expect("queued");
    client.abort();
    assert!(matches!(
        client.closed().await,
        ConnectionError::LocallyClosed
    ));
    // Everything is already on the wire, and the transport is closed: the
    // peer reads it all without waiting for another task to run.
    let (mut reader, _writer) = server_end.split();
    let mut frames = Vec::new();
    loop {
        match reader.next().now_or_never() {
            Some(Some(frame)) => frames.push(frame.expect("frame")),
            Some(None) => break,
            None => panic!("closed() resolved before the driver finished: {frames:?}"),
        }
    }
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Setup(_), Frame::RequestFnf(_), Frame::Error(_)]
        ),
        "{frames:?}"
    );
}

/// A raw TCP peer: SETUP, then the length prefix of a frame one byte over
/// the server's `Config::max_frame_len` (and nothing of the frame): the
/// server must refuse it from the prefix, with `ERROR[CONNECTION_ERROR]`,
/// not wait to buffer it.
#[tokio::test]
async fn a_uri_listener_applies_the_servers_max_frame_len() {
    use bytes::BufMut;
    use rsocket::frame::{Frame, Setup, Version};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MAX: usize = 1024;
    let listener = Listener::bind("tcp://127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr();
    let server = Server::new(|_setup: SetupInfo, _requester: Requester| async {
        Ok(request_response_fn(|req| async move { Ok(Some(req)) }))
    })
    .config(Config {
        max_frame_len: MAX,
        ..Config::default()
    });
    tokio::spawn(server.serve(listener));
    let mut tcp = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let setup = Frame::Setup(Box::new(Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: 90_000,
        resume_token: None,
        lease: false,
        metadata_mime_type: rsocket::MimeType::OCTET_STREAM,
        data_mime_type: rsocket::MimeType::OCTET_STREAM,
        payload: Payload::default(),
    }));
    let mut out = bytes::BytesMut::new();
    out.put_uint(setup.encoded_len() as u64, 3);
    setup.encode(&mut out);
    // The prefix of a frame one byte too long, and the start of its header.
    out.put_uint(MAX as u64 + 1, 3);
    out.put_u32(3);
    within("send", tcp.write_all(&out)).await.expect("write");
    let mut prefix = [0u8; 3];
    within("the server's answer", tcp.read_exact(&mut prefix))
        .await
        .expect("a frame");
    let len = usize::from(prefix[0]) << 16 | usize::from(prefix[1]) << 8 | usize::from(prefix[2]);
    let mut body = vec![0u8; len];
    within("the rest of it", tcp.read_exact(&mut body))
        .await
        .expect("the frame");
    match Frame::decode(Bytes::from(body)) {
        Ok(Frame::Error(e)) => {
            assert_eq!(e.stream_id, None);
            assert_eq!(e.code, ErrorCode::CONNECTION_ERROR);
        }
        other => panic!("expected ERROR[CONNECTION_ERROR], got {other:?}"),
    }
}

/// A TCP connection made or accepted through a URI reads and writes runs of
/// frames as raw bytes, as an unboxed TCP transport does (a WebSocket
/// transport has no such path: its messages are whole frames).
#[tokio::test]
async fn boxed_transports_keep_the_raw_bytes_paths() {
    use rsocket::{BoxedTransport, Transport, TransportOptions};
    {
        let uri = "tcp://127.0.0.1:0";
        let mut listener = Listener::bind(uri).await.expect("bind");
        let bound = listener.local_uri();
        let (client, server) = within(
            "connect",
            futures::future::join(
                rsocket::open_transport(&bound, &TransportOptions::default()),
                listener.next(),
            ),
        )
        .await;
        let server = server.expect("an accepted connection").expect("accept");
        for transport in [client.expect("open"), server] {
            let (mut reader, mut writer) = transport.split();
            assert!(
                BoxedTransport::wire_reader(&mut reader).is_some(),
                "{uri}: the reader's raw-bytes path"
            );
            assert!(
                BoxedTransport::wire_writer(&mut writer).is_some(),
                "{uri}: the writer's raw-bytes path"
            );
        }
    }
}
