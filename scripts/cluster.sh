#!/usr/bin/env bash
# A local cluster on loopback, the topology docs/DEPLOYMENT.md recommends past one node: Redis 7
# (AOF on), three relay nodes, and HAProxy in front of them (deploy/local/haproxy.cfg: WebSocket
# upgrade passthrough, tunnel idle timeout above the ping interval, health checks on /readyz,
# /publish routed too).
#
#   scripts/cluster.sh                    # build (release), start, print the URLs; Ctrl-C stops all
#   CLUSTER_NODES=2 scripts/cluster.sh    # 1-3 nodes behind the balancer
#   CLUSTER_REDIS_AOF=no                  # Redis without persistence
#   CLUSTER_REDIS_TLS=yes                 # Redis over TLS only (rediss://, a CA made for the run)
#   CLUSTER_PROFILE=debug                 # a debug build of the relay
#   CLUSTER_SECS=30                       # stop by itself after 30 s
#
# Every DATASTREAM_* variable exported beforehand reaches the nodes (e.g. DATASTREAM_SQS_QUEUE
# with AWS_ENDPOINT_URL_SQS to make them consume a queue). Ports are picked free at start.
# CLUSTER_BIN runs a given relay binary; the arrays CLUSTER_NODE_PREFIX, CLUSTER_LB_PREFIX and
# CLUSTER_REDIS_PREFIX prefix the commands (e.g. `taskset -c 0` in bench/cluster.sh).
#
# Sourced (`source scripts/cluster.sh`), it only defines the functions the cluster failure tests
# drive (tests/cluster/): cluster_up, cluster_down, node_start/node_kill/node_term N, lb_wait_up N,
# redis_pause/redis_resume/redis_restart, and sets CL_* variables (ports, PIDs, token).

# HAProxy rather than nginx: it checks upstreams actively (`option httpchk GET /readyz`) in the
# free version, so a draining node or one that lost Redis leaves the rotation within ~2 s, before
# any client is sent to it; open-source nginx only notices failures passively, on live traffic.
# Both pass WebSocket upgrades through and both are in Debian.

CL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CL_NODES=${CLUSTER_NODES:-3}
CL_AOF=${CLUSTER_REDIS_AOF:-yes}
CL_TLS=${CLUSTER_REDIS_TLS:-no}
CL_PROFILE=${CLUSTER_PROFILE:-release}
CL_DIR=""
CL_BIN=""
CL_REDIS_PID=""
CL_LB_PID=""
declare -a CL_NODE_PID=() CL_NODE_PORT=()

cl_free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cl_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# cl_wait WHAT CMD...: runs CMD every 50 ms until it succeeds, for at most 20 s.
cl_wait() {
    local what=$1
    shift
    for _ in $(seq 1 400); do
        "$@" && return 0
        sleep 0.05
    done
    echo "cluster: timed out waiting for $what" >&2
    return 1
}

cl_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ]; }

# Builds the relay (unless CLUSTER_BIN names one) and installs HAProxy and Redis if missing.
cluster_prepare() {
    if [ -n "${CLUSTER_BIN:-}" ]; then
        CL_BIN=$CLUSTER_BIN
    else
        source "$CL_ROOT/scripts/env.sh"
        if [ "$CL_PROFILE" = release ]; then
            cargo build --quiet --release -p datastream
        else
            cargo build --quiet -p datastream
        fi
        CL_BIN="$CARGO_TARGET_DIR/$CL_PROFILE/datastream"
    fi
    if ! command -v haproxy >/dev/null || ! command -v redis-server >/dev/null; then
        source "$CL_ROOT/scripts/env.sh"
        need_apt haproxy redis-server
    fi
}

# With CL_TLS=yes: a CA and a certificate for 127.0.0.1 it signed, made with openssl in CL_DIR/tls
# (the nodes trust the CA with DATASTREAM_REDIS_CA_FILE).
cl_tls_files() {
    local d="$CL_DIR/tls" ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    mkdir -p "$d"
    openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.crt" -days 2 -subj "/CN=datastream cluster CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout "$d/redis.key" -out "$d/redis.csr" -subj "/CN=127.0.0.1" 2>/dev/null
    echo "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$d/san.ext"
    openssl x509 -req -in "$d/redis.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/san.ext" -out "$d/redis.crt" 2>/dev/null
}

