//! Client-side load balancing for RSocket: one [`RSocket`] over many
//! servers, following the set of servers as it changes.
//!
//! ```text
//!  targets (Stream<Change>)          Balancer<K>: RSocket
//!  ├─ from_list / from_watch   ──►   ├─ members: Connecting → Ready → Draining → Closed
//!  ├─ dns::DnsDiscovery              │    one task each: dial, re-dial with back-off, drain
//!  └─ rsocket-balance-etcd           ├─ strategy: WeightedP2c | RoundRobin | yours
//!                                    └─ per request: pick, record latency, retry if safe
//! ```
//!
//! # Getting started
//!
//! ```
//! use rsocket_balance::{Balancer, RoundRobin};
//! use rsocket_core::{memory_pair, request_response_fn, ClientBuilder, Payload, RSocket, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two in-memory servers; a connector is any `Fn() -> Future<Output = Result<Requester, _>>`.
//! let mut targets = Vec::new();
//! for name in ["a", "b"] {
//!     let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
//!     let server = Server::new(move |_setup, _requester| async move {
//!         Ok(request_response_fn(move |_req| async move { Ok(Some(Payload::from(name))) }))
//!     });
//!     let incoming = futures::stream::unfold(rx, |mut rx| async move {
//!         rx.recv().await.map(|t| (Ok::<_, std::io::Error>(t), rx))
//!     });
//!     tokio::spawn(server.serve(incoming));
//!     let dial = move || {
//!         let tx = tx.clone();
//!         async move {
//!             let (client_end, server_end) = memory_pair(64 * 1024);
//!             let _ = tx.send(server_end);
//!             ClientBuilder::new().connect(client_end)
//!         }
//!     };
//!     targets.push((name, dial));
//! }
//!
//! let balancer = Balancer::builder().strategy(RoundRobin::new()).build_from_list(targets);
//! let mut replies = Vec::new();
//! for _ in 0..4 {
//!     let reply = balancer.request_response(Payload::from("hi")).await?;
//!     replies.push(reply.unwrap().data_utf8().unwrap_or_default().to_owned());
//! }
//! replies.sort();
//! assert_eq!(replies, ["a", "a", "b", "b"]);
//! # Ok(()) }
//! ```
//!
//! See the [`manual`] for how picking, retries and member lifecycles work.
#![forbid(unsafe_code)]

mod balancer;
mod call;
mod clock;
mod connect;
pub mod discovery;
#[cfg(feature = "dns")]
pub mod dns;
pub mod manual;
mod member;
mod rng;
mod stats;
mod strategy;

pub use balancer::{BalanceError, Balancer, BalancerBuilder, BalancerConfig};
pub use call::CallOptions;
pub use clock::{Clock, ManualClock, TokioClock};
#[cfg(feature = "tcp")]
pub use connect::TcpConnector;
pub use connect::{BoxError, Connect};
pub use discovery::{from_list, from_watch, Change, Differ};
pub use member::{Backoff, MemberInfo, MemberState};
pub use rng::Rng;
pub use strategy::{Candidates, RoundRobin, Strategy, WeightedP2c};

#[doc(no_inline)]
pub use rsocket_core::RSocket;

/// What a target key must be: cloneable, hashable and printable (a
/// `SocketAddr`, a `String`, a `u32`…).
pub trait Key: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static {}

impl<T: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static> Key for T {}
