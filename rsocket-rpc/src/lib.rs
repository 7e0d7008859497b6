//! Protobuf RPC over RSocket (docs to come).
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
pub use rsocket_core::async_trait;
pub use server::{MethodInfo, ServerCall, ServerReply, Service};
pub use status::{Code, Status};
pub use streaming::Streaming;

/// The stream type a server handler can name for its streaming methods:
/// `type ChatStream = rsocket_rpc::BoxStream<HelloReply>;`.
pub type BoxStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Includes the code generated for a protobuf package by
/// `rsocket-rpc-build`: `include_proto!("greeter")` includes
/// `$OUT_DIR/greeter.rs`.
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
