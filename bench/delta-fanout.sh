#!/usr/bin/env bash
# Delta delivery through the relay (docs/PROTOCOL.md, "Deltas"), with statusgen's status streams
# published over HTTP and v2 subscribers that either ask for Fossil deltas ("on") or do not
# ("off"), on the same relay and configuration:
#
#   1. bytes on the wire per viewer per publication, device and weather streams: the WebSocket
#      frames carrying publications as the subscribers' sockets received them, header included;
#   2. relay CPU per delivery and per publication, off and on: the device stream fanned out to
#      BENCH_SUBS subscribers of one site at BENCH_RATE publications/s, on the in-memory broker
#      and on Redis (a redis-server on loopback, on the relay's core, stopped at exit); and the
#      CPU per publication of computing the delta (one subscriber, BENCH_COMPUTE_RATE/s);
#   3. correctness: every subscriber rebuilds every publication's data text (applying each delta
#      to the text it holds at `base`) and compares it with the text published under its
#      sequence number; delta failures, mismatches, gaps and out-of-order offsets are counted and
#      must all be 0, and nothing may be lost.
#
# Each publication carries the tool's `seq` and send time `t` as two more fields at the end of
# the status (for loss and latency): about 30 changed bytes a delta carries on top of the status's
# own changes. Every case runs BENCH_REPEAT times, off and on taking turns; a first phase of 2 s
# ("warm") sends each slot's first publication, which is always full; the figures are from the
# "steady" phase after it. The relay runs on core 0, the load tool on core 1 (bench/lib.sh).
#
#   bench/delta-fanout.sh     # BENCH_SUBS=5000 BENCH_RATE=4 BENCH_SECS=15 BENCH_REPEAT=2
#   BENCH_SUBS=1000 BENCH_REPEAT=3 bench/delta-fanout.sh
#   BENCH_OUT=results.jsonl bench/delta-fanout.sh   # also keep every run's JSON line
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
SUBS=${BENCH_SUBS:-5000}
RATE=${BENCH_RATE:-4}
SECS=${BENCH_SECS:-15}
REPEAT=${BENCH_REPEAT:-2}
WEATHER_SUBS=${BENCH_WEATHER_SUBS:-200}
COMPUTE_RATE=${BENCH_COMPUTE_RATE:-100}

step "build (release)"
cargo build --quiet --release -p datastream -p datastream-bench
RELAY="$CARGO_TARGET_DIR/release/datastream"
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
source "$ROOT/bench/lib.sh"
JSONL="$WORK/results.jsonl"

start_redis

