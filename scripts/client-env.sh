# Puts the browser SDK's tools on PATH; sourced after scripts/env.sh, not run.
#
# Cargo-installed tools (wasm-bindgen, wasm-pack, geckodriver) live in ~/.cargo/bin; npm tools
# (wasm-opt from binaryen, vite, webpack) in $DATASTREAM_TOOLS/node.

export PATH="$DATASTREAM_TOOLS/node/node_modules/.bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export NODE_PATH="$DATASTREAM_TOOLS/node/node_modules${NODE_PATH:+:$NODE_PATH}"
