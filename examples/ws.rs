//! RSocket over WebSocket: a server and a client in one process.
//!
//! ```text
//! cargo run --example ws
//! ```
//!
//! The server accepts upgrades on `/rsocket` and checks the client's
//! `Authorization` handshake header in its acceptor; the client does a
//! request/response and a request/stream. Each RSocket frame travels as one
//! binary WebSocket message.

use rsocket::prelude::*;
use rsocket::{
    ClientBuilder, Listener, Payload, PayloadStream, RequestError, Server, SetupInfo, StreamError,
    TransportOptions,
};

struct Greeter;

#[async_trait]
impl RSocket for Greeter {
    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(Payload::from(format!(
            "hello, {}",
            request.data_utf8().unwrap_or("?")
        ))))
    }

    fn request_stream(&self, request: Payload) -> PayloadStream {
        let count: usize = request
            .data_utf8()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        futures::stream::iter((1..=count).map(|i| Ok(Payload::from(format!("tick {i}"))))).boxed()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // --- server -----------------------------------------------------------
    let listener = Listener::bind("ws://127.0.0.1:0/rsocket").await?;
    let uri = listener.local_uri();
    println!("server: listening on {uri}");
    let server = Server::new(|setup: SetupInfo, _client| async move {
        println!(
            "server: connection from {:?} on {:?}",
            setup.peer.addr, setup.peer.path
        );
        match setup.peer.header("authorization") {
            Some("Bearer demo") => Ok(Greeter),
            _ => Err(StreamError::rejected("missing or wrong token")),
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.serve_with_shutdown(listener, async {
        let _ = stop_rx.await;
    }));

    // --- client -----------------------------------------------------------
    let options = TransportOptions::default().header("authorization", "Bearer demo");
    let client = ClientBuilder::new().connect_to_with(&uri, &options).await?;

    let reply = client.request_response(Payload::from("websocket")).await?;
    println!(
        "client: request/response -> {:?}",
        reply.as_ref().and_then(Payload::data_utf8)
    );

    let mut stream = client.request_stream(Payload::from("5"));
    while let Some(item) = stream.next().await {
        println!("client: stream item {:?}", item?.data_utf8());
    }

    let _ = stop_tx.send(());
    server_task.await??;
    println!("done");
    Ok(())
}
