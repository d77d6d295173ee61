// Reads a WebAssembly module's sections, for the build (minify-names.mjs: the import modules the
// glue must name) and the size table (bench/client/size-table.mjs: sections, function bodies and
// their names). Not shipped.

/**
 * The sections of a module (`{ id, size, name }`, `name` for custom sections), each function
 * body's size by index, the function names of a `name` section, how many functions are
 * imported, and the module names the imports use.
 */
export function parse(bytes) {
  let p = 8;
  const leb = () => {
    let r = 0;
    let s = 0;
    let x;
    do {
      x = bytes[p++];
      r += (x & 0x7f) * 2 ** s;
      s += 7;
    } while (x & 0x80);
    return r;
  };
  const str = () => {
    const n = leb();
    const v = bytes.toString('utf8', p, p + n);
    p += n;
    return v;
  };
  const limits = () => {
    const flags = bytes[p++];
    leb();
    if (flags & 1) leb();
  };
  const sections = [];
  const bodies = [];
  const names = new Map();
  const modules = new Set();
  let imported = 0;
  while (p < bytes.length) {
    const start = p;
    const id = bytes[p++];
    const size = leb();
    const end = p + size;
    const section = { id, size: end - start };
    if (id === 0) section.name = str();
    if (id === 2) {
      for (let i = leb(); i > 0; i--) {
        modules.add(str());
        str();
        const kind = bytes[p++];
        if (kind === 0) {
          leb();
          imported++;
        } else if (kind === 1) {
          p++;
          limits();
        } else if (kind === 2) limits();
        else if (kind === 3) p += 2;
        else leb();
      }
    }
    if (id === 10) {
      for (let i = leb(), f = 0; f < i; f++) {
        const n = leb();
        bodies.push(n);
        p += n;
      }
    }
    if (id === 0 && section.name === 'name') {
      while (p < end) {
        const sub = bytes[p++];
        const len = leb();
        const subEnd = p + len;
        if (sub === 1) {
          for (let i = leb(); i > 0; i--) {
            const idx = leb();
            names.set(idx, str());
          }
        }
        p = subEnd;
      }
    }
    sections.push(section);
    p = end;
  }
  return { sections, bodies, names, imported, modules };
}