redis_start() {
    mkdir -p "$CL_DIR/redis"
    local listen=(--port "$CL_REDIS_PORT")
    if [ "$CL_TLS" = yes ]; then
        listen=(--port 0 --tls-port "$CL_REDIS_PORT" --tls-cert-file "$CL_DIR/tls/redis.crt"
            --tls-key-file "$CL_DIR/tls/redis.key" --tls-ca-cert-file "$CL_DIR/tls/ca.crt" --tls-auth-clients no)
    fi
    # AOF fsync'd every second, Redis's default: a graceful restart (SIGTERM) loses nothing, a
    # crash of Redis itself up to the last second (`appendfsync always` closes that gap).
    "${CLUSTER_REDIS_PREFIX[@]}" redis-server "${listen[@]}" --bind 127.0.0.1 --dir "$CL_DIR/redis" --save '' \
        --appendonly "$CL_AOF" --appendfsync everysec >>"$CL_DIR/redis.log" 2>&1 &
    CL_REDIS_PID=$!
    cl_wait "Redis on port $CL_REDIS_PORT" cl_port_open "$CL_REDIS_PORT"
}

# Freezes Redis (SIGSTOP): connections stay open and nothing answers, like a hung or partitioned
# server.
redis_pause() { kill -STOP "$CL_REDIS_PID"; }
redis_resume() { kill -CONT "$CL_REDIS_PID"; }

# Stops Redis gracefully (it writes its AOF out) and starts it again on the same port and files.
redis_restart() {
    kill -TERM "$CL_REDIS_PID"
    wait "$CL_REDIS_PID" 2>/dev/null || true
    redis_start
}

# node_start N: starts relay node N (1-based) on its port and waits until it is ready.
node_start() {
    local n=$1
    local redis=(DATASTREAM_REDIS_URL="redis://127.0.0.1:$CL_REDIS_PORT/")
    if [ "$CL_TLS" = yes ]; then
        redis=(DATASTREAM_REDIS_URL="rediss://127.0.0.1:$CL_REDIS_PORT/" DATASTREAM_REDIS_CA_FILE="$CL_DIR/tls/ca.crt")
    fi
    # Per-address cap off: on loopback every client has the address 127.0.0.1 (also as the relay
    # reads it from HAProxy's X-Forwarded-For), so the default 200 per address would refuse the
    # load tests' 2,000 subscribers.
    env "${redis[@]}" DATASTREAM_LISTEN="127.0.0.1:${CL_NODE_PORT[$n]}" \
        DATASTREAM_PUBLISH_TOKEN="$CL_TOKEN" \
        DATASTREAM_TRUSTED_PROXIES="127.0.0.1/32" \
        DATASTREAM_MAX_CONNECTIONS_PER_IP=0 \
        DATASTREAM_DRAIN_WINDOW="${DATASTREAM_DRAIN_WINDOW:-3s}" \
        DATASTREAM_LOG="${DATASTREAM_LOG:-info}" \
        "${CLUSTER_NODE_PREFIX[@]}" "$CL_BIN" serve >>"$CL_DIR/node$n.log" 2>&1 &
    CL_NODE_PID[n]=$!
    cl_wait "node $n ready" cl_ready "${CL_NODE_PORT[$n]}"
}

# node_kill N: SIGKILL, no goodbye to anyone.
node_kill() {
    kill -KILL "${CL_NODE_PID[$1]}"
    wait "${CL_NODE_PID[$1]}" 2>/dev/null || true
}

# node_term N: SIGTERM, then waits (at most 30 s) for the drain to finish and the process to exit.
node_term() {
    local pid=${CL_NODE_PID[$1]}
    kill -TERM "$pid"
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    wait "$pid" 2>/dev/null || true
}

# lb_wait_up N: waits until HAProxy's health checks have put node N back in rotation.
lb_wait_up() {
    cl_wait "HAProxy to see node $1 up" cl_lb_up "$1"
}
cl_lb_up() { curl -s "http://127.0.0.1:$CL_STATS_PORT/;csv" | grep -q "^relays,node$1,.*,UP,"; }

