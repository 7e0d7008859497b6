//! Shared helpers for the examples (see the `examples/` targets).
