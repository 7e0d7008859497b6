//! RSocket for Rust on tokio: frame codec, metadata extensions and the
//! connection engine.
//!
//! Layers, bottom up:
//!
//! ```text
//!  frame     typed frames <-> bytes (pure, zero-copy)
//!  metadata  composite metadata, routing, auth, MIME, tracing (pure)
//!  codec     24-bit length prefix for byte streams (tokio-util)
//! ```
#![forbid(unsafe_code)]

pub mod codec;
pub mod frame;
pub mod payload;

pub use frame::{ErrorCode, Frame, RequestCount, StreamId};
pub use payload::Payload;
