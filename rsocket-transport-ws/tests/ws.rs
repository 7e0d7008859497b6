//! RSocket over WebSocket on ephemeral loopback ports: every interaction,
//! the acceptor's view of the handshake, and the framing rules (text,
//! close, size limit, permessage-deflate).

mod common;

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use common::{raw_handshake, serve, within, Seen};
use futures::{SinkExt, StreamExt, TryStreamExt};
use rsocket_core::frame::{Setup, Version};
use rsocket_core::{
    ClientBuilder, ConnectionError, ErrorCode, Frame, MimeType, Payload, PeerInfo, RequestError,
    Transport, TransportError,
};
use rsocket_transport_ws::tungstenite::protocol::frame::coding::CloseCode;
use rsocket_transport_ws::tungstenite::protocol::Role;
use rsocket_transport_ws::tungstenite::Message;
use rsocket_transport_ws::{
    connect, connect_with, IntoClientRequest, WsConfig, WsListener, WsTransport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;

async fn ws_server() -> (String, common::TestServer) {
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_path("/rsocket");
    let addr = listener.local_addr().unwrap();
    (format!("ws://{addr}/rsocket"), serve(listener))
}

fn setup_frame() -> Frame {
    Frame::Setup(Box::new(Setup {
        version: Version::V1_0,
        keepalive_interval_ms: 20_000,
        max_lifetime_ms: 90_000,
        resume_token: None,
        lease: false,
        metadata_mime_type: MimeType::OCTET_STREAM,
        data_mime_type: MimeType::OCTET_STREAM,
        payload: Payload::default(),
    }))
}

fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf.freeze()
}

#[tokio::test]
async fn request_response() {
    let (url, _server) = ws_server().await;
    let client = ClientBuilder::new()
        .connect(connect(&url).await.unwrap())
        .unwrap();
    for i in 0..10 {
        let reply = within(client.request_response(Payload::from(format!("hello {i}"))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.data_utf8(), Some(format!("hello {i}").as_str()));
    }
    // A payload far above one TCP segment and tungstenite's read buffer.
    let big = vec![7u8; 1 << 20];
    let reply = within(client.request_response(Payload::from(big.clone())))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data, big);
}

