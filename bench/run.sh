#!/usr/bin/env bash
# The benchmark: the relay (legacy and v2 subscribers), nats-server, mosquitto and a plain Node.js
# `ws` relay, under the same workloads, in one run. Writes bench/results/<time>/results.{jsonl,md}
# and prints the markdown tables.
#
#   bench/run.sh                       # everything (about 12 minutes on 2 cores)
#   BENCH_TARGETS="relay nats" bench/run.sh   # of: relay relay-v2 nats mosquitto node floor
#   BENCH_SCENARIOS="5k max" bench/run.sh    # of: 5k overload sites 10k max ingest client
#   BENCH_RELAY=path/to/datastream bench/run.sh   # another build of the relay (before/after)
#   BENCH_REDIS=1 bench/run.sh         # the relay targets on the Redis broker (a Redis on the server's core)
#   BENCH_REPEAT=3 bench/run.sh        # the delivery scenarios 3 times (labels sites#1, sites#2…), with
#                                      # each ratio's range and median over the runs in the report
#
# Pinning: with 2 or more cores, each server runs on core 0 (`taskset -c 0`, so the relay's tokio
# runtime and Go's GOMAXPROCS see one core) and the load tool on core 1 (a single-threaded
# runtime). With one core both share it. Both run at nice -10 (BENCH_NICE) so that other work on
# the machine (builds) disturbs the figures less; every server gets the same treatment.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"

TARGETS=${BENCH_TARGETS:-"relay relay-v2 nats mosquitto node floor"}
SCENARIOS=${BENCH_SCENARIOS:-"5k overload sites 10k max ingest client"}
MAX_SUBS=${BENCH_MAX_SUBS:-19800}
REPEAT=${BENCH_REPEAT:-1}
source "$ROOT/bench/lib.sh"
OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
JSONL="$OUT/results.jsonl"
: > "$JSONL"

step "build (release)"
cargo build --release -p datastream
cargo build --release -p datastream-bench
RELAY="${BENCH_RELAY:-$CARGO_TARGET_DIR/release/datastream}"
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"

step "peers"
if ! command -v nats-server >/dev/null || ! command -v mosquitto >/dev/null; then
    apt-get -o DPkg::Lock::Timeout=600 install -y nats-server mosquitto
fi
[ -d bench/node-relay/node_modules/ws ] || (cd bench/node-relay && npm install --no-audit --no-fund)
ulimit -n "$(ulimit -Hn)"

SPID=""
cleanup() {
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then kill "$SPID"; wait "$SPID" 2>/dev/null || true; fi
    bench_cleanup
}
trap cleanup EXIT

NEXT_PORT=${BENCH_BASE_PORT:-21000}

# With BENCH_REDIS=1 the relay runs on the Redis broker: one Redis, on the servers' core, shared by
# every relay start (its keys flushed before each).
RELAY_REDIS=()
if [ "${BENCH_REDIS:-0}" = 1 ]; then
    start_redis
    RELAY_REDIS=(DATASTREAM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/")
fi

# start_server TARGET: starts it on fresh ports; sets SPID, WS (subscriber address) and PUB
# (publisher address). Fresh ports for every start keep TIME_WAIT sockets of the previous
# scenario out of the way.
start_server() {
    local p=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 10))
    case "$1" in
    relay | relay-v2)
        if [ -n "${REDIS_PORT:-}" ]; then redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null; fi
        # Heartbeats every 5 minutes, like nats below: no server's heartbeat falls in a measured
        # phase (their cost is measured on its own, see BENCHMARKS.md).
        env "${RELAY_REDIS[@]}" DATASTREAM_LISTEN="127.0.0.1:$p" DATASTREAM_MAX_CONNECTIONS_PER_IP=0 DATASTREAM_LOG=warn \
            DATASTREAM_PING_INTERVAL=5m DATASTREAM_CLIENT_TIMEOUT=10m \
            "${SERVER_CPU[@]}" "$RELAY" serve >"$WORK/server.log" 2>&1 &
        SPID=$!
        WS="127.0.0.1:$p" PUB="127.0.0.1:$p"
        wait_port "$p"
        ;;
    nats)
        cat >"$WORK/nats.conf" <<CONF
