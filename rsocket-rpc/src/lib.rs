//! Protobuf RPC over RSocket: services written in `.proto` files become
//! typed servers and clients, with RSocket's message-level backpressure on
//! streams and fire-and-forget calls.
//!
//! ```text
//!  greeter.proto ──rsocket-rpc-build (build.rs)──▶ GreeterServer<T> / GreeterClient<R>
//!                                                      │                  │
//!  your impl Greeter (async fn) ─────▶ Router ◀────────┘   Client<R> ◀────┘
//!                                       │ (implements RSocket)   │ (over any R: RSocket)
//!                                       ▼                        ▼
//!                              rsocket-core Server         rsocket-core Requester
//! ```
//!
//! The generated code only wires names, routes and types; this crate holds
//! the logic: [`Status`], [`Request`]/[`Response`] with [`Metadata`],
//! [`Streaming`], [`Router`], [`Client`], [`Interceptor`]s and the codec.
//!
//! # Getting started
//!
//! 1. In `build.rs`, with `rsocket-rpc-build` as a build dependency:
//!    `rsocket_rpc_build::configure().compile_protos(&["proto/greeter.proto"], &["proto"])`.
//! 2. Include the generated code:
//!    `pub mod greeter { rsocket_rpc::include_proto!("greeter"); }`.
//! 3. Implement the generated server trait (`greeter_server::Greeter`) with
//!    plain `async fn`s, put `GreeterServer::new(your_impl)` in a [`Router`],
//!    and give the router to `rsocket_core::Server` as the responder.
//! 4. Call it with `greeter_client::GreeterClient::new(requester)` over any
//!    [`RSocket`](rsocket_core::RSocket), after a SETUP with
//!    [`setup_params`].
//!
//! The repository's README walks through these steps with code that CI
//! compiles (doctests of the examples crate, which runs the generator), and
//! `examples/rpc_greeter.rs` is the complete, tested program, with every
//! method kind.
//!
//! # Wire format
//!
//! Everything here uses standard RSocket extensions, so a client in any
//! language with an RSocket library and a protobuf library can call these
//! services (`interop/python/rpc_client.py` is one, in Python).
//!
//! **SETUP.** Data MIME type `application/vnd.google.protobuf` (well-known
//! id `0x09`), metadata MIME type `message/x.rsocket.composite-metadata.v0`
//! ([`setup_params`]). The server does not check them.
//!
//! **Requests.** The metadata of every request frame (REQUEST_RESPONSE,
//! REQUEST_FNF, REQUEST_STREAM, REQUEST_CHANNEL) is composite metadata whose
//! first routing entry (`message/x.rsocket.routing.v0`, id `0x7E`; the
//! server also accepts the type spelled out as a string) holds the route as
//! its first tag: `package.Service/Method`, with the package and
//! names exactly as in the `.proto` file (`greeter.Greeter/SayHello`). Other
//! entries are the call's [`Metadata`] (for example an authentication entry,
//! `0x7C`). Example, route `a.B/C` plus a custom entry `x/y` = `ab`:
//!
//! ```text
//! fe 00 00 06 05 61 2e 42 2f 43   routing entry: 0x80|0x7E, length 6, tag length 5, "a.B/C"
//! 02 78 2f 79 00 00 02 61 62      custom entry: name length-1 = 2, "x/y", length 2, "ab"
//! ```
//!
//! **Data.** The protobuf encoding of the message. The all-default message
//! is zero bytes, which is a valid payload.
//!
//! **Method kinds.**
//!
//! | proto method | interaction | requester sends | responder sends |
//! |---|---|---|---|
//! | unary | REQUEST_RESPONSE | the request message | one PAYLOAD (N+C) with the response |
//! | server streaming | REQUEST_STREAM | the request message | PAYLOADs, then COMPLETE |
//! | client streaming | REQUEST_CHANNEL | a header payload, then one PAYLOAD per message, then COMPLETE | exactly one PAYLOAD (N+C) |
//! | bidirectional | REQUEST_CHANNEL | a header payload, then one PAYLOAD per message, then COMPLETE | PAYLOADs, then COMPLETE |
//! | unary marked fire-and-forget | REQUEST_FNF | the request message | nothing |
//!
//! A fire-and-forget method also accepts REQUEST_RESPONSE (answered with the
//! empty message once the handler is done), and a unary method accepts
//! REQUEST_FNF (its response is dropped), for clients that do not know the
//! marking.
//!
//! **The first payload of a channel is a header.** For client-streaming and
//! bidirectional calls, REQUEST_CHANNEL carries the routing metadata and
//! **empty data**; every message, the first included, follows in its own
//! PAYLOAD frame. So an empty input stream is a header followed by COMPLETE
//! (or REQUEST_CHANNEL with the C flag), and a first message that encodes to
//! zero bytes is an ordinary PAYLOAD that cannot be mistaken for "no
//! message". A REQUEST_CHANNEL whose data is not empty is refused with
//! `ERROR[INVALID]`. The cost is one small frame per channel call.
//!
//! **Response metadata** is composite metadata on the response PAYLOAD
//! (for streams, on the first one, so a stream that yields no message
//! carries none), absent when empty.
//!
//! **Flow control** is RSocket's: REQUEST_N on streams in both directions.
//! A server-streaming handler's stream is polled only while the client has
//! granted credit, and a [`Streaming`] grants credit only as it is read.
//!
//! **Cancellation.** A client that gives up (drops the call, or its deadline
//! passes) sends CANCEL; the server drops the handler's future or stream.
//! A server handler that stops reading its input stream cancels the
//! client's outbound half of the channel.
//!
//! ## Errors on the wire
//!
//! ERROR frames carry only the spec's stream codes, and the RPC [`Code`]
//! travels at the start of the message as `CODE: message`, with the code
//! spelled as in gRPC (`NOT_FOUND: no such user`). Clients read the code
//! back with [`Status::from_stream_error`]; a message without a known code
//! prefix gets a code from the frame's code (last column).
//!
//! | situation | ERROR code | message | read back as, without a prefix |
//! |---|---|---|---|
//! | the handler returned `Err(status)` | `APPLICATION_ERROR` (0x201) | `<CODE>: <message>` | `UNKNOWN` |
//! | the handler panicked | `APPLICATION_ERROR` | `INTERNAL: the handler panicked` | |
//! | the request message does not decode | `INVALID` (0x204) | `INVALID_ARGUMENT: cannot decode the request message: …` | `INVALID_ARGUMENT` |
//! | the single request message is over the size limit (for messages of a stream, see [Limits](#limits-and-tracing)) | `INVALID` | `RESOURCE_EXHAUSTED: message of N bytes exceeds the limit of M bytes` | |
//! | a channel's first payload carries data | `INVALID` | `INVALID_ARGUMENT: the first payload of a channel carries only metadata; …` | |
//! | unknown service or method | `REJECTED` (0x202) | `UNIMPLEMENTED: unknown method "<route>"` | `UNAVAILABLE` |
//! | the method exists but not for this interaction | `REJECTED` | `UNIMPLEMENTED: <route> is a <kind> method; call it with …` | |
//! | no metadata, no routing entry, malformed metadata | `REJECTED` | `INVALID_ARGUMENT: …` | |
//! | a server interceptor refused the call | `REJECTED` | `<CODE>: <message>` of its status | |
//! | the server cancelled (core) | `CANCELED` (0x203) | as sent | `CANCELLED` |
//!
//! None of these affects the connection or other calls. On the client:
//!
//! | situation (core [`RequestError`](rsocket_core::RequestError)) | code |
//! |---|---|
//! | the connection ended (`Connection`) | `UNAVAILABLE` |
//! | the connection is closing gracefully, the call was not sent (`ConnectionClosing`) | `UNAVAILABLE` |
//! | no connection could take the call, e.g. a load balancer with no ready member (`Unavailable`) | `UNAVAILABLE` |
//! | leasing is on and no lease allowed the call (`NoLease`) | `UNAVAILABLE` |
//! | the stream was cancelled (`Cancelled`) | `CANCELLED` |
//! | the peer broke the protocol on the stream (`Protocol`) | `INTERNAL` |
//! | a passed deadline | `DEADLINE_EXCEEDED` |
//! | a response over the client's size limit | `RESOURCE_EXHAUSTED` |
//! | an undecodable response | `INTERNAL` |
//!
//! The message of the first four is the core error's text. [`Status::rsocket_code`] tells which ERROR code a status came
//! in. (Custom codes in the application range are avoided on purpose:
//! rsocket-py 0.4.20 drops ERROR frames with codes it does not know, and its
//! calls then hang.)
//!
//! ## The rsocket-rpc-java layout
//!
//! Servers also accept requests in the metadata layout of rsocket-rpc-java
//! (version 1), so that its clients can call these services. All integers
//! big-endian:
//!
//! ```text
//! u16 version = 1 | u16 len | service (UTF-8) | u16 len | method (UTF-8) | u16 len | tracing | user metadata (rest)
//! ```
//!
//! The route is `service/method`; user metadata that parses as composite
//! metadata becomes the call's [`Metadata`], and both raw parts are in
//! [`Metadata::rsocket_rpc_v1`]. In this layout (as rsocket-rpc-java sends
//! it) the first payload of a channel carries the first message. Metadata
//! is read as this layout only when it starts with `00 01`, the three
//! length-prefixed fields fit inside it (whatever follows them is the user
//! metadata) and the service and method names are UTF-8; anything else is
//! read as composite metadata. [`encode_rpc_v1`] writes it.
//!
//! # Limits and tracing
//!
//! Decoded messages are limited to 4 MiB by default
//! ([`Router::max_decoding_message_size`],
//! [`Client::max_decoding_message_size`]), checked against the payload
//! length before decoding. On the server, a single request message over
//! the limit is answered `ERROR[INVALID]` with `RESOURCE_EXHAUSTED` and the
//! handler does not run; in a client-streaming or bidirectional call, a
//! message over the limit reaches the handler as an `Err` item of its
//! [`Streaming`] with `RESOURCE_EXHAUSTED`, and the input ends there (a
//! handler that returns that status sends it as `ERROR[INVALID]`). A
//! message of such an input that does not decode is handled the same way,
//! with `INVALID_ARGUMENT: cannot decode the request message: …`. On the
//! client, a response message over the limit or undecodable (see the table
//! above) fails a unary call, and is the last item of a response stream.
//!
//! Every call on the client, and every call on the server whose route was
//! resolved to a method callable with the request's interaction, runs in a
//! `tracing` span `rpc` (at DEBUG) with the fields `side`, `route`, `kind`,
//! `outcome` (`OK` or the code, `CANCELLED` when dropped) and
//! `duration_us`; the span covers the server's interceptors and the
//! refusal of a channel whose first payload carries data. A request the
//! server refuses before that (no or malformed metadata, an unknown
//! method, a method that does not take the interaction) gets no span,
//! only a DEBUG event "refused a call" with its `code` and `message`.
//!
//! Panics in handlers and in server interceptors are caught (with
//! `panic = "unwind"`, the default) and answered as `INTERNAL` (`the handler
//! panicked`, `an interceptor panicked`); a panic while a response stream
//! is polled ends that stream with it, after the items already sent.
#![forbid(unsafe_code)]

