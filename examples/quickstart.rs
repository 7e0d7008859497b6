//! Quick start: a TCP server and a client in one process, showing every
//! interaction.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! * request/response, fire-and-forget and metadata push from the client;
//! * a request/stream with a slow consumer: the server's producer is polled
//!   only when the client grants credit, so its output comes in REQUEST_N
//!   batches (prefetch 8: 8 at once, then 4 each time the client has
//!   consumed half the window);
//! * a request/channel that upper-cases what the client sends;
//! * the server calling the client back over the same connection;
//! * a graceful close and a graceful server shutdown.
//!
//! Set `RUST_LOG=rsocket_core=trace` to see every frame.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use rsocket::prelude::*;
use rsocket::{
    request_response_fn, ClientBuilder, Listener, Payload, PayloadStream, RequestError, Requester,
    Server, StreamError,
};

/// The server's responder.
#[derive(Default)]
struct ServerResponder {
    fnf_count: AtomicUsize,
}

#[async_trait]
impl RSocket for ServerResponder {
    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        match request.data_utf8() {
            Some("fail") => Err(StreamError::application("asked to fail").into()),
            name => Ok(Some(Payload::from(format!(
                "hello, {}",
                name.unwrap_or("?")
            )))),
        }
    }

    async fn fire_and_forget(&self, request: Payload) -> Result<(), RequestError> {
        let n = self.fnf_count.fetch_add(1, Ordering::SeqCst) + 1;
        println!("server: fire-and-forget #{n}: {:?}", request.data_utf8());
        Ok(())
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        println!(
            "server: metadata push {:?}",
            String::from_utf8_lossy(&metadata)
        );
        Ok(())
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        let count: usize = request
            .data_utf8()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Each item is produced only when the engine polls, which it does
        // only while the client has granted credit.
        futures::stream::iter(0..count)
            .map(|i| {
                println!("  server: produced item {i}");
                Ok(Payload::from(i.to_string()))
            })
            .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(async { Ok(first) })
            .chain(rest)
            .map_ok(|p| Payload::from(p.data_utf8().unwrap_or_default().to_uppercase()))
            .boxed()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // --- server -----------------------------------------------------------
    let listener = Listener::bind("tcp://127.0.0.1:0").await?;
    let uri = listener.local_uri();
    println!("server: listening on {uri}");
    let (callback_tx, mut callback_rx) = tokio::sync::mpsc::channel::<Requester>(1);
    let server = Server::new(move |setup: rsocket::SetupInfo, client: Requester| {
        let callback_tx = callback_tx.clone();
        async move {
            println!(
                "server: SETUP from {:?}, data {} / metadata {}, keepalive {:?}",
                setup.peer.addr,
                setup.data_mime_type,
                setup.metadata_mime_type,
                setup.keepalive_interval
            );
            // Keep the requester pointing back at the client.
            let _ = callback_tx.send(client).await;
            Ok(ServerResponder::default())
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(
        server
            .grace_period(Duration::from_secs(2))
            .serve_with_shutdown(listener, async {
                let _ = stop_rx.await;
            }),
    );

    // --- client -----------------------------------------------------------
    // The client answers the server's requests with a closure.
    let client = ClientBuilder::new()
        .keepalive(Duration::from_secs(5), Duration::from_secs(30))
        .responder(request_response_fn(|request: Payload| async move {
            println!("client: server asked {:?}", request.data_utf8());
            Ok(Some(Payload::from("client is fine")))
        }))
        .connect_to(&uri)
        .await?;

    // request/response
    let reply = client.request_response(Payload::from("world")).await?;
    println!(
        "client: request/response -> {:?}",
        reply.as_ref().and_then(Payload::data_utf8)
    );
    match client.request_response(Payload::from("fail")).await {
        Err(e) => println!("client: request/response error -> {e}"),
        Ok(r) => println!("client: unexpected success {r:?}"),
    }

    // fire-and-forget and metadata push
    client.fire_and_forget(Payload::from("ping 1")).await?;
    client.fire_and_forget(Payload::from("ping 2")).await?;
    client
        .metadata_push(Bytes::from_static(b"config-version=7"))
        .await?;

    // request/stream with a slow consumer: watch the producer run in batches
    println!("client: request/stream of 20 items, prefetch 8, slow consumer");
    let mut stream = client.with_prefetch(8).request_stream(Payload::from("20"));
    while let Some(item) = stream.next().await {
        println!("client: consumed item {}", item?.data_utf8().unwrap_or("?"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // request/channel
    let outbound = futures::stream::iter(["b", "c", "d"].map(Payload::from));
    let echoed: Vec<String> = client
        .request_channel(Payload::from("a"), outbound)
        .map_ok(|p| p.data_utf8().unwrap_or_default().to_owned())
        .try_collect()
        .await?;
    println!("client: request/channel -> {echoed:?}");

    // the server calls the client over the same connection
    let back = callback_rx
        .recv()
        .await
        .ok_or_else(|| anyhow::anyhow!("no callback"))?;
    let answer = back.request_response(Payload::from("how are you?")).await?;
    println!(
        "server: client answered {:?}",
        answer.as_ref().and_then(Payload::data_utf8)
    );

    // graceful close from the client, then a graceful server shutdown
    client.close();
    println!("client: connection closed: {}", client.closed().await);
    let _ = stop_tx.send(());
    server_task.await??;
    println!("done");
    Ok(())
}
