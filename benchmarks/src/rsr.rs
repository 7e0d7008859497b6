//! `rsocket_rust` 0.7 with `rsocket_rust_transport_tcp`, default
//! configuration.
//!
//! What it does, from its source: a requester sends REQUEST_STREAM and
//! REQUEST_CHANNEL with initial request-n 2^31 - 1 and never REQUEST_N; a
//! responder ignores REQUEST_N and pumps the whole stream into an unbounded
//! queue; every frame is written (and flushed) on its own; inbound frames
//! go through an unbounded queue to one dispatch loop that awaits each
//! stream's 32-slot channel, so one stalled stream stops the connection.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rsocket_rust::prelude::*;
use rsocket_rust::{async_trait, Client, Result as RResult};
use rsocket_rust_transport_tcp::{TcpClientTransport, TcpServerTransport};

use crate::common::*;
use crate::Workload;

struct Responder {
    produced: Arc<Produced>,
    arrivals: Arc<Arrivals>,
}

fn pl(b: bytes::Bytes) -> Payload {
    Payload::new(Some(b), None)
}

fn len(p: &Payload) -> usize {
    p.data().map_or(0, |d| d.len())
}

#[async_trait]
impl RSocket for Responder {
    async fn metadata_push(&self, _req: Payload) -> RResult<()> {
        Ok(())
    }

    async fn fire_and_forget(&self, _req: Payload) -> RResult<()> {
        self.arrivals.arrive();
        Ok(())
    }

    async fn request_response(&self, req: Payload) -> RResult<Option<Payload>> {
        Ok(Some(req))
    }

    fn request_stream(&self, req: Payload) -> Flux<RResult<Payload>> {
        let s = req.data_utf8().unwrap_or("").to_owned();
        if s == "hold" {
            let item = pl(payload(SMALL));
            return Box::pin(
                futures::stream::once(futures::future::ready(Ok(item)))
                    .chain(futures::stream::pending()),
            );
        }
        let mut it = s.split_whitespace();
        let n: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let size: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(SMALL);
        let item = pl(payload(size));
        let produced = self.produced.clone();
        Box::pin(futures::stream::iter(0..n).map(move |_| {
            produced.inc();
            Ok(item.clone())
        }))
    }

    fn request_channel(&self, reqs: Flux<RResult<Payload>>) -> Flux<RResult<Payload>> {
        reqs
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn start_server(produced: Arc<Produced>, arrivals: Arc<Arrivals>) -> SocketAddr {
    let addr = free_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let server = RSocketFactory::receive()
        .transport(TcpServerTransport::from(addr))
        .acceptor(Box::new(move |_setup, _socket| {
            Ok(Box::new(Responder {
                produced: produced.clone(),
                arrivals: arrivals.clone(),
            }) as Box<dyn RSocket>)
        }))
        .on_start(Box::new(move || {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        }))
        .serve();
    tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("rsocket_rust server: {e}");
        }
    });
    rx.await.expect("server started");
    addr
}

async fn client(addr: SocketAddr) -> RResult<Client> {
    RSocketFactory::connect()
        .transport(TcpClientTransport::from(addr))
        .start()
        .await
}

