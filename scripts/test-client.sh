#!/usr/bin/env bash
# The browser SDK's test suite (client-wasm/ and npm/):
#   1. clippy for the wasm32 target (the browser-only code is invisible to a native clippy);
#   2. native unit tests of the client logic;
#   3. the relay binary and the npm package's build (npm/build.sh), then the size budget;
#   4. the browser tests in headless Chrome and headless Firefox (wasm-pack test) against the real
#      relay, started with a proxy and a control endpoint by tests/client/harness.mjs;
#   5. the package test: npm pack, install into a scratch project, Vite and webpack builds, a
#      plain <script type="module"> page, run in headless Chromium, with the reconnect leak check.
# Everything runs on loopback; what is started here is stopped here, by PID. Needs the tools of
# scripts/setup-client-deps.sh.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$ROOT/scripts/client-env.sh"
cd "$ROOT"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/datastream-client-test.XXXXXX")"
HARNESS_PID=""

cleanup() {
  local rc=$?
  if [ -n "$HARNESS_PID" ] && kill -0 "$HARNESS_PID" 2>/dev/null; then
    kill -TERM "$HARNESS_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$HARNESS_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$HARNESS_PID" 2>/dev/null || true
  fi
  # The relay is the harness's child; if the harness could not stop it, stop it here.
  if [ -s "$WORK/relay.pid" ]; then
    local relay_pid
    relay_pid="$(cat "$WORK/relay.pid")"
    if kill -0 "$relay_pid" 2>/dev/null; then
      kill -TERM "$relay_pid" 2>/dev/null || true
      sleep 1
      kill -KILL "$relay_pid" 2>/dev/null || true
    fi
  fi
  if [ "$rc" -ne 0 ] && [ -s "$WORK/harness.err" ]; then
    echo "--- harness stderr ---" >&2
    tail -n 50 "$WORK/harness.err" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "cargo clippy (client, wasm32)"
cargo clippy -p datastream-client --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

step "cargo test -p datastream-client (native)"
cargo test -p datastream-client --locked

step "build the relay"
cargo build -p datastream --locked
RELAY_BIN="$CARGO_TARGET_DIR/debug/datastream"

step "build the npm package"
bash npm/build.sh

step "size budget"
node tests/client/size-check.mjs npm

step "start the relay, proxy and control endpoint"
node tests/client/harness.mjs --relay "$RELAY_BIN" --pidfile "$WORK/relay.pid" >"$WORK/harness.out" 2>"$WORK/harness.err" &
HARNESS_PID=$!
for _ in $(seq 1 300); do
  [ -s "$WORK/harness.out" ] && break
  kill -0 "$HARNESS_PID" 2>/dev/null || { echo "harness exited" >&2; exit 1; }
  sleep 0.1
done
[ -s "$WORK/harness.out" ] || { echo "harness not ready within 30 s" >&2; exit 1; }
PORTS="$(head -n 1 "$WORK/harness.out")"
port() { node -e "process.stdout.write(String(JSON.parse(process.argv[1]).$1))" "$PORTS"; }
export DS_TEST_RELAY_PORT DS_TEST_PROXY_PORT DS_TEST_CONTROL_PORT
DS_TEST_RELAY_PORT="$(port relay_port)"
DS_TEST_PROXY_PORT="$(port proxy_port)"
DS_TEST_CONTROL_PORT="$(port control_port)"
echo "relay :$DS_TEST_RELAY_PORT, proxy :$DS_TEST_PROXY_PORT, control :$DS_TEST_CONTROL_PORT"

# The runner's default 20 s covers the whole suite; the reconnect tests need more.
export WASM_BINDGEN_TEST_TIMEOUT=300
for browser in chrome firefox; do
  step "browser tests: headless $browser"
  (cd client-wasm && timeout 900 wasm-pack test --headless "--$browser" --locked)
done

step "npm package: pack, install, bundlers, leak check"
timeout 900 node tests/client/package-test.mjs --control "$DS_TEST_CONTROL_PORT" --proxy "$DS_TEST_PROXY_PORT" --out "$WORK/package"

step "client tests passed"
