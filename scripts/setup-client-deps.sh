#!/usr/bin/env bash
# Installs what the browser SDK's build and tests need, skipping what is already there:
#   - the rustup target wasm32-unknown-unknown;
#   - wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock (the crate pins it with
#     "=", so the CLI and the library always match and wasm-pack downloads nothing);
#   - wasm-pack and geckodriver (cargo install);
#   - Debian's chromium, chromium-driver and firefox-esr for the headless browser tests;
#   - wasm-opt from the npm package `binaryen` into $DATASTREAM_TOOLS/node/bin (Debian's binaryen
#     is too old for current wasm-bindgen output) and esbuild (the package's bundles), plus the npm
#     tools the package tests use;
#   - in $DATASTREAM_TOOLS/vuecli3, apart (webpack 4 beside webpack 5 would clash), the toolchain
#     of a Vue CLI 3 app: @vue/cli-service 3.12 (webpack 4.46) with its Babel 7 plugin, Vue 2.7;
#     in $DATASTREAM_TOOLS/vue26 Vue 2.6 with @vue/composition-api; in $DATASTREAM_TOOLS/ptrui
#     the dependencies of the ptr_ui-shaped app (tests/client/ptrui/package.json).
# Safe to run again; a warm run takes seconds. Put the tools on PATH with scripts/client-env.sh.
# With --build-only, installs just what building the package needs (no browsers, drivers or test
# tools): scripts/run.sh uses that.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$ROOT/scripts/client-env.sh"


timed() {
  local start=$SECONDS
  "$@"
  printf '    (%ss)\n' "$((SECONDS - start))"
}

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "rustup target add wasm32-unknown-unknown"
  timed rustup target add wasm32-unknown-unknown
fi

# The version cargo resolved for the client crate; the CLI must be exactly this one.
BINDGEN_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")"
if [ -z "$BINDGEN_VERSION" ]; then
  echo "wasm-bindgen not found in Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$BINDGEN_VERSION" ]; then
  step "cargo install wasm-bindgen-cli $BINDGEN_VERSION"
  # Not --locked: the CLI's own lock file names a dependency version the registry no longer has.
  timed env -u CARGO_TARGET_DIR cargo install -q wasm-bindgen-cli --version "$BINDGEN_VERSION" --force
fi

if ! command -v wasm-pack >/dev/null; then
  step "cargo install wasm-pack"
  timed env -u CARGO_TARGET_DIR cargo install -q wasm-pack --locked
fi

BUILD_ONLY=0
[ "${1:-}" = "--build-only" ] && BUILD_ONLY=1

if [ "$BUILD_ONLY" -eq 0 ] && ! command -v geckodriver >/dev/null; then
  step "cargo install geckodriver"
  timed env -u CARGO_TARGET_DIR cargo install -q geckodriver --locked
fi

if [ "$BUILD_ONLY" -eq 0 ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v firefox-esr >/dev/null; }; then
  timed need_apt chromium chromium-driver firefox-esr
fi

# npm tools: wasm-opt (binaryen), and what the package tests use (a headless-browser driver
# that talks to the system chromium, and the two bundlers the package must work with).
NODE_TOOLS="$DATASTREAM_TOOLS/node"
mkdir -p "$NODE_TOOLS"
want_npm=(binaryen@132 esbuild@0.28)
[ "$BUILD_ONLY" -eq 1 ] || want_npm+=(playwright-core@1 vite@8 webpack@5 webpack-cli@6 typescript@5 vue@3)
have_all=1
for spec in "${want_npm[@]}"; do
  [ -e "$NODE_TOOLS/node_modules/${spec%@*}/package.json" ] || have_all=0
done
if [ "$have_all" -eq 0 ]; then
  step "npm install ${want_npm[*]} into $NODE_TOOLS"
  [ -e "$NODE_TOOLS/package.json" ] || echo '{"private": true}' >"$NODE_TOOLS/package.json"
  timed npm install --prefix "$NODE_TOOLS" --no-audit --no-fund --loglevel=error "${want_npm[@]}"
fi

VUECLI3="$DATASTREAM_TOOLS/vuecli3"
# core-js 2 and regenerator-runtime: what Babel's output of a Vue CLI 3 app imports.
want_vuecli3=(@vue/cli-service@3.12.1 @vue/cli-plugin-babel@3.12.1 vue@2.7.16 vue-template-compiler@2.7.16 core-js@2.6.12
  regenerator-runtime@0.13)
have_vuecli3=1
for spec in "${want_vuecli3[@]}"; do
  [ -e "$VUECLI3/node_modules/${spec%@*}/package.json" ] || have_vuecli3=0
done
if [ "$BUILD_ONLY" -eq 0 ] && [ "$have_vuecli3" -eq 0 ]; then
  step "npm install ${want_vuecli3[*]} into $VUECLI3"
  mkdir -p "$VUECLI3"
  [ -e "$VUECLI3/package.json" ] || echo '{"private": true}' >"$VUECLI3/package.json"
  timed npm install --prefix "$VUECLI3" --no-audit --no-fund --loglevel=error "${want_vuecli3[@]}"
fi

# The app shaped like ptr_ui (tests/client/ptrui/): its own dependencies, installed once from its
# package.json, as its developer has them before adding the package (the test copies them).
PTRUI="$DATASTREAM_TOOLS/ptrui"
if [ "$BUILD_ONLY" -eq 0 ] && ! cmp -s "$ROOT/tests/client/ptrui/package.json" "$PTRUI/package.json"; then
  step "npm install the ptr_ui-shaped app's dependencies into $PTRUI"
  rm -rf "$PTRUI"
  mkdir -p "$PTRUI"
  cp "$ROOT/tests/client/ptrui/package.json" "$PTRUI/"
  timed npm install --prefix "$PTRUI" --no-audit --no-fund --loglevel=error
fi

# A Vue 2.6 app's own packages (Vue 2.6 with @vue/composition-api, what ptr_ui runs), apart from
# the toolchain's Vue 2.7.
VUE26="$DATASTREAM_TOOLS/vue26"
if [ "$BUILD_ONLY" -eq 0 ] && { [ ! -e "$VUE26/node_modules/vue/package.json" ] || [ ! -e "$VUE26/node_modules/@vue/composition-api/package.json" ]; }; then
  step "npm install vue@2.6.14 @vue/composition-api@1.7.2 into $VUE26"
  mkdir -p "$VUE26"
  [ -e "$VUE26/package.json" ] || echo '{"private": true}' >"$VUE26/package.json"
  timed npm install --prefix "$VUE26" --no-audit --no-fund --loglevel=error vue@2.6.14 @vue/composition-api@1.7.2
fi

step "client test dependencies ready: $(wasm-bindgen --version), $(wasm-pack --version), $(wasm-opt --version | head -1)"
