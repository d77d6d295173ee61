#!/usr/bin/env bash
# Failures under load, against the topology of scripts/cluster.sh (Redis, three relay nodes,
# HAProxy): SDK-like v2 subscribers (`loadgen cluster`) receive a steady stream through the
# balancer while a node is killed, the nodes are restarted in turn, Redis is frozen or restarted,
# or a node consuming SQS is killed, and Redis over TLS restarted. Each scenario stops by itself and fails unless every
# subscriber ends connected with every acknowledged publication once, in order (or, where Redis
# lost its data, took the documented `recovered: false` path).
#
#   tests/cluster/failures.sh                      # every scenario (about 3 minutes)
#   tests/cluster/failures.sh kill9 rolling        # of: kill9 rolling redis-pause redis-restart
#                                                  #     redis-no-aof sqs redis-tls
#   CLUSTER_PROFILE=release tests/cluster/failures.sh   # release builds (the figures in BENCHMARKS.md)
#   FAILURES_SUBS=2000                             # subscribers (default 2000 for kill9 and rolling)
#
# Figures (reconnect times and rates, publish outcomes) go to stdout and, one JSON line per
# scenario, to $FAILURES_OUT (default: a temporary file, printed at the end).
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$ROOT"

SCENARIOS=${*:-"kill9 rolling redis-pause redis-restart redis-no-aof sqs redis-tls"}
PROFILE=${CLUSTER_PROFILE:-debug}
SUBS=${FAILURES_SUBS:-2000}
if [ "$PROFILE" = release ]; then
    cargo build --quiet --release -p datastream -p datastream-bench
else
    cargo build --quiet -p datastream -p datastream-bench
fi
export CLUSTER_BIN="$CARGO_TARGET_DIR/$PROFILE/datastream"
LOADGEN="$CARGO_TARGET_DIR/$PROFILE/loadgen"
source scripts/cluster.sh
ulimit -n "$(ulimit -Hn)"

# The configuration docs/DEPLOYMENT.md shows is the one these tests run.
python3 - <<'PY'
doc = open("docs/DEPLOYMENT.md").read()
block = doc.split("```haproxy\n", 1)[1].split("```", 1)[0]
cfg = open("deploy/local/haproxy.cfg").read()
assert block == cfg[cfg.index("global"):], "docs/DEPLOYMENT.md shows another HAProxy configuration than deploy/local/haproxy.cfg"
PY

OUT=${FAILURES_OUT:-$(mktemp)}
: >"$OUT"
LG_PID=""
MOTO_PID=""
cleanup() {
    if [ -n "$LG_PID" ]; then kill "$LG_PID" 2>/dev/null || true; fi
    if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; fi
    cluster_down
}
trap cleanup EXIT

# loadgen_start LABEL ARGS...: starts the load tool against the balancer; waits until every
# subscriber is subscribed (time 0 of its report).
loadgen_start() {
    local label=$1
    shift
    rm -f "$CL_DIR/ready"
    timeout 300 "$LOADGEN" cluster --ws "127.0.0.1:$CL_LB_PORT" --label "$label" \
        --ready-file "$CL_DIR/ready" "$@" >"$CL_DIR/$label.json" 2>"$CL_DIR/$label.log" &
    LG_PID=$!
    for _ in $(seq 1 1200); do
        [ -f "$CL_DIR/ready" ] && return 0
        kill -0 "$LG_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$CL_DIR/$label.log" >&2
    echo "$label: the subscribers did not all subscribe" >&2
    return 1
}

