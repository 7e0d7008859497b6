//! `wss://` against a server with a self-signed certificate generated
//! here: trusted through `--ca-file`, refused without it, accepted with
//! `--insecure`.
#![cfg(feature = "tls")]

mod common;

use std::sync::Arc;

use common::run;
use rsocket::rsocket_transport_ws::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rsocket::rsocket_transport_ws::tls::rustls::{self, ServerConfig};
use rsocket::rsocket_transport_ws::WsListener;
use rsocket::{request_response_fn, Payload, Server};

/// Serves an echo over `wss://localhost:PORT/rs`; returns the URI and the
/// path of the certificate's PEM file.
async fn serve_wss(tag: &str) -> (String, std::path::PathBuf) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = std::env::temp_dir().join(format!("rsocket-cli-{tag}-{}.pem", std::process::id()));
    std::fs::write(&pem, certified.cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_path("/rs")
        .with_tls(Arc::new(tls));
    let port = listener.local_addr().unwrap().port();
    let server = Server::new(|_setup, _requester| async {
        Ok(request_response_fn(|p: Payload| async move { Ok(Some(p)) }))
    });
    tokio::spawn(server.serve(listener));
    (format!("wss://localhost:{port}/rs"), pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_ca_file_and_insecure() {
    let (uri, pem) = serve_wss("ca").await;
    let pem_arg = pem.to_str().unwrap();

    let r = run(&[&uri, "-d", "secret", "--ca-file", pem_arg], "").await;
    r.expect_code(0);
    assert_eq!(r.stdout, "secret\n");

    // Not trusted without the CA file: a connection error, exit 2.
    let r = run(&[&uri, "-d", "secret"], "").await;
    r.expect_code(2);
    assert_eq!(r.stdout, "");

    let r = run(&[&uri, "-d", "anyway", "--insecure"], "").await;
    r.expect_code(0);
    assert_eq!(r.stdout, "anyway\n");

    let r = run(&[&uri, "--ca-file", "/nonexistent.pem"], "").await;
    r.expect_code(2);
    assert!(r.stderr.contains("/nonexistent.pem"), "{}", r.stderr);
    let _ = std::fs::remove_file(pem);
}
