#!/usr/bin/env bash
# Runs every check and test of the workspace. Needs only the Rust toolchain
# (plus Python 3 and Node for the interop suites once they land).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "docs (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "sans-IO core builds without tokio runtime"
cargo check -p rsocket-core --no-default-features --locked

step "quick start runs"
timeout 120 cargo run --locked --example quickstart > target/quickstart.out
grep -q '^done$' target/quickstart.out
echo "quickstart ok"
