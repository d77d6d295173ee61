# What the bench scripts share; sourced after scripts/env.sh. Sets:
#   SERVER_CPU / TOOL_CPU  command prefixes: with 2 or more cores the server runs on core 0 and the
#                          load tool on core 1; both at nice -10 (BENCH_NICE) so that other work
#                          on the machine disturbs the figures less
#   WORK                   a scratch directory, removed at exit
#   PIDS                   processes to stop at exit (append with PIDS+=("$!"))
# and defines free_port, wait_port PORT, cpu PID, start_redis and load_publish_script PORT.

NICE=(nice -n "${BENCH_NICE:--10}")
if [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=("${NICE[@]}" taskset -c 0) TOOL_CPU=("${NICE[@]}" taskset -c 1)
else
    SERVER_CPU=("${NICE[@]}") TOOL_CPU=("${NICE[@]}")
fi

WORK="$(mktemp -d)"
PIDS=()
bench_cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap bench_cleanup EXIT

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits (up to 10 s) until something listens on PORT.
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# CPU seconds (user + system) of a process.
cpu() { python3 -c 'import os, sys; f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split(); print((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))' "$1"; }

# Starts a throwaway redis-server on a free loopback port (no persistence, files in WORK, on the
# server's core), installed first if missing; sets REDIS_PORT and REDIS_PID.
start_redis() {
    command -v redis-server >/dev/null || need_apt redis-server
    REDIS_PORT=$(free_port)
    "${SERVER_CPU[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT"
}

# Loads the relay's Redis publish script into the Redis on PORT, as the relay compiles it in (the
# clock helper, then the script: server/src/broker/redis/lua/); prints its SHA for EVALSHA. Its
# keys and arguments are listed at the top of publish.lua.
load_publish_script() {
    cat server/src/broker/redis/lua/now.lua server/src/broker/redis/lua/publish.lua |
        redis-cli -p "$1" -x SCRIPT LOAD
}
