// What `import.meta.url` becomes in dist/index.cjs, the CommonJS build (Jest, older Node tools):
// the file's own URL, so the `.wasm` beside it is read from disk.
export const importMetaUrl = {
  toString: () => {
    const url = globalThis.process?.getBuiltinModule?.('url');
    return url ? url.pathToFileURL(__filename).href : `file://${__filename}`;
  },
};
