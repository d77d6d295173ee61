#!/usr/bin/env bash
# Where the relay's CPU goes under one workload: a flat perf profile (user and kernel symbols) and
# the syscalls it makes, sampled while the load tool publishes.
#
#   bench/profile.sh [SUBS] [PHASE] [relay|relay-v2|floor] [SITES]   # default: 1000 steady:100:1:8 relay 1
#
# PERF_RECORD="--call-graph dwarf -F 499" adds call graphs; the perf data stays in $PERF_KEEP if set.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
SUBS=${1:-1000}
PHASE=${2:-steady:100:1:8}
TARGET=${3:-relay}
SITES=${4:-1}
SECS=${PHASE##*:}
cargo build --quiet --release -p datastream
cargo build --quiet --release -p datastream-bench
RELAY="$CARGO_TARGET_DIR/release/datastream"
LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
source "$ROOT/bench/lib.sh"
PORT=$(free_port)
if [ "$TARGET" = floor ]; then
    "${SERVER_CPU[@]}" "$LOADGEN" floor --listen "127.0.0.1:$PORT" >"$WORK/relay.log" 2>&1 &
else
    # As in bench/run.sh: heartbeats every 5 minutes unless DATASTREAM_PING_INTERVAL says otherwise.
    DATASTREAM_LISTEN="127.0.0.1:$PORT" DATASTREAM_MAX_CONNECTIONS_PER_IP=0 DATASTREAM_LOG=warn \
        DATASTREAM_PING_INTERVAL="${DATASTREAM_PING_INTERVAL:-5m}" DATASTREAM_CLIENT_TIMEOUT="${DATASTREAM_CLIENT_TIMEOUT:-10m}" \
        "${SERVER_CPU[@]}" "$RELAY" serve >"$WORK/relay.log" 2>&1 &
fi
SPID=$!
PIDS+=("$SPID")
wait_port "$PORT"

"${TOOL_CPU[@]}" "$LOADGEN" run --target "$TARGET" --ws "127.0.0.1:$PORT" --server-pid "$SPID" \
    --subs "$SUBS" --sites "$SITES" --settle 1 --phase "$PHASE" --label profile >"$WORK/load.json" 2>"$WORK/load.err" &
LPID=$!
PIDS+=("$LPID")
# Wait until the subscribers are connected (the load tool says so), then sample the phase.
for _ in $(seq 1 600); do grep -q connected "$WORK/load.err" 2>/dev/null && break; sleep 0.1; done
sleep 1.2
SAMPLE=$(python3 -c "print(max(1.0, $SECS - 1))")
perf stat -x, -e 'syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches' \
    -p "$SPID" -o "$WORK/stat.csv" -- sleep "$SAMPLE" &
STATPID=$!
# shellcheck disable=SC2086 # PERF_RECORD is a list of options
perf record -q -e cpu-clock ${PERF_RECORD:--F 1999} -p "$SPID" -o "$WORK/perf.data" -- sleep "$SAMPLE" 2>/dev/null
wait "$STATPID" || true
wait "$LPID" || true
[ -z "${PERF_KEEP:-}" ] || cp "$WORK/perf.data" "$PERF_KEEP"
python3 - "$WORK/load.json" "$SAMPLE" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["phases"][0]
print(f"workload: {r['subs']} {r['target']} subscribers, phase {p['phase']} {p['ticks_per_s']}/s x {p['per_tick']}, "
      f"{p['delivered_per_s']:.0f} deliveries/s, {p['server_cpu_s_per_m']} CPU-s per million, p99 {p['p99_ms']} ms")
PY
echo
echo "syscalls during ${SAMPLE}s (divide by deliveries/s x ${SAMPLE} for per-delivery):"
grep -v '^#' "$WORK/stat.csv" | awk -F, 'NF > 2 && $1 != "" { printf "  %-40s %s\n", $3, $1 }'
echo
echo "by object (self time; [kernel.kallsyms] is the kernel's share):"
perf report -i "$WORK/perf.data" --stdio --no-children --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -6
echo
echo "top symbols (self time):"
perf report -i "$WORK/perf.data" --stdio --no-children --sort sym 2>/dev/null | grep -E '^ +[0-9]' | head -40
