// The appliers the browser half measures, smallest first. Each is a candidate for the SDK; the
// runner bundles each alone (esbuild, minified) to report what it would add, gzip -9.

// --- Fossil, on JavaScript strings --------------------------------------------------------------
// Fossil's delta format (https://fossil-scm.org/home/doc/trunk/www/delta_format.wiki) counts
// bytes; a string holds UTF-16 units. They agree when the texts are ASCII, which is what Python's
// json.dumps writes by default (ensure_ascii) and what every status publication is: the relay
// would send a delta only when base and target are both ASCII (or compute it on UTF-16 units).
// The checksum (and the size) catch a wrong base: the caller treats a throw as a gap.
const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) VALUE[DIGITS.charCodeAt(i)] = i;

function checksum(s) {
  let a = 0, b = 0, c = 0, d = 0;
  const n = s.length & ~3;
  for (let i = 0; i < n; i += 4) {
    a += s.charCodeAt(i); b += s.charCodeAt(i + 1); c += s.charCodeAt(i + 2); d += s.charCodeAt(i + 3);
  }
  let sum = d + (c << 8) + (b << 16) + (a << 24);
  switch (s.length & 3) {
    case 3: sum += s.charCodeAt(n + 2) << 8; // falls through
    case 2: sum += s.charCodeAt(n + 1) << 16; // falls through
    case 1: sum += s.charCodeAt(n) << 24;
  }
  return sum >>> 0;
}

/** The target text of Fossil `delta` applied to `base`; throws on any inconsistency. */
export function fossilApply(base, delta) {
  let p = 0;
  const int = () => {
    let v = 0, x;
    while ((x = VALUE[delta.charCodeAt(p)]) >= 0) { v = v * 64 + x; p++; }
    return v;
  };
  const size = int();
  if (delta[p++] !== '\n') throw new Error('bad delta');
  const parts = [];
  while (p < delta.length) {
    const n = int();
    const op = delta[p++];
    if (op === '@') {
      const at = int();
      if (delta[p++] !== ',' || at + n > base.length) throw new Error('bad copy');
      parts.push(base.slice(at, at + n));
    } else if (op === ':') {
      parts.push(delta.slice(p, p + n));
      p += n;
    } else if (op === ';') {
      const out = parts.join('');
      if (out.length !== size || checksum(out) !== n) throw new Error('checksum mismatch');
      return out;
    } else throw new Error('bad delta');
  }
  throw new Error('unterminated delta');
}

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