lb_start() {
    local n env=(DS_LB="127.0.0.1:$CL_LB_PORT" DS_STATS="127.0.0.1:$CL_STATS_PORT")
    for n in 1 2 3; do
        if [ "$n" -le "$CL_NODES" ]; then
            env+=("DS_NODE$n=127.0.0.1:${CL_NODE_PORT[$n]}" "DS_NODE${n}_STATE=enabled")
        else
            # A slot without a node: a port nothing listens on, never used.
            env+=("DS_NODE$n=127.0.0.1:1" "DS_NODE${n}_STATE=disabled")
        fi
    done
    env "${env[@]}" "${CLUSTER_LB_PREFIX[@]}" haproxy -f "$CL_ROOT/deploy/local/haproxy.cfg" -db \
        >>"$CL_DIR/haproxy.log" 2>&1 &
    CL_LB_PID=$!
    cl_wait "HAProxy on port $CL_LB_PORT" cl_ready "$CL_LB_PORT"
}

# Starts Redis, CL_NODES nodes and HAProxy, on free loopback ports, logs in CL_DIR.
cluster_up() {
    local n
    [ "$CL_NODES" -ge 1 ] && [ "$CL_NODES" -le 3 ] || {
        echo "CLUSTER_NODES must be 1, 2 or 3" >&2
        return 2
    }
    [ -n "$CL_BIN" ] || cluster_prepare
    CL_DIR=$(mktemp -d "${TMPDIR:-/tmp}/datastream-cluster.XXXXXX")
    CL_TOKEN=${CLUSTER_PUBLISH_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}
    CL_REDIS_PORT=$(cl_free_port)
    CL_LB_PORT=$(cl_free_port)
    CL_STATS_PORT=$(cl_free_port)
    for n in $(seq 1 "$CL_NODES"); do CL_NODE_PORT[n]=$(cl_free_port); done
    if [ "$CL_TLS" = yes ]; then cl_tls_files; fi
    redis_start
    for n in $(seq 1 "$CL_NODES"); do node_start "$n"; done
    lb_start
}

# Stops everything cluster_up started, by PID (SIGCONT first, in case Redis was frozen).
cluster_down() {
    [ -n "$CL_DIR" ] || return 0
    local pids=("$CL_LB_PID" "${CL_NODE_PID[@]}" "$CL_REDIS_PID") p
    if [ -n "$CL_REDIS_PID" ]; then kill -CONT "$CL_REDIS_PID" 2>/dev/null || true; fi
    for p in "${pids[@]}"; do
        if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi
    done
    for p in "${pids[@]}"; do
        if [ -n "$p" ]; then wait "$p" 2>/dev/null || true; fi
    done
    if [ -n "${CLUSTER_KEEP:-}" ]; then
        echo "cluster: logs kept in $CL_DIR" >&2
    else
        rm -rf "$CL_DIR"
    fi
    CL_DIR=""
    return 0
}

cluster_print() {
    local n
    cat <<EOF

datastream cluster: Redis (AOF $CL_AOF, TLS $CL_TLS), $CL_NODES relay node(s), HAProxy

  subscribe   ws://127.0.0.1:$CL_LB_PORT/dev?site=mrc        (protocol v2: subprotocol datastream.v2)
  publish     curl -H 'Authorization: Bearer $CL_TOKEN' \\
                   -d '{"site":"mrc","topic":"weather","data":{"temperature_C":11.7}}' \\
                   http://127.0.0.1:$CL_LB_PORT/publish
  HAProxy     http://127.0.0.1:$CL_STATS_PORT/   (status page)
  Redis       $([ "$CL_TLS" = yes ] && echo rediss || echo redis)://127.0.0.1:$CL_REDIS_PORT/   (pid $CL_REDIS_PID)
EOF
    for n in $(seq 1 "$CL_NODES"); do
        echo "  node $n      http://127.0.0.1:${CL_NODE_PORT[$n]}/readyz   (pid ${CL_NODE_PID[$n]})"
    done
    echo "  logs        $CL_DIR"
    echo
    if [ -n "${CLUSTER_SECS:-}" ]; then echo "Stopping in $CLUSTER_SECS s (or on Ctrl-C)."; else echo "Ctrl-C stops everything."; fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    CLUSTER_KEEP=${CLUSTER_KEEP:-}
    trap 'cluster_down' EXIT
    trap 'exit 130' INT TERM
    ulimit -n "$(ulimit -Hn)"
    cluster_prepare
    cluster_up
    cluster_print
    if [ -n "${CLUSTER_SECS:-}" ]; then
        sleep "$CLUSTER_SECS"
    else
        # Until Ctrl-C, or until a process of the cluster ends.
        wait -n "$CL_LB_PID" "${CL_NODE_PID[@]}" "$CL_REDIS_PID" || true
        echo "cluster: a process ended; stopping" >&2
    fi
fi
