#!/usr/bin/env bash
# The `rsocket rpc` command against the RPC example server (rpc_greeter
# --serve): unary, server stream, an error, and --list, with the .proto
# parsed at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -q -p rsocket-cli --example rpc_greeter -p rsocket-examples
BIN=target/debug
OUT=target/cli-rpc
mkdir -p "$OUT"
"$BIN/examples/rpc_greeter" --serve tcp://127.0.0.1:0 > "$OUT/server.out" 2> "$OUT/server.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    grep -q '^READY ' "$OUT/server.out" && break
    sleep 0.1 # polling for the server's READY line, not ordering events
done
read -r _ _ HOST PORT < <(grep '^READY ' "$OUT/server.out")
URI="tcp://$HOST:$PORT"
PROTO=(--proto examples/proto/greeter.proto)
rpc() { timeout 60 "$BIN/rsocket" rpc "$URI" "${PROTO[@]}" "$@"; }

# `grep -q` would stop reading at the first match and `tee` would die of
# SIGPIPE (status 141 under pipefail) when it still had output to write:
# grep reads everything here.
rpc --list | tee "$OUT/list" | grep 'greeter.Greeter/SayHello' > /dev/null
rpc greeter.Greeter/SayHello -d '{"name":"cli"}' | tee "$OUT/unary" | grep 'cli' > /dev/null
rpc greeter.Greeter/LotsOfReplies -d '{"name":"s","count":3}' > "$OUT/stream"
test "$(wc -l < "$OUT/stream")" -eq 3
if rpc greeter.Greeter/SayHello -d '{"name":""}' > "$OUT/error.out" 2> "$OUT/error.err"; then
    echo "an RPC error must give a non-zero exit" >&2
    exit 1
fi
cat "$OUT/unary" "$OUT/stream" "$OUT/error.err"
echo "cli rpc against rpc_greeter ok"
