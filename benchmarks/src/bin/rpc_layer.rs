//! The RPC layer alone, with no connection: a generated client calling a
//! `Router` in memory, beside the same calls on raw payloads, so the cost
//! of routes, metadata, the codec and the generated code is measured
//! without the engine's noise. Prints ns per call (one thread, sequential),
//! and for a server stream of 64-byte messages ns per message.
//!
//! `cargo run --release --manifest-path benchmarks/Cargo.toml --bin rpc_layer`

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use rsocket_core::{async_trait, Payload, PayloadStream, RSocket, RequestError};
use rsocket_rpc::{Metadata, Request, Response, Router, Status};

#[allow(clippy::all, missing_docs, dead_code)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/rpc/bench.rs"));
}
use pb::bench_client::BenchClient;
use pb::bench_server::{Bench, BenchServer};
use pb::{Count, Msg, StreamReq};

struct Svc;

impl Bench for Svc {
    async fn echo(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        Ok(Response::new(req.into_inner()))
    }
    type StreamStream = rsocket_rpc::BoxStream<Msg>;
    /// `count` messages of `size` bytes, as the benchmark's server sends.
    async fn stream(
        &self,
        req: Request<StreamReq>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let r = req.into_inner();
        let item = Msg {
            data: Bytes::from(vec![7u8; r.size as usize]),
        };
        let s = futures::stream::iter(0..r.count).map(move |_| Ok(item.clone()));
        Ok(Response::new(Box::pin(s)))
    }
    type ChannelStream = rsocket_rpc::BoxStream<Msg>;
    async fn channel(
        &self,
        _: Request<rsocket_rpc::Streaming<Msg>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn fnf(
        &self,
        _: Request<rsocket_rpc::Streaming<Msg>>,
    ) -> Result<Response<Count>, Status> {
        Err(Status::unimplemented(""))
    }
}

/// Raw payloads: answers with the request's data.
struct Echo;

#[async_trait]
impl RSocket for Echo {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(Payload::new(req.data)))
    }

    /// [`PER_STREAM`] payloads of 64 bytes, as the benchmark's raw server
    /// sends.
    fn request_stream(&self, _req: Payload) -> PayloadStream {
        let item = Payload::new(Bytes::from(vec![7u8; 64]));
        futures::stream::iter(0..PER_STREAM)
            .map(move |_| Ok(item.clone()))
            .boxed()
    }
}

/// Messages per stream in the streaming measurements: enough that opening
/// the stream is a small part of each message's time.
const PER_STREAM: u64 = 1000;

/// The best time of `f` over seven rounds of `n / 7` calls, in ns per call,
/// or per message when each call handles `per` messages.
fn time<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    name: &str,
    (n, per): (u32, u32),
    mut f: impl FnMut() -> F,
) -> f64 {
    let only = std::env::args().nth(1);
    if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
        return 0.0;
    }
    rt.block_on(async {
        for _ in 0..n / 10 {
            f().await;
        }
        // The best of seven rounds: other processes only ever add time.
        let mut best = f64::MAX;
        for _ in 0..7 {
            let start = Instant::now();
            for _ in 0..n / 7 {
                f().await;
            }
            best = best.min(start.elapsed().as_nanos() as f64 / f64::from(n / 7 * per));
        }
        let unit = if per > 1 { "message" } else { "call" };
        println!("{name:<44} {best:>8.1} ns/{unit}");
        best
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `rpc_layer [raw|server|client|both|streamraw|streamrpc] [calls]`: one
    // measurement only (the stream ones count messages, not calls),
    // for example under `valgrind --tool=callgrind` to count instructions.
    let n = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let data = Bytes::from(vec![7u8; 64]);
    let echo: std::sync::Arc<dyn RSocket> = std::sync::Arc::new(Echo);
    let router = Router::new().add_service(BenchServer::new(Svc));
    let routed: std::sync::Arc<dyn RSocket> = std::sync::Arc::new(router.clone());
    let client = BenchClient::new(routed.clone());
    let raw_client = BenchClient::new(echo.clone());
    let metadata = Metadata::new()
        .encode_request("bench.Bench/Echo")
        .expect("metadata");
    let encoded = Bytes::from(prost::Message::encode_to_vec(&Msg { data: data.clone() }));

    println!(
        "future sizes: generated client call {} bytes",
        std::mem::size_of_val(&client.echo(Msg { data: data.clone() }))
    );
    let raw = time(&rt, "raw payload through dyn RSocket", (n, 1), || {
        let echo = echo.clone();
        let p = Payload::new(data.clone());
        async move {
            let r = echo.request_response(p).await;
            assert!(r.is_ok());
        }
    });
    let server = time(&rt, "server: Router with a routed payload", (n, 1), || {
        let routed = routed.clone();
        let p = Payload::new(encoded.clone()).with_metadata(metadata.clone());
        async move {
            let r = routed.request_response(p).await;
            if let Err(e) = r {
                panic!("{e}")
            }
        }
    });
    let client_only = time(
        &rt,
        "client: generated client over raw echo",
        (n, 1),
        || {
            let m = Msg { data: data.clone() };
            let c = &raw_client;
            async move {
                let r = c.echo(m).await;
                assert!(r.is_ok());
            }
        },
    );
    let both = time(&rt, "both: generated client over Router", (n, 1), || {
        let m = Msg { data: data.clone() };
        let c = &client;
        async move {
            let r = c.echo(m).await;
            assert!(r.is_ok());
        }
    });
    println!(
        "RPC layer per call: server {:.0} ns, client {:.0} ns, both {:.0} ns (over the raw call)",
        server - raw,
        client_only - raw,
        both - raw
    );
    // A server stream of 64-byte messages, consumed as it comes: the raw
    // payloads against the generated client calling the Router (each
    // message encoded by the server's stream and decoded by `Streaming`).
    let streams = (n / PER_STREAM as u32, PER_STREAM as u32);
    let stream_raw = time(&rt, "streamraw: raw payload stream", streams, || {
        let echo = echo.clone();
        async move {
            let mut s = echo.request_stream(Payload::new(Bytes::new()));
            let mut got = 0;
            while let Some(item) = s.next().await {
                assert!(item.is_ok());
                got += 1;
            }
            assert_eq!(got, PER_STREAM);
        }
    });
    let stream_rpc = time(
        &rt,
        "streamrpc: generated client over Router",
        streams,
        || {
            let c = &client;
            async move {
                let req = StreamReq {
                    count: PER_STREAM,
                    size: 64,
                    hold: false,
                };
                let mut s = c.stream(req).await.expect("stream");
                let mut got = 0;
                while let Some(m) = s.next().await {
                    assert!(m.is_ok());
                    got += 1;
                }
                assert_eq!(got, PER_STREAM);
            }
        },
    );
    println!(
        "RPC layer per streamed message: {:.0} ns (over the raw stream)",
        stream_rpc - stream_raw
    );
}
