#!/usr/bin/env bash
# Several nodes, measured: the Redis path next to the in-memory one, what one Redis sustains with
# the publish script, and one vs two vs three nodes behind HAProxy at the same total subscribers.
# Writes bench/results/<time>-cluster/results.jsonl and prints the tables of BENCHMARKS.md
# (section "Several nodes"). About 4 minutes.
#
#   bench/cluster.sh
#   BENCH_CLUSTER_SUBS=3000 BENCH_CLUSTER_RATE=100 BENCH_CLUSTER_SECS=10 bench/cluster.sh
#
# Every server-side process (relay nodes, Redis, HAProxy) runs on core 0 and the load tool on
# core 1 (bench/lib.sh), so their CPU times add up to what one core spent per delivery, whatever
# the number of nodes.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"

SUBS=${BENCH_CLUSTER_SUBS:-3000}
RATE=${BENCH_CLUSTER_RATE:-100}
SECS=${BENCH_CLUSTER_SECS:-10}
SITES=20
OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-cluster"
mkdir -p "$OUT"
JSONL="$OUT/results.jsonl"
: >"$JSONL"

step "build (release)"
cargo build --quiet --release -p datastream -p datastream-bench
RELAY="$CARGO_TARGET_DIR/release/datastream"
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
source "$ROOT/bench/lib.sh"
export CLUSTER_BIN=$RELAY
CLUSTER_NODE_PREFIX=("${SERVER_CPU[@]}")
CLUSTER_LB_PREFIX=("${SERVER_CPU[@]}")
CLUSTER_REDIS_PREFIX=("${SERVER_CPU[@]}")
source "$ROOT/scripts/cluster.sh"
ulimit -n "$(ulimit -Hn)"
trap 'cluster_down; bench_cleanup' EXIT
# Heartbeats every 5 minutes, as in bench/run.sh: none falls in a measured phase.
export DATASTREAM_PING_INTERVAL=5m DATASTREAM_CLIENT_TIMEOUT=10m DATASTREAM_LOG=warn

# record KIND LABEL FILE: appends the load tool's report with its kind and label.
record() {
    python3 - "$1" "$2" "$3" >>"$JSONL" <<'PY'
import json, sys
r = json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])
r["kind"], r["label"] = sys.argv[1], sys.argv[2]
print(json.dumps(r))
PY
}

# fanout LABEL WS PUBLISH NAME=PID...: subscribers on WS, publications to PUBLISH, CPU of each process.
fanout() {
    local label=$1 ws=$2 pub=$3
    shift 3
    local pids=()
    for p in "$@"; do pids+=(--pid "$p"); done
    "${TOOL_CPU[@]}" "$LOADGEN" run --target relay-v2 --ws "$ws" --publish "$pub" --publish-token "$CL_TOKEN" \
        --subs "$SUBS" --sites "$SITES" --settle 2 --drain 10 --label "$label" "${pids[@]}" \
        --phase "steady:$RATE:1:$SECS" >"$WORK/$label.json"
}

# hop LABEL WS: 100 subscribers of one site, 50 publications/s: the fan-out itself takes
# microseconds, so the latency is the path (publish → broker → socket), for the Redis hop.
hop() {
    "${TOOL_CPU[@]}" "$LOADGEN" run --target relay-v2 --ws "$2" --publish "$2" --publish-token "$CL_TOKEN" \
        --subs 100 --sites 1 --settle 1 --drain 5 --label "$1" --phase "steady:50:1:$SECS" >"$WORK/$1.json"
}

step "one node, subscribers connected to it: in-memory broker, then Redis"
CL_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
port=$(free_port)
DATASTREAM_LISTEN="127.0.0.1:$port" DATASTREAM_PUBLISH_TOKEN=$CL_TOKEN DATASTREAM_MAX_CONNECTIONS_PER_IP=0 \
    "${SERVER_CPU[@]}" "$RELAY" serve >"$WORK/memory.log" 2>&1 &
mem_pid=$!
wait_port "$port"
fanout memory "127.0.0.1:$port" "127.0.0.1:$port" "node1=$mem_pid"
record fanout "1 node, in-memory" "$WORK/memory.json"
hop hop-memory "127.0.0.1:$port"
record hop "1 node, in-memory" "$WORK/hop-memory.json"
kill "$mem_pid" && wait "$mem_pid" 2>/dev/null || true

CLUSTER_PUBLISH_TOKEN=$CL_TOKEN CL_NODES=1
cluster_up
fanout redis "127.0.0.1:${CL_NODE_PORT[1]}" "127.0.0.1:${CL_NODE_PORT[1]}" \
    "node1=${CL_NODE_PID[1]}" "redis=$CL_REDIS_PID"
record fanout "1 node, Redis" "$WORK/redis.json"
hop hop-redis "127.0.0.1:${CL_NODE_PORT[1]}"
record hop "1 node, Redis" "$WORK/hop-redis.json"

step "publish rate through one node and Redis (no subscribers, 100 messages per request)"
r0=$(cpu "$CL_REDIS_PID")
"${TOOL_CPU[@]}" "$LOADGEN" ingest-http --http "127.0.0.1:${CL_NODE_PORT[1]}" --publish-token "$CL_TOKEN" \
    --server-pid "${CL_NODE_PID[1]}" --messages 50000 --batch 100 --conns 4 --label ingest-redis >"$WORK/ingest.json"
