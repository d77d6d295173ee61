#!/usr/bin/env bash
# What a publish costs. HTTP ingest through one relay (100 sites, 4 keep-alive connections, 100
# messages per request), with the in-memory broker, with Redis and with Redis over TLS
# (`rediss://`, a TLS-only redis-server with a CA made for the run), for:
#   off       DATASTREAM_LATEST_TOPICS=0: the publish path without latest values;
#   1 topic   the default (64 kept per site), every site publishing one topic;
#   64 topics every site cycling through 64 topics: each publish replaces one of a full set;
#   100 topics every site cycling through 100: each publish also drops the least recent topic;
# and, with BENCH_BEFORE=path/to/an/older/datastream, that binary as "before". Then the Redis
# publish script alone (redis-benchmark, pipelined, no relay), off and on. Each ingest runs
# BENCH_REPEAT times (default 3); the table gives the median. About 4 minutes.
#
#   bench/publish-cost.sh
#   BENCH_BROKERS="redis redis-tls" BENCH_CASES="1" bench/publish-cost.sh   # what TLS costs, alone
#   BENCH_BEFORE=/path/to/datastream-before BENCH_REPEAT=5 bench/publish-cost.sh
#
# BENCH_BROKERS (default "memory redis redis-tls") and BENCH_CASES (topics per site, default
# "off 1 64 100") narrow a run; BENCH_BATCH (default 100) sets the messages per request (1: each
# message its own publish, as most publishers send them). Writes bench/results/<time>-publish-cost/results.{jsonl,md}.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"

REPEAT=${BENCH_REPEAT:-3}
BROKERS=${BENCH_BROKERS:-"memory redis redis-tls"}
CASES=${BENCH_CASES:-"off 1 64 100"}
BATCH=${BENCH_BATCH:-100}
OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-publish-cost"
mkdir -p "$OUT"
JSONL="$OUT/results.jsonl"
: >"$JSONL"

step "build (release)"
cargo build --quiet --release -p datastream -p datastream-bench
RELAY="$CARGO_TARGET_DIR/release/datastream"
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
source "$ROOT/bench/lib.sh"
export DATASTREAM_LOG=warn DATASTREAM_PING_INTERVAL=5m DATASTREAM_CLIENT_TIMEOUT=10m

start_redis

# The same Redis over TLS only: a CA and a certificate for 127.0.0.1 made for the run.
if [[ " $BROKERS " == *" redis-tls "* ]]; then
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" -days 1 -subj "/CN=bench CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout "$WORK/tls.key" -out "$WORK/tls.csr" -subj "/CN=127.0.0.1" 2>/dev/null
    echo "subjectAltName=IP:127.0.0.1" >"$WORK/san.ext"
    openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial -days 1 \
        -extfile "$WORK/san.ext" -out "$WORK/tls.crt" 2>/dev/null
    TLS_PORT=$(free_port)
    "${SERVER_CPU[@]}" redis-server --port 0 --tls-port "$TLS_PORT" --tls-cert-file "$WORK/tls.crt" \
        --tls-key-file "$WORK/tls.key" --tls-ca-cert-file "$WORK/ca.crt" --tls-auth-clients no \
        --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis-tls.log" 2>&1 &
    TLS_PID=$!
    PIDS+=("$TLS_PID")
    wait_port "$TLS_PORT"
fi

# ingest BROKER CASE BIN LATEST_TOPICS TOPICS MESSAGES: one relay, one ingest run per repeat.
ingest() {
    local broker=$1 case=$2 bin=$3 keep=$4 topics=$5 messages=$6 rep port pid r0 r1 redis_pid
    for rep in $(seq 1 "$REPEAT"); do
        port=$(free_port)
        local env=(DATASTREAM_LISTEN="127.0.0.1:$port" DATASTREAM_LATEST_TOPICS="$keep")
        case "$broker" in
        redis)
            redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
            redis_pid=$REDIS_PID
            env+=(DATASTREAM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT")
            ;;
        redis-tls)
            redis-cli --tls --cacert "$WORK/ca.crt" -p "$TLS_PORT" FLUSHALL >/dev/null
            redis_pid=$TLS_PID
            env+=(DATASTREAM_REDIS_URL="rediss://127.0.0.1:$TLS_PORT" DATASTREAM_REDIS_CA_FILE="$WORK/ca.crt")
            ;;
        *) redis_pid=$REDIS_PID ;;
        esac
        # An older binary does not know DATASTREAM_LATEST_TOPICS; it ignores the variable.
        env "${env[@]}" "${SERVER_CPU[@]}" "$bin" serve >"$WORK/relay.log" 2>&1 &
        pid=$!
        wait_port "$port" || { cat "$WORK/relay.log" >&2; exit 1; }
        r0=$(cpu "$redis_pid")
        "${TOOL_CPU[@]}" "$LOADGEN" ingest-http --http "127.0.0.1:$port" --server-pid "$pid" \
            --messages "$messages" --batch "$BATCH" --conns 4 --topics "$topics" --label "$case" >"$WORK/ingest.json"
        r1=$(cpu "$redis_pid")
        kill "$pid" && wait "$pid" 2>/dev/null || true
        python3 - "$WORK/ingest.json" "$broker" "$case" "$r0" "$r1" >>"$JSONL" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
