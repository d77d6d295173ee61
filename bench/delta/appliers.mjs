// The appliers the browser half measures, smallest first. Each is a candidate for the SDK; the
// runner bundles each alone (esbuild, minified) to report what it would add, gzip -9.

// --- Fossil, on JavaScript strings --------------------------------------------------------------
// The SDK's own applier (client-wasm/src/web/dispatch.js), measured as it ships: Fossil's delta
// format counts bytes, a string holds UTF-16 units, and they agree for the ASCII texts the relay
// sends deltas between; the size and checksum catch a wrong base (a throw, which the SDK treats as
// a gap).
export { fossil as fossilApply } from '../../client-wasm/src/web/dispatch.js';

// --- JSON merge patch (RFC 7386), copy on write --------------------------------------------------
// Returns a new document and leaves `target` untouched (an app may still hold it): only the
// objects on a changed path are copied, the rest is shared with the previous document.
export function mergePatch(target, patch) {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...target } : {};
  for (const k in patch) {
    if (patch[k] === null) delete out[k];
    else out[k] = mergePatch(out[k], patch[k]);
  }
  return out;
}
