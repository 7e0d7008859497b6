//! Server lifecycle scenarios (dead peer, graceful shutdown, many
//! clients), run client → server; re-exported by [`crate::scenarios`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::StreamExt;
use rsocket_core::{
    ClientBuilder, Config, ConnectionError, ErrorCode, Initiator, RSocket, RequestError,
};

use crate::responder::{pd, pm};
use crate::scenarios::{collect, next_item, ping, render, strings};
use crate::{within, Probe, TckResponder, TestServer, TransportKind};

// ----- server lifecycle -------------------------------------------------------

/// The server dies mid-stream: pending requests fail promptly with a
/// connection error, new ones fail too, and the dead side's handlers are
/// dropped with its connection.
pub async fn dead_peer<K: TransportKind>() {
    let (probe, mut signals) = Probe::new(1);
    let mut server = TestServer::<K>::start(
        Arc::new(TckResponder::new(probe)),
        Config::default(),
        Duration::from_secs(10),
    )
    .await;
    let client = server.connect(ClientBuilder::new()).await;
    drop(server.accepted().await);

    let mut s = client.with_prefetch(4).request_stream(pd("endless"));
    assert_eq!(next_item("stream item", &mut s).await.data, "0");
    let stream_handler = signals.started("endless").await;
    let mut rr = Box::pin(client.request_response(pm("e", "f")));
    let rr_handler = tokio::select! {
        r = &mut rr => panic!("the never-answering handler answered: {r:?}"),
        w = signals.started("e") => w,
    };

    server.abort();

    let end = within("the stream to fail", async {
        loop {
            match s.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        }
    })
    .await;
    assert!(
        matches!(
            end,
            Some(Err(RequestError::Connection(
                ConnectionError::ClosedByPeer | ConnectionError::Io(_)
            )))
        ),
        "stream must fail with the transport's end: {end:?}"
    );
    let r = within("the pending response to fail", rr).await;
    assert!(matches!(r, Err(RequestError::Connection(_))), "{r:?}");
    let r = within(
        "a new request to fail",
        client.request_response(pm("a", "b")),
    )
    .await;
    assert!(matches!(r, Err(RequestError::Connection(_))), "{r:?}");
    assert!(client.closed_reason().is_some());

    stream_handler
        .dropped("the dead server's stream handler to be dropped")
        .await;
    rr_handler
        .dropped("the dead server's response handler to be dropped")
        .await;
}

/// Graceful shutdown with a long grace period: a stream started before
/// shutdown runs to completion, a request made while draining is rejected,
/// and the server then closes the connection and returns.
pub async fn graceful_shutdown_drains<K: TransportKind>() {
    let (probe, _signals) = Probe::new(1);
    let responder: Arc<dyn RSocket> = Arc::new(TckResponder::new(probe));
    let mut server = TestServer::<K>::start(
        responder.clone(),
        Config::default(),
        Duration::from_secs(10),
    )
    .await;
    let client = server
        .connect(ClientBuilder::new().responder(responder))
        .await;
    let server_side = server.accepted().await;

    // With a window of 1 the stream cannot finish before we consume it.
    let mut s = client.with_prefetch(1).request_stream(pm("count", "d:5"));
    assert_eq!(next_item("first item", &mut s).await.data, "d-0");

    server.shutdown();
    // Draining begins with ERROR[CONNECTION_CLOSE]: once the server has
    // seen the signal its own requester refuses new requests locally, and
    // the client does once the frame has arrived (until then its requests
    // reach the server, which answers them or, once draining, REJECTs
    // them).
    within("the server to start draining", async {
        loop {
            match server_side.request_response(pm("a", "b")).await {
                Err(RequestError::ConnectionClosing {
                    initiator: Initiator::Local,
                }) => break,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => panic!("unexpected error while waiting for drain: {e}"),
            }
        }
    })
    .await;
    within("the client to see CONNECTION_CLOSE", async {
        loop {
            match client.request_response(pm("a", "b")).await {
                Err(RequestError::ConnectionClosing {
                    initiator: Initiator::Remote,
                }) => break,
                Ok(_) => tokio::task::yield_now().await,
                Err(RequestError::Stream(e)) if e.code == ErrorCode::REJECTED => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("unexpected error while waiting for drain: {e}"),
            }
        }
    })
    .await;
    assert!(!client.is_closed(), "open streams keep the connection open");

    let rest = collect("the in-flight stream", s).await;
    assert_eq!(rest, strings(&["d-1", "d-2", "d-3", "d-4"]));

    server.finished().await.expect("serve");
    let end = within("the client connection to end", client.closed()).await;
    assert!(
        matches!(&end, ConnectionError::Remote { code, .. } if *code == ErrorCode::CONNECTION_CLOSE),
        "{end:?}"
    );
    assert_eq!(end.initiator(), Initiator::Remote);
    let r = within(
        "a request after close",
        client.request_response(pm("a", "b")),
    )
    .await;
    assert!(matches!(r, Err(RequestError::Connection(_))), "{r:?}");
}

/// Graceful shutdown with a short grace period and a stream that never
/// ends: once the grace period is over the client sees the connection end,
/// the handler is dropped, and the server returns.
pub async fn graceful_shutdown_grace_expires<K: TransportKind>() {
    let (probe, mut signals) = Probe::new(1);
    let mut server = TestServer::<K>::start(
        Arc::new(TckResponder::new(probe)),
        Config::default(),
        Duration::from_millis(200),
    )
    .await;
    let client = server.connect(ClientBuilder::new()).await;
    drop(server.accepted().await);

    let mut s = client.request_stream(pd("hang"));
    assert_eq!(next_item("first item", &mut s).await.data, "first");
    let handler = signals.started("hang").await;

    server.shutdown();
    let end = within("the connection to end after the grace period", s.next()).await;
    assert!(
        matches!(
            &end,
            Some(Err(RequestError::Connection(ConnectionError::Remote { code, .. })))
                if *code == ErrorCode::CONNECTION_ERROR
        ),
        "the server closes with ERROR[CONNECTION_ERROR]: {end:?}"
    );
    handler
        .dropped("the hanging handler to be dropped at close")
        .await;
    server.finished().await.expect("serve");
}

/// Twenty clients at once against one server, each doing a
/// request/response and a stream.
pub async fn many_connections<K: TransportKind>() {
    const CLIENTS: usize = 20;
    let (probe, _signals) = Probe::new(1);
    let mut server = TestServer::<K>::start(
        Arc::new(TckResponder::new(probe)),
        Config::default(),
        Duration::from_secs(10),
    )
    .await;
    let clients = (0..CLIENTS).map(|i| {
        let server = &server;
        async move {
            let client = server.connect(ClientBuilder::new()).await;
            ping(&client).await;
            let s = client
                .with_prefetch(3)
                .request_stream(pm("count", &format!("c{i}:12")));
            let got: Vec<_> = s.collect::<Vec<_>>().await;
            (i, got.iter().map(render).collect::<Vec<_>>(), client)
        }
    });
    let results = within("20 clients", join_all(clients)).await;
    for (i, got, _client) in &results {
        let want: Vec<String> = (0..12).map(|j| format!("c{i}-{j}")).collect();
        assert_eq!(got, &want, "client {i}");
    }
    for _ in 0..CLIENTS {
        drop(server.accepted().await);
    }
}