r["kind"], r["broker"], r["case"] = "ingest", sys.argv[2], sys.argv[3]
r["redis_cpu_ms_per_1k"] = round(1000 * (float(sys.argv[5]) - float(sys.argv[4])) / (r["messages"] / 1000), 2)
print(json.dumps(r))
PY
    done
}

for broker in $BROKERS; do
    messages=$([ "$broker" = memory ] && echo 1000000 || echo 200000)
    [ "$BATCH" -ge 100 ] || messages=$((messages / 10))
    if [ -n "${BENCH_BEFORE:-}" ] && [ "$broker" != redis-tls ]; then
        step "$broker: before"
        ingest "$broker" before "$BENCH_BEFORE" 64 1 "$messages"
    fi
    for c in $CASES; do
        if [ "$c" = off ]; then
            step "$broker: off"
            ingest "$broker" off "$RELAY" 0 1 "$messages"
        else
            step "$broker: $c topic(s) per site"
            ingest "$broker" "$c topic(s)" "$RELAY" 64 "$c" "$messages"
        fi
    done
done

step "the Redis publish script alone (redis-benchmark, 16 connections, pipeline 16)"
sha=$(load_publish_script "$REDIS_PORT")
data=$(python3 -c 'print("{\"seq\":1,\"t\":1,\"pad\":\"" + "x" * 150 + "\"}")')
# Only when plain Redis is among the brokers measured.
[[ " $BROKERS " == *" redis "* ]] || SCRIPT_CASES=""
for keep in ${SCRIPT_CASES-0 64}; do
    for rep in $(seq 1 "$REPEAT"); do
        redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
        r0=$(cpu "$REDIS_PID")
        "${TOOL_CPU[@]}" redis-benchmark -p "$REDIS_PORT" -n 200000 -c 16 -P 16 -r 100 -q \
            EVALSHA "$sha" 5 'bench:{s__rand_int__}:meta' 'bench:{s__rand_int__}:stream' '' \
            'bench:{s__rand_int__}:latest' 'bench:{s__rand_int__}:latest:order' \
            bench "$data" 100 0123456789abcdef 300000 600000 bench:pub "$keep" 86400000 bench 86400000 >"$WORK/lua.txt"
        r1=$(cpu "$REDIS_PID")
        python3 - "$WORK/lua.txt" "$r0" "$r1" "$keep" >>"$JSONL" <<'PY'
import json, re, sys
rate = float(re.findall(r"([0-9.]+) requests per second", open(sys.argv[1]).read())[-1])
cpu = float(sys.argv[3]) - float(sys.argv[2])
print(json.dumps({"kind": "lua", "case": "off" if sys.argv[4] == "0" else "on", "publishes_per_s": round(rate),
                  "redis_us_per_publish": round(1e6 * cpu / 200000, 2)}))
PY
    done
done

step "report"
uptime
python3 - "$JSONL" "$BATCH" <<'PY' | tee "$OUT/results.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs): return statistics.median(xs)
print(f"HTTP ingest through one relay: 100 sites, 4 connections, {sys.argv[2]} message(s) per request (median of the runs).\n")
print("| broker | case | messages/s | relay CPU ms per 1k | Redis CPU ms per 1k |")
print("|---|---|---:|---:|---:|")
cases = []
for r in rows:
    if r["kind"] == "ingest" and (r["broker"], r["case"]) not in cases:
        cases.append((r["broker"], r["case"]))
for broker, case in cases:
    rs = [r for r in rows if r["kind"] == "ingest" and r["broker"] == broker and r["case"] == case]
    redis = f"{med([r['redis_cpu_ms_per_1k'] for r in rs]):.2f}" if broker != "memory" else ""
    print(f"| {broker} | {case} | {med([r['messages_per_s'] for r in rs]):,.0f} | "
          f"{med([r['server_cpu_ms_per_1k'] for r in rs]):.2f} | {redis} |")
lua = [r for r in rows if r["kind"] == "lua"]
if lua:
    print("\nThe Redis publish script alone (redis-benchmark, 100 sites, 16 connections, pipeline 16):\n")
    print("| latest | publishes/s | Redis µs per publish |")
    print("|---|---:|---:|")
    for case in ("off", "on"):
        rs = [r for r in lua if r["case"] == case]
        print(f"| {case} | {med([r['publishes_per_s'] for r in rs]):,.0f} | {med([r['redis_us_per_publish'] for r in rs]):.2f} |")
PY
echo "results: $OUT"
