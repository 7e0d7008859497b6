#!/usr/bin/env bash
# Cross-implementation interop suite: our interop_server / interop_client
# against rsocket-py and rsocket-js peers (interop/python, interop/js), over
# TCP and WebSocket. See docs/interop.md.
#
#   interop/run.sh            install peers (idempotent), build, run the matrix
#
# Environment:
#   INTEROP_BASELINES=1       also run py->py and js->js (checks the peers
#                             against their own library)
#   INTEROP_CASE_TIMEOUT=S    per-case timeout inside the clients (default 10)
#   INTEROP_RUN_TIMEOUT=S     timeout of one client run (default 120)
#
# Peers are installed from exact pins into ignored folders:
#   target/interop/venv          (interop/python/requirements.txt)
#   interop/js/node_modules      (interop/js/package-lock.json, `npm ci`)
# pip and npm keep their download caches, so a second run works offline.
#
# Exits non-zero if any run fails, or prints no summary, or reports a number
# of cases other than expected.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORK=target/interop
LOGS=$WORK/logs
VENV=$WORK/venv
JS=interop/js
CASE_TIMEOUT=${INTEROP_CASE_TIMEOUT:-10}
RUN_TIMEOUT=${INTEROP_RUN_TIMEOUT:-120}
READY_TIMEOUT=60
SERVER_MAX=900        # a server outliving this is killed by `timeout`
EXPECTED_CASES=20     # caps + 19 cases, in every client
MTU=64                # --fragment of the servers that can fragment

mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.out

say() { printf '\n--> %s\n' "$*"; }
die() { printf 'interop: %s\n' "$*" >&2; exit 1; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

# --- install ----------------------------------------------------------------

command -v python3 >/dev/null || die "python3 is required"
command -v node >/dev/null || die "node is required"
command -v npm >/dev/null || die "npm is required"

say "rsocket-py peers ($VENV)"
REQ=interop/python/requirements.txt
if [[ ! -x $VENV/bin/python || ! -f $VENV/.requirements.sha256 ||
      $(cat "$VENV/.requirements.sha256") != "$(sha "$REQ")" ]]; then
    rm -rf "$VENV"
    timeout 300 python3 -m venv "$VENV"
    PIP_DISABLE_PIP_VERSION_CHECK=1 timeout 600 "$VENV/bin/pip" install --quiet \
        --no-input -r "$REQ"
    sha "$REQ" > "$VENV/.requirements.sha256"
fi
"$VENV/bin/python" -c 'import importlib.metadata as m; print("rsocket", m.version("rsocket"), "aiohttp", m.version("aiohttp"))'

say "rsocket-js peers ($JS/node_modules)"
LOCK=$JS/package-lock.json
if [[ ! -f $JS/node_modules/.interop-lock.sha256 ||
      $(cat "$JS/node_modules/.interop-lock.sha256") != "$(sha "$LOCK")" ]]; then
    (cd "$JS" && timeout 600 npm ci --no-audit --no-fund --prefer-offline --loglevel=error)
    sha "$LOCK" > "$JS/node_modules/.interop-lock.sha256"
fi
node -e 'for (const p of ["rsocket-core","rsocket-tcp-client","rsocket-tcp-server","rsocket-websocket-client","rsocket-websocket-server","rsocket-composite-metadata","ws"]) process.stdout.write(p + " " + require("./'"$JS"'/node_modules/" + p + "/package.json").version + "\n")'

say "build interop_server and interop_client (release)"
timeout 1800 cargo build --release --locked --example interop_server --example interop_client
BIN=target/release/examples

# --- processes --------------------------------------------------------------

SERVER_PID=""
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

server_cmd() { # impl transport -> command line on stdout (one word per line)
    local impl=$1 transport=$2
    case $impl in
        rust) printf '%s\n' "$BIN/interop_server" --transport "$transport" \
                  --host 127.0.0.1 --port 0 --fragment "$MTU" ;;
        py) printf '%s\n' "$VENV/bin/python" interop/python/server.py \
                --transport "$transport" --host 127.0.0.1 --port 0 --fragment "$MTU" ;;
        js) printf '%s\n' node "$JS/server.js" --transport "$transport" \
                --host 127.0.0.1 --port 0 ;;
    esac
}

client_cmd() { # impl transport port
    local impl=$1 transport=$2 port=$3
    case $impl in
        rust) printf '%s\n' "$BIN/interop_client" --transport "$transport" \
                  --host 127.0.0.1 --port "$port" --case-timeout "$CASE_TIMEOUT" ;;
        py) printf '%s\n' "$VENV/bin/python" interop/python/client.py \
                --transport "$transport" --host 127.0.0.1 --port "$port" \
                --case-timeout "$CASE_TIMEOUT" ;;
        js) printf '%s\n' node "$JS/client.js" --transport "$transport" \
                --host 127.0.0.1 --port "$port" --case-timeout "$CASE_TIMEOUT" ;;
    esac
}

