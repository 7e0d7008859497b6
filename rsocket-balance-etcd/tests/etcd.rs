//! Against a real etcd 3.4 (Debian's etcd-server, unpacked under
//! target/etcd by scripts/fetch-etcd.sh), run here on 127.0.0.1 with port-0
//! client and peer URLs and spoken to over gRPC.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rsocket_balance::{Balancer, MemberState, TcpConnector};
use rsocket_balance_etcd::Etcd;
use rsocket_core::{request_response_fn, Payload, Server};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct EtcdProcess {
    child: Child,
    endpoint: String,
    dir: PathBuf,
}

impl EtcdProcess {
    fn start() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // Tests run at once in this process: a directory each.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let dir = root.join(format!("target/etcd-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (child, endpoint) = Self::spawn(&dir, "http://127.0.0.1:0");
        Self {
            child,
            endpoint,
            dir,
        }
    }

    /// Kills etcd and starts it again on the same data and client address.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, endpoint) = Self::spawn(&self.dir, &self.endpoint);
        assert_eq!(endpoint, self.endpoint, "etcd came back elsewhere");
        self.child = child;
    }

    fn spawn(dir: &Path, client_url: &str) -> (Child, String) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin = std::env::var_os("ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/etcd/usr/bin/etcd"));
        assert!(
            bin.exists(),
            "etcd not found at {}: run scripts/fetch-etcd.sh (scripts/test.sh does)",
            bin.display()
        );
        let peer = "http://127.0.0.1:0";
        let mut child = Command::new(bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir)
            .args(["--listen-client-urls", client_url])
            .args(["--advertise-client-urls", client_url])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", "t=http://127.0.0.1:0"])
            // Fast elections, and a minimum lease TTL of 1 s.
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start etcd");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the bound client port from the log, then keeps draining it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving insecure client requests on ").nth(1) {
                    let addr = rest.split(',').next().unwrap_or_default().trim().to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("etcd did not report its client address");
        (child, format!("http://{addr}"))
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP server answering its name.
async fn serve(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = rsocket_transport_tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(move |_setup, _requester| async move {
        Ok(request_response_fn(move |_req| async move {
            Ok(Some(Payload::from(name)))
        }))
    });
    let task = tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    (addr, task)
}

#[derive(Debug, Default, Clone)]
struct Tally {
    by_server: std::collections::BTreeMap<String, usize>,
    failures: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registered_servers_come_and_go_while_requests_succeed() {
    let etcd_process = EtcdProcess::start();
    let etcd = Etcd::connect(&etcd_process.endpoint).await.unwrap();
    let prefix = "/services/greeter/";
    let ttl = Duration::from_secs(1);

    let (addr1, task1) = serve("s1").await;
    let (addr2, _task2) = serve("s2").await;
    let reg1 = etcd
        .register(prefix, "s1", &addr1.to_string(), ttl)
        .await
        .unwrap();
    let reg2 = etcd
        .register(prefix, "s2", &addr2.to_string(), ttl)
        .await
        .unwrap();
    assert_eq!(etcd.list(prefix).await.unwrap().0.len(), 2);

    let targets = etcd.watch(prefix, |value: &str| {
        value.parse::<SocketAddr>().ok().map(TcpConnector::new)
    });
    let b = Balancer::builder()
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .build(targets);
    let ready = |n: usize| {
        let b = b.clone();
        async move {
            b.wait_until(|m| m.iter().filter(|m| m.state == MemberState::Ready).count() == n)
                .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ready(2))
        .await
        .expect("s1, s2 ready");

    // Requests run all through, marked idempotent (a killed server may
    // have had one in flight).
    let stop = Arc::new(AtomicBool::new(false));
    let (tally_tx, mut tally) = watch::channel(Tally::default());
    let client = b.idempotent();
    let stop_flag = stop.clone();
    let load = tokio::spawn(async move {
        while !stop_flag.load(Ordering::SeqCst) {
            let r = rsocket_core::RSocket::request_response(&client, Payload::from("x")).await;
            tally_tx.send_modify(|t| match r {
                Ok(Some(p)) => {
                    *t.by_server
                        .entry(p.data_utf8().unwrap_or("?").to_owned())
                        .or_default() += 1
                }
                _ => t.failures += 1,
            });
        }
    });
    let served = |name: &'static str, at_least: usize| {
        move |t: &Tally| t.by_server.get(name).copied().unwrap_or(0) >= at_least
    };
    let wait = Duration::from_secs(20);
    tokio::time::timeout(wait, tally.wait_for(served("s1", 10)))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(wait, tally.wait_for(served("s2", 10)))
        .await
        .unwrap()
        .unwrap();

    // s1 dies without deregistering: its key goes when the lease expires.
    task1.abort();
    drop(reg1);
    let s1_key = format!("{prefix}s1");
    tokio::time::timeout(wait, b.wait_until(|m| m.iter().all(|m| m.key != s1_key)))
        .await
        .expect("s1 dropped out when its lease expired");
    assert_eq!(etcd.list(prefix).await.unwrap().0.len(), 1);
    let s2_before = tally.borrow().by_server.get("s2").copied().unwrap_or(0);
    tokio::time::timeout(wait, tally.wait_for(served("s2", s2_before + 10)))
        .await
        .unwrap()
        .unwrap();

    // A new server registers and gets traffic.
    let (addr3, _task3) = serve("s3").await;
    let reg3 = etcd
        .register(prefix, "s3", &addr3.to_string(), ttl)
        .await
        .unwrap();
    tokio::time::timeout(wait, tally.wait_for(served("s3", 10)))
        .await
        .unwrap()
        .unwrap();

    // A clean deregistration removes s2 at once.
    reg2.deregister().await.unwrap();
    let s2_key = format!("{prefix}s2");
    tokio::time::timeout(wait, b.wait_until(|m| m.iter().all(|m| m.key != s2_key)))
        .await
        .expect("s2 removed");

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let t = tally.borrow().clone();
    assert_eq!(t.failures, 0, "{t:?}");
    let members: Vec<_> = b.members().into_iter().map(|m| m.key).collect();
    assert_eq!(members, [format!("{prefix}s3")]);
    reg3.deregister().await.unwrap();
}

/// etcd's `LeaseRevokeRequest`, for revoking a lease behind a
/// registration's back.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRevoke {
    #[prost(int64, tag = "1")]
    id: i64,
}

/// etcd's `LeaseRevokeResponse` (its header is not needed).
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRevoked {}

async fn revoke_lease(endpoint: &str, id: i64) {
    let _: LeaseRevoked = etcd_call(
        endpoint,
        "/etcdserverpb.Lease/LeaseRevoke",
        LeaseRevoke { id },
    )
    .await;
}

/// One unary call to etcd's gRPC API, with messages written by hand.
async fn etcd_call<Q, A>(endpoint: &str, path: &'static str, request: Q) -> A
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
{
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(request),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"))
    .into_inner()
}

/// The next change of a raw watch, as `+key=value` or `-key`.
async fn next_change<S>(changes: &mut S) -> String
where
    S: futures::Stream<Item = rsocket_balance::Change<String, String>> + Unpin,
{
    use futures::StreamExt;
    let change = tokio::time::timeout(Duration::from_secs(20), changes.next())
        .await
        .expect("a change within 20 s")
        .expect("the watch goes on");
    match change {
        rsocket_balance::Change::Insert(k, v) => format!("+{k}={v}"),
        rsocket_balance::Change::Remove(k) => format!("-{k}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_values_lost_leases_and_an_etcd_restart_are_followed() {
    let mut etcd_process = EtcdProcess::start();
    let etcd = Etcd::connect(&etcd_process.endpoint).await.unwrap();
    let prefix = "/services/echo/";
    let ttl = Duration::from_secs(1);
    let reg_v1 = etcd.register(prefix, "a", "v1", ttl).await.unwrap();
    let mut changes = Box::pin(etcd.watch(prefix, |v: &str| Some(v.to_owned())));
    assert_eq!(next_change(&mut changes).await, "+/services/echo/a=v1");

    // A new value under the same key: an insert, which replaces.
    let reg_v2 = etcd.register(prefix, "a", "v2", ttl).await.unwrap();
    assert_eq!(next_change(&mut changes).await, "+/services/echo/a=v2");
    drop(reg_v1); // its lease holds no key any more

    // The lease is revoked behind the registration's back: the key goes,
    // and the registration puts it back under a new lease.
    let lost = reg_v2.lease_id();
    revoke_lease(&etcd_process.endpoint, lost).await;
    assert_eq!(next_change(&mut changes).await, "-/services/echo/a");
    assert_eq!(next_change(&mut changes).await, "+/services/echo/a=v2");
    // The new lease is published right after the key is put back.
    tokio::time::timeout(Duration::from_secs(5), async {
        while reg_v2.lease_id() == lost {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("registered again under a new lease");

    // etcd restarts: the watch breaks, lists again and follows on.
    etcd_process.restart();
    // The client reconnects on its own; calls fail until etcd is back.
    let reg_b = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match etcd.register(prefix, "b", "w", ttl).await {
                Ok(r) => break r,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("etcd back within 20 s");
    assert_eq!(next_change(&mut changes).await, "+/services/echo/b=w");
    reg_b.deregister().await.unwrap();
    assert_eq!(next_change(&mut changes).await, "-/services/echo/b");
    reg_v2.deregister().await.unwrap();
    assert_eq!(next_change(&mut changes).await, "-/services/echo/a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_lists_and_follows_every_key() {
    let etcd_process = EtcdProcess::start();
    let etcd = Etcd::connect(&etcd_process.endpoint).await.unwrap();
    let ttl = Duration::from_secs(5);
    let reg_a = etcd.register("", "a", "1", ttl).await.unwrap();
    let (kvs, _revision) = etcd.list("").await.expect("list every key");
    assert_eq!(kvs, [("a".to_owned(), "1".to_owned())]);
    let mut changes = Box::pin(etcd.watch("", |v: &str| Some(v.to_owned())));
    assert_eq!(next_change(&mut changes).await, "+a=1");
    let reg_b = etcd.register("/deep/", "b", "2", ttl).await.unwrap();
    assert_eq!(next_change(&mut changes).await, "+/deep/b=2");
    reg_a.deregister().await.unwrap();
    assert_eq!(next_change(&mut changes).await, "-a");
    reg_b.deregister().await.unwrap();
    assert_eq!(next_change(&mut changes).await, "-/deep/b");
}

/// etcd's `AlarmRequest`: `action` 1 activates, 2 deactivates; `alarm` 1
/// is NOSPACE, under which etcd refuses every put (leases still work).
#[derive(Clone, PartialEq, prost::Message)]
struct Alarm {
    #[prost(int32, tag = "1")]
    action: i32,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int32, tag = "3")]
    alarm: i32,
}

/// etcd's `AlarmResponse` (not needed).
#[derive(Clone, PartialEq, prost::Message)]
struct AlarmAnswer {}

async fn no_space_alarm(endpoint: &str, on: bool) {
    let request = Alarm {
        action: if on { 1 } else { 2 },
        member_id: 0,
        alarm: 1,
    };
    let _: AlarmAnswer = etcd_call(endpoint, "/etcdserverpb.Maintenance/Alarm", request).await;
}

/// How many LeaseGrant calls etcd has handled, from its `/metrics`.
async fn lease_grants(endpoint: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{") && l.contains("grpc_method=\"LeaseGrant\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_registration_retries_at_its_pace_while_etcd_refuses_it() {
    let etcd_process = EtcdProcess::start();
    let etcd = Etcd::connect(&etcd_process.endpoint).await.unwrap();
    let prefix = "/services/echo/";
    // Keep-alive (and retry) period: a third of the TTL.
    let reg = etcd
        .register(prefix, "a", "v", Duration::from_secs(1))
        .await
        .unwrap();
    let mut changes = Box::pin(etcd.watch(prefix, |v: &str| Some(v.to_owned())));
    assert_eq!(next_change(&mut changes).await, "+/services/echo/a=v");
    // etcd refuses new leases and puts; the registration's lease is lost.
    no_space_alarm(&etcd_process.endpoint, true).await;
    assert!(
        etcd.register(prefix, "probe", "x", Duration::from_secs(1))
            .await
            .is_err(),
        "etcd refuses registrations under the NOSPACE alarm"
    );
    let before = lease_grants(&etcd_process.endpoint).await;
    revoke_lease(&etcd_process.endpoint, reg.lease_id()).await;
    assert_eq!(next_change(&mut changes).await, "-/services/echo/a");
    // Over one second, about three attempts (one per period), not a
    // tight loop of calls.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grants = lease_grants(&etcd_process.endpoint).await - before;
    assert!(
        (1..=10).contains(&grants),
        "{grants} lease grants asked for in one second"
    );
    // etcd takes them again: the key is back.
    no_space_alarm(&etcd_process.endpoint, false).await;
    assert_eq!(next_change(&mut changes).await, "+/services/echo/a=v");
    reg.deregister().await.unwrap();
    assert_eq!(next_change(&mut changes).await, "-/services/echo/a");
}
