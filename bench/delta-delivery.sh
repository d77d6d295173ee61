#!/usr/bin/env bash
# What the relay spends per delivery on a frame the size of a full device status (18,553 bytes)
# and on one the size of its Fossil delta frame (1,069 bytes, the mean in bench/delta.sh): the
# per-delivery side of delta delivery, before there is an implementation (the delta is computed
# once per publication; each delivery then writes the smaller frame). v2 subscribers on one site,
# the relay on core 0 and the load tool on core 1 (bench/lib.sh), BENCH_REPEAT runs of each size
# (default 3) taking turns; the table gives the median of server CPU-s per million deliveries.
#
#   bench/delta-delivery.sh            # BENCH_SUBS=2000 BENCH_REPEAT=3
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
SUBS=${BENCH_SUBS:-2000}
REPEAT=${BENCH_REPEAT:-3}

step "build (release)"
cargo build --quiet --release -p datastream -p datastream-bench
RELAY="$CARGO_TARGET_DIR/release/datastream"
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
source "$ROOT/bench/lib.sh"
JSONL="$WORK/results.jsonl"

for rep in $(seq 1 "$REPEAT"); do
    for size in 18553 1069; do
        step "run $rep: $SUBS subscribers, frames of $size bytes"
        p=$(free_port)
        DATASTREAM_LISTEN="127.0.0.1:$p" DATASTREAM_MAX_CONNECTIONS_PER_IP=0 DATASTREAM_LOG=warn \
            DATASTREAM_PING_INTERVAL=5m DATASTREAM_CLIENT_TIMEOUT=10m \
            "${SERVER_CPU[@]}" "$RELAY" serve >"$WORK/server.log" 2>&1 &
        SPID=$!
        wait_port "$p"
        "${TOOL_CPU[@]}" "$LOADGEN" run --target relay-v2 --ws "127.0.0.1:$p" --server-pid "$SPID" \
            --subs "$SUBS" --sites 1 --size "$size" --drain 20 --label "$size" --phase steady:4:1:10 >>"$JSONL" || true
        kill "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
        sleep 1
    done
done

python3 - "$JSONL" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    for ph in r.get("phases", []):
        runs.setdefault(r["label"], []).append(ph)
print("\n| frame bytes | runs | CPU-s per million deliveries (median) | delivered/s | lost |")
print("|---:|---:|---:|---:|---:|")
for label, phs in runs.items():
    cpu = statistics.median(p["server_cpu_s_per_m"] for p in phs)
    rate = statistics.median(p["delivered_per_s"] for p in phs)
    lost = sum(p["lost"] for p in phs)
    print(f"| {label} | {len(phs)} | {cpu:.2f} | {rate:.0f} | {lost} |")
PY
