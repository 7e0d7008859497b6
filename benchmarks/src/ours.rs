//! This project: `rsocket-core` over `rsocket-transport-tcp`, default
//! configuration, the public API a user calls.
//!
//! With `RSOCKET_BENCH_RESUME=1` in the environment, the connection is a
//! resumable session (`Server::resumption`, `ClientBuilder::connect_resumable`),
//! to measure what resumption costs when nothing breaks.

use std::any::Any;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Sink, StreamExt};
use rsocket_core::frame::Frame;
use rsocket_core::{
    async_trait, ClientBuilder, Payload, PayloadStream, RSocket, RequestError, Requester, Server,
    ServerResumeOptions, Transport, TransportError, WireRead,
};

/// `RSOCKET_BENCH_RESUME=1`: run over a resumable session.
fn resumable() -> bool {
    std::env::var_os("RSOCKET_BENCH_RESUME").is_some_and(|v| v == "1")
}
use rsocket_transport_tcp::{connect, TcpListener};

use crate::common::*;
use crate::Workload;

struct Responder {
    produced: Arc<Produced>,
    arrivals: Arc<Arrivals>,
}

/// Stream request: "<count> <size>" or "hold".
fn parse_stream_req(p: &Payload) -> (u64, usize, bool) {
    let s = p.data_utf8().unwrap_or("");
    if s == "hold" {
        return (1, SMALL, true);
    }
    let mut it = s.split_whitespace();
    let n = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let size = it.next().and_then(|v| v.parse().ok()).unwrap_or(SMALL);
    (n, size, false)
}

#[async_trait]
impl RSocket for Responder {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }

    async fn fire_and_forget(&self, _req: Payload) -> Result<(), RequestError> {
        self.arrivals.arrive();
        Ok(())
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        let (n, size, hold) = parse_stream_req(&req);
        let item = Payload::new(payload(size));
        if hold {
            return futures::stream::once(futures::future::ready(Ok(item)))
                .chain(futures::stream::pending())
                .boxed();
        }
        let produced = self.produced.clone();
        futures::stream::iter(0..n)
            .map(move |_| {
                produced.inc();
                Ok(item.clone())
            })
            .boxed()
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(futures::future::ready(Ok(first)))
            .chain(rest)
            .boxed()
    }
}

struct Setup {
    addr: SocketAddr,
    client: Requester,
    produced: Arc<Produced>,
    arrivals: Arc<Arrivals>,
}

async fn start_server(produced: Arc<Produced>, arrivals: Arc<Arrivals>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::new(move |_setup, _requester| {
        let r = Responder {
            produced: produced.clone(),
            arrivals: arrivals.clone(),
        };
        async move { Ok(r) }
    });
    let server = if resumable() {
        server.resumption(ServerResumeOptions::default())
    } else {
        server
    };
    tokio::spawn(server.serve(listener));
    addr
}

async fn setup() -> Setup {
    let produced = Arc::new(Produced::default());
    let arrivals = Arrivals::new();
    let addr = start_server(produced.clone(), arrivals.clone()).await;
    let client = if resumable() {
        ClientBuilder::new()
            .connect_resumable(move || connect(addr))
            .await
            .expect("client")
    } else {
        ClientBuilder::new()
            .connect(connect(addr).await.expect("connect"))
            .expect("client")
    };
    // one round trip so the connection is established before measuring
    client
        .request_response(Payload::new(payload(SMALL)))
        .await
        .expect("first request");
    Setup {
        addr,
        client,
        produced,
        arrivals,
    }
}