# loadgen_check LABEL CHECKS: waits for the load tool, then runs the Python CHECKS on its report
# `r` (asserts), prints the figures and records the report.
loadgen_check() {
    local label=$1 checks=$2
    wait "$LG_PID" || {
        cat "$CL_DIR/$label.log" >&2
        echo "$label: the load tool failed" >&2
        return 1
    }
    LG_PID=""
    python3 - "$CL_DIR/$label.json" "$OUT" "$checks" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d, rc, p = r["deliveries"], r["reconnects"], r["publish"]
print(f"  deliveries: {d['received']} received, {d['expected']} expected; lost {d['lost']}, duplicated "
      f"{d['duplicated']}, out of order {d['out_of_order']}, offset gaps {d['offset_gaps']}, recovered:false "
      f"{d['unrecovered']}, epoch changes {d['epoch_changes']}; latency p50 {d['latency_p50_ms']} ms, p99 {d['latency_p99_ms']} ms")
print(f"  reconnects: {rc['count']} (p50 {rc['p50_ms']} ms, p99 {rc['p99_ms']} ms, max {rc['max_ms']} ms; peak "
      f"{rc['peak_per_s']}/s, from {rc['first_s']} s to {rc['last_s']} s); closes {rc['closes']}; "
      f"failed attempts {rc['connect_errors']}")
print(f"  publishes: {p['acked']} acknowledged, {p['unacked']} not; attempts {p['attempts']}; "
      f"longest outage {p['longest_outage_s']} s")
for status, body in p["refusals"].items():
    print(f"    {status}: {body}")
ok_stream = lambda: (d["lost"], d["duplicated"], d["out_of_order"], d["offset_gaps"]) == (0, 0, 0, 0)
exec(sys.argv[3])
assert d["subscribers_not_connected"] == 0, f"{d['subscribers_not_connected']} subscribers not connected at the end"
open(sys.argv[2], "a").write(json.dumps(r) + "\n")
PY
}

# Every subscriber ends connected with every acknowledged publication exactly once, in order.
EXACT='assert ok_stream() and d["unrecovered"] == 0 and d["epoch_changes"] == 0 and d["subscribers_incomplete"] == 0, d
assert p["unacked"] == 0, p'

scenario_kill9() {
    echo "==> kill -9 one node: $SUBS v2 subscribers over 20 sites, 40 publications/s"
    cluster_up
    loadgen_start kill9 --publish "127.0.0.1:$CL_LB_PORT" --token "$CL_TOKEN" --subs "$SUBS" --sites 20 \
        --rate 40 --secs 8 --drain 30
    sleep 2.5
    node_kill 1
    loadgen_check kill9 "$EXACT
assert rc['count'] >= $SUBS // 6, f'too few reconnects for a killed node: {rc}'"
    cluster_down
}

scenario_rolling() {
    echo "==> rolling restart: SIGTERM each node in turn, the next only once its replacement is in rotation"
    cluster_up
    loadgen_start rolling --publish "127.0.0.1:$CL_LB_PORT" --token "$CL_TOKEN" --subs "$SUBS" --sites 20 \
        --rate 20 --secs 40 --drain 30
    sleep 1
    local started=$SECONDS
    for n in 1 2 3; do
        node_term "$n"
        node_start "$n"
        lb_wait_up "$n"
    done
    echo "  restart of the 3 nodes took $((SECONDS - started)) s"
    loadgen_check rolling "$EXACT
assert rc['count'] >= $SUBS // 2, f'too few reconnects: {rc}'
assert rc['closes'].get('close 1001', 0) >= $SUBS // 2, f'the drain did not close with 1001: {rc}'"
    cluster_down
}

scenario_redis_pause() {
    echo "==> Redis frozen for 10 s (SIGSTOP, then SIGCONT)"
    cluster_up
    loadgen_start redis-pause --publish "127.0.0.1:$CL_LB_PORT" --token "$CL_TOKEN" --subs 1000 --sites 20 \
        --rate 20 --secs 16 --drain 30
    sleep 2
    redis_pause
    sleep 10
    redis_resume
    loadgen_check redis-pause "$EXACT
assert rc['count'] == 0, f'clients were disconnected: {rc}'
assert p['attempts'].get('503', 0) > 0, f'no 503 while Redis was frozen: {p}'
assert p['longest_outage_s'] >= 5, f'publishing never stopped: {p}'"
    cluster_down
}

# redis_restart_under_load LABEL: 1,000 subscribers and a steady stream while Redis restarts; every
# acknowledged publication arrives exactly once and in order, and no client is disconnected.
redis_restart_under_load() {
    cluster_up
    loadgen_start "$1" --publish "127.0.0.1:$CL_LB_PORT" --token "$CL_TOKEN" --subs 1000 --sites 20 \
        --rate 20 --secs 8 --drain 30
    sleep 2
    redis_restart
    loadgen_check "$1" "$EXACT
assert rc['count'] == 0, f'clients were disconnected: {rc}'"
    cluster_down
}

