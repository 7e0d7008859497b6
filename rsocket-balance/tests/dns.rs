//! DNS discovery against an in-process DNS responder on 127.0.0.1 (UDP):
//! no outside network, no change to the machine's resolver.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{count, text, within, TcpServer};
use futures::{Stream, StreamExt};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rsocket_balance::dns::DnsDiscovery;
use rsocket_balance::{Balancer, Change, MemberState, RoundRobin};
use rsocket_core::{Payload, RSocket};
use tokio::net::UdpSocket;

/// The records the responder serves; tests change them as they go. While
/// `failing`, every query gets SERVFAIL, counted in `failed`; queries of
/// the type in `failing_type` too.
#[derive(Clone)]
struct Zone {
    records: Arc<Mutex<Vec<Record>>>,
    failing: Arc<AtomicBool>,
    failing_type: Arc<Mutex<Option<RecordType>>>,
    failed: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Zone {
    fn default() -> Self {
        Self {
            records: Arc::default(),
            failing: Arc::default(),
            failing_type: Arc::default(),
            failed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Zone {
    fn set(&self, records: Vec<Record>) {
        *self.records.lock().unwrap() = records;
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a(host: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(host), 0, RData::A(A(Ipv4Addr::from(ip))))
}

fn aaaa(host: &str, ip: Ipv6Addr) -> Record {
    Record::from_rdata(name(host), 0, RData::AAAA(AAAA(ip)))
}

fn srv(service: &str, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(service),
        0,
        RData::SRV(SRV::new(0, 0, port, name(target))),
    )
}

fn same(x: &Name, y: &Name) -> bool {
    let norm = |n: &Name| n.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    norm(x) == norm(y)
}

/// Answers every query from the zone; NXDOMAIN for unknown names.
async fn start_dns(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(request) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.metadata.authoritative = true;
            let failing_type = *zone.failing_type.lock().unwrap();
            if zone.failing.load(Ordering::SeqCst)
                || request
                    .queries
                    .iter()
                    .any(|q| Some(q.query_type) == failing_type)
            {
                response.metadata.response_code = ResponseCode::ServFail;
                for q in &request.queries {
                    response.add_query(q.clone());
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
                zone.failed.send_modify(|n| *n += 1);
                continue;
            }
            let records = zone.records.lock().unwrap().clone();
            let mut known = false;
            for q in &request.queries {
                response.add_query(q.clone());
                for r in records.iter().filter(|r| same(&r.name, &q.name)) {
                    known = true;
                    if r.record_type() == q.query_type {
                        response.add_answer(r.clone());
                    }
                }
            }
            if !known {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

fn sock(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
}

/// Reads `n` changes as `+addr` / `-addr`, sorted.
async fn next_changes<S>(s: &mut S, n: usize) -> Vec<String>
where
    S: Stream<Item = Change<SocketAddr, SocketAddr>> + Unpin,
{
    let mut out = Vec::new();
    for _ in 0..n {
        let change = within("a DNS change", s.next())
            .await
            .expect("stream ended");
        out.push(match change {
            Change::Insert(k, v) => {
                assert_eq!(k, v);
                format!("+{k}")
            }
            Change::Remove(k) => format!("-{k}"),
        });
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_records_are_followed() {
    let zone = Zone::default();
    zone.set(vec![
        a("svc.test.", [127, 0, 0, 1]),
        a("svc.test.", [127, 0, 0, 2]),
    ]);
    let ns = start_dns(zone.clone()).await;
    let discovery = DnsDiscovery::ip("svc.test.", 7000)
        .nameserver(ns)
        .interval(Duration::from_millis(20));
    let once = discovery.resolve().await.unwrap();
    assert_eq!(
        once,
        BTreeSet::from([sock([127, 0, 0, 1], 7000), sock([127, 0, 0, 2], 7000)])
    );
    let mut s = Box::pin(discovery.changes(|addr| addr).unwrap());
    assert_eq!(
        next_changes(&mut s, 2).await,
        ["+127.0.0.1:7000", "+127.0.0.2:7000"]
    );
    // Addition and removal in one step.
    zone.set(vec![
        a("svc.test.", [127, 0, 0, 2]),
        a("svc.test.", [127, 0, 0, 3]),
    ]);
    assert_eq!(
        next_changes(&mut s, 2).await,
        ["+127.0.0.3:7000", "-127.0.0.1:7000"]
    );
    // Replacement of the whole set.
    zone.set(vec![a("svc.test.", [127, 0, 0, 4])]);
    assert_eq!(
        next_changes(&mut s, 3).await,
        ["+127.0.0.4:7000", "-127.0.0.2:7000", "-127.0.0.3:7000"]
    );
    // The name disappears: every endpoint goes.
    zone.set(Vec::new());
    assert_eq!(next_changes(&mut s, 1).await, ["-127.0.0.4:7000"]);
}

#[tokio::test]
async fn a_failing_lookup_keeps_the_members() {
    let zone = Zone::default();
    zone.set(vec![a("svc.test.", [127, 0, 0, 1])]);
    let ns = start_dns(zone.clone()).await;
    let discovery = DnsDiscovery::ip("svc.test.", 7000)
        .nameserver(ns)
        .interval(Duration::from_millis(20));
    let mut s = Box::pin(discovery.changes(|addr| addr).unwrap());
    assert_eq!(next_changes(&mut s, 1).await, ["+127.0.0.1:7000"]);
    // The nameserver fails eight queries at least (the resolver may ask
    // more than once per round); the stream is polled meanwhile, so a
    // removal would be taken from it.
    let mut failed = zone.failed.subscribe();
    zone.failing.store(true, Ordering::SeqCst);
    let waited = within("eight failed queries", async {
        tokio::select! {
            r = failed.wait_for(|n| *n >= 8) => r.map(|_| None).unwrap_or(None),
            change = s.next() => Some(change),
        }
    })
    .await;
    assert!(
        waited.is_none(),
        "a failed lookup must change nothing: {:?}",
        waited.flatten().map(|c| match c {
            Change::Insert(k, _) => format!("+{k}"),
            Change::Remove(k) => format!("-{k}"),
        })
    );
    // Back, with one more endpoint: only that one is new.
    zone.set(vec![
        a("svc.test.", [127, 0, 0, 1]),
        a("svc.test.", [127, 0, 0, 2]),
    ]);
    zone.failing.store(false, Ordering::SeqCst);
    assert_eq!(next_changes(&mut s, 1).await, ["+127.0.0.2:7000"]);
}

/// Polls `s` until the nameserver has failed `n` more queries: a change
/// taken from the stream meanwhile is returned.
async fn no_change_while_failing<S>(zone: &Zone, s: &mut S, n: usize) -> Option<String>
where
    S: Stream<Item = Change<SocketAddr, SocketAddr>> + Unpin,
{
    let mut failed = zone.failed.subscribe();
    let target = *failed.borrow_and_update() + n;
    within("failed queries", async {
        tokio::select! {
            r = failed.wait_for(|f| *f >= target) => r.map(|_| None).unwrap_or(None),
            change = s.next() => Some(change.map(|c| match c {
                Change::Insert(k, _) => format!("+{k}"),
                Change::Remove(k) => format!("-{k}"),
            }).unwrap_or_else(|| "end".to_owned())),
        }
    })
    .await
}

#[tokio::test]
async fn a_lookup_failing_for_one_address_family_keeps_the_members() {
    let zone = Zone::default();
    zone.set(vec![
        a("svc.test.", [127, 0, 0, 1]),
        aaaa("svc.test.", Ipv6Addr::LOCALHOST),
    ]);
    let ns = start_dns(zone.clone()).await;
    let mut s = Box::pin(
        DnsDiscovery::ip("svc.test.", 7000)
            .nameserver(ns)
            .interval(Duration::from_millis(20))
            .changes(|addr| addr)
            .unwrap(),
    );
    assert_eq!(
        next_changes(&mut s, 2).await,
        ["+127.0.0.1:7000", "+[::1]:7000"]
    );
    // The A query fails (a lost UDP answer, a SERVFAIL) while the AAAA
    // query is answered: the IPv4 endpoint is not gone.
    *zone.failing_type.lock().unwrap() = Some(RecordType::A);
    let change = no_change_while_failing(&zone, &mut s, 8).await;
    assert_eq!(change, None, "a failed A lookup must change nothing");
    // The same for AAAA.
    *zone.failing_type.lock().unwrap() = Some(RecordType::AAAA);
    let change = no_change_while_failing(&zone, &mut s, 8).await;
    assert_eq!(change, None, "a failed AAAA lookup must change nothing");
    // An IPv4-only name whose A query fails while AAAA has no record.
    zone.set(vec![a("svc.test.", [127, 0, 0, 1])]);
    *zone.failing_type.lock().unwrap() = Some(RecordType::A);
    let change = no_change_while_failing(&zone, &mut s, 8).await;
    assert_eq!(change, None, "a failed A lookup must change nothing");
    // Answered again: the IPv6 endpoint is gone, a new one is there.
    zone.set(vec![
        a("svc.test.", [127, 0, 0, 1]),
        a("svc.test.", [127, 0, 0, 2]),
    ]);
    *zone.failing_type.lock().unwrap() = None;
    assert_eq!(
        next_changes(&mut s, 2).await,
        ["+127.0.0.2:7000", "-[::1]:7000"]
    );
}

#[tokio::test]
async fn srv_records_are_followed() {
    let zone = Zone::default();
    let service = "_rsocket._tcp.svc.test.";
    zone.set(vec![
        srv(service, 7001, "one.svc.test."),
        srv(service, 7002, "two.svc.test."),
        a("one.svc.test.", [127, 0, 0, 1]),
        a("two.svc.test.", [127, 0, 0, 2]),
    ]);
    let ns = start_dns(zone.clone()).await;
    let mut s = Box::pin(
        DnsDiscovery::srv(service)
            .nameserver(ns)
            .interval(Duration::from_millis(20))
            .changes(|addr| addr)
            .unwrap(),
    );
    assert_eq!(
        next_changes(&mut s, 2).await,
        ["+127.0.0.1:7001", "+127.0.0.2:7002"]
    );
    // two moves to a new port: a replacement.
    zone.set(vec![
        srv(service, 7001, "one.svc.test."),
        srv(service, 7003, "two.svc.test."),
        a("one.svc.test.", [127, 0, 0, 1]),
        a("two.svc.test.", [127, 0, 0, 2]),
    ]);
    assert_eq!(
        next_changes(&mut s, 2).await,
        ["+127.0.0.2:7003", "-127.0.0.2:7002"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_follows_srv_records_to_tcp_servers() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let servers = [
        TcpServer::start("s0", any).await.unwrap(),
        TcpServer::start("s1", any).await.unwrap(),
        TcpServer::start("s2", any).await.unwrap(),
    ];
    let service = "_rsocket._tcp.greeter.test.";
    let records = |which: &[usize]| -> Vec<Record> {
        let mut r: Vec<_> = which
            .iter()
            .map(|&i| srv(service, servers[i].addr.port(), "greeter.test."))
            .collect();
        r.push(a("greeter.test.", [127, 0, 0, 1]));
        r
    };
    let zone = Zone::default();
    zone.set(records(&[0, 1]));
    let ns = start_dns(zone.clone()).await;
    let targets = DnsDiscovery::srv(service)
        .nameserver(ns)
        .interval(Duration::from_millis(20))
        .tcp()
        .unwrap();
    let b = Balancer::builder()
        .strategy(RoundRobin::new())
        .build(targets);
    within(
        "two ready",
        b.wait_until(|m| count(m, MemberState::Ready) == 2),
    )
    .await;
    for _ in 0..4 {
        b.request_response(Payload::from("x")).await.unwrap();
    }
    assert_eq!((servers[0].hits(), servers[1].hits()), (2, 2));

    zone.set(records(&[1, 2]));
    within(
        "s0 out, s2 in",
        b.wait_until(|m| {
            m.len() == 2
                && count(m, MemberState::Ready) == 2
                && m.iter().all(|m| m.key != servers[0].addr)
        }),
    )
    .await;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(text(b.request_response(Payload::from("x")).await.unwrap()));
    }
    assert_eq!(seen, BTreeSet::from(["s1".to_owned(), "s2".to_owned()]));
    assert_eq!(servers[0].hits(), 2);
}