pub async fn run(w: Workload, sizes: Sizes) -> Outcome {
    let s = setup().await;
    let small = payload(SMALL);
    match w {
        Workload::RrSeq | Workload::RrC64 | Workload::RrC256 => {
            let client = s.client.clone();
            rr_driver(sizes, w.concurrency(), move || {
                let f = client.request_response(Payload::new(small.clone()));
                async move { f.await.map(|_| ()).map_err(|e| e.to_string()) }
            })
            .await
        }
        Workload::Stream64 | Workload::Stream16k => {
            let (n, size) = w.stream_shape(sizes);
            let meter = Meter::start();
            // the library's normal credit: default prefetch, REQUEST_N as consumed
            let stream = s
                .client
                .request_stream(Payload::from(format!("{n} {size}")));
            let (got, bytes, problem) =
                consume(stream, n, sizes.cap, |p: &Payload| p.data.len()).await;
            throughput(&meter, got, bytes, problem, n)
        }
        Workload::Channel64 => {
            let n = sizes.channel_64;
            let meter = Meter::start();
            let item = Payload::new(small.clone());
            let rest = futures::stream::iter(std::iter::repeat_n(item.clone(), n as usize - 1));
            let stream = s.client.request_channel(item, rest);
            let (got, bytes, problem) =
                consume(stream, n, sizes.cap, |p: &Payload| p.data.len()).await;
            throughput(&meter, got, bytes, problem, n)
        }
        Workload::Fnf64 => {
            let n = sizes.fnf_64;
            let meter = Meter::start();
            let deadline = Instant::now() + sizes.cap;
            let mut sent = 0u64;
            let mut problem = None;
            let mut stalled = None;
            while sent < n {
                // `fire_and_forget` resolves once queued; it waits only while
                // the outbound queue is full, which a working writer drains
                // in microseconds. Two seconds is a stall.
                // Polled once first: arming a timer for each call would cost
                // more than the call, and a user does not do that.
                let mut send = s.client.fire_and_forget(Payload::new(small.clone()));
                let sent_now = match futures::poll!(&mut send) {
                    std::task::Poll::Ready(r) => Ok(r),
                    std::task::Poll::Pending => {
                        tokio::time::timeout(Duration::from_secs(2), send).await
                    }
                };
                match sent_now {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        problem = Some(format!("send error: {e}"));
                        break;
                    }
                    Err(_) => {
                        stalled = Some(meter.elapsed());
                        break;
                    }
                }
                sent += 1;
                if sent.is_multiple_of(64) && Instant::now() >= deadline {
                    problem = Some(format!("capped at {} s", sizes.cap.as_secs()));
                    break;
                }
            }
            if let Some(at) = stalled {
                let got = s.arrivals.get();
                let mut o = Outcome {
                    ops: got,
                    failed: true,
                    ..Outcome::default()
                };
                meter.finish(&mut o);
                let before = at.as_secs_f64() - 2.0;
                o.add_note(&format!(
                    "STALLED: fire_and_forget waited > 2 s for outbound-queue space after {sent} sends \
                     ({:.2} M msgs/s before the stall); the queue is drained again only by the keepalive tick",
                    sent as f64 / before.max(1e-9) / 1e6
                ));
                return o;
            }
            let got = s.arrivals.wait(sent, sizes.cap).await;
            let mut o = throughput(&meter, got, got * SMALL as u64, problem, n);
            if got < sent {
                o.failed = true;
                o.add_note(&format!(
                    "STALLED: only {got} of {sent} queued fire-and-forgets reached the server within {} s \
                     (frames left in the outbound queue, writer not woken)",
                    sizes.cap.as_secs()
                ));
            }
            o
        }
        Workload::SlowConsumer => {
            // A connection of its own whose writer adds up the credit the
            // client grants (initial request-n and REQUEST_N), as sent.
            let granted = Arc::new(AtomicU64::new(0));
            let transport = CreditTap {
                inner: connect(s.addr).await.expect("connect"),
                granted: granted.clone(),
            };
            let client = ClientBuilder::new().connect(transport).expect("client");
            let before = rss_kb();
            let mut stream =
                client.request_stream(Payload::from(format!("{} {}", sizes.slow_total, SMALL)));
            for _ in 0..sizes.slow_consume {
                stream.next().await.expect("item").expect("ok");
            }
            tokio::time::sleep(sizes.slow_hold).await;
            let after = rss_kb();
            let o = Outcome {
                ops: sizes.slow_consume,
                rss_growth_kb: Some(after as f64 - before as f64),
                produced: Some(s.produced.get()),
                credit: Some(granted.load(Ordering::Relaxed)),
                peak_rss_kb: mem().hwm_kb,
                ..Outcome::default()
            };
            drop(stream);
            o
        }
        Workload::HeadOfLine => {
            let mut stream = s
                .client
                .request_stream(Payload::from(format!("{} {}", sizes.slow_total, SMALL)));
            for _ in 0..sizes.slow_consume {
                stream.next().await.expect("item").expect("ok");
            }
            // let the stream fill its window before sampling
            tokio::time::sleep(Duration::from_millis(100)).await;
            let client = s.client.clone();
            head_of_line(sizes, move || {
                let f = client.request_response(Payload::new(small.clone()));
                async move { f.await.map(|_| ()).map_err(|e| e.to_string()) }
            })
            .await
        }
        Workload::Conn10k => unreachable!("conn_10k runs through conn_server/conn_open"),
    }
}

// ---------------------------------------------------------------------------
// conn_10k

pub async fn conn_server() -> SocketAddr {
    start_server(Arc::new(Produced::default()), Arrivals::new()).await
}

pub async fn conn_open(addr: SocketAddr) -> Result<Box<dyn Any + Send>, String> {
    let transport = connect(addr).await.map_err(|e| e.to_string())?;
    let client = ClientBuilder::new()
        .connect(transport)
        .map_err(|e| e.to_string())?;
    let mut stream = client.request_stream(Payload::from("hold"));
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(_))) => Ok(Box::new((client, stream))),
        Ok(other) => Err(format!("stream: {other:?}")),
        Err(_) => Err("no first item in 30 s".into()),
    }
}

/// A transport whose writer adds up the credit granted to the peer: the
/// initial request-n of REQUEST_STREAM / REQUEST_CHANNEL and every
/// REQUEST_N, as the frames are handed to the socket.
struct CreditTap<T> {
    inner: T,
    granted: Arc<AtomicU64>,
}

impl<T: Transport> Transport for CreditTap<T> {
    type Reader = T::Reader;
    type Writer = CreditWriter<T::Writer>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (r, w) = self.inner.split();
        (
            r,
            CreditWriter {
                inner: w,
                granted: self.granted,
            },
        )
    }

    /// The reader is the socket's own: read in place, as on any TCP
    /// connection, so that the consumer's credit check on runs of items is
    /// the one measured.
    fn wire_reader(reader: &mut Self::Reader) -> Option<&mut dyn WireRead> {
        T::wire_reader(reader)
    }
}

struct CreditWriter<W> {
    inner: W,
    granted: Arc<AtomicU64>,
}

impl<W: Sink<Frame, Error = TransportError> + Unpin> Sink<Frame> for CreditWriter<W> {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), Self::Error> {
        let n = match &frame {
            Frame::RequestStream(f) => Some(f.initial_request_n),
            Frame::RequestChannel(f) => Some(f.initial_request_n),
            Frame::RequestN(f) => Some(f.request_n),
            _ => None,
        };
        if let Some(n) = n {
            self.granted
                .fetch_add(u64::from(n.get()), Ordering::Relaxed);
        }
        Pin::new(&mut self.inner).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
