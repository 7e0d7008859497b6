//! What generated code uses. Not for direct use: the names here may change
//! with the code generator.

pub use std::future::Future;
pub use std::sync::Arc;
pub use std::time::Duration;

pub use futures::Stream;
pub use prost;
pub use prost_types;
pub use rsocket_core::{CallHints, RSocket};

pub use crate::call::MethodKind;
pub use crate::client::Client;
pub use crate::interceptor::Interceptor;
pub use crate::request::{IntoRequest, IntoStreamingRequest, Request, Response};
pub use crate::server::{
    bidi_streaming, client_streaming, fire_and_forget, server_streaming, unary, MethodInfo,
    ServerCall, ServerReply, Service,
};
pub use crate::status::Status;
pub use crate::streaming::Streaming;
pub use crate::BoxStream;