# Starts a server, waits for its READY line, sets SERVER_PID and PORT.
start_server() {
    local impl=$1 transport=$2 tag=$3
    local out=$LOGS/$tag.server.out err=$LOGS/$tag.server.log
    local -a cmd
    mapfile -t cmd < <(server_cmd "$impl" "$transport")
    : > "$out"
    timeout "$SERVER_MAX" "${cmd[@]}" > "$out" 2> "$err" &
    SERVER_PID=$!
    local deadline=$((SECONDS + READY_TIMEOUT)) line=""
    while (( SECONDS < deadline )); do
        line=$(grep -m1 '^READY ' "$out" || true)
        [[ -n $line ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $line ]]; then
        echo "server $impl/$transport did not print READY within ${READY_TIMEOUT}s; its stderr:"
        tail -n 30 "$err" || true
        stop_server
        return 1
    fi
    read -r _ got_transport _ PORT <<< "$line"
    if [[ $got_transport != "$transport" || ! $PORT =~ ^[0-9]+$ || $PORT == 0 ]]; then
        echo "server $impl/$transport printed a bad READY line: $line"
        stop_server
        return 1
    fi
}

# --- the matrix -------------------------------------------------------------

declare -A RESULT
TOTAL_PASSED=0 TOTAL_FAILED=0 TOTAL_SKIPPED=0 BAD_RUNS=0

run_pair() { # client server transport
    local client=$1 server=$2 transport=$3
    local tag="$client-to-$server-$transport" status
    say "$client client -> $server server over $transport"
    if ! start_server "$server" "$transport" "$tag"; then
        RESULT[$client,$server,$transport]="FAIL (server did not start)"
        BAD_RUNS=$((BAD_RUNS + 1)) TOTAL_FAILED=$((TOTAL_FAILED + 1))
        return
    fi
    local -a cmd
    mapfile -t cmd < <(client_cmd "$client" "$transport" "$PORT")
    local out=$LOGS/$tag.client.out
    set +e
    timeout "$RUN_TIMEOUT" "${cmd[@]}" > "$out" 2> "$LOGS/$tag.client.log"
    status=$?
    set -e
    stop_server
    sed 's/^/    /' "$out"

    local summary skipped passed failed
    summary=$(tail -n 1 "$out" || true)
    skipped=$( (grep -E '^[0-9]+ skipped$' "$out" || true) | tail -n 1 | cut -d' ' -f1)
    if [[ $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ && -n $skipped ]]; then
        passed=${BASH_REMATCH[1]} failed=${BASH_REMATCH[2]}
    else
        echo "    (no summary line; exit status $status; client stderr:)"
        tail -n 20 "$LOGS/$tag.client.log" | sed 's/^/    /'
        RESULT[$client,$server,$transport]="FAIL (no summary, exit $status)"
        BAD_RUNS=$((BAD_RUNS + 1)) TOTAL_FAILED=$((TOTAL_FAILED + 1))
        return
    fi
    TOTAL_PASSED=$((TOTAL_PASSED + passed))
    TOTAL_FAILED=$((TOTAL_FAILED + failed))
    TOTAL_SKIPPED=$((TOTAL_SKIPPED + skipped))
    local counts="$passed/$failed/$skipped"
    # A bad run counts as a failure even when no case reported one.
    if (( failed == 0 )) && (( status != 0 || passed + failed + skipped != EXPECTED_CASES )); then
        TOTAL_FAILED=$((TOTAL_FAILED + 1))
    fi
    if (( status == 124 )); then
        RESULT[$client,$server,$transport]="FAIL $counts (timed out)"
        BAD_RUNS=$((BAD_RUNS + 1))
    elif (( passed + failed + skipped != EXPECTED_CASES )); then
        RESULT[$client,$server,$transport]="FAIL $counts (expected $EXPECTED_CASES cases)"
        BAD_RUNS=$((BAD_RUNS + 1))
    elif (( failed > 0 || status != 0 )); then
        RESULT[$client,$server,$transport]="FAIL $counts"
        BAD_RUNS=$((BAD_RUNS + 1))
    else
        RESULT[$client,$server,$transport]="ok   $counts"
    fi
}

PAIRS=("py rust" "js rust" "rust py" "rust js" "rust rust")
if [[ ${INTEROP_BASELINES:-0} == 1 ]]; then
    PAIRS+=("py py" "js js")
fi

for pair in "${PAIRS[@]}"; do
    for transport in tcp ws; do
        # shellcheck disable=SC2086
        run_pair $pair "$transport"
    done
done

say "interop matrix (passed/failed/skipped per run; logs in $LOGS)"
printf '%-24s %-34s %-34s\n' "client -> server" "tcp" "ws"
for pair in "${PAIRS[@]}"; do
    read -r c s <<< "$pair"
    printf '%-24s %-34s %-34s\n' "$c -> $s" "${RESULT[$c,$s,tcp]}" "${RESULT[$c,$s,ws]}"
done
echo
echo "interop: $TOTAL_PASSED passed, $TOTAL_FAILED failed, $TOTAL_SKIPPED skipped"
if (( BAD_RUNS > 0 )); then
    echo "interop: $BAD_RUNS run(s) failed" >&2
    exit 1
fi
