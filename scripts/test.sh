#!/usr/bin/env bash
# Runs every check and test of the workspace. Needs the Rust toolchain, apt
# (it fetches etcd 3.4 for the etcd discovery tests), Python 3 and Node (the
# interop suites install their peers from PyPI and npm by themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy (all targets, all features, warnings denied)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "etcd 3.4 for the rsocket-balance-etcd tests (Debian package, unpacked under target/etcd)"
./scripts/fetch-etcd.sh

step "tests"
cargo test --workspace --locked

step "TLS tests (rustls, certificates generated in the tests)"
cargo test --locked -p rsocket-transport-tcp -p rsocket-transport-ws --features rsocket-transport-tcp/tls,rsocket-transport-ws/tls

step "docs (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "library crates package (cargo package, verified by building each)"
# Verification builds each packaged crate against the others, taken from a
# temporary registry. Cargo treats registry crates as immutable, so a build
# of an older 0.1.0 left in the target dir would count as fresh: verify in a
# target dir of its own, with our crates' artifacts removed first.
# Cargo also extracts the packaged crates from that temporary registry into
# its registry source cache (`registry/src/-<hash>/`, one per temporary
# registry path) and never extracts them again: remove our crates from
# there too, or a second run verifies against the first run's sources.
VERIFY=target/package-verify
rm -rf "$VERIFY"/debug/.fingerprint/rsocket* "$VERIFY"/debug/deps/*rsocket*
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/rsocket*
CARGO_TARGET_DIR=$VERIFY cargo package --workspace --locked --allow-dirty --exclude rsocket-examples --exclude rsocket-tests --exclude rsocket-rpc-tests

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

step "RPC greeter example runs"
timeout 120 cargo run --locked --example rpc_greeter > target/rpc-greeter.out
grep -q '^done$' target/rpc-greeter.out
echo "rpc greeter ok"

step "command line: rsocket rpc against the RPC example server"
timeout 600 scripts/cli-rpc.sh

step "balance example runs (three TCP servers, one killed, no failures)"
timeout 120 cargo run --locked --example balance > target/balance-example.out
cat target/balance-example.out
grep -q '^done$' target/balance-example.out
echo "balance example ok"

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

step "RPC interop (rsocket-py client, protobuf from grpcio-tools)"
timeout 1800 interop/rpc.sh

step "command line against the interop peers (installed by interop/run.sh)"
cargo test --locked -p rsocket-cli --test interop -- --ignored
