//! Engine throughput without a network: request/response round trips and
//! request/stream items over the in-memory transport, on a current-thread
//! runtime (client, server and drivers share one thread).

use rsocket_core::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::StreamExt;
use rsocket_core::{
    memory_pair, ClientBuilder, MemoryTransport, Payload, PayloadStream, RSocket, RequestError,
    Requester, ResumeOptions, Server, ServerResumeOptions,
};

struct Bench;

#[async_trait]

impl RSocket for Bench {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Box::pin(futures::future::ready(Ok(Some(req)))).await
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        let n: usize = req.data_utf8().and_then(|s| s.parse().ok()).unwrap_or(0);
        let item = Payload::new(Bytes::from(vec![7u8; 64]));
        futures::stream::iter(std::iter::repeat_n(item, n).map(Ok)).boxed()
    }
}

fn setup(rt: &tokio::runtime::Runtime) -> Requester {
    rt.block_on(async {
        let (c, s) = memory_pair(256 * 1024);
        let server = Server::new(|_s, _r| async { Ok(Arc::new(Bench) as Arc<dyn RSocket>) });
        tokio::spawn(server.serve_with_shutdown(
            futures::stream::iter([Ok::<_, std::io::Error>(s)]),
            futures::future::pending(),
        ));
        ClientBuilder::new().connect(c).expect("connect")
    })
}

/// The same over a resumable session (store, positions, acknowledgements;
/// no cut): the cost of resumption when nothing goes wrong.
fn setup_resumable(rt: &tokio::runtime::Runtime) -> Requester {
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MemoryTransport>();
        let incoming = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|t| t.map(Ok)));
        let server = Server::new(|_s, _r| async { Ok(Arc::new(Bench) as Arc<dyn RSocket>) })
            .resumption(ServerResumeOptions::default());
        tokio::spawn(server.serve_with_shutdown(incoming, futures::future::pending()));
        ClientBuilder::new()
            .resume(ResumeOptions::default())
            .connect_resumable(move || {
                let tx = tx.clone();
                async move {
                    let (c, s) = memory_pair(256 * 1024);
                    tx.send(s)
                        .map_err(|_| std::io::Error::other("server gone"))?;
                    Ok(c)
                }
            })
            .await
            .expect("connect")
    })
}

fn engine(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let requester = setup(&rt);
    let resumable = setup_resumable(&rt);
    let payload = Payload::new(Bytes::from(vec![1u8; 64]));

    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Elements(1));
    g.bench_function("request_response_seq", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    requester
                        .request_response(payload.clone())
                        .await
                        .expect("rr");
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("request_response_c64", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                futures::stream::iter(0..iters)
                    .map(|_| requester.request_response(payload.clone()))
                    .buffer_unordered(64)
                    .for_each(|r| {
                        r.expect("rr");
                        futures::future::ready(())
                    })
                    .await;
                start.elapsed()
            })
        })
    });
    const ITEMS: u64 = 100_000;
    g.throughput(Throughput::Elements(ITEMS));
    g.bench_function("request_stream_100k_x64B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let n = requester
                        .request_stream(Payload::from(ITEMS.to_string()))
                        .fold(0u64, |n, r| {
                            r.expect("item");
                            futures::future::ready(n + 1)
                        })
                        .await;
                    total += start.elapsed();
                    assert_eq!(n, ITEMS);
                }
                total
            })
        })
    });
    g.bench_function("request_stream_100k_x64B_resumable", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let n = resumable
                        .request_stream(Payload::from(ITEMS.to_string()))
                        .fold(0u64, |n, r| {
                            r.expect("item");
                            futures::future::ready(n + 1)
                        })
                        .await;
                    total += start.elapsed();
                    assert_eq!(n, ITEMS);
                }
                total
            })
        })
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