# case NAME BROKER(memory|redis) MODE(off|on) PAYLOAD SUBS RATE SECS: one relay, one loadgen run.
case_run() {
    local name=$1 broker=$2 mode=$3 payload=$4 subs=$5 rate=$6 secs=$7 p env=() extra=() out
    p=$(free_port)
    if [ "$broker" = redis ]; then
        redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
        env=(DATASTREAM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/")
        extra=(--pid "redis=$REDIS_PID")
    fi
    [ "$mode" = on ] && extra+=(--delta)
    step "$name: $broker, deltas $mode, $payload, $subs subscribers, $rate/s for $secs s (load $(cut -d' ' -f1-3 /proc/loadavg))"
    env "${env[@]}" DATASTREAM_LISTEN="127.0.0.1:$p" DATASTREAM_MAX_CONNECTIONS_PER_IP=0 DATASTREAM_LOG=warn \
        DATASTREAM_PING_INTERVAL=5m DATASTREAM_CLIENT_TIMEOUT=10m \
        "${SERVER_CPU[@]}" "$RELAY" serve >"$WORK/server.log" 2>&1 &
    local spid=$!
    wait_port "$p"
    local load0
    load0=$(cut -d' ' -f1 /proc/loadavg)
    out=$("${TOOL_CPU[@]}" "$LOADGEN" run --target relay-v2 --ws "127.0.0.1:$p" --server-pid "$spid" \
        --subs "$subs" --sites 1 --payload "$payload" "${extra[@]}" --drain 20 --label "$name" \
        --phase "warm:$rate:1:2" --phase "steady:$rate:1:$secs") || true
    local load1
    load1=$(cut -d' ' -f1 /proc/loadavg)
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    [ -n "$out" ] && python3 -c 'import json, sys
r = json.loads(sys.argv[1]); r.update(case=sys.argv[2], broker=sys.argv[3], mode=sys.argv[4], load=[float(sys.argv[5]), float(sys.argv[6])])
print(json.dumps(r))' "$out" "$name" "$broker" "$mode" "$load0" "$load1" >>"$JSONL"
    sleep 1
}

for rep in $(seq 1 "$REPEAT"); do
    for mode in off on; do
        case_run weather memory "$mode" weather "$WEATHER_SUBS" "$RATE" "$SECS"
    done
    for broker in memory redis; do
        for mode in off on; do
            case_run fanout "$broker" "$mode" device "$SUBS" "$RATE" "$SECS"
        done
    done
    for mode in off on; do
        case_run compute memory "$mode" device 1 "$COMPUTE_RATE" "$SECS"
    done
done

cp "$JSONL" "${BENCH_OUT:-/dev/null}" 2>/dev/null || true
python3 - "$JSONL" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def steady(r):
    return next(p for p in r["phases"] if p["phase"] == "steady")
groups = {}
for r in rows:
    groups.setdefault((r["case"], r["broker"], r["payload"], r["subs"], r["mode"]), []).append(r)
med = lambda xs: statistics.median(xs)
print("\n| case | broker | stream | subscribers | deltas | runs | bytes/viewer/publication | data bytes/publication | relay CPU-s per million deliveries | relay ms per publication | Redis ms per publication | delivered/s | p50 / p99 ms | lost | delta failures | mismatches | gaps | out of order | load (1 min) |")
print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
for (case, broker, payload, subs, mode), rs in groups.items():
    ph = [steady(r) for r in rs]
    c = [p["status"]["counts"] for p in ph]
    redis = [1000 * p["cpu_s"]["redis"] / p["published"] for p in ph if "redis" in p["cpu_s"]]
    loads = " ".join(f'{r["load"][0]:.1f}–{r["load"][1]:.1f}' for r in rs)
    print(f'| {case} | {broker} | {payload} | {subs} | {mode} | {len(rs)} '
          f'| {med([p["status"]["frame_bytes_per_delivery"] for p in ph]):.0f} '
          f'| {med([p["status"]["data_bytes_per_pub"] for p in ph]):.0f} '
          f'| {med([p["server_cpu_s_per_m"] for p in ph]):.2f} '
          f'| {med([p["server_cpu_ms_per_pub"] for p in ph]):.3f} '
          f'| {f"{med(redis):.3f}" if redis else "–"} '
          f'| {med([p["delivered_per_s"] for p in ph]):.0f} '
          f'| {med([p["p50_ms"] for p in ph]):.1f} / {med([p["p99_ms"] for p in ph]):.1f} '
          f'| {sum(p["lost"] for p in ph)} | {sum(x["delta_failures"] for x in c)} | {sum(x["mismatches"] for x in c)} '
          f'| {sum(x["gaps"] for x in c)} | {sum(x["out_of_order"] for x in c)} | {loads} |')
print("\nEvery run (steady phase): case broker deltas | CPU-s/M deliveries | ms/publication | deltas/deliveries")
for r in rows:
    p = steady(r)
    c = p["status"]["counts"]
    print(f'  {r["case"]} {r["broker"]} {r["mode"]} | {p["server_cpu_s_per_m"]} | {p["server_cpu_ms_per_pub"]} | {c["deltas"]}/{c["pubs"]} | lost {p["lost"]} | load {r["load"]}')
PY
