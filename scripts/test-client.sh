#!/usr/bin/env bash
# The browser SDK's test suite (client-wasm/ and npm/):
#   1. clippy for the wasm32 target (the browser-only code is invisible to a native clippy);
#   2. native unit tests of the client logic;
#   3. the relay binary and the npm package's build (npm/build.sh), then the size budget;
#   4. the browser tests in headless Chrome and headless Firefox (wasm-pack test) against the real
#      relay, started with a proxy and a control endpoint by tests/client/harness.mjs;
#   5. the API tests (tests/client/sdk-test.mjs) in headless Chromium: subscription handles,
#      errors, logging, and tokens against a second relay that requires them (DATASTREAM_JWT_SECRET)
#      but lets anonymous visitors read a few sites (DATASTREAM_ANONYMOUS_SITES);
#   6. the package test: npm pack, install into a scratch project, Node (ESM, CommonJS) and tsc,
#      Vite, webpack 5 and Vue CLI 3 (webpack 4) builds, a plain <script type="module"> page, run
#      in headless Chromium, with the reconnect leak check;
#   7. the app shaped like ptr_ui (tests/client/ptrui-test.mjs): npm install <tarball>, vue-cli-service
#      build, visits in headless Chromium and Firefox against both relays.
# Everything runs on loopback; what is started here is stopped here, by PID. Needs the tools of
# scripts/setup-client-deps.sh.
#
# CLIENT_STAGES (default: all) runs only some of them, comma-separated: clippy, native, size,
# browser, sdk, package, ptrui (the relay and the package are built whenever a later stage needs
# them), e.g. CLIENT_STAGES=sdk,ptrui scripts/test-client.sh.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$ROOT/scripts/client-env.sh"
cd "$ROOT"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/datastream-client-test.XXXXXX")"
HARNESS_PIDS=()
STAGES=",${CLIENT_STAGES:-clippy,native,size,browser,sdk,package,ptrui},"
stage() { [[ "$STAGES" == *",$1,"* ]]; }
relays_needed() { stage browser || stage sdk || stage package || stage ptrui; }

stop_harness() {
  local pid="$1" name="$2"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # The relay is the harness's child; if the harness could not stop it, stop it here.
  if [ -s "$WORK/$name.relay.pid" ]; then
    local relay_pid
    relay_pid="$(cat "$WORK/$name.relay.pid")"
    if kill -0 "$relay_pid" 2>/dev/null; then
      kill -TERM "$relay_pid" 2>/dev/null || true
      sleep 1
      kill -KILL "$relay_pid" 2>/dev/null || true
    fi
  fi
}

cleanup() {
  local rc=$?
  for entry in "${HARNESS_PIDS[@]}"; do
    stop_harness "${entry%%:*}" "${entry#*:}"
  done
  if [ "$rc" -ne 0 ]; then
    for err in "$WORK"/*.err; do
      [ -s "$err" ] || continue
      echo "--- $(basename "$err") ---" >&2
      tail -n 50 "$err" >&2
    done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if stage clippy; then
  step "cargo clippy (client, wasm32)"
  cargo clippy -p datastream-client --target wasm32-unknown-unknown --all-targets --locked -- -D warnings
  # And as the npm build compiles it: without std (its own panic handler).
  cargo clippy -p datastream-client --target wasm32-unknown-unknown --no-default-features --lib --locked -- -D warnings
fi

if stage native; then
  step "cargo test -p datastream-client (native)"
  cargo test -p datastream-client --locked
fi

if relays_needed; then
  step "build the relay"
  cargo build -p datastream --locked
fi
RELAY_BIN="$CARGO_TARGET_DIR/debug/datastream"

if stage size || stage sdk || stage package || stage ptrui; then
  step "build the npm package"
  bash npm/build.sh
fi

if stage size; then
  step "size budget"
  node tests/client/size-check.mjs npm
fi

relays_needed || { step "client tests passed ($CLIENT_STAGES)"; exit 0; }

# start_harness NAME [harness options]: starts a relay with its proxy and control endpoint and
# waits for its ports, left in $WORK/NAME.out.
start_harness() {
  local name="$1"
  shift
  node tests/client/harness.mjs --relay "$RELAY_BIN" --pidfile "$WORK/$name.relay.pid" "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$!
  HARNESS_PIDS+=("$pid:$name")
  for _ in $(seq 1 300); do
    [ -s "$WORK/$name.out" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "harness $name exited" >&2; exit 1; }
    sleep 0.1
  done
  [ -s "$WORK/$name.out" ] || { echo "harness $name not ready within 30 s" >&2; exit 1; }
}
port() { node -e "process.stdout.write(String(JSON.parse(process.argv[1]).$2))" "$(head -n 1 "$WORK/$1.out")"; }

step "start the relays (one requiring tokens but for a few sites), proxies and control endpoints"
start_harness plain
# The anonymous sites: the API tests' and the anonymous visitors' of the ptr_ui-shaped app.
start_harness jwt --jwt-secret "$(node -e "process.stdout.write(require('node:crypto').randomBytes(24).toString('hex'))")" \
  --max-subscriptions 4 --anonymous-sites open-a,open-b,cr-a-mrc,cr-a-mrc2,cr-a-mrcw,ff-a-mrc,ff-a-mrc2,ff-a-mrcw
export DS_TEST_RELAY_PORT DS_TEST_PROXY_PORT DS_TEST_CONTROL_PORT
DS_TEST_RELAY_PORT="$(port plain relay_port)"
DS_TEST_PROXY_PORT="$(port plain proxy_port)"
DS_TEST_CONTROL_PORT="$(port plain control_port)"
JWT_RELAY_PORT="$(port jwt relay_port)"
JWT_CONTROL_PORT="$(port jwt control_port)"
echo "relay :$DS_TEST_RELAY_PORT, proxy :$DS_TEST_PROXY_PORT, control :$DS_TEST_CONTROL_PORT; with tokens: relay :$JWT_RELAY_PORT, control :$JWT_CONTROL_PORT"

# The runner's default 20 s covers the whole suite; the reconnect tests need more.
export WASM_BINDGEN_TEST_TIMEOUT=300
if stage browser; then
  for browser in chrome firefox; do
    step "browser tests: headless $browser"
    (cd client-wasm && timeout 900 wasm-pack test --headless "--$browser" --locked)
  done
fi

if stage sdk; then
  step "API tests: handles, errors, tokens (headless Chromium)"
  timeout 600 node tests/client/sdk-test.mjs --control "$DS_TEST_CONTROL_PORT" --proxy "$DS_TEST_PROXY_PORT" \
    --jwt-control "$JWT_CONTROL_PORT" --jwt-relay "$JWT_RELAY_PORT"
fi

if stage package; then
  step "npm package: pack, install, bundlers, leak check"
  timeout 900 node tests/client/package-test.mjs --control "$DS_TEST_CONTROL_PORT" --proxy "$DS_TEST_PROXY_PORT" --out "$WORK/package"
fi

if stage ptrui; then
  step "the ptr_ui-shaped app: npm install <tarball>, vue-cli-service build, Chromium and Firefox"
  timeout 900 node tests/client/ptrui-test.mjs --relay "$DS_TEST_RELAY_PORT" --control "$DS_TEST_CONTROL_PORT" \
    --jwt-relay "$JWT_RELAY_PORT" --jwt-control "$JWT_CONTROL_PORT" --out "$WORK/ptrui"
fi

step "client tests passed"
