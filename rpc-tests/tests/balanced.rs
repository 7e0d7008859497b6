//! A generated RPC client over the load balancer: the same client type that
//! takes a `Requester` takes a `Balancer`, and calls spread over the
//! members.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rsocket_balance::{Balancer, RoundRobin, TcpConnector};
use rsocket_core::{async_trait, ClientBuilder, Payload, RSocket, RequestError, Server, SetupInfo};
use rsocket_rpc_tests::greeter::greeter_client::GreeterClient;
use rsocket_rpc_tests::greeter::HelloRequest;
use rsocket_rpc_tests::service::Probe;
use rsocket_transport_tcp::TcpListener;

/// Counts the request/responses a server's router answers.
struct Counting {
    router: rsocket_rpc::Router,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl RSocket for Counting {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.router.request_response(req).await
    }
}

#[tokio::test]
async fn generated_client_over_a_balancer() {
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    let mut counts = Vec::new();
    for i in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicUsize::new(0));
        counts.push(calls.clone());
        let server = Server::new(move |_setup: SetupInfo, _requester| {
            let calls = calls.clone();
            async move {
                let (probe, _events) = Probe::new();
                Ok(Counting {
                    router: rsocket_rpc_tests::router(probe),
                    calls,
                })
            }
        });
        servers.push(tokio::spawn(server.serve(listener)));
        let connector = TcpConnector::new(addr)
            .with_builder(ClientBuilder::new().setup(rsocket_rpc::setup_params()));
        targets.push((i, connector));
    }
    let balancer = Balancer::builder()
        .strategy(RoundRobin::new())
        .wait_for_member(Duration::from_secs(10))
        .build_from_list(targets);
    let client = GreeterClient::new(balancer.clone()).with_timeout(Duration::from_secs(10));
    for i in 0..30 {
        let reply = client
            .say_hello(HelloRequest {
                name: format!("n{i}"),
                count: 0,
            })
            .await
            .expect("reply");
        assert_eq!(reply.into_inner().message, format!("Hello n{i}"));
    }
    // Round robin: every member served exactly a third.
    let served: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(served, [10, 10, 10]);
    for s in servers {
        s.abort();
    }
}
