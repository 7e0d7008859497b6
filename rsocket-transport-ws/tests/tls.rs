//! `wss://` with a self-signed certificate generated here (feature `tls`).
#![cfg(feature = "tls")]

mod common;

use std::sync::Arc;

use common::{serve, within};
use futures::StreamExt;
use rsocket_core::{ClientBuilder, Payload};
use rsocket_transport_ws::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rsocket_transport_ws::tls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use rsocket_transport_ws::{tls, IntoClientRequest, WsConfig, WsListener};

/// A server config for a fresh self-signed `localhost` certificate and a
/// client config that trusts exactly that certificate.
fn tls_configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

#[tokio::test]
async fn wss_request_response_stream_and_headers() {
    let (server_tls, client_tls) = tls_configs();
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_path("/rsocket")
        .with_tls(server_tls);
    let port = listener.local_addr().unwrap().port();
    let mut server = serve(listener);

    let mut request = format!("wss://localhost:{port}/rsocket")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer good".parse().unwrap());
    let transport = within(tls::connect_with(request, &WsConfig::default(), client_tls))
        .await
        .unwrap();
    let client = ClientBuilder::new().connect(transport).unwrap();

    let reply = within(client.request_response(Payload::from("over tls")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("over tls"));
    let items: Vec<_> = within(client.request_stream(Payload::from("50")).collect()).await;
    assert_eq!(items.len(), 50);
    assert_eq!(items[49].as_ref().unwrap().data_utf8(), Some("49"));

    let (setup, _) = within(server.setups.recv()).await.unwrap();
    assert_eq!(setup.peer.path.as_deref(), Some("/rsocket"));
    assert_eq!(setup.peer.header("authorization"), Some("Bearer good"));
    assert!(setup.peer.addr.is_some_and(|a| a.ip().is_loopback()));
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let (server_tls, _) = tls_configs();
    // A client that trusts a different self-signed certificate.
    let (_, other_client_tls) = tls_configs();
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_tls(server_tls);
    let port = listener.local_addr().unwrap().port();
    let _server = serve(listener);
    let err = within(tls::connect(
        &format!("wss://localhost:{port}/"),
        other_client_tls,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err, rsocket_transport_ws::WsError::Io(_)),
        "expected a TLS failure, got {err:?}"
    );
}

#[tokio::test]
async fn plain_client_does_not_stall_tls_listener() {
    // A client that speaks plain WebSocket to the TLS port fails its
    // handshake; a TLS client is still served.
    let (server_tls, client_tls) = tls_configs();
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_tls(server_tls);
    let port = listener.local_addr().unwrap().port();
    let _server = serve(listener);
    let plain = within(rsocket_transport_ws::connect(&format!(
        "ws://localhost:{port}/"
    )))
    .await;
    assert!(plain.is_err());
    let transport = within(tls::connect(
        &format!("wss://localhost:{port}/"),
        client_tls,
    ))
    .await
    .unwrap();
    let client = ClientBuilder::new().connect(transport).unwrap();
    let reply = within(client.request_response(Payload::from("ok")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("ok"));
}
