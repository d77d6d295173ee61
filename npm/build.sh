#!/usr/bin/env bash
# Builds the package's WebAssembly and its JavaScript glue into npm/wasm/ from the client-wasm crate:
# wasm-pack (wasm-bindgen, --target web) with the size-tuned `wasm-release` profile, then wasm-opt -Oz;
# the comments of the generated JavaScript are left out. Tools: scripts/setup-client-deps.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
source "$ROOT/scripts/client-env.sh"
cd "$ROOT"

rm -rf npm/wasm
wasm-pack build client-wasm --target web --profile wasm-release \
  --out-dir ../npm/wasm --out-name datastream --no-pack --no-opt
# wasm-pack marks its output as ignored; the package lists its files itself.
rm -f npm/wasm/.gitignore npm/wasm/datastream_bg.wasm.d.ts
# wasm-bindgen drops the section naming the features rustc used, so name them: those rustc
# enables by default for wasm32-unknown-unknown, which every current browser supports.
wasm-opt -Oz --strip-debug --strip-producers \
  --enable-bulk-memory --enable-bulk-memory-opt --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue \
  npm/wasm/datastream_bg.wasm -o npm/wasm/datastream_bg.opt.wasm
mv npm/wasm/datastream_bg.opt.wasm npm/wasm/datastream_bg.wasm
# The JavaScript (wasm-bindgen's glue, and the crate's own modules, which wasm-bindgen copies under
# snippets/) ships without its comments: whole-line `//` comments and `/** … */` blocks, about a
# sixth of its gzip size. The files must still parse.
find npm/wasm -name '*.js' -print0 | xargs -0 node -e '
  const fs = require("node:fs");
  for (const f of process.argv.slice(1)) {
    const src = fs.readFileSync(f, "utf8");
    fs.writeFileSync(f, src.replace(/^[ \t]*\/\*\*[\s\S]*?\*\/[ \t]*\n/gm, "").replace(/^[ \t]*\/\/.*\n/gm, ""));
  }'
find npm/wasm -name '*.js' -print0 | xargs -0 -n 1 node --check
