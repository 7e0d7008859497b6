//! tonic + prost (gRPC over HTTP/2), default configuration: unary for
//! request/response, server streaming for streams, bidi streaming for the
//! channel, client streaming for fire-and-forget.

use std::any::Any;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::common::*;
use crate::Workload;

pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("bench");
}

use pb::bench_client::BenchClient;
use pb::bench_server::{Bench, BenchServer};
use pb::{Count, Msg, StreamReq};

struct Svc {
    produced: Arc<Produced>,
    arrivals: Arc<Arrivals>,
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[tonic::async_trait]
impl Bench for Svc {
    async fn echo(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    type StreamStream = MsgStream;

    async fn stream(&self, req: Request<StreamReq>) -> Result<Response<MsgStream>, Status> {
        let r = req.into_inner();
        let item = Msg {
            data: payload(r.size as usize),
        };
        if r.hold {
            let s = futures::stream::once(futures::future::ready(Ok(item)))
                .chain(futures::stream::pending());
            return Ok(Response::new(Box::pin(s)));
        }
        let produced = self.produced.clone();
        let s = futures::stream::iter(0..r.count).map(move |_| {
            produced.inc();
            Ok(item.clone())
        });
        Ok(Response::new(Box::pin(s)))
    }

    type ChannelStream = MsgStream;

    async fn channel(&self, req: Request<Streaming<Msg>>) -> Result<Response<MsgStream>, Status> {
        Ok(Response::new(Box::pin(req.into_inner())))
    }

    async fn fnf(&self, req: Request<Streaming<Msg>>) -> Result<Response<Count>, Status> {
        let mut s = req.into_inner();
        let mut n = 0;
        while let Some(m) = s.next().await {
            m?;
            n += 1;
            self.arrivals.arrive();
        }
        Ok(Response::new(Count { count: n }))
    }
}

async fn start_server(produced: Arc<Produced>, arrivals: Arc<Arrivals>) -> SocketAddr {
    // What `Server::serve(addr)` does (it sets TCP_NODELAY), on a free port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let svc = BenchServer::new(Svc { produced, arrivals });
    tokio::spawn(async move {
        if let Err(e) = Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("tonic server: {e}");
        }
    });
    addr
}

async fn client(addr: SocketAddr) -> Result<BenchClient<Channel>, String> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(BenchClient::new(ch))
}

fn len(m: &Msg) -> usize {
    m.data.len()
}

pub async fn run(w: Workload, sizes: Sizes) -> Outcome {
    let produced = Arc::new(Produced::default());
    let arrivals = Arrivals::new();
    let addr = start_server(produced.clone(), arrivals.clone()).await;
    let mut c = match client(addr).await {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("connect: {e}")),
    };
    let small = payload(SMALL);
    if let Err(e) = c
        .echo(Msg {
            data: small.clone(),
        })
        .await
    {
        return Outcome::failed(format!("first request: {e}"));
    }
    match w {
        Workload::RrSeq | Workload::RrC64 | Workload::RrC256 => {
            rr_driver(sizes, w.concurrency(), move || {
                let mut c = c.clone();
                let m = Msg {
                    data: small.clone(),
                };
                async move { c.echo(m).await.map(|_| ()).map_err(|e| e.to_string()) }
            })
            .await
        }
        Workload::Stream64 | Workload::Stream16k => {
            let (n, size) = w.stream_shape(sizes);
            let meter = Meter::start();
            let req = StreamReq {
                count: n,
                size: size as u32,
                hold: false,
            };
            let stream = match c.stream(req).await {
                Ok(r) => r.into_inner(),
                Err(e) => return Outcome::failed(e.to_string()),
            };
            let (got, bytes, problem) = consume(stream, n, sizes.cap, len).await;
            throughput(&meter, got, bytes, problem, n)
        }
        Workload::Channel64 => {
            let n = sizes.channel_64;
            let meter = Meter::start();
            let out = futures::stream::iter(std::iter::repeat_n(
                Msg {
                    data: small.clone(),
                },
                n as usize,
            ));
            let stream = match c.channel(out).await {
                Ok(r) => r.into_inner(),
                Err(e) => return Outcome::failed(e.to_string()),
            };
            let (got, bytes, problem) = consume(stream, n, sizes.cap, len).await;
            throughput(&meter, got, bytes, problem, n)
        }
        Workload::Fnf64 => {
            let n = sizes.fnf_64;
            let meter = Meter::start();
            let out = futures::stream::iter(std::iter::repeat_n(
                Msg {
                    data: small.clone(),
                },
                n as usize,
            ));
            let call = c.fnf(out);
            let (got, problem) = match tokio::time::timeout(sizes.cap, call).await {
                Ok(Ok(r)) => (r.into_inner().count, None),
                Ok(Err(e)) => (arrivals.get(), Some(e.to_string())),
                Err(_) => (
                    arrivals.get(),
                    Some(format!("capped at {} s", sizes.cap.as_secs())),
                ),
            };
            let mut o = throughput(&meter, got, got * SMALL as u64, problem, n);
            o.add_note("client streaming");
            o
        }
        Workload::SlowConsumer => {
            let before = rss_kb();
            let req = StreamReq {
                count: sizes.slow_total,
                size: SMALL as u32,
                hold: false,
            };
            let mut stream = match c.stream(req).await {
                Ok(r) => r.into_inner(),
                Err(e) => return Outcome::failed(e.to_string()),
            };
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
                peak_rss_kb: mem().hwm_kb,
                ..Outcome::default()
            };
            o.add_note("HTTP/2 flow control (byte windows), no item credit");
            std::mem::forget(stream);
            o
        }
        Workload::HeadOfLine => {
            let req = StreamReq {
                count: sizes.slow_total,
                size: SMALL as u32,
                hold: false,
            };
            let mut stream = match c.stream(req).await {
                Ok(r) => r.into_inner(),
                Err(e) => return Outcome::failed(e.to_string()),
            };
            for _ in 0..sizes.slow_consume {
                match stream.next().await {
                    Some(Ok(_)) => {}
                    other => return Outcome::failed(format!("stream: {other:?}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let o = head_of_line(sizes, move || {
                let mut c = c.clone();
                let m = Msg {
                    data: small.clone(),
                };
                async move { c.echo(m).await.map(|_| ()).map_err(|e| e.to_string()) }
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
    let mut c = client(addr).await?;
    let req = StreamReq {
        count: 1,
        size: SMALL as u32,
        hold: true,
    };
    let mut stream = c.stream(req).await.map_err(|e| e.to_string())?.into_inner();
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(_))) => Ok(Box::new((c, stream))),
        Ok(other) => Err(format!("stream: {:?}", other.map(|r| r.map(|_| ())))),
        Err(_) => Err("no first item in 30 s".into()),
    }
}