#[tokio::test]
async fn stream_with_backpressure() {
    let (url, server) = ws_server().await;
    let client = ClientBuilder::new()
        .connect(connect(&url).await.unwrap())
        .unwrap();
    let mut stream = client.with_prefetch(8).request_stream(Payload::from("100"));
    let mut received = 0;
    while let Some(item) = within(stream.next()).await {
        let item = item.unwrap();
        assert_eq!(item.data_utf8(), Some(received.to_string().as_str()));
        received += 1;
        // The producer is polled only with credit: it can never be more than
        // one window ahead of what the client has taken.
        let produced = server.produced.load(Ordering::SeqCst);
        assert!(
            produced <= received + 8 + 1, // one window, plus one look-ahead item at most
            "producer ran ahead: {produced} produced, {received} received"
        );
    }
    assert_eq!(received, 100);
    assert_eq!(server.produced.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn channel() {
    let (url, _server) = ws_server().await;
    let client = ClientBuilder::new()
        .connect(connect(&url).await.unwrap())
        .unwrap();
    let rest = futures::stream::iter((0..10).map(|i| Ok(Payload::from(format!("c{i}"))))).boxed();
    let items: Vec<String> = within(
        client
            .request_channel_fallible(Payload::from("first"), rest)
            .map_ok(|p| p.data_utf8().unwrap_or_default().to_owned())
            .try_collect(),
    )
    .await
    .unwrap();
    let mut expected = vec!["FIRST".to_owned()];
    expected.extend((0..10).map(|i| format!("C{i}")));
    assert_eq!(items, expected);
}

#[tokio::test]
async fn fire_and_forget_and_metadata_push() {
    let (url, mut server) = ws_server().await;
    let client = ClientBuilder::new()
        .connect(connect(&url).await.unwrap())
        .unwrap();
    within(client.fire_and_forget(Payload::from("fnf-1")))
        .await
        .unwrap();
    client
        .metadata_push(Bytes::from_static(b"config=7"))
        .await
        .unwrap();
    match within(server.seen.recv()).await.unwrap() {
        Seen::Fnf(data) => assert_eq!(data, "fnf-1"),
        other => panic!("expected the fire-and-forget first, got {other:?}"),
    }
    match within(server.seen.recv()).await.unwrap() {
        Seen::MetadataPush(m) => assert_eq!(&m[..], b"config=7"),
        other => panic!("expected the metadata push, got {other:?}"),
    }
}

#[tokio::test]
async fn acceptor_sees_path_headers_and_peer_address() {
    let (url, mut server) = ws_server().await;
    let mut request = format!("{url}?tenant=7").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", "Bearer good".parse().unwrap());
    request
        .headers_mut()
        .insert("X-Custom", "Value".parse().unwrap());
    let transport = connect_with(request, &WsConfig::default()).await.unwrap();
    let local = transport.get_ref().local_addr().unwrap();
    let client = ClientBuilder::new().connect(transport).unwrap();
    let reply = within(client.request_response(Payload::from("ok")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("ok"));

    let (setup, _requester) = within(server.setups.recv()).await.unwrap();
    let peer: &PeerInfo = &setup.peer;
    assert_eq!(peer.addr, Some(local));
    assert_eq!(peer.path.as_deref(), Some("/rsocket?tenant=7"));
    assert_eq!(peer.header("authorization"), Some("Bearer good"));
    // Names are lower-cased, values kept.
    assert!(
        peer.headers
            .iter()
            .any(|(k, v)| k == "x-custom" && v == "Value"),
        "{:?}",
        peer.headers
    );
    assert!(peer.headers.iter().all(|(k, _)| *k == k.to_lowercase()));
}

#[tokio::test]
async fn wrong_token_is_rejected_setup() {
    let (url, _server) = ws_server().await;
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    let transport = connect_with(request, &WsConfig::default()).await.unwrap();
    let client = ClientBuilder::new().connect(transport).unwrap();
    let err = within(client.request_response(Payload::from("x")))
        .await
        .unwrap_err();
    match err {
        RequestError::Connection(ConnectionError::SetupRejected { code, message, .. }) => {
            assert_eq!(code, ErrorCode::REJECTED_SETUP);
            assert!(message.contains("bad token"), "{message}");
        }
        other => panic!("expected REJECTED_SETUP, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_path_is_refused_with_404() {
    let (url, _server) = ws_server().await;
    let url = url.replace("/rsocket", "/elsewhere");
    let err = connect(&url).await.unwrap_err();
    assert_eq!(err.http_status(), Some(404), "{err}");
}

#[tokio::test]
async fn wss_url_without_tls_is_an_error() {
    let err = connect("wss://127.0.0.1:1/rsocket").await.unwrap_err();
    assert!(
        matches!(err, rsocket_transport_ws::WsError::InvalidRequest(_)),
        "{err}"
    );
}

#[tokio::test]
async fn text_message_is_a_framing_error() {
    let mut listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::client_async(
            format!("ws://{addr}/"),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .unwrap();
        ws.send(Message::Binary(encode(&setup_frame())))
            .await
            .unwrap();
        ws.send(Message::text("{\"hello\":1}")).await.unwrap();
        // Keep the connection open until the server side is done.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let transport = within(listener.accept()).await.unwrap();
    let (mut reader, _writer) = transport.split();
    assert!(matches!(
        within(reader.next()).await,
        Some(Ok(Frame::Setup(_)))
    ));
    match within(reader.next()).await {
        Some(Err(TransportError::Framing(msg))) => assert!(msg.contains("text"), "{msg}"),
        other => panic!("expected a framing error, got {other:?}"),
    }
    assert!(reader.next().await.is_none(), "reader ends after the error");
    drop((reader, _writer));
    within(client).await.unwrap();
}

#[tokio::test]
async fn text_message_closes_the_connection_with_an_error() {
    let listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = serve(listener);
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/"),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    ws.send(Message::Binary(encode(&setup_frame())))
        .await
        .unwrap();
    let (_setup, requester) = within(server.setups.recv()).await.unwrap();
    ws.send(Message::text("not a frame")).await.unwrap();
    // ERROR[CONNECTION_ERROR], then a close with 1003 (unsupported data).
    expect_error_then_close(&mut ws, CloseCode::Unsupported).await;
    match requester.closed_reason() {
        Some(ConnectionError::Protocol { code, message }) => {
            assert_eq!(code, ErrorCode::CONNECTION_ERROR);
            assert!(message.contains("text"), "{message}");
        }
        other => panic!("expected a connection error about text, got {other:?}"),
    }
}

/// The server's next messages must be one ERROR[CONNECTION_ERROR] frame and
/// a close frame with `code`.
async fn expect_error_then_close(ws: &mut WebSocketStream<tokio::net::TcpStream>, code: CloseCode) {
    expect_stream0_error_then_close(ws, ErrorCode::CONNECTION_ERROR, code).await;
}

/// The server's next messages must be one ERROR frame on stream 0 with
/// `error` and a close frame with `code`.
async fn expect_stream0_error_then_close(
    ws: &mut WebSocketStream<tokio::net::TcpStream>,
    error: ErrorCode,
    code: CloseCode,
) {
    match within(ws.next()).await {
        Some(Ok(Message::Binary(b))) => match Frame::decode(b) {
            Ok(Frame::Error(e)) => {
                assert_eq!(e.stream_id, None);
                assert_eq!(e.code, error);
            }
            other => panic!("expected ERROR[CONNECTION_ERROR], got {other:?}"),
        },
        other => panic!("expected an ERROR frame, got {other:?}"),
    }
    expect_close(ws, code).await;
}

async fn expect_close(ws: &mut WebSocketStream<tokio::net::TcpStream>, code: CloseCode) {
    match within(ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, code, "{frame:?}"),
        other => panic!("expected a close frame with {code:?}, got {other:?}"),
    }
}

async fn raw_client(addr: std::net::SocketAddr) -> WebSocketStream<tokio::net::TcpStream> {
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/"),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    ws.send(Message::Binary(encode(&setup_frame())))
        .await
        .unwrap();
    ws
}

#[tokio::test]
async fn a_normal_close_carries_status_1000() {
    let listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = serve(listener);
    let mut ws = raw_client(addr).await;
    let (_setup, requester) = within(server.setups.recv()).await.unwrap();
    // A graceful close with nothing open: CONNECTION_CLOSE, then 1000.
    requester.close();
    expect_stream0_error_then_close(&mut ws, ErrorCode::CONNECTION_CLOSE, CloseCode::Normal).await;
}

#[tokio::test]
async fn config_max_frame_len_closes_with_1009() {
    let listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = rsocket_core::Config {
        max_frame_len: 1024,
        ..rsocket_core::Config::default()
    };
    let mut server = common::serve_with(listener, config);
    let mut ws = raw_client(addr).await;
    let (_setup, requester) = within(server.setups.recv()).await.unwrap();
    ws.send(Message::Binary(Bytes::from(vec![0u8; 1025])))
        .await
        .unwrap();
    expect_error_then_close(&mut ws, CloseCode::Size).await;
    assert!(requester.closed_reason().is_some());
}

#[tokio::test]
async fn close_frame_fails_pending_request() {
    // A bare WebSocket server that answers nothing and sends a close frame
    // once it has seen the request.
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (sock, _) = tcp.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(sock).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Binary(b) = msg {
                if let Ok(Frame::RequestResponse(_)) = Frame::decode(b) {
                    ws.close(None).await.unwrap();
                    break;
                }
            }
        }
        // Drain until the client is gone.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let client = ClientBuilder::new()
        .connect(connect(&format!("ws://{addr}/")).await.unwrap())
        .unwrap();
    let err = within(client.request_response(Payload::from("never answered")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Connection(ConnectionError::ClosedByPeer)),
        "{err:?}"
    );
    // New requests fail the same way.
    let err = within(client.request_response(Payload::from("late")))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Connection(_)), "{err:?}");
    within(server).await.unwrap();
}

#[tokio::test]
async fn oversized_message_is_rejected_from_its_header() {
    let mut config = WsConfig::default();
    config.max_frame_len = 1024;
    let mut listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_config(config);
    let addr = listener.local_addr().unwrap();
    // The listener performs the upgrade while it is polled.
    let accepted = tokio::spawn(async move { listener.accept().await });
    let (mut tcp, head) = raw_handshake(addr, "/", &[]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A masked binary WebSocket frame announcing 1 MiB, of which only 100
    // bytes are ever sent: a server that buffered before checking the length
    // would wait forever.
    let announced: u64 = 1 << 20;
    let mut frame = BytesMut::new();
    frame.put_u8(0x82);
    frame.put_u8(0x80 | 127);
    frame.put_u64(announced);
    frame.put_slice(&[1, 2, 3, 4]);
    frame.put_slice(&[0u8; 100]);
    tcp.write_all(&frame).await.unwrap();

    let transport = within(accepted).await.unwrap().unwrap();
    let (mut reader, _writer) = transport.split();
    match within(reader.next()).await {
        Some(Err(TransportError::FrameTooLarge { len, max })) => {
            assert_eq!(len as u64, announced);
            assert_eq!(max, 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    drop(tcp);
}

#[tokio::test]
async fn oversized_message_ends_a_served_connection() {
    let mut config = WsConfig::default();
    config.max_frame_len = 1024;
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_config(config);
    let addr = listener.local_addr().unwrap();
    let mut server = serve(listener);
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/"),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    ws.send(Message::Binary(encode(&setup_frame())))
        .await
        .unwrap();
    let (_setup, requester) = within(server.setups.recv()).await.unwrap();
    ws.send(Message::Binary(Bytes::from(vec![0u8; 4096])))
        .await
        .unwrap();
    // ERROR[CONNECTION_ERROR], then a close with 1009 (message too big).
    expect_error_then_close(&mut ws, CloseCode::Size).await;
    assert!(requester.closed_reason().is_some());
}

#[tokio::test]
async fn permessage_deflate_offer_is_declined_and_connection_works() {
    let (url, mut server) = ws_server().await;
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/rsocket")
        .parse()
        .unwrap();
    // What Node's `ws` and browsers offer.
    let (tcp, head) = raw_handshake(
        addr,
        "/rsocket",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "the server must not accept an extension: {head}"
    );
    // Uncompressed RSocket over the upgraded socket.
    let ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    let transport = WsTransport::new(ws, PeerInfo::default());
    let client = ClientBuilder::new().connect(transport).unwrap();
    let reply = within(client.request_response(Payload::from("plain")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("plain"));
    let (setup, _) = within(server.setups.recv()).await.unwrap();
    assert!(setup
        .peer
        .header("sec-websocket-extensions")
        .is_some_and(|v| v.contains("permessage-deflate")));
}

#[tokio::test]
async fn compressed_message_is_a_connection_error() {
    // A peer that compresses anyway (RSV1 set) without negotiating it.
    let mut listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await });
    let (mut tcp, _head) = raw_handshake(addr, "/", &[]).await;
    let mut frame = BytesMut::new();
    frame.put_u8(0x80 | 0x40 | 0x02); // FIN, RSV1, binary
    frame.put_u8(0x80 | 4);
    frame.put_slice(&[0, 0, 0, 0]); // zero mask
    frame.put_slice(&[1, 2, 3, 4]);
    tcp.write_all(&frame).await.unwrap();
    let transport = within(accepted).await.unwrap().unwrap();
    let (mut reader, _writer) = transport.split();
    assert!(
        matches!(
            within(reader.next()).await,
            Some(Err(TransportError::Framing(_)))
        ),
        "a compressed message must not be taken for a frame"
    );
}

/// One client-to-server WebSocket frame, masked with a zero key: `first`
/// is the FIN/RSV/opcode byte.
fn raw_ws_frame(first: u8, payload: &[u8]) -> BytesMut {
    assert!(payload.len() < 126, "short frames only");
    let mut frame = BytesMut::new();
    frame.put_u8(first);
    frame.put_u8(0x80 | payload.len() as u8);
    frame.put_slice(&[0, 0, 0, 0]);
    frame.put_slice(payload);
    frame
}

#[tokio::test]
async fn a_framing_error_ends_a_served_connection_with_1002() {
    let listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = serve(listener);
    let (mut tcp, head) = raw_handshake(addr, "/", &[]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(&raw_ws_frame(0x80 | 0x02, &encode(&setup_frame())))
        .await
        .unwrap();
    let (_setup, requester) = within(server.setups.recv()).await.unwrap();
    // A compressed message (RSV1) that was never negotiated.
    tcp.write_all(&raw_ws_frame(0x80 | 0x40 | 0x02, &[1, 2, 3, 4]))
        .await
        .unwrap();
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    // ERROR[CONNECTION_ERROR], then a close with 1002 (protocol error).
    expect_error_then_close(&mut ws, CloseCode::Protocol).await;
    assert!(requester.closed_reason().is_some());
}

#[tokio::test]
async fn stalled_handshake_does_not_block_other_accepts() {
    let (url, _server) = ws_server().await;
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/rsocket")
        .to_owned();
    // Connects and never sends its upgrade request.
    let _stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let client = ClientBuilder::new()
        .connect(within(connect(&url)).await.unwrap())
        .unwrap();
    let reply = within(client.request_response(Payload::from("still served")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("still served"));
}

#[tokio::test]
async fn stalled_handshake_times_out() {
    let mut config = WsConfig::default();
    config.handshake_timeout = std::time::Duration::from_millis(200);
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_config(config);
    let addr = listener.local_addr().unwrap();
    let _server = serve(listener);
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server drops the connection: our read ends cleanly.
    let mut buf = [0u8; 16];
    let n = within(stalled.read(&mut buf))
        .await
        .expect("the listener closes the stalled socket, it does not reset it");
    assert_eq!(n, 0);
}

#[tokio::test]
async fn server_close_ends_client_cleanly() {
    let (url, mut server) = ws_server().await;
    let client = ClientBuilder::new()
        .connect(connect(&url).await.unwrap())
        .unwrap();
    within(client.request_response(Payload::from("x")))
        .await
        .unwrap();
    let (_setup, server_side) = within(server.setups.recv()).await.unwrap();
    server_side.close();
    // A graceful close with nothing open: the client sees the server's
    // CONNECTION_CLOSE, then the end, and fails new requests.
    let end = within(client.closed()).await;
    assert!(
        matches!(&end, ConnectionError::Remote { code, .. } if *code == ErrorCode::CONNECTION_CLOSE),
        "{end:?}"
    );
    let err = client
        .request_response(Payload::from("y"))
        .await
        .expect_err("closed");
    assert!(matches!(err, RequestError::Connection(_)), "{err:?}");
}

/// The next frame the server sends on a raw WebSocket client, skipping
/// its keepalives.
async fn next_ws_frame(ws: &mut WebSocketStream<tokio::net::TcpStream>) -> Frame {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Binary(b))) => match Frame::decode(b) {
                Ok(Frame::Keepalive(_)) => {}
                Ok(f) => return f,
                Err(e) => panic!("the server sent an invalid frame: {e}"),
            },
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// A request/response sent as its own message is answered with its data.
async fn ws_ping(ws: &mut WebSocketStream<tokio::net::TcpStream>, id: u32, data: &'static str) {
    let req = Frame::RequestResponse(rsocket_core::frame::RequestResponse {
        stream_id: rsocket_core::StreamId::new(id).unwrap(),
        follows: false,
        payload: Payload::from(data),
    });
    ws.send(Message::Binary(encode(&req))).await.unwrap();
    match next_ws_frame(ws).await {
        Frame::Payload(p) if p.stream_id.get() == id && p.complete => {
            assert_eq!(p.payload.data, data);
        }
        other => panic!("expected the answer on stream {id}, got {other:?}"),
    }
}

async fn echoes(client: &rsocket_core::Requester) {
    let reply = within(client.request_response(Payload::from("bystander")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("bystander"));
}

/// The bystander, connected all along, and a new WebSocket connection to
/// the same listener are served.
async fn others_are_served(addr: std::net::SocketAddr, bystander: &rsocket_core::Requester) {
    echoes(bystander).await;
    let client = ClientBuilder::new()
        .connect(connect(&format!("ws://{addr}/")).await.unwrap())
        .unwrap();
    echoes(&client).await;
}

/// A binary message is exactly one RSocket frame, without a length prefix
/// (rsocket-protocol.md §1.2): frames packed into one message are not
/// split apart. Where the first frame's body has a fixed size (REQUEST_N,
/// CANCEL), what follows it is trailing bytes: the frame is malformed,
/// so the server answers ERROR[CONNECTION_ERROR] on stream 0, like any
/// other broken frame, and closes with 1000: the WebSocket close code
/// speaks only of WebSocket framing (1002 / 1003 / 1009, `WsWriter`'s
/// `poll_close`), the RSocket error travels in the ERROR frame. Where the
/// first frame's data runs to the end of its frame (a request), the rest
/// of the message is its data: one request, answered with all of it, and
/// the packed second request is never opened. Other connections to the
/// listener are served throughout.
#[tokio::test]
async fn two_frames_or_a_frame_and_a_half_in_one_message() {
    let listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = serve(listener);
    let bystander = ClientBuilder::new()
        .connect(connect(&format!("ws://{addr}/")).await.unwrap())
        .unwrap();
    echoes(&bystander).await;
    let _ = within(server.setups.recv()).await.unwrap();
    let request_n: &[u8] = &[0, 0, 0, 1, 0x20, 0x00, 0, 0, 0, 5];
    let cancel: &[u8] = &[0, 0, 0, 1, 0x24, 0x00];
    let cases: [(&str, Vec<u8>); 2] = [
        ("two frames", [request_n, cancel].concat()),
        ("a frame and a half", [request_n, &cancel[..3]].concat()),
    ];
    for (what, message) in cases {
        eprintln!("case: {what}");
        let mut ws = raw_client(addr).await;
        let (_setup, requester) = within(server.setups.recv()).await.unwrap();
        ws_ping(&mut ws, 1, "before").await;
        ws.send(Message::Binary(Bytes::from(message)))
            .await
            .unwrap();
        expect_error_then_close(&mut ws, CloseCode::Normal).await;
        match requester.closed_reason() {
            Some(ConnectionError::Protocol { code, .. }) => {
                assert_eq!(code, ErrorCode::CONNECTION_ERROR);
            }
            other => panic!("expected a connection error, got {other:?}"),
        }
        others_are_served(addr, &bystander).await;
        let _ = within(server.setups.recv()).await.unwrap();
    }
    // Two requests in one message: one request whose data is the rest.
    let mut ws = raw_client(addr).await;
    let _ = within(server.setups.recv()).await.unwrap();
    let first: &[u8] = &[0, 0, 0, 1, 0x10, 0x00, b'a'];
    let second: &[u8] = &[0, 0, 0, 3, 0x10, 0x00, b'b'];
    for (id, message) in [
        (1, [first, second].concat()),
        (
            5,
            [&first[..3], &[5, 0x10, 0x00, b'c'], &second[..3]].concat(),
        ),
    ] {
        ws.send(Message::Binary(Bytes::from(message.clone())))
            .await
            .unwrap();
        match next_ws_frame(&mut ws).await {
            Frame::Payload(p) if p.stream_id.get() == id && p.complete => {
                assert_eq!(p.payload.data, message[6..]);
            }
            other => panic!("expected one answer on stream {id}, got {other:?}"),
        }
    }
    // Stream 3 was never opened: a request on it now is a new one, and
    // its answer is the very next frame.
    ws_ping(&mut ws, 3, "three").await;
    ws_ping(&mut ws, 7, "after").await;
    others_are_served(addr, &bystander).await;
}

/// `Config::max_frame_len` and `WsConfig::max_frame_len` at their exact
/// boundary on a served connection: a message of exactly the limit is a
/// frame like any other (answered), one byte more is
/// ERROR[CONNECTION_ERROR] and a close with 1009; the bystander and a new
/// connection are served.
#[tokio::test]
async fn a_frame_at_max_frame_len_is_served_and_one_byte_more_is_refused() {
    const MAX: usize = 1024;
    for ws_limit in [false, true] {
        let mut ws_config = WsConfig::default();
        let mut config = rsocket_core::Config::default();
        if ws_limit {
            ws_config.max_frame_len = MAX;
        } else {
            config.max_frame_len = MAX;
        }
        let listener = WsListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .with_config(ws_config);
        let addr = listener.local_addr().unwrap();
        let mut server = common::serve_with(listener, config);
        let bystander = ClientBuilder::new()
            .connect(connect(&format!("ws://{addr}/")).await.unwrap())
            .unwrap();
        echoes(&bystander).await;
        let _ = within(server.setups.recv()).await.unwrap();
        let mut ws = raw_client(addr).await;
        let (_setup, requester) = within(server.setups.recv()).await.unwrap();
        for (id, len) in [(1u32, MAX), (3, MAX + 1)] {
            let mut frame = BytesMut::new();
            frame.put_u32(id);
            frame.put_u16(0x10 << 8); // REQUEST_RESPONSE, no flags
            frame.put_bytes(b'x', len - 6);
            ws.send(Message::Binary(frame.freeze())).await.unwrap();
        }
        match next_ws_frame(&mut ws).await {
            Frame::Payload(p) if p.stream_id.get() == 1 && p.complete => {
                assert_eq!(p.payload.data.len(), MAX - 6);
            }
            other => panic!("expected the answer at the limit, got {other:?}"),
        }
        expect_error_then_close(&mut ws, CloseCode::Size).await;
        assert!(requester.closed_reason().is_some());
        others_are_served(addr, &bystander).await;
    }
}

/// A request sent as a fragmented WebSocket message (a binary frame
/// without FIN, then a continuation), with a ping between the fragments
/// (control frames may come inside a fragmented message, RFC 6455 §5.4):
/// the ping is answered with a pong carrying its payload, and the request,
/// reassembled by the WebSocket layer, is answered.
#[tokio::test]
async fn a_fragmented_message_with_a_ping_inside_is_one_frame() {
    let listener = WsListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = serve(listener);
    let (mut tcp, head) = raw_handshake(addr, "/", &[]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(&raw_ws_frame(0x80 | 0x02, &encode(&setup_frame())))
        .await
        .unwrap();
    let _ = within(server.setups.recv()).await.unwrap();
    let request = encode(&Frame::RequestResponse(
        rsocket_core::frame::RequestResponse {
            stream_id: rsocket_core::StreamId::new(1).unwrap(),
            follows: false,
            payload: Payload::from("in two parts"),
        },
    ));
    let (first, rest) = request.split_at(8);
    tcp.write_all(&raw_ws_frame(0x02, first)).await.unwrap(); // binary, no FIN
    tcp.write_all(&raw_ws_frame(0x80 | 0x09, b"hi"))
        .await
        .unwrap(); // ping
    tcp.write_all(&raw_ws_frame(0x80, rest)).await.unwrap(); // continuation, FIN
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    let mut ponged = false;
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"hi");
                ponged = true;
            }
            Some(Ok(Message::Binary(b))) => match Frame::decode(b) {
                Ok(Frame::Keepalive(_)) => {}
                Ok(Frame::Payload(p)) if p.stream_id.get() == 1 && p.complete => {
                    assert_eq!(p.payload.data, "in two parts");
                    break;
                }
                other => panic!("expected the answer, got {other:?}"),
            },
            other => panic!("expected a pong or the answer, got {other:?}"),
        }
    }
    if !ponged {
        match within(ws.next()).await {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"hi"),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}
