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

step "clippy (all targets, all features, warnings denied)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "TLS tests (rustls, certificates generated in the tests)"
cargo test --locked -p rsocket-transport-tcp -p rsocket-transport-ws --features rsocket-transport-tcp/tls,rsocket-transport-ws/tls

step "docs (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "library crates package (cargo package, verified by building each)"
cargo package --workspace --locked --allow-dirty --exclude rsocket-examples --exclude rsocket-tests

step "sans-IO core builds without tokio runtime"
cargo check -p rsocket-core --no-default-features --locked

step "quick start runs"
timeout 120 cargo run --locked --example quickstart > target/quickstart.out
grep -q '^done$' target/quickstart.out
echo "quickstart ok"

step "WebSocket example runs"
timeout 120 cargo run --locked --example ws > target/ws-example.out
grep -q '^done$' target/ws-example.out
echo "ws example ok"

step "command line: the README examples"
cargo build --locked -p rsocket-cli
awk '/<!-- cli-examples:begin -->/ {on = 1; next} /<!-- cli-examples:end -->/ {on = 0} on' README.md |
    grep -v '^```' > target/cli-examples.sh
PATH="$PWD/target/debug:$PATH" timeout 300 bash -euo pipefail target/cli-examples.sh > target/cli-examples.out
grep -qx 'hello' target/cli-examples.out
grep -qx 'exit status 1' target/cli-examples.out
grep -q '^latency µs  p50 ' target/cli-examples.out
echo "README command-line examples ok"

step "interop"
timeout 1800 interop/run.sh

step "command line against the interop peers (installed by interop/run.sh)"
cargo test --locked -p rsocket-cli --test interop -- --ignored