r1=$(cpu "$CL_REDIS_PID")
python3 - "$WORK/ingest.json" "$r0" "$r1" >>"$JSONL" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
r["kind"], r["label"] = "ingest", "HTTP → 1 node → Redis"
r["redis_cpu_s"] = round(float(sys.argv[3]) - float(sys.argv[2]), 3)
print(json.dumps(r))
PY

step "what one Redis sustains with the publish script alone (redis-benchmark, 3 channel subscribers)"
sha=$(load_publish_script "$CL_REDIS_PORT")
for _ in 1 2 3; do
    redis-cli -p "$CL_REDIS_PORT" SUBSCRIBE bench:pub >/dev/null 2>&1 &
    PIDS+=($!)
done
data=$(python3 -c 'print("{\"seq\":1,\"t\":1,\"pad\":\"" + "x" * 150 + "\"}")')
r0=$(cpu "$CL_REDIS_PID")
t0=$(date +%s.%N)
"${TOOL_CPU[@]}" redis-benchmark -p "$CL_REDIS_PORT" -n 200000 -c 16 -P 16 -r $SITES -q \
    EVALSHA "$sha" 5 'bench:{s__rand_int__}:meta' 'bench:{s__rand_int__}:stream' '' \
    'bench:{s__rand_int__}:latest' 'bench:{s__rand_int__}:latest:order' \
    bench "$data" 100 0123456789abcdef 300000 600000 bench:pub 64 86400000 bench 86400000 >"$WORK/lua.txt"
t1=$(date +%s.%N)
r1=$(cpu "$CL_REDIS_PID")
python3 - "$WORK/lua.txt" "$r0" "$r1" "$t0" "$t1" >>"$JSONL" <<'PY'
import json, re, sys
rate = float(re.findall(r"([0-9.]+) requests per second", open(sys.argv[1]).read())[-1])
cpu = float(sys.argv[3]) - float(sys.argv[2])
secs = float(sys.argv[5]) - float(sys.argv[4])
print(json.dumps({"kind": "lua", "label": "publish script, redis-benchmark", "publishes_per_s": round(rate),
                  "redis_cpu_pct": round(100 * cpu / secs, 1), "redis_us_per_publish": round(1e6 * cpu / 200000, 2)}))
PY
cluster_down

for n in 1 2 3; do
    step "$n node(s) behind HAProxy, Redis"
    CL_NODES=$n
    cluster_up
    pids=("haproxy=$CL_LB_PID" "redis=$CL_REDIS_PID")
    for i in $(seq 1 "$n"); do pids+=("node$i=${CL_NODE_PID[$i]}"); done
    fanout "lb$n" "127.0.0.1:$CL_LB_PORT" "127.0.0.1:$CL_LB_PORT" "${pids[@]}"
    record fanout "$n node(s) behind HAProxy, Redis" "$WORK/lb$n.json"
    cluster_down
done

step "report"
uptime
python3 - "$JSONL" "$SUBS" "$RATE" "$SITES" <<'PY' | tee "$OUT/results.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
subs, rate, sites = sys.argv[2:5]
print(f"Fan-out: {subs} v2 subscribers over {sites} sites, {rate} publications/s (one per request).\n")
print("| setup | delivered/s | lost | p50 ms | p99 ms | relay nodes µs/delivery | Redis µs/publish | HAProxy µs/delivery | all µs/delivery |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r["kind"] != "fanout":
        continue
    p = r["phases"][0]
    got, pub = max(p["received"], 1), max(p["published"], 1)
    cpu = dict(p["cpu_s"])
    nodes = sum(v for k, v in cpu.items() if k.startswith("node"))
    redis, lb = cpu.get("redis"), cpu.get("haproxy")
    per_node = ", ".join(f"{1e6 * v / got:.2f}" for k, v in sorted(cpu.items()) if k.startswith("node"))
    total = sum(cpu.values())
    print(f"| {r['label']} | {p['delivered_per_s']:.0f} | {p['lost']} | {p['p50_ms']} | {p['p99_ms']} | "
          f"{1e6 * nodes / got:.2f} ({per_node}) | {'' if redis is None else f'{1e6 * redis / pub:.0f}'} | "
          f"{'' if lb is None else f'{1e6 * lb / got:.2f}'} | {1e6 * total / got:.2f} |")
hops = {r["label"]: r["phases"][0] for r in rows if r["kind"] == "hop"}
if len(hops) == 2:
    m, d = hops["1 node, in-memory"], hops["1 node, Redis"]
    print(f"\nPublish → socket, 100 subscribers of one site, 50/s: in-memory p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms; "
          f"Redis p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms (the Redis hop: p50 +{d['p50_ms'] - m['p50_ms']:.3f} ms, "
          f"p99 +{d['p99_ms'] - m['p99_ms']:.3f} ms).")
for r in rows:
    if r["kind"] == "ingest":
        print(f"\nHTTP publish through one node into Redis (100 per request, 4 connections, no subscribers): "
              f"{r['messages_per_s']:.0f} messages/s; relay {r['server_cpu_ms_per_1k']} ms and Redis "
              f"{1000 * r['redis_cpu_s'] / (r['messages'] / 1000):.2f} ms of CPU per 1,000.")
    if r["kind"] == "lua":
        print(f"\nThe publish script alone (redis-benchmark, 16 connections, pipeline 16, 3 channel subscribers): "
              f"{r['publishes_per_s']} publishes/s with Redis at {r['redis_cpu_pct']} % of a core "
              f"({r['redis_us_per_publish']} µs per publish).")
PY
echo "results: $OUT"