pub async fn run(w: Workload, sizes: Sizes) -> Outcome {
    let produced = Arc::new(Produced::default());
    let arrivals = Arrivals::new();
    let addr = start_server(produced.clone(), arrivals.clone()).await;
    let c = match client(addr).await {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("connect: {e}")),
    };
    let small = payload(SMALL);
    if let Err(e) = c.request_response(pl(small.clone())).await {
        return Outcome::failed(format!("first request: {e}"));
    }
    match w {
        Workload::RrSeq | Workload::RrC64 | Workload::RrC256 => {
            let c = c.clone();
            rr_driver(sizes, w.concurrency(), move || {
                let c = c.clone();
                let p = pl(small.clone());
                async move {
                    c.request_response(p)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await
        }
        Workload::Stream64 | Workload::Stream16k => {
            let (n, size) = w.stream_shape(sizes);
            let meter = Meter::start();
            let stream = c.request_stream(
                Payload::builder()
                    .set_data_utf8(&format!("{n} {size}"))
                    .build(),
            );
            let (got, bytes, problem) = consume(stream, n, sizes.cap, len).await;
            let mut o = throughput(&meter, got, bytes, problem, n);
            o.add_note("requests 2^31-1 up front (no credit)");
            o
        }
        Workload::Channel64 => {
            let n = sizes.channel_64;
            let meter = Meter::start();
            let item = pl(small.clone());
            let reqs: Flux<RResult<Payload>> = Box::pin(futures::stream::iter(
                std::iter::repeat_n(item, n as usize).map(Ok),
            ));
            let stream = c.request_channel(reqs);
            let (got, bytes, problem) = consume(stream, n, sizes.cap, len).await;
            throughput(&meter, got, bytes, problem, n)
        }
        Workload::Fnf64 => {
            let n = sizes.fnf_64;
            let meter = Meter::start();
            let deadline = Instant::now() + sizes.cap;
            let mut sent = 0u64;
            let mut problem = None;
            while sent < n {
                if let Err(e) = c.fire_and_forget(pl(small.clone())).await {
                    problem = Some(format!("send error: {e}"));
                    break;
                }
                sent += 1;
                if sent.is_multiple_of(64) && Instant::now() >= deadline {
                    problem = Some(format!("capped at {} s", sizes.cap.as_secs()));
                    break;
                }
            }
            let left = sizes
                .cap
                .saturating_sub(meter.elapsed())
                .max(Duration::from_secs(1));
            let got = arrivals.wait(sent, left).await;
            if got < sent && problem.is_none() {
                problem = Some(format!("capped at {} s", sizes.cap.as_secs()));
            }
            let mut o = throughput(&meter, got, got * SMALL as u64, problem, n);
            o.add_note("sends go to an unbounded queue");
            o
        }
        Workload::SlowConsumer => {
            let before = rss_kb();
            let mut stream = c.request_stream(
                Payload::builder()
                    .set_data_utf8(&format!("{} {}", sizes.slow_total, SMALL))
                    .build(),
            );
            for _ in 0..sizes.slow_consume {
                match stream.next().await {
                    Some(Ok(_)) => {}
                    other => return Outcome::failed(format!("stream: {other:?}")),
                }
            }
            tokio::time::sleep(sizes.slow_hold).await;
            let after = rss_kb();
            let mut o = Outcome {
                ops: sizes.slow_consume,
                rss_growth_kb: Some(after as f64 - before as f64),
                produced: Some(produced.get()),
                credit: Some(i32::MAX as u64),
                peak_rss_kb: mem().hwm_kb,
                ..Outcome::default()
            };
            o.add_note("no credit: requests 2^31-1, responder ignores REQUEST_N");
            // Exit without dropping: the worker process ends right after.
            std::mem::forget(stream);
            o
        }
        Workload::HeadOfLine => {
            let stream = c.request_stream(
                Payload::builder()
                    .set_data_utf8(&format!("{} {}", sizes.slow_total, SMALL))
                    .build(),
            );
            let mut stream = stream;
            for _ in 0..sizes.slow_consume {
                match stream.next().await {
                    Some(Ok(_)) => {}
                    other => return Outcome::failed(format!("stream: {other:?}")),
                }
            }
            // give the producer time to fill the 32-slot channel
            tokio::time::sleep(Duration::from_millis(100)).await;
            let c2 = c.clone();
            let o = head_of_line(sizes, move || {
                let c = c2.clone();
                let p = pl(small.clone());
                async move {
                    c.request_response(p)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            std::mem::forget(stream);
            o
        }
        Workload::Conn10k => unreachable!(),
    }
}

pub async fn conn_server() -> SocketAddr {
    start_server(Arc::new(Produced::default()), Arrivals::new()).await
}

pub async fn conn_open(addr: SocketAddr) -> Result<Box<dyn Any + Send>, String> {
    let c = client(addr).await.map_err(|e| e.to_string())?;
    let mut stream = c.request_stream(Payload::builder().set_data_utf8("hold").build());
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(_))) => Ok(Box::new((c, stream))),
        Ok(other) => Err(format!("stream: {:?}", other.map(|r| r.map(|_| ())))),
        Err(_) => Err("no first item in 30 s".into()),
    }
}
