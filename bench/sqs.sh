#!/usr/bin/env bash
# SQS ingest overhead: the relay's CPU per 1k SQS messages, consuming a queue of a local SQS
# server (moto). Prints one JSON line. Usage: bench/sqs.sh RELAY_BINARY [MESSAGES]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
RELAY=$1
N=${2:-1000}
PY="$DATASTREAM_TEST_VENV/bin/python3"
if ! "$PY" -c 'import moto, boto3' 2>/dev/null; then
    python3 -m venv "$DATASTREAM_TEST_VENV" >&2
    "$DATASTREAM_TEST_VENV/bin/pip" install -q 'moto[server]>=5,<6' 'boto3>=1.34' >&2
fi
source "$ROOT/bench/lib.sh"

export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
MOTO_PORT=$(free_port)
"${TOOL_CPU[@]}" "$DATASTREAM_TEST_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
wait_port "$MOTO_PORT"
export AWS_ENDPOINT_URL_SQS="http://127.0.0.1:$MOTO_PORT"

# Fill the queue before the relay starts, so the relay's CPU covers receiving and publishing only.
QUEUE_URL=$("${TOOL_CPU[@]}" "$PY" - "$N" <<'PY'
import json, sys, boto3
n = int(sys.argv[1])
sqs = boto3.client("sqs")
url = sqs.create_queue(QueueName="datastreamIncomingQueue-bench")["QueueUrl"]
pad = "x" * 120
for start in range(0, n, 10):
    entries = [{"Id": str(i), "MessageBody": json.dumps({"site": f"s{i % 100}", "topic": "bench", "data": {"seq": i, "pad": pad}})}
               for i in range(start, min(start + 10, n))]
    sqs.send_message_batch(QueueUrl=url, Entries=entries)
print(url)
PY
)

RELAY_PORT=$(free_port)
DATASTREAM_LISTEN="127.0.0.1:$RELAY_PORT" DATASTREAM_SQS_QUEUE="$QUEUE_URL" DATASTREAM_LOG=warn \
    "${SERVER_CPU[@]}" "$RELAY" serve >"$WORK/relay.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
wait_port "$RELAY_PORT"

"$PY" - "$N" "$RPID" "$RELAY_PORT" <<'PY'
import json, os, sys, time, urllib.request
n, pid, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def received():
    for line in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode().splitlines():
        if line.startswith("datastream_messages_in_total") and 'source="sqs"' in line:
            return int(float(line.split()[-1]))
    return 0
c0, t0 = cpu(), time.monotonic()
deadline = t0 + 300
# Polled once a second: the scrape itself costs the relay CPU.
while received() < n and time.monotonic() < deadline:
    time.sleep(1.0)
got, secs, used = received(), time.monotonic() - t0, cpu() - c0
# What the relay spends with nothing to do over the same kind of period (long polls on the empty
# queue, the scrapes): subtracted, it leaves the cost of the messages themselves.
c1, t1 = cpu(), time.monotonic()
for _ in range(10):
    time.sleep(1.0)
    received()
idle_per_s = (cpu() - c1) / (time.monotonic() - t1)
net = max(used - idle_per_s * secs, 0.0)
print(json.dumps({"kind": "sqs", "label": "ingest-sqs relay (moto)", "messages": got, "pollers": 2,
                  "secs": round(secs, 2), "messages_per_s": round(got / secs), "server_cpu_s": round(used, 2),
                  "server_cpu_ms_per_1k": round(1000 * used / max(got / 1000, 1e-9), 1),
                  "idle_cpu_ms_per_s": round(1000 * idle_per_s, 2),
                  "net_cpu_ms_per_1k": round(1000 * net / max(got / 1000, 1e-9), 1)}))
PY
