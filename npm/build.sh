#!/usr/bin/env bash
# Builds the package from the client-wasm crate and npm/src/:
#   1. wasm-pack (wasm-bindgen, --target web) with the size-tuned `wasm-release` profile into
#      npm/wasm/ (an intermediate, not shipped), then wasm-opt -Oz, then the package's version
#      stamped into a custom section (`datastream_version`) that load() checks against its own;
#   2. esbuild bundles the wrapper (npm/src/index.js), wasm-bindgen's glue and the crate's own
#      JavaScript into dist/, minified, once per kind of consumer:
#        dist/index.js    ES2022 module: Vite, webpack 5, <script type="module">, Node (`import`);
#                         finds the .wasm beside itself with new URL(…, import.meta.url);
#        dist/legacy.js   ES2017 module without import.meta or private fields: webpack 4 (which
#                         reads the `module` field), e.g. Vue CLI 3 apps, with no step or config:
#                         the module comes deflated in base64 from dist/datastream_bg.wasm.js,
#                         which it imports dynamically (webpack 4 makes it an async chunk of its
#                         own); stamp.mjs writes it;
#        dist/index.cjs   CommonJS, ES2018: `require` (Jest, older Node tools);
#      and the Vue entries (npm/src/vue.js for Vue 3 and 2.7, npm/src/vue-composition-api.js for
#      Vue 2.6 with @vue/composition-api) as dist/vue*.js and dist/vue*.cjs, Vue left external.
# Tools: scripts/setup-client-deps.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
source "$ROOT/scripts/client-env.sh"
cd "$ROOT"

rm -rf npm/wasm npm/dist
# Without the crate's `std` feature: a `no_std` module whose panics trap (see client-wasm/Cargo.toml).
wasm-pack build client-wasm --target web --profile wasm-release \
  --out-dir ../npm/wasm --out-name datastream --no-pack --no-opt -- --no-default-features
rm -f npm/wasm/.gitignore
# The wrapper takes the name and slot rules from the dispatcher, whose copy sits under a
# directory named with a hash: one module, bundled once.
snippet=(npm/wasm/snippets/datastream-client-*/src/web/dispatch.js)
echo "export { NAME, slotOf } from './${snippet[0]#npm/wasm/}';" >npm/wasm/rules.js
# wasm-bindgen drops the section naming the features rustc used, so name them: those rustc
# enables by default for wasm32-unknown-unknown, which every current browser supports.
mkdir -p npm/dist
# --low-memory-unused: rustc lays the stack out first (data from 1 MiB up), so the low 1 KiB of
# memory is the deepest end of the stack, never reached; knowing it, wasm-opt folds address
# offsets into loads and stores. --converge: runs -Oz again while it still shrinks the module.
FEATURES=(--enable-bulk-memory --enable-bulk-memory-opt --enable-nontrapping-float-to-int --enable-sign-ext
  --enable-mutable-globals --enable-reference-types --enable-multivalue)
# npm/wasm/optimized.wasm keeps the functions' names for bench/client/size-table.mjs.
wasm-opt -Oz --converge --low-memory-unused --debuginfo "${FEATURES[@]}" \
  npm/wasm/datastream_bg.wasm -o npm/wasm/optimized.wasm
# Then, names, producers and target features stripped (no browser reads them), one- or two-letter
# names for the imports, their module and the exports instead of wasm-bindgen's hashed ones (a
# pass of its own: under --converge it would rename, and print the mapping, once per round);
# minify-names.mjs carries the mapping into the glue before it is bundled.
wasm-opt --strip-debug --strip-producers --strip-target-features --minify-imports-and-exports-and-modules "${FEATURES[@]}" \
  npm/wasm/optimized.wasm -o npm/dist/datastream_bg.wasm >npm/wasm/names.json
node npm/minify-names.mjs npm/wasm/names.json npm/dist/datastream_bg.wasm npm/wasm/datastream.js
VERSION="$(node -p "require('./npm/package.json').version")"
node npm/stamp.mjs npm/dist/datastream_bg.wasm "$VERSION" npm/dist/datastream_bg.wasm.js

bundle() {
  esbuild --bundle --minify --log-level=warning --legal-comments=none "--define:VERSION=\"$VERSION\"" \
    --external:./datastream_bg.wasm.js "$@"
}
bundle npm/src/index.js --format=esm --target=es2022 --outfile=npm/dist/index.js --define:INLINE_WASM=false \
  --metafile=npm/wasm/index.meta.json
# webpack 4 cannot parse `import.meta`; with the module inlined, nothing uses its value.
bundle npm/src/index.js --format=esm --target=es2017 --outfile=npm/dist/legacy.js --define:INLINE_WASM=true \
  '--define:import.meta.url=""'
bundle npm/src/index.js --format=cjs --target=es2018 --platform=neutral --outfile=npm/dist/index.cjs \
  --define:INLINE_WASM=false --define:import.meta.url=importMetaUrl --inject:npm/src/base-cjs.js
for entry in vue vue-composition-api; do
  bundle "npm/src/$entry.js" --format=esm --target=es2017 --external:vue --external:@vue/composition-api \
    --outfile="npm/dist/$entry.js"
  bundle "npm/src/$entry.js" --format=cjs --target=es2018 --platform=neutral --external:vue \
    --external:@vue/composition-api --outfile="npm/dist/$entry.cjs"
done

# Each build must parse as what it claims to be; the legacy one with webpack 4's parser too
# (checked by the package test, which builds a Vue CLI 3 app with it).
node --check npm/dist/index.cjs
node --check npm/dist/vue.cjs
node --check npm/dist/vue-composition-api.cjs
for f in npm/dist/index.js npm/dist/legacy.js npm/dist/datastream_bg.wasm.js npm/dist/vue.js npm/dist/vue-composition-api.js; do
  node --input-type=module --check <"$f"
done
! grep -q 'import\.meta' npm/dist/legacy.js npm/dist/index.cjs || { echo "import.meta left in a legacy build" >&2; exit 1; }
! grep -q 'datastream_bg\.wasm\.js' npm/dist/index.js npm/dist/index.cjs || { echo "the inlined module referenced by a modern build" >&2; exit 1; }
