#!/usr/bin/env bash
# What the relay's heartbeat costs. Measures the relay's CPU with SUBS subscribers over a window of
# 3.5 x PING seconds in which almost nothing is published (one message a second to one of 100
# sites), twice: with a ping every PING seconds (each connection sends exactly 3 in the window:
# the first comes PING after it connected, and connecting takes well under PING) and with pings
# every 10 minutes (none in the window). The difference, divided by the pings, is one heartbeat
# round trip: the ping written, the client's pong read.
#
#   bench/heartbeat.sh [SUBS] [relay|relay-v2] [PING]   # default: 5000 relay 10 (PING >= 3)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
SUBS=${1:-5000}
TARGET=${2:-relay}
PING=${3:-10}
[ "$PING" -ge 3 ] || { echo "PING must be at least 3 seconds" >&2; exit 2; }
WINDOW=$((PING * 7 / 2))
cargo build --quiet --release -p datastream
cargo build --quiet --release -p datastream-bench
RELAY="$CARGO_TARGET_DIR/release/datastream"
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
source "$ROOT/bench/lib.sh"
ulimit -n "$(ulimit -Hn)"

# measure PING_INTERVAL: prints the relay's CPU seconds over the window.
measure() {
    local port
    port=$(free_port)
    DATASTREAM_LISTEN="127.0.0.1:$port" DATASTREAM_MAX_CONNECTIONS_PER_IP=0 DATASTREAM_LOG=warn \
        DATASTREAM_PING_INTERVAL="$1" DATASTREAM_CLIENT_TIMEOUT=30m \
        "${SERVER_CPU[@]}" "$RELAY" serve >"$WORK/relay.log" 2>&1 &
    local spid=$!
    PIDS+=("$spid")
    wait_port "$port"
    "${TOOL_CPU[@]}" "$LOADGEN" run --target "$TARGET" --ws "127.0.0.1:$port" --server-pid "$spid" \
        --subs "$SUBS" --sites 100 --settle 1 --phase "idle:1:1:$WINDOW" --label heartbeat >"$WORK/load.json" 2>"$WORK/load.err" \
        || { cat "$WORK/load.err" >&2; exit 1; }
    kill "$spid"
    wait "$spid" 2>/dev/null || true
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); p = r["phases"][0]; assert r["connected"] == int(sys.argv[2]), r; print(p["server_cpu_s"], p["secs"], p["pings"])' \
        "$WORK/load.json" "$SUBS"
}

with=$(measure "${PING}s")
without=$(measure 10m)
python3 - "$SUBS" "$TARGET" "$PING" "$with" "$without" <<'PY'
import sys
subs, target, ping = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
(with_pings, secs, pings), (without, _, pings_without) = (map(float, a.split()) for a in sys.argv[4:6])
# The load tool counts the pings its subscribers received: exactly 3 each in the window, none
# without; anything else means the window or the relay's heartbeat is not what this measures.
if pings != 3 * subs or pings_without != 0:
    sys.exit(f"expected {3 * subs} pings with heartbeats and 0 without, counted {pings:g} and {pings_without:g}")
pings = int(pings)
print(f"{subs} {target} subscribers, {secs:g} s window: CPU {with_pings:.3f} s with a ping every {ping:g} s "
      f"({pings} pings), {without:.3f} s without")
# /proc counts CPU time in 10 ms ticks: a difference of a few ticks says nothing per ping.
if with_pings - without < 0.05:
    print("the difference is below what /proc resolves; measure with more subscribers (5000)")
    sys.exit(0)
per_ping_us = (with_pings - without) / pings * 1e6
print(f"one heartbeat round trip: {per_ping_us:.1f} us of relay CPU")
for interval in (25, 60):
    pct = per_ping_us * 1000 / interval / 1e6 * 100
    print(f"at a ping every {interval} s: {pct:.3f} % of a core per 1,000 connections")
PY
