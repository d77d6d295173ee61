#!/usr/bin/env bash
# What the in-memory broker holds, measured: the relay's resident memory (VmRSS) before and after
# publishing into it, for a few shapes of what publishers send — many sites with full histories,
# larger messages, latest values held alone (history of 1), idempotency keys up to the cap, sites
# alone. Each case is one fresh release relay (HTTP ingest from loopback, 100 messages per
# request, no subscriber); the growth divided by what was stored gives the bytes per item that
# docs/DEPLOYMENT.md ("Broker memory") uses. The same shapes through the Redis broker give what
# Redis holds instead (its `used_memory`). About two minutes.
#
#   bench/broker-memory.sh
#
# Writes bench/results/<time>-broker-memory/results.{jsonl,md}.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"

OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-broker-memory"
mkdir -p "$OUT"
JSONL="$OUT/results.jsonl"
: >"$JSONL"

step "build (release)"
cargo build --quiet --release -p datastream
RELAY="$CARGO_TARGET_DIR/release/datastream"
source "$ROOT/bench/lib.sh"

# measure CASE SITES TOPICS PER_SITE DATA_BYTES KEYS ENV...: one relay with ENV; publishes, to each
# of SITES sites, PER_SITE messages cycling over TOPICS topics with DATA_BYTES of data each (KEYS:
# "keys" gives each message its own 40-byte idempotency key); records RSS before and after. With
# SUBSCRIBE=1 a v2 subscriber (`datastream tail`) follows every site, so each publication is
# delivered and keeps its encoded frame. With MEASURE=redis the relay runs on the Redis started
# below and Redis's used_memory is measured instead of the relay's RSS.
measure() {
    local case=$1 sites=$2 topics=$3 per_site=$4 bytes=$5 keys=$6 port pid tail_pid="" s
    shift 6
    port=$(free_port)
    env DATASTREAM_LISTEN="127.0.0.1:$port" DATASTREAM_LOG=warn "$@" "$RELAY" serve >"$WORK/relay.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    if [ "${SUBSCRIBE:-0}" = 1 ]; then
        local follow=()
        for s in $(seq 0 $((sites - 1))); do follow+=(--site "$(printf 'site%06d' "$s")"); done
        "$RELAY" tail --url "ws://127.0.0.1:$port/dev" "${follow[@]}" >/dev/null 2>&1 &
        tail_pid=$!
        PIDS+=("$tail_pid")
        # Until every site is subscribed.
        for _ in $(seq 1 200); do
            curl -s "http://127.0.0.1:$port/metrics" | grep -q "^datastream_subscriptions $sites\$" && break
            sleep 0.05
        done
    fi
    python3 - "$port" "$pid" "$case" "$sites" "$topics" "$per_site" "$bytes" "$keys" "${MEASURE:-relay}" "${REDIS_PORT:-0}" >>"$JSONL" <<'PY'
import http.client, json, subprocess, sys, time, uuid
port, pid, case = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sites, topics, per_site, size, keys = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8] == "keys"
measured, redis_port = sys.argv[9], sys.argv[10]
def rss_kb():
    if measured == "redis":
        info = subprocess.run(["redis-cli", "-p", redis_port, "INFO", "memory"], capture_output=True, text=True).stdout
        return int(next(l for l in info.splitlines() if l.startswith("used_memory:")).split(":")[1]) // 1024
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
conn = http.client.HTTPConnection("127.0.0.1", port)
def post(batch):
    conn.request("POST", "/publish", json.dumps(batch), {"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 202, (r.status, body)
# Warm up (allocator arenas, the first site) before the baseline.
post([{"site": "warmup", "topic": "t", "data": 0}])
time.sleep(0.5)
before = rss_kb()
pad = "x" * max(0, size - 20)
batch, n = [], 0
for round_ in range(per_site):
    for s in range(sites):
        m = {"site": f"site{s:06d}", "topic": f"topic{round_ % topics:03d}", "data": {"n": n, "pad": pad}}
        if keys:
            m["idempotency_key"] = f"sqs:{uuid.uuid4()}"
        batch.append(m)
        n += 1
        if len(batch) == 100:
            post(batch)
            batch = []
if batch:
    post(batch)
time.sleep(1)
after = rss_kb()
print(json.dumps({"case": case, "measured": measured, "sites": sites, "topics": topics, "per_site": per_site, "data_bytes": size,
                  "keys": n if keys else 0, "messages": n, "rss_before_mb": round(before / 1024, 1),
                  "rss_after_mb": round(after / 1024, 1), "growth_mb": round((after - before) / 1024, 1)}))
PY
    if [ -n "$tail_pid" ]; then kill "$tail_pid" && wait "$tail_pid" 2>/dev/null || true; fi
    kill "$pid" && wait "$pid" 2>/dev/null || true
}

step "history: 1,000 sites × 100 publications of 200 bytes"
measure "history 200 B" 1000 1 100 200 no DATASTREAM_HISTORY_SIZE=100 DATASTREAM_LATEST_TOPICS=0
step "history: 1,000 sites × 100 publications of 2 KB"
measure "history 2 KB" 1000 1 100 2000 no DATASTREAM_HISTORY_SIZE=100 DATASTREAM_LATEST_TOPICS=0
step "history: 100 sites × 100 publications of 2 KB, delivered to a v2 subscriber (frames kept)"
SUBSCRIBE=1 measure "history 2 KB, delivered" 100 1 100 2000 no DATASTREAM_HISTORY_SIZE=100 DATASTREAM_LATEST_TOPICS=0 \
    DATASTREAM_CLIENT_FRAME_RATE=1000 DATASTREAM_CLIENT_FRAME_BURST=1000
step "latest values held alone: 1,000 sites × 64 topics of 200 bytes (history of 1)"
measure "latest 200 B" 1000 64 64 200 no DATASTREAM_HISTORY_SIZE=1 DATASTREAM_LATEST_TOPICS=64
step "idempotency keys: 100,000 (the default cap) over 100 sites (history of 1, no latest values)"
measure "dedupe keys" 100 1 1000 20 keys DATASTREAM_HISTORY_SIZE=1 DATASTREAM_LATEST_TOPICS=0
step "sites alone: 100,000 sites × 1 publication of 20 bytes (history of 1, no latest values)"
measure "sites" 100000 1 1 20 no DATASTREAM_HISTORY_SIZE=1 DATASTREAM_LATEST_TOPICS=0

start_redis
step "Redis: 1,000 sites × 100 publications of 200 bytes (history 100, 1 latest value per site)"
MEASURE=redis measure "Redis: history 200 B" 1000 1 100 200 no DATASTREAM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
step "Redis: latest values, 1,000 sites × 64 topics of 200 bytes (history of 1)"
MEASURE=redis measure "Redis: latest 200 B" 1000 64 64 200 no DATASTREAM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" \
    DATASTREAM_HISTORY_SIZE=1
redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
step "Redis: 100,000 idempotency keys over 100 sites (history of 1, no latest values)"
MEASURE=redis measure "Redis: dedupe keys" 100 1 1000 20 keys DATASTREAM_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" \
    DATASTREAM_HISTORY_SIZE=1 DATASTREAM_LATEST_TOPICS=0

step "report"
python3 - "$JSONL" <<'PY' | tee "$OUT/results.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| case | stored | data bytes | before → after MB (relay RSS, or Redis used_memory) | growth MB | bytes per item |")
print("|---|---|---:|---|---:|---:|")
for r in rows:
    name = r["case"].removeprefix("Redis: ")
    if name.startswith("history"):
        items, what = r["sites"] * r["per_site"], "publications in history"
    elif name.startswith("latest"):
        items, what = r["sites"] * r["topics"], "latest values (no history)"
    elif name == "dedupe keys":
        items, what = r["keys"], "idempotency keys"
    else:
        items, what = r["sites"], "sites"
    per = r["growth_mb"] * 1024 * 1024 / items
    print(f"| {r['case']} | {items:,} {what} | {r['data_bytes']} | {r['rss_before_mb']} → {r['rss_after_mb']} | "
          f"{r['growth_mb']} | {per:,.0f} |")
PY
echo "results: $OUT"
