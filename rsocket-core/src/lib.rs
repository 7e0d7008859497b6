//! RSocket for Rust on tokio: frame codec, metadata extensions and the
//! connection engine.
//!
//! Layers, bottom up:
//!
//! ```text
//!  frame     typed frames <-> bytes (pure, zero-copy)
//!  metadata  composite metadata, routing, auth, MIME, tracing (pure)
//!  codec     24-bit length prefix for byte streams (tokio-util)
//!  proto     the connection state machine: streams, credit, keepalive,
//!            fragmentation (no I/O, no clock, no tokio)
//!  runtime   tokio driver, Requester, ClientBuilder, Server, transports
//! ```
//!
//! Leasing (a responder metering its peer's requests with LEASE frames) is
//! described in [`lease`]; the state machine enforces it on both sides.
//!
//! # Getting started
//!
//! ```
//! use rsocket_core::{async_trait, memory_pair, ClientBuilder, Payload, RSocket, RequestError, Server};
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl RSocket for Echo {
//!     async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
//!         Ok(Some(req))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client_end, server_end) = memory_pair(64 * 1024);
//! let server = Server::new(|_setup, _requester| async { Ok(Echo) });
//! let incoming = futures::stream::iter([Ok::<_, std::io::Error>(server_end)]);
//! tokio::spawn(server.serve(incoming));
//!
//! let requester = ClientBuilder::new().connect(client_end)?;
//! let reply = requester.request_response(Payload::from("hi")).await?;
//! assert_eq!(reply.unwrap().data, "hi");
//! # Ok(()) }
//! ```
//!
//! # Resumption
//!
//! A session can outlive its transport (rsocket-protocol.md §9): enable it
//! on the server with [`Server::resumption`] and connect the client with
//! [`ClientBuilder::connect_resumable`], which takes a function that opens
//! a new transport. Both sides keep the frames the peer has not
//! acknowledged (capped by [`Config::resume_store_bytes`]); after a lost
//! transport the client reconnects with backoff and sends RESUME, both
//! sides replay what the other lacks, and open streams go on. Requests fail
//! only when the session cannot be resumed, with
//! [`ConnectionError::ResumeFailed`] and a [`ResumeFailure`] saying why.
#![forbid(unsafe_code)]
// Without the runtime, the state machine has no caller inside the crate.
#![cfg_attr(not(feature = "runtime"), allow(dead_code))]

pub mod codec;
pub mod config;
pub mod error;
pub mod frame;
pub mod lease;
pub mod metadata;
pub mod payload;
mod proto;
mod rsocket;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod stats;

pub use config::{Config, PeerInfo, SetupInfo, SetupParams};
pub use error::{
    ConfigError, ConnectionError, Initiator, Limit, NoLease, RequestError, ResumeFailure,
    StreamError, StreamViolation,
};
pub use frame::{ErrorCode, Frame, MimeType, RequestCount, StreamId};
pub use lease::{Lease, LeaseConfig, LeasePolicy, LeaseState};
pub use payload::Payload;
#[doc(hidden)]
pub use proto::harness;
#[doc(hidden)]
pub use proto::pair;
pub use proto::Interaction;
pub use rsocket::{
    async_trait, error_stream, fire_and_forget_fn, fn_kind, request_channel_fn,
    request_response_fn, request_stream_fn, CallHints, FnResponder, PayloadStream, RSocket,
    RejectAll,
};
#[cfg(feature = "runtime")]
pub use runtime::{
    accept, memory_pair, ClientBuilder, ConnectionDriver, MemoryTransport, MetadataPushFuture,
    ReconnectOptions, Reconnecting, Requester, ResponseFuture, ResponseStream, ResumeOptions,
    ServeError, Server, ServerResumeOptions, SocketAcceptor, StreamTransport, Transport,
    TransportError, WireRead, WireWrite,
};
pub use stats::{ConnectionStats, ServerStats};