listen: "127.0.0.1:$p"
websocket { listen: "127.0.0.1:$((p + 1))", no_tls: true, compression: false }
ping_interval: "5m"
CONF
        "${SERVER_CPU[@]}" nats-server -c "$WORK/nats.conf" >"$WORK/server.log" 2>&1 &
        SPID=$!
        WS="127.0.0.1:$((p + 1))" PUB="127.0.0.1:$p"
        wait_port "$((p + 1))"
        ;;
    mosquitto)
        cat >"$WORK/mosquitto.conf" <<CONF
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
max_connections -1
listener $p 127.0.0.1
listener $((p + 1)) 127.0.0.1
protocol websockets
CONF
        "${SERVER_CPU[@]}" mosquitto -c "$WORK/mosquitto.conf" >"$WORK/server.log" 2>&1 &
        SPID=$!
        WS="127.0.0.1:$((p + 1))" PUB="127.0.0.1:$p"
        wait_port "$((p + 1))"
        ;;
    node)
        PORT=$p "${SERVER_CPU[@]}" node bench/node-relay/relay.js >"$WORK/server.log" 2>&1 &
        SPID=$!
        WS="127.0.0.1:$p" PUB="127.0.0.1:$p"
        wait_port "$p"
        ;;
    floor)
        # Not a server one could deploy: the least work any server can do here (bench/src/floor.rs).
        "${SERVER_CPU[@]}" "$LOADGEN" floor --listen "127.0.0.1:$p" >"$WORK/server.log" 2>&1 &
        SPID=$!
        WS="127.0.0.1:$p" PUB="127.0.0.1:$p"
        wait_port "$p"
        ;;
    esac
    sleep 0.5
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
    # Let the kernel retire the scenario's sockets before the next one opens thousands more.
    sleep 1
}

# scenario NAME TARGET SUBS SITES PHASE... : one fresh server, one load-tool run.
scenario() {
    local name=$1 target=$2 subs=$3 sites=$4
    shift 4
    local phases=()
    for ph in "$@"; do phases+=(--phase "$ph"); done
    start_server "$target"
    if ! "${TOOL_CPU[@]}" "$LOADGEN" run --target "$target" --ws "$WS" --publish "$PUB" --server-pid "$SPID" \
        --subs "$subs" --sites "$sites" --drain 20 --label "$name" "${phases[@]}" >>"$JSONL"; then
        echo "{\"label\":\"$name\",\"target\":\"$target\",\"subs\":$subs,\"error\":\"load tool failed\"}" >>"$JSONL"
    fi
    if ! kill -0 "$SPID" 2>/dev/null; then
        echo "$target exited during $name:" >&2
        tail -5 "$WORK/server.log" >&2
    fi
    stop_server
}

for rep in $(seq 1 "$REPEAT"); do
    for s in $SCENARIOS; do
        # With repetitions, each run of a scenario is labelled apart: sites#1, sites#2…
        l=$s
        [ "$REPEAT" -eq 1 ] || l="$s#$rep"
        for t in $TARGETS; do
            case "$s" in
            # 5k subscribers, one site: the latency target (10 msg/s), then bursts of 20 every 2 s.
            5k) step "$l $t"; scenario "$l" "$t" 5000 1 steady:10:1:10 burst:0.5:20:6 ;;
            # 1k subscribers, one site, 200 msg/s offered = 200k deliveries/s: more than the box does.
            overload) step "$l $t"; scenario "$l" "$t" 1000 1 overload:200:1:6 ;;
            # 5k subscribers over 100 sites (50 each), 200 msg/s round robin, then bursts of 500.
            sites) step "$l $t"; scenario "$l" "$t" 5000 100 steady:200:1:10 burst:0.5:500:20 ;;
            10k) step "$l $t"; scenario "$l" "$t" 10000 1 steady:5:1:8 ;;
            max) step "$l $t"; scenario "$l" "$t" "$MAX_SUBS" 1 steady:2:1:6 ;;
            ingest)
                # Ingest and the client are measured once, whatever BENCH_REPEAT says.
                [ "$rep" -eq 1 ] || continue
                case "$t" in
                relay | node)
                    step "ingest $t"
                    for b in 1 100; do
                        start_server "$t"
                        "${TOOL_CPU[@]}" "$LOADGEN" ingest-http --http "$PUB" --server-pid "$SPID" \
                            --messages $((b == 1 ? 50000 : 200000)) --batch "$b" --conns 4 \
                            --label "ingest-http $t batch=$b" >>"$JSONL" || true
                        stop_server
                    done
                    ;;
                esac
                ;;
            esac
        done
    done
done

if [[ " $SCENARIOS " == *" ingest "* && " $TARGETS " == *" relay "* ]]; then
    step "ingest sqs relay"
    bench/sqs.sh "$RELAY" >>"$JSONL" || echo "SQS ingest skipped (see above)" >&2
fi

if [[ " $SCENARIOS " == *" client "* ]]; then
    step "client dispatch (headless Chromium)"
    if [ -f npm/dist/datastream_bg.wasm ] && command -v "${CHROMIUM:-chromium}" >/dev/null; then
        [ -d bench/client/node_modules/playwright-core ] || (cd bench/client && npm install --no-audit --no-fund)
        "${TOOL_CPU[@]}" node bench/client/dispatch.mjs --relay-bin "$RELAY" --messages 50000 >>"$JSONL" ||
            echo "client dispatch failed" >&2
    else
        echo "client dispatch skipped: build the npm package (npm/build.sh) and install chromium" >&2
    fi
fi

python3 bench/report.py "$JSONL" >"$OUT/results.md"
{
    echo
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$OUT/results.md"
cat "$OUT/results.md"
echo
echo "results: $OUT"
