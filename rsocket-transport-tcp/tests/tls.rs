//! RSocket over TLS on TCP with a self-signed certificate generated here
//! (feature `tls`).
#![cfg(feature = "tls")]

use rsocket_core::async_trait;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rsocket_core::{ClientBuilder, Payload, PayloadStream, RSocket, RequestError, Server};
use rsocket_transport_tcp::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rsocket_transport_tcp::tls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use rsocket_transport_tcp::tls::{connect_tls, TlsListener};

const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {LIMIT:?}"),
    }
}

struct Echo;
#[async_trait]
impl RSocket for Echo {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }
    fn request_stream(&self, req: Payload) -> PayloadStream {
        let n: usize = req.data_utf8().and_then(|s| s.parse().ok()).unwrap_or(0);
        futures::stream::iter((0..n).map(|i| Ok(Payload::from(i.to_string())))).boxed()
    }
}

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

fn serve(listener: TlsListener) -> tokio::sync::mpsc::Receiver<Option<std::net::SocketAddr>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let server = Server::new(move |setup: rsocket_core::SetupInfo, _r| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(setup.peer.addr).await;
            Ok(Arc::new(Echo) as Arc<dyn RSocket>)
        }
    });
    tokio::spawn(server.serve_with_shutdown(listener, futures::future::pending()));
    rx
}

#[tokio::test]
async fn tls_request_response_and_stream() {
    let (server_tls, client_tls) = tls_configs();
    let listener = TlsListener::bind("127.0.0.1:0", server_tls).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut peers = serve(listener);

    let transport = within(connect_tls(addr, "localhost", client_tls))
        .await
        .unwrap();
    let client = ClientBuilder::new().connect(transport).unwrap();
    let reply = within(client.request_response(Payload::from("secret")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("secret"));
    let items: Vec<_> = within(client.request_stream(Payload::from("300")).collect()).await;
    assert_eq!(items.len(), 300);
    assert_eq!(items[299].as_ref().unwrap().data_utf8(), Some("299"));
    let peer = within(peers.recv()).await.unwrap();
    assert!(peer.is_some_and(|a| a.ip().is_loopback()));
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let (server_tls, _) = tls_configs();
    let (_, other_client_tls) = tls_configs();
    let listener = TlsListener::bind("127.0.0.1:0", server_tls).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _peers = serve(listener);
    assert!(within(connect_tls(addr, "localhost", other_client_tls))
        .await
        .is_err());
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let (server_tls, _) = tls_configs();
    let listener = TlsListener::bind("127.0.0.1:0", server_tls)
        .await
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(200));
    let addr = listener.local_addr().unwrap();
    let _peers = serve(listener);
    // Connects and never starts TLS: the server closes it (the default
    // timeout, 10 s, would pass the bound below).
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn at_most_max_pending_handshakes_run_at_once() {
    let (server_tls, client_tls) = tls_configs();
    let listener = TlsListener::bind("127.0.0.1:0", server_tls)
        .await
        .unwrap()
        .with_max_pending_handshakes(1);
    let addr = listener.local_addr().unwrap();
    let _peers = serve(listener);
    // One silent connection takes the only slot (it is accepted first: the
    // TLS client below connects after it).
    let stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio::spawn(connect_tls(addr, "localhost", client_tls));
    let held = tokio::time::timeout(Duration::from_millis(300), &mut tls).await;
    assert!(held.is_err(), "a second handshake ran beside the first");
    // The silent peer leaves: its handshake fails and the slot is free.
    drop(stalled);
    let transport = within(tls).await.unwrap().unwrap();
    let client = ClientBuilder::new().connect(transport).unwrap();
    let reply = within(client.request_response(Payload::from("after")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("after"));
}

#[tokio::test]
async fn stalled_handshake_does_not_block_other_accepts() {
    let (server_tls, client_tls) = tls_configs();
    let listener = TlsListener::bind("127.0.0.1:0", server_tls).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _peers = serve(listener);
    // Connects and never starts TLS.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let transport = within(connect_tls(addr, "localhost", client_tls))
        .await
        .unwrap();
    let client = ClientBuilder::new().connect(transport).unwrap();
    let reply = within(client.request_response(Payload::from("served")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data_utf8(), Some("served"));
}
