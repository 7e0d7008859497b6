//! Resumption through the facade: `connect_resumable_to` by URI against a
//! `Server` with `resumption`, over TCP and WebSocket. (Cuts, replays and
//! failures are tested with the fault-injection proxy in the `tests`
//! crate; this checks the URI plumbing.)

use std::time::Duration;

use rsocket::prelude::*;
use rsocket::{
    request_response_fn, ClientBuilder, ConnectError, Listener, Payload, ResumeOptions, Server,
    ServerResumeOptions,
};

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

async fn resumable_echo(uri: &str) -> String {
    let listener = Listener::bind(uri).await.expect("bind");
    let bound = listener.local_uri();
    let server = Server::new(|_setup, _requester| async {
        Ok(request_response_fn(
            |req: Payload| async move { Ok(Some(req)) },
        ))
    })
    .resumption(ServerResumeOptions::default());
    tokio::spawn(server.serve(listener));
    bound
}

#[tokio::test]
async fn connect_resumable_by_uri_over_tcp_and_ws() {
    for uri in ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/rs"] {
        let bound = resumable_echo(uri).await;
        let client = within(
            "connect",
            ClientBuilder::new()
                .resume(ResumeOptions {
                    token: Some(bytes::Bytes::from_static(b"facade")),
                    ..ResumeOptions::default()
                })
                .connect_resumable_to(&bound),
        )
        .await
        .expect("connected");
        let reply = within("echo", client.request_response(Payload::from("hi")))
            .await
            .expect("answered");
        assert_eq!(reply.expect("payload").data, "hi");
        client.close();
        within("close", client.closed()).await;
    }
}

#[tokio::test]
async fn connect_resumable_reports_a_bad_uri() {
    let err = ClientBuilder::new()
        .connect_resumable_to("nope://x")
        .await
        .expect_err("bad uri");
    assert!(matches!(err, ConnectError::Uri(_)), "{err}");
}
