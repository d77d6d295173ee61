// What `import.meta.url` becomes in dist/legacy.js, the build webpack 4 reads (through the
// package's `module` field): webpack 4 can neither parse `import.meta` nor emit the `.wasm`, so
// the module is looked for under the app's public path (`publicPath + 'datastream_bg.wasm'`: the
// file copied into the app's public folder), or wherever `wasmUrl`/`load(url)` says. Computed when
// the module is loaded, not when this file is imported.
export const importMetaUrl = {
  toString: () =>
    new URL(typeof __webpack_public_path__ === 'string' ? __webpack_public_path__ : '', document.baseURI).href,
};