scenario_redis_restart() {
    echo "==> Redis restarted (AOF on)"
    redis_restart_under_load redis-restart
}

scenario_redis_tls() {
    echo "==> Redis over TLS (rediss://, a CA made for the run) restarted: the nodes reconnect over TLS"
    CL_TLS=yes
    redis_restart_under_load redis-tls
    CL_TLS=no
}

scenario_redis_no_aof() {
    echo "==> Redis restarted without persistence while a node is lost: recovery impossible, said so"
    CL_AOF=no
    cluster_up
    loadgen_start redis-no-aof --publish "127.0.0.1:$CL_LB_PORT" --token "$CL_TOKEN" --subs 1000 --sites 20 \
        --rate 20 --secs 8 --drain 30 --allow-unrecovered
    sleep 2
    # Node 1's clients reconnect with positions of an epoch Redis no longer has.
    node_kill 1
    redis_restart
    loadgen_check redis-no-aof "assert d['unrecovered'] > 0, f'no recovered:false: {d}'
assert (d['duplicated'], d['out_of_order']) == (0, 0), d"
    cluster_down
    CL_AOF=yes
}

scenario_sqs() {
    echo "==> SQS, three competing consumers, one killed mid-stream"
    local py="$DATASTREAM_TEST_VENV/bin/python3" port
    port=$(cl_free_port)
    "$DATASTREAM_TEST_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    MOTO_PID=$!
    cl_wait "moto on port $port" cl_port_open "$port"
    export AWS_ENDPOINT_URL_SQS="http://127.0.0.1:$port" AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    # A short visibility timeout: what the killed node had received comes back within seconds.
    local url
    url=$("$py" -c 'import boto3; print(boto3.client("sqs").create_queue(QueueName="datastreamIncomingQueue-dev", Attributes={"VisibilityTimeout": "2"})["QueueUrl"])')
    export DATASTREAM_SQS_QUEUE="$url" DATASTREAM_SQS_WAIT=1s
    cluster_up
    local n=400
    loadgen_start sqs --expect "$n" --subs 1000 --sites 20 --secs 10 --drain 30
    # 400 messages over ~4 s, bodies as the load tool's (sequence number and send time in data).
    "$py" - "$url" "$n" <<'PY' &
import json, sys, time, boto3
url, n = sys.argv[1], int(sys.argv[2])
sqs = boto3.client("sqs")
for start in range(0, n, 10):
    entries = [{"Id": str(i), "MessageBody": json.dumps(
        {"site": f"s{i % 20}", "topic": "bench", "data": {"seq": i, "t": time.time_ns(), "pad": ""}},
        separators=(",", ":"))}
        for i in range(start, start + 10)]
    sqs.send_message_batch(QueueUrl=url, Entries=entries)
    time.sleep(0.1)
PY
    local sender=$!
    sleep 1.5
    node_kill 2
    wait "$sender"
    loadgen_check sqs "$EXACT"
    # How many redeliveries the surviving nodes dropped by message id (depends on timing).
    local dups=0 n
    for n in 1 3; do
        dups=$((dups + $(curl -s "http://127.0.0.1:${CL_NODE_PORT[$n]}/metrics" |
            awk '/^datastream_messages_duplicate_total/ {s += $2} END {printf "%d", s}')))
    done
    echo "  redeliveries dropped as duplicates by the surviving nodes: $dups"
    cluster_down
    unset DATASTREAM_SQS_QUEUE DATASTREAM_SQS_WAIT AWS_ENDPOINT_URL_SQS
    kill "$MOTO_PID" && wait "$MOTO_PID" 2>/dev/null || true
    MOTO_PID=""
}

for s in $SCENARIOS; do
    case "$s" in
    kill9) scenario_kill9 ;;
    rolling) scenario_rolling ;;
    redis-pause) scenario_redis_pause ;;
    redis-restart) scenario_redis_restart ;;
    redis-no-aof) scenario_redis_no_aof ;;
    sqs) scenario_sqs ;;
    redis-tls) scenario_redis_tls ;;
    *)
        echo "unknown scenario $s" >&2
        exit 2
        ;;
    esac
done
echo "cluster failure scenarios passed: $SCENARIOS (reports: $OUT)"