mod call;
mod client;
mod codec;
pub mod codegen;
mod interceptor;
mod metadata;
mod request;
mod router;
mod server;
mod status;
mod streaming;

pub use call::{CallInfo, MethodKind};
pub use client::Client;
pub use codec::DEFAULT_MAX_DECODING_MESSAGE_SIZE;
pub use interceptor::{interceptor_fn, FnInterceptor, Interceptor};
pub use metadata::{encode_rpc_v1, Metadata, RouteError, RpcV1Metadata};
pub use request::{IntoRequest, IntoStreamingRequest, Request, Response};
pub use router::Router;
pub use rsocket_core::{async_trait, CallHints};
pub use server::{MethodInfo, ServerCall, ServerReply, Service};
pub use status::{Code, Status};
pub use streaming::Streaming;

/// The stream type a server handler can name for its streaming methods:
/// `type ChatStream = rsocket_rpc::BoxStream<HelloReply>;`.
pub type BoxStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Includes the code generated for a protobuf package by
/// `rsocket-rpc-build`: `include_proto!("greeter")` includes
/// `$OUT_DIR/greeter.rs`. Code written elsewhere (the builder's `out_dir`)
/// is included with `include!` and its path.
#[macro_export]
macro_rules! include_proto {
    ($package:tt) => {
        include!(concat!(env!("OUT_DIR"), concat!("/", $package, ".rs")));
    };
}

/// The data MIME type of RPC connections: `application/vnd.google.protobuf`.
pub const DATA_MIME_TYPE: &str = "application/vnd.google.protobuf";
/// The metadata MIME type of RPC connections:
/// `message/x.rsocket.composite-metadata.v0`.
pub const METADATA_MIME_TYPE: &str = "message/x.rsocket.composite-metadata.v0";

/// SETUP parameters for an RPC client: protobuf data, composite metadata,
/// the other fields at their defaults.
pub fn setup_params() -> rsocket_core::SetupParams {
    rsocket_core::SetupParams {
        // A short ASCII constant: validation cannot fail.
        data_mime_type: rsocket_core::MimeType::from_static(DATA_MIME_TYPE)
            .unwrap_or(rsocket_core::MimeType::OCTET_STREAM),
        metadata_mime_type: rsocket_core::MimeType::COMPOSITE_METADATA,
        ..rsocket_core::SetupParams::default()
    }
}
