#!/usr/bin/env bash
# Container test: builds the image, runs it with podman (host network, loopback only), and checks
# what operators rely on: non-root user, HEALTHCHECK, a WebSocket round trip, and a SIGTERM drain
# that closes sockets with 1001 and exits 0. Where podman cannot run containers on this machine, it
# says so and runs the same checks on the static binary directly.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$ROOT"

IMAGE=localhost/datastream:test
NAME="datastream-test-$$"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
TOOL="$CARGO_TARGET_DIR/debug/datastream"
MUSL_BIN="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/datastream"
PIDS=()
FAILS=0

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  podman --runtime runc rm -f "$NAME" >/dev/null 2>&1 || true
}
trap cleanup EXIT

check() { # check NAME COMMAND...
  if "${@:2}"; then echo "ok: $1"; else echo "FAILED: $1"; FAILS=$((FAILS + 1)); fi
}

wait_healthz() {
  for _ in $(seq 1 100); do
    "$TOOL" healthcheck --listen "127.0.0.1:$PORT" --timeout 1s 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

cargo build --locked -p datastream >/dev/null 2>&1 || cargo build --locked -p datastream
bash scripts/build-image.sh "$IMAGE"

size=$(podman image inspect --format '{{.Size}}' "$IMAGE" 2>/dev/null || echo "?")
echo "image size: $size bytes ($(( ${size:-0} / 1024 / 1024 )) MiB)"

RUNTIME=podman
# Without systemd podman cannot schedule HEALTHCHECK timers (it says so, harmlessly); the check
# below runs the HEALTHCHECK command itself with `podman healthcheck run`.
PODMAN_RUN=(podman --runtime runc run --network host --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
if ! "${PODMAN_RUN[@]}" --rm "$IMAGE" --version >/tmp/podman-probe.$$ 2>&1; then
  echo "podman cannot run containers here: $(tail -n 3 /tmp/podman-probe.$$ | tr '\n' ' ')"
  echo "running the same checks on the static binary instead"
  RUNTIME=binary
fi
rm -f /tmp/podman-probe.$$

if [ "$RUNTIME" = podman ]; then
  "${PODMAN_RUN[@]}" -d --name "$NAME" \
    -e DATASTREAM_LISTEN="127.0.0.1:$PORT" -e DATASTREAM_DRAIN_WINDOW=1s "$IMAGE" >/dev/null 2>&1
  check "container user is non-root" test "$(podman inspect --format '{{.Config.User}}' "$NAME")" = "65534:65534"
else
  DATASTREAM_LISTEN="127.0.0.1:$PORT" DATASTREAM_DRAIN_WINDOW=1s DATASTREAM_LOG_FORMAT=json "$MUSL_BIN" \
    > "$CARGO_TARGET_DIR/container-test.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
fi

check "relay answers /healthz" wait_healthz
if [ "$FAILS" -ne 0 ]; then
  echo "--- relay output ---"
  if [ "$RUNTIME" = podman ]; then podman logs "$NAME" 2>&1 | tail -n 20; else tail -n 20 "$CARGO_TARGET_DIR/container-test.log"; fi
  exit 1
fi
if [ "$RUNTIME" = podman ]; then
  check "HEALTHCHECK passes" podman --runtime runc healthcheck run "$NAME"
else
  check "healthcheck subcommand passes" "$MUSL_BIN" healthcheck --listen "127.0.0.1:$PORT"
fi

# WebSocket round trip: tail (v2) receives what publish (HTTP) sends.
out="$(mktemp)"
"$TOOL" tail --url "ws://127.0.0.1:$PORT/dev" --site mrc --count 1 > "$out" 2>/dev/null &
TAIL_PID=$!
PIDS+=("$TAIL_PID")
for _ in $(seq 1 50); do
  "$TOOL" publish --url "http://127.0.0.1:$PORT" --site mrc --topic weather --data '{"t": 11.7}' >/dev/null 2>&1 || true
  [ -s "$out" ] && break
  sleep 0.1
done
wait "$TAIL_PID" 2>/dev/null || true
check "WebSocket round trip" grep -q '"data":{"t": 11.7}' "$out"

# SIGTERM drain: a connected client gets 1001, the process exits 0.
"$TOOL" tail --url "ws://127.0.0.1:$PORT/dev" --site mrc > /dev/null 2> "$out" &
TAIL_PID=$!
PIDS+=("$TAIL_PID")
sleep 0.5
if [ "$RUNTIME" = podman ]; then
  podman --runtime runc stop -t 10 "$NAME" >/dev/null
  code="$(podman inspect --format '{{.State.ExitCode}}' "$NAME")"
  logs="$(podman logs "$NAME" 2>&1)"
else
  kill -TERM "$SERVER_PID"
  code=0; wait "$SERVER_PID" || code=$?
  logs="$(cat "$CARGO_TARGET_DIR/container-test.log")"
fi
sleep 0.3
kill "$TAIL_PID" 2>/dev/null || true
check "exit code 0 after SIGTERM" test "$code" = 0
check "drain logged" grep -q '"message":"stopped"' <<< "$logs"
check "client saw close 1001" grep -q '"code":1001,"event":"closed","reason":"server shutting down"' "$out"
rm -f "$out"

if [ "$FAILS" -ne 0 ]; then
  echo "container: $FAILS check(s) failed"
  exit 1
fi
echo "container: all checks passed ($RUNTIME)"
