//! A generated RPC client over the load balancer: the same client type that
//! takes a `Requester` takes a `Balancer`, and calls spread over the
//! members.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rsocket_balance::{Balancer, MemberState, RoundRobin, TcpConnector};
use rsocket_core::{
    async_trait, ClientBuilder, Payload, RSocket, RequestError, Requester, ServeError, Server,
    SetupInfo,
};
use rsocket_rpc_tests::greeter::admin_client::AdminClient;
use rsocket_rpc_tests::greeter::greeter_client::GreeterClient;
use rsocket_rpc_tests::greeter::HelloRequest;
use rsocket_rpc_tests::service::Probe;
use rsocket_transport_tcp::TcpListener;
use tokio::task::JoinHandle;

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

/// Drops the connection under the first request any server receives (the
/// request is then in flight, written and unanswered); answers the rest.
struct DropsTheFirst {
    router: rsocket_rpc::Router,
    connection: Requester,
    armed: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl RSocket for DropsTheFirst {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            self.connection.abort();
            return futures::future::pending().await;
        }
        self.router.request_response(req).await
    }
}

/// Two servers behind a balancer; the first request that reaches either
/// loses its connection while in flight.
async fn dropping_pair() -> (
    Balancer<usize>,
    Arc<AtomicUsize>,
    Vec<JoinHandle<Result<(), ServeError>>>,
) {
    let armed = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for i in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (armed, calls) = (armed.clone(), calls.clone());
        let server = Server::new(move |_setup: SetupInfo, connection: Requester| {
            let (armed, calls) = (armed.clone(), calls.clone());
            async move {
                let (probe, _events) = Probe::new();
                Ok(DropsTheFirst {
                    router: rsocket_rpc_tests::router(probe),
                    connection,
                    armed,
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
        .max_retries(2)
        .build_from_list(targets);
    // Both members ready, so that the retry has somewhere to go.
    balancer
        .wait_until(|members| {
            members
                .iter()
                .filter(|m| m.state == MemberState::Ready)
                .count()
                == 2
        })
        .await;
    (balancer, calls, servers)
}

#[tokio::test]
async fn an_idempotent_method_is_sent_again_after_its_connection_died() {
    let (balancer, calls, servers) = dropping_pair().await;
    let admin = AdminClient::new(balancer.clone()).with_timeout(Duration::from_secs(10));
    // `Admin/Ping` is marked idempotent in the .proto: the balancer sends
    // it again to the other server, and the caller sees only the answer.
    let item = admin.ping(()).await.expect("answered after the retry");
    assert_eq!(item.into_inner().id, "pong");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "sent twice");
    for s in servers {
        s.abort();
    }
}

#[tokio::test]
async fn a_method_not_marked_idempotent_fails_when_its_connection_died() {
    let (balancer, calls, servers) = dropping_pair().await;
    let client = GreeterClient::new(balancer.clone()).with_timeout(Duration::from_secs(10));
    // `Greeter/SayHello` is not marked: the server may have processed it,
    // so the failure reaches the caller and nothing is sent again.
    let status = client
        .say_hello(HelloRequest {
            name: "once".into(),
            count: 0,
        })
        .await
        .expect_err("the connection died under the call");
    assert_eq!(status.code(), rsocket_rpc::Code::Unavailable, "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "sent once");
    for s in servers {
        s.abort();
    }
}
