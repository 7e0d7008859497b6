//! Protobuf RPC over RSocket: **not implemented yet**.
//!
//! This crate is a placeholder so that the workspace layout is final. The
//! plan (see the project's design notes): services in `.proto` files become
//! typed Rust servers and clients through a prost-build service generator
//! (protox, so no system `protoc`), routed with the standard routing
//! metadata extension, with unary calls on request/response, server
//! streaming on request/stream, client streaming and bidirectional calls on
//! request/channel, and fire-and-forget for marked methods. Nothing here is
//! usable today.
#![forbid(unsafe_code)]
