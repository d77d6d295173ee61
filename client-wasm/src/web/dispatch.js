// The client's hot path: every socket's frames are read here and publications handed to their
// callbacks, asking the client (WebAssembly) about a frame's publications at once, with numbers
// only. The contract is documented in dispatch.rs. The package's bundles leave comments out.

/** Names, and cached routes, kept before starting over. */
const LIMIT = 1000;
/** Slots whose last publication is kept per site; the least recently updated goes first. */
const KEEP = 64;
/**
 * Site codes, topics and keys: 1–64 ASCII letters, digits, `_ - . :` (the relay's rules). The
 * package's one copy: the wrapper (npm/src/index.js) checks the app's names with it.
 */
export const NAME = /^[\w.:-]{1,64}$/;

/**
 * The slot of a topic's publication with `key`, the value of the topic's key field (undefined: the
 * topic has one slot). The package's one copy: the wrapper's `latest(site, topic, key)` reads it.
 */
export const slotOf = (topic, key) => (key === undefined ? topic : `${topic}\n${key}`);

// Fossil deltas (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki), applied to strings:
// the format counts bytes, and the relay sends deltas only between ASCII texts, whose bytes are
// the string's characters.
const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) VALUE[DIGITS.charCodeAt(i)] = i;

const checksum = (s) => {
  let a = 0, b = 0, c = 0, d = 0;
  const n = s.length & ~3;
  for (let i = 0; i < n; i += 4) {
    a += s.charCodeAt(i);
    b += s.charCodeAt(i + 1);
    c += s.charCodeAt(i + 2);
    d += s.charCodeAt(i + 3);
  }
  let sum = d + (c << 8) + (b << 16) + (a << 24);
  switch (s.length & 3) {
    case 3: sum += s.charCodeAt(n + 2) << 8; // falls through
    case 2: sum += s.charCodeAt(n + 1) << 16; // falls through
    case 1: sum += s.charCodeAt(n) << 24;
  }
  return sum >>> 0;
};

/** The text Fossil `delta` makes of `base`; throws unless its length and checksum are right. */
export function fossil(base, delta) {
  let p = 0;
  const int = () => {
    let v = 0, x;
    while ((x = VALUE[delta.charCodeAt(p)]) >= 0) {
      v = v * 64 + x;
      p++;
    }
    return v;
  };
  const size = int();
  if (delta[p++] !== '\n') throw 0;
  const parts = [];
  while (p < delta.length) {
    const n = int();
    const op = delta[p++];
    if (op === '@') {
      const at = int();
      if (delta[p++] !== ',' || at + n > base.length) throw 0;
      parts.push(base.slice(at, at + n));
    } else if (op === ':') {
      parts.push(delta.slice(p, (p += n)));
    } else if (op === ';') {
      const out = parts.join('');
      if (out.length !== size || checksum(out) !== n) throw 0;
      return out;
    } else throw 0;
  }
  throw 0;
}

/**
 * A dispatcher of the frames of the sockets it is attached to. Its arguments (`accept`'s numbers
 * in a shared `Float64Array`, `state`, `ask`, the options' `cache`, `keys`, `replays`, `texts`)
 * are described in dispatch.rs only: `ClientSide` and the module's docs.
 */
