#!/usr/bin/env bash
# A few seconds of the benchmark with tiny N, so the load tool cannot rot: runs it against the
# relay (legacy and v2 subscribers) and the floor server, and fails unless every message arrived,
# kernel timestamps were used, and the figures are sane. BENCH_PROFILE=release uses release builds.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"

PROFILE=${BENCH_PROFILE:-debug}
if [ "$PROFILE" = release ]; then
    cargo build --quiet --release -p datastream && cargo build --quiet --release -p datastream-bench
else
    cargo build --quiet -p datastream && cargo build --quiet -p datastream-bench
fi
BIN="$CARGO_TARGET_DIR/$PROFILE"
source "$ROOT/bench/lib.sh"
PORT=$(free_port)
DATASTREAM_LISTEN="127.0.0.1:$PORT" DATASTREAM_MAX_CONNECTIONS_PER_IP=0 DATASTREAM_LOG=warn \
    "$BIN/datastream" serve >"$WORK/relay.log" 2>&1 &
PID=$!
PIDS+=("$PID")
wait_port "$PORT"

FLOOR_PORT=$(free_port)
"$BIN/loadgen" floor --listen "127.0.0.1:$FLOOR_PORT" >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
wait_port "$FLOOR_PORT"

for target in relay relay-v2 floor; do
    addr="127.0.0.1:$PORT" pid=$PID
    [ "$target" = floor ] && addr="127.0.0.1:$FLOOR_PORT" pid=$FLOOR_PID
    timeout 30 "$BIN/loadgen" run --target "$target" --ws "$addr" --server-pid "$pid" \
        --subs 40 --sites 2 --settle 0.3 --drain 5 --label smoke \
        --phase steady:20:1:1 --phase burst:2:10:1 >"$WORK/$target.json"
done
# Status payloads through the relay's delta path: every delta applied and checked.
for mode in full delta; do
    flag=()
    [ "$mode" = delta ] && flag=(--delta)
    timeout 30 "$BIN/loadgen" run --target relay-v2 --ws "127.0.0.1:$PORT" --server-pid "$PID" \
        --subs 10 --sites 2 --payload device "${flag[@]}" --settle 0.3 --drain 5 --label smoke \
        --phase steady:20:1:1 >"$WORK/status-$mode.json"
done

python3 - "$WORK"/relay.json "$WORK"/relay-v2.json "$WORK"/floor.json <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))
    name = r["target"]
    assert r["connected"] == r["subs"] == 40, f"{name}: connected {r['connected']} of {r['subs']}"
    assert r["kernel_timestamped_frames"] > 0, f"{name}: no kernel receive timestamps"
    # The floor keeps nothing per connection but the socket: its RSS may not move at 40.
    if name != "floor":
        assert r["kb_per_conn"] is not None and r["kb_per_conn"] > 0, f"{name}: no RSS figure"
    for p in r["phases"]:
        where = f"{name}/{p['phase']}"
        assert p["expected"] > 0 and p["received"] == p["expected"], f"{where}: {p['received']} of {p['expected']}"
        assert p["lost"] == 0 and p["disconnected"] == 0, f"{where}: loss"
        assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] < 2000, f"{where}: latency {p}"
        assert p["server_cpu_s"] >= 0 and p["tool_cpu_s"] >= 0, f"{where}: CPU"
    print(f"bench smoke {name}: ok ({sum(p['received'] for p in r['phases'])} deliveries, "
          f"p99 {max(p['p99_ms'] for p in r['phases'])} ms)")
PY

python3 - "$WORK"/status-full.json "$WORK"/status-delta.json <<'PY'
import json, sys
full, delta = (json.load(open(p))["phases"][0] for p in sys.argv[1:])
for name, p in (("full", full), ("delta", delta)):
    c = p["status"]["counts"]
    assert p["lost"] == 0 and p["received"] == p["expected"] > 0, f"status {name}: {p}"
    assert c["delta_failures"] == c["mismatches"] == c["gaps"] == c["out_of_order"] == 0, f"status {name}: {c}"
assert full["status"]["counts"]["deltas"] == 0 and delta["status"]["counts"]["deltas"] > 0, "deltas"
ratio = full["status"]["frame_bytes_per_delivery"] / delta["status"]["frame_bytes_per_delivery"]
assert ratio > 2, f"deltas saved only {ratio:.1f}x"
print(f"bench smoke status payloads: ok ({delta['status']['counts']['deltas']} deltas applied, {ratio:.1f}x fewer bytes)")
PY
