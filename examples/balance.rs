//! Load balancing: three TCP servers and one balanced client.
//!
//! ```text
//! cargo run --example balance
//! ```
//!
//! The client spreads 3,000 request/responses (64 in flight) over the three
//! servers with weighted power-of-two-choices and prints each server's
//! share; then one server is killed in the middle of the next 3,000, and
//! every request still succeeds: those in flight on the dead server are
//! marked idempotent, so the balancer sends them again to another member.
//!
//! Set `RUST_LOG=rsocket_balance=debug` to see member state changes and
//! retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rsocket::balance::{Balancer, CallOptions, MemberState, UriConnector};
use rsocket::{request_response_fn, Listener, Payload, Server};

struct Backend {
    uri: String,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_backend(name: &'static str, delay: Duration) -> anyhow::Result<Backend> {
    let listener = Listener::bind("tcp://127.0.0.1:0").await?;
    let uri = listener.local_uri();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let server = Server::new(move |_setup, _requester| {
        let counter = counter.clone();
        async move {
            Ok(request_response_fn(move |_req: Payload| {
                let counter = counter.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok(Some(Payload::from(name)))
                }
            }))
        }
    });
    let task = tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    Ok(Backend { uri, served, task })
}

fn shares(backends: &[Backend], before: &[usize]) -> String {
    backends
        .iter()
        .zip(before)
        .map(|(b, n)| format!("{}: {}", b.uri, b.served.load(Ordering::Relaxed) - n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counts(backends: &[Backend]) -> Vec<usize> {
    backends
        .iter()
        .map(|b| b.served.load(Ordering::Relaxed))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // The third server is slower: weighted p2c sends it less.
    let backends = vec![
        start_backend("one", Duration::from_millis(1)).await?,
        start_backend("two", Duration::from_millis(1)).await?,
        start_backend("three", Duration::from_millis(5)).await?,
    ];
    let balancer = Balancer::builder()
        .backoff(Duration::from_millis(50), Duration::from_secs(1))
        .build_from_list(
            backends
                .iter()
                .map(|b| (b.uri.clone(), UriConnector::new(b.uri.clone())))
                .collect::<Vec<_>>(),
        );
    balancer
        .wait_until(|m| m.iter().filter(|m| m.state == MemberState::Ready).count() == 3)
        .await;

    let idempotent = CallOptions::new().idempotent(true);
    let before = counts(&backends);
    let failures = futures::stream::iter(0..3000)
        .map(|_| balancer.request_response_with(Payload::from("hi"), idempotent))
        .buffer_unordered(64)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    println!("phase 1, 3000 requests: {}", shares(&backends, &before));
    println!("phase 1 failures: {failures}");
    for m in balancer.members() {
        println!(
            "  {}: {:?}, latency {:?}, weight {:.3e}",
            m.key, m.state, m.latency, m.weight
        );
    }

    let before = counts(&backends);
    let mut replies = futures::stream::iter(0..3000)
        .map(|_| balancer.request_response_with(Payload::from("hi"), idempotent))
        .buffer_unordered(64);
    let (mut done, mut failed) = (0, 0);
    while let Some(r) = replies.next().await {
        done += 1;
        if let Err(e) = r {
            failed += 1;
            eprintln!("request failed: {e}");
        }
        if done == 1000 {
            // Kill the busiest server, mid-run.
            let now = counts(&backends);
            let busiest = (0..backends.len())
                .max_by_key(|&i| now[i] - before[i])
                .unwrap_or(0);
            println!("killing {}", backends[busiest].uri);
            backends[busiest].task.abort();
        }
    }
    println!("phase 2, 3000 requests: {}", shares(&backends, &before));
    println!("phase 2 failures: {failed}");
    for m in balancer.members() {
        println!("  {}: {:?}", m.key, m.state);
    }
    anyhow::ensure!(failures == 0 && failed == 0, "some requests failed");
    balancer.close().await;
    println!("done");
    Ok(())
}