export function dispatcher(legacy, accept, ask, state, { cache = new Map(), keys = new Map(), latestKeys, replays = new Map(), texts = new Map(), delta }) {
  const intern = (name, first) => ask(0, name, first);
  const route = (site, topic, latest) => ask(1, site, topic, latest);
  const other = (link, frame) => ask(2, link, frame);
  const failed = (site, topic, error) => ask(3, site, topic, error);
  const gap = (site) => ask(4, site);
  // The relay's slot rule (its `latest_keys`), for the bases of deltas; and whether deltas are on.
  const relayKeys = new Map();
  let deltas = false;

  // Site and epoch names → their index in the client's table.
  const ids = new Map();
  // The publications' numbers for `accept`, grown as needed.
  let buf = new Float64Array(256);
  // Site index → topic → callbacks, as `route` gave them for listeners version `version`.
  let routes, routed, version;
  // The last names and route looked up: a stream mostly repeats them.
  let lastSite, lastSiteId, lastEpoch, lastEpochId, routeSite, routeTopic, routeFns;

  const setKeys = (o, to = keys) => {
    to.clear();
    for (const t in o) to.set(t, o[t]);
  };
  setKeys(latestKeys);
  // A publication's slot: its topic, and for a topic of `keys` whose data (an object) has a
  // string field of that name following the name rules, `topic\nvalue` (the relay's rule).
  const slot = (topic, d, by = keys) => {
    const field = by.get(topic);
    const k = field !== undefined && d && typeof d === 'object' && !Array.isArray(d) ? d[field] : undefined;
    return slotOf(topic, typeof k === 'string' && NAME.test(k) ? k : undefined);
  };
  // Holds `f` as the last publication of its site and slot `k` (in `cache`, or `texts`).
  const remember = (s, k, f, held = cache) => {
    let slots = held.get(s);
    if (!slots) held.set(s, (slots = new Map()));
    slots.delete(k);
    slots.set(k, f);
    if (slots.size > KEEP) slots.delete(slots.keys().next().value);
  };

  const forgetRoutes = () => {
    routes = new Map();
    routed = 0;
    routeSite = undefined;
  };
  forgetRoutes();

  const id = (name) => {
    let i = ids.get(name);
    // The first name after a start over tells the client to empty its table.
    if (i === undefined) ids.set(name, (i = intern(name, !ids.size)));
    return i;
  };

  // A publication whose site or epoch is not the last one's: their indices, in `lastSiteId` and
  // `lastEpochId` (legacy: no epoch).
  const lookUp = (site, epoch) => {
    if (ids.size >= LIMIT) {
      ids.clear();
      lastSite = lastEpoch = undefined;
      forgetRoutes();
    }
    if (site !== lastSite) lastSiteId = id((lastSite = site));
    if (epoch !== undefined && epoch !== lastEpoch) lastEpochId = id((lastEpoch = epoch));
  };

  const callbacksFor = (v, site, name, topic) => {
    if (v !== version || routed >= LIMIT) {
      version = v;
      forgetRoutes();
    }
    let topics = routes.get(site);
    if (!topics) routes.set(site, (topics = new Map()));
    let fns = topics.get(topic);
    if (!fns) {
      topics.set(topic, (fns = route(name, topic)));
      routed++;
    }
    routeSite = site;
    routeTopic = topic;
    return (routeFns = fns);
  };

  return {
    /** Dispatches `ws`'s frames as `link`'s; returns the function that stops it. */
    attach(ws, link) {
      const socket = { live: true };
      // Publications of the current frame waiting for `accept`: their lines' JSON values, and
      // four numbers each in `buf` (site, epoch, offset, then the client's answer).
      const items = [];
      // One publication's callbacks; false once the socket is detached. A latest publication
      // (from before the subscription) goes to the listeners that asked for one, unless something
      // as new of its slot was received already (they got that). A replayed one delivered before
      // goes to the listeners `only` (see `replays`).
      const deliver = (f, v, site, only) => {
        const s = f.site;
        const topic = f.topic;
        const latest = !legacy && f.latest === true;
        let fns;
        if (only) fns = only.filter((e) => e[0] === '*' || e[0] === topic).map((e) => e[1]);
        else {
          const k = slot(topic, f.data);
          if (latest) {
            const held = cache.get(s)?.get(k);
            if (held && held.epoch === f.epoch && held.offset >= f.offset) return true;
          }
          remember(s, k, f);
          fns = latest
            ? route(s, topic, true)
            : v === version && site === routeSite && topic === routeTopic
              ? routeFns
              : callbacksFor(v, site, s, topic);
        }
        const n = fns.length;
        if (n === 0) return true;
        const m = legacy ? { site: s, topic } : { site: s, topic, epoch: f.epoch, offset: f.offset };
        // A publication from before the listener asked (see the relay's `latest`).
        if (latest) m.latest = true;
        const d = f.data;
        for (let j = 0; j < n; j++) {
          try {
            fns[j].call(null, d, m);
          } catch (error) {
            failed(s, topic, error);
          }
          if (!socket.live) return false;
        }
        return true;
      };
      // The client judges the waiting publications in one call, then they are dispatched in
      // order. When a callback called the client (`state[1]` set: it may have changed what is
      // wanted or the listeners, or closed it), the client forgot the publications after the one
      // dispatched: the rest are asked about again, one at a time (a callback that calls the
      // client once may do so for every publication).
      const flush = (m, now) => {
        let one = false;
        for (let from = 0; from < m; ) {
          const to = one ? from + 1 : m;
          state[1] = 0;
          accept(link, buf, from, to, now);
          let i = from;
          for (from = to; i < to; i++) {
            const v = buf[4 * i + 3];
            const f = items[i];
            // A rewind's replay counts its publications (latest ones are not part of it).
            const r = replays.size && f.latest !== true && replays.get(f.site);
            if (r && !--r.left) replays.delete(f.site);
            if (v < 0 && !r) continue;
            state[0] = i;
            if (!deliver(f, v, buf[4 * i], v < 0 && r.to)) return false;
            if (state[1]) {
              from = i + 1;
              one = true;
              break;
            }
          }
        }
        state[0] = Infinity;
        return true;
      };
      // One function for the whole frame, every line handled inline: the hot loop.
      ws.onmessage = ({ data }) => {
        // Binary frames are not part of the protocol; the relay never sends them.
        if (!socket.live || typeof data !== 'string') return;
        const now = Date.now();
        // v2 frames may pack several, one per line. A legacy frame is one publication, whose
        // pretty-printed data may contain newlines.
        const lines = legacy ? [data] : data.split('\n');
        const end = lines.length;
        let m = 0;
        // Only the client (given a frame by `other`), the callbacks and the error hooks (called by
        // `failed`) can close it: `socket.live` is checked after each, to stop at once.
        for (let i = 0; i <= end; i++) {
          let f;
          if (i < end) {
            const text = lines[i];
            try {
              f = JSON.parse(text);
            } catch {
              // Blank lines around packed frames are not frames.
              if (!legacy && !text.trim()) continue;
            }
            const s = f?.site;
            const topic = f?.topic;
            const epoch = legacy ? undefined : f?.epoch;
            const offset = legacy ? -1 : f?.offset;
            if (!legacy && f?.type === 'pub' && typeof s === 'string' && typeof topic === 'string') {
              const d = f.delta;
              let k, t;
              if (typeof d === 'string') {
                // A delta: rebuilt from the slot's text at exactly `base`, else a gap (nothing is
                // delivered; the client resubscribes and recovers from the last delivered).
                k = slotOf(topic, typeof f.key === 'string' ? f.key : undefined);
                const held = texts.get(s)?.get(k);
                try {
                  if (!deltas || held?.[0] !== epoch || held[1] !== f.base) throw 0;
                  f.data = JSON.parse((t = fossil(held[2], d)));
                } catch {
                  if (m) {
                    if (!flush(m, now)) return;
                    m = 0;
                  }
                  gap(s);
                  if (!socket.live) return;
                  continue;
                }
              } else if (deltas) {
                // The data text: the relay writes `data` last, but for a latest publication's mark.
                const at = text.indexOf(',"data":');
                if (at > 0) {
                  k = slot(topic, f.data, relayKeys);
                  t = text.slice(at + 8, text.length - (f.latest === true ? 15 : 1));
                }
              }
              if (t !== undefined && deltas) {
                // Updated in place (the hot path): the order of the slots is the order they came.
                const h = texts.get(s)?.get(k);
                if (h) {
                  h[0] = epoch;
                  h[1] = offset;
                  h[2] = t;
                } else remember(s, k, [epoch, offset, t], texts);
              }
            }
            // Anything but a well-formed publication goes to the client, which reads it or says
            // what is wrong with it.
            if (
              typeof s === 'string' &&
              typeof topic === 'string' &&
              (legacy
                ? f.type !== 'error'
                : f.type === 'pub' && typeof epoch === 'string' && Number.isSafeInteger(offset) && offset >= 0)
            ) {
              // A name table starting over would change the waiting publications' indices.
              if (m && ids.size >= LIMIT) {
                if (!flush(m, now)) return;
                m = 0;
              }
              if (s !== lastSite || epoch !== lastEpoch) lookUp(s, epoch);
              if (buf.length < 4 * m + 4) {
                const bigger = new Float64Array(2 * buf.length);
                bigger.set(buf);
                buf = bigger;
              }
              buf[4 * m] = lastSiteId;
              // A latest publication's epoch as -1 - its index.
              buf[4 * m + 1] = legacy ? 0 : f.latest === true ? -1 - lastEpochId : lastEpochId;
              buf[4 * m + 2] = offset;
              items[m++] = f;
              continue;
            }
          }
          if (m) {
            if (!flush(m, now)) return;
            m = 0;
          }
          if (i < end) {
            // The relay's rule for slots, unless the app gave its own.
            if (f?.type === 'hello') {
              if (!latestKeys) setKeys(f.latest_keys);
              setKeys(f.latest_keys, relayKeys);
              deltas = delta !== false && Array.isArray(f.deltas) && f.deltas.includes('fossil');
              if (!deltas) texts.clear();
            }
            other(link, f);
            if (!socket.live) return;
          }
        }
      };
      return () => {
        socket.live = false;
        ws.onmessage = null;
      };
    },
  };
}
