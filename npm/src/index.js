// @photonranch/datastream: the browser client of the datastream relay.
//
// The client itself is WebAssembly (built from the `datastream-client` crate); this module loads
// it and gives it a JavaScript-shaped API: `new` works before the module has loaded (calls are
// queued and run in order once it has), listener ids become unsubscribe functions, subscriptions
// become reference-counted handles, tokens are fetched and refreshed, errors are `Error`s.
//
// npm/build.sh bundles this file with the WebAssembly glue into dist/: index.js (modern ESM),
// legacy.js (ES2017 for webpack 4, the module inlined in an async chunk: see INLINE_WASM) and
// index.cjs (CommonJS). Importing it touches no browser global; everything that does runs when a
// client starts. VERSION (the package's) and INLINE_WASM are defined by the build.

import { DatastreamCore, initSync } from '../wasm/datastream.js';
// The name and slot rules, from the module's dispatcher (npm/build.sh writes this re-export).
import { NAME, slotOf } from '../wasm/rules.js';

let loading = null;

/** The module's bytes, or where to fetch them, when `load` is not told. */
async function defaultSource() {
  // webpack 4 (dist/legacy.js) cannot emit a .wasm: the module travels in a chunk of its own,
  // deflated in base64, loaded when a client starts (npm/stamp.mjs writes it).
  if (INLINE_WASM) return (await import('./datastream_bg.wasm.js')).default();
  const url = new URL('datastream_bg.wasm', import.meta.url);
  // Node (SSR, tests, tools): `fetch` cannot read files.
  const fs = url.protocol === 'file:' && globalThis.process?.getBuiltinModule?.('fs');
  return fs ? fs.readFileSync(url) : url;
}

/**
 * Loads and compiles the WebAssembly module (once). Called by the first `new Datastream()`;
 * await it first to load the module from somewhere else than where the package finds it (pass a
 * URL, Response, BufferSource or Module). Rejects with a `DatastreamError` (`kind: 'version'`)
 * when the module is not of this package's version.
 */
export function load(source) {
  return (loading ??= (async () => {
    source = await (source ?? defaultSource());
    if (typeof source === 'string' || source instanceof URL) source = await fetch(source);
    if (source instanceof Response) source = await source.arrayBuffer();
    const module = source instanceof WebAssembly.Module ? source : await WebAssembly.compile(source);
    const [stamp] = WebAssembly.Module.customSections(module, 'datastream_version');
    const version = stamp && new TextDecoder().decode(stamp);
    if (version !== VERSION) {
      throw new DatastreamError(
        'version',
        `@photonranch/datastream ${VERSION} got datastream_bg.wasm ${version ?? 'older than 0.3.0'}: serve the .wasm of the same version`,
        { code: version },
      );
    }
    // Compiled already (asynchronously): instantiating it is quick.
    return initSync({ module });
  })());
}

/** What every error of the client is: `kind` says where it comes from, `code` what it is. */
export class DatastreamError extends Error {
  constructor(kind, message, fields) {
    super(message);
    this.name = 'DatastreamError';
    this.kind = kind;
    Object.assign(this, fields);
  }
}

/**
 * Site codes and topics follow `NAME`. The client's one check of the app's names (the WebAssembly
 * module does not repeat it): at once, before the module has loaded.
 */
function check(what, name) {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new DatastreamError(
      'invalid',
      `invalid ${what} ${JSON.stringify(name)}: 1-64 ASCII letters, digits, '_', '-', '.' and ':'`,
      { code: `invalid_${what}` },
    );
  }
  return name;
}

function checkListener(topic, callback) {
  if (topic !== '*') check('topic', topic);
  if (typeof callback !== 'function') throw new TypeError('on(topic, callback): callback must be a function');
}

const OPTIONS = new Set(
  'url sites protocol minReconnectDelay maxReconnectDelay heartbeatGrace connectTimeout token getToken WebSocket wasmUrl debug logger latestKeys autoConnect delta'.split(
    ' ',
  ),
);

/** Clients not yet closed; kept reachable so an app holding only callbacks keeps receiving. */
const live = new Set();


export class Datastream {
  #options;
  #core = null;
  /** Calls made before the module loaded: `[run(core), fail(error)]`. */
  #pending = [];
  #closed = false;
  /** The app let it connect (`autoConnect`, or `connect()`); `#start` once loaded too. */
  #permitted = false;
  #loaded = false;
  /** The final state once closed by the app, or the error that kept the client from starting. */
  #final = null;
  /** Site → `{ held, handles, info }`: `held` counts the holders of its subscription. */
  #sites = new Map();
  /** Site → slot (`topic`, or `topic\nkey` for a topic kept per kind of state) → the last
   * publication received (the parsed frame), least recently updated first; filled by the
   * module's dispatcher (at most 64 slots per site). */
  #cache = new Map();
  /** Topic → the data field telling its kinds of state apart: `latestKeys`, else the relay's
   * announcement; filled by the dispatcher. */
  #keys = new Map();
  /** Site → `{ left, to }`: a rewind's replay under way, `left` publications to come; those the
   * client had delivered already go to `to` (`[topic, callback, handle]`, the listeners of the
   * handles that asked for it) only; filled by `#subscribed`, read by the module's dispatcher. */
  #replays = new Map();
  /** Site → slot → the epoch, offset and data text of the last publication received: the base
   * of the next delta, while deltas are on; filled by the dispatcher. */
  #texts = new Map();
  /** The app's `onError` listeners, and internal listeners for refusals (`ready()`). */
  #errorListeners = new Set();
  #refusalListeners = new Set();
  /** Every listener `on` registered: `[topic, callback, off]`, for `off(topic, callback)`. */
  #listeners = new Set();

  /**
   * @param {import('../index.js').DatastreamOptions} options
   */
  constructor(options) {
    if (options === null || typeof options !== 'object' || typeof options.url !== 'string') {
      throw new TypeError('new Datastream(options): options.url must be a string');
    }
    for (const key of Object.keys(options)) {
      if (!OPTIONS.has(key)) throw new TypeError(`new Datastream(options): unknown option "${key}"`);
    }
    const sites = options.sites ? [...options.sites] : [];
    sites.forEach((s) => check('site', s));
    const keys = options.latestKeys;
    if (keys !== undefined && Object(keys) !== keys) throw new TypeError('new Datastream(options): options.latestKeys must be an object');
    if (options.getToken !== undefined && typeof options.getToken !== 'function') {
      throw new TypeError('new Datastream(options): options.getToken must be a function');
    }
    this.#options = { ...options, sites };
    for (const site of sites) this.#site(site).held += 1;
    live.add(this);
    load(options.wasmUrl).then(
      () => {
        this.#loaded = true;
        this.#start();
      },
      (error) => this.#fail(error),
    );
    if (options.autoConnect !== false) this.connect();
  }

  /**
   * Lets the client connect (with `autoConnect: false`; otherwise it may from the start). It
   * connects, asking `getToken` first, as soon as it has a site to subscribe to.
   */
  connect() {
    this.#permitted = true;
    this.#start();
  }

  #log(event, detail) {
    const { logger, debug } = this.#options;
    if (logger) logger(event, detail);
    else if (debug) console.debug('datastream:', event, detail);
  }

  /** A token from the app's `getToken()`: a string, or null for none. */
  async #getToken() {
    const token = await this.#options.getToken();
    if (token != null && typeof token !== 'string') throw new TypeError('getToken() must resolve to a string or null');
    return token || null;
  }

  /** `getToken()` failed: reported (the attempt waiting for it is retried). */
  #tokenFailed(error) {
    this.#emitError(new DatastreamError('token', `getToken() failed: ${error?.message ?? error}`, { cause: error }));
  }

  /** Creates the WebAssembly client once the module has loaded and the app lets it connect. */
  #start() {
    if (this.#closed || this.#core || !this.#loaded || !this.#permitted) return;
    try {
      this.#core = new DatastreamCore({ ...this.#options, cache: this.#cache, keys: this.#keys, replays: this.#replays, texts: this.#texts });
    } catch (error) {
      this.#fail(error);
      return;
    }
    const core = this.#core;
    const options = this.#options;
    this.#log('connect', { url: options.url, protocol: options.protocol ?? 'v2', sites: options.sites });
    core.hook('error', (e) => this.#serverError(e));
    core.hook('subscribed', (info) => this.#subscribed(info));
    core.hook('state', (state) => {
      this.#log('state', state);
      if (state.type !== 'connected') for (const entry of this.#sites.values()) entry.info = null;
      if (state.type === 'closed') this.#settleAll(state);
    });
    if (options.getToken) {
      // Before each connection attempt (and at once after a close over the token): the attempt
      // waits for the answer; a failure fails the attempt, retried after the backoff delay. And
      // when the relay's word on the token's expiry says it is time (reason 'expiring'): the
      // answer refreshes the live connection in-band.
      core.hook('token', ({ code, reason }) => {
        this.#log('token', { needed: true, code, reason });
        this.#getToken().then(
          (token) => {
            if (this.#core) this.#core.setToken(token ?? '');
          },
          (error) => {
            this.#tokenFailed(error);
            this.#core?.setToken();
          },
        );
      });
    }
    core.start();
    const pending = this.#pending;
    this.#pending = [];
    for (const [run] of pending) {
      try {
        run(core);
      } catch (error) {
        // Nobody is left to catch it synchronously: surface it like an uncaught error.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  /** Ends a client that never started: the module failed to load, or was closed before. */
  #fail(error, code = 0) {
    this.#closed = true;
    live.delete(this);
    const reason = error instanceof Error ? error.message : String(error);
    this.#final = { type: 'closed', code, reason, error };
    this.#log('state', { type: 'closed', code, reason });
    const pending = this.#pending;
    this.#pending = [];
    for (const [, fail] of pending) fail?.(error);
    this.#settleAll(this.#final);
  }

  /** Runs `run(core)` now, or once the module has loaded. */
  #call(run, fail) {
    if (this.#core) return run(this.#core);
    if (this.#closed) {
      fail?.(this.#final?.error ?? new DatastreamError('closed', 'datastream client is closed', { code: 1000 }));
      return undefined;
    }
    this.#pending.push([run, fail]);
    return undefined;
  }

  /** Registers through `register(core) → id`; returns the function that removes it. */
  #register(register) {
    let id = null;
    let removed = false;
    this.#call((core) => {
      if (!removed) id = register(core);
    });
    return () => {
      if (removed) return;
      removed = true;
      if (id !== null && this.#core) this.#core.offId(id);
    };
  }

  // ----- errors -----

  #emitError(error) {
    for (const listener of this.#errorListeners) {
      try {
        listener(error);
      } catch (thrown) {
        console.error('datastream: an error listener threw', thrown);
      }
    }
  }

  /** An error the client reported, as a `DatastreamError`; a refused subscription ends its handles. */
  #serverError({ kind, message, code, site, topic, error }) {
    const e = new DatastreamError(kind, message, { code, site, topic, cause: error, error });
    if (kind === 'server' && site && this.#sites.has(site)) {
      this.#log('refused', { site, code });
      for (const listener of this.#refusalListeners) listener(e);
      const entry = this.#sites.get(site);
      this.#sites.delete(site);
      for (const handle of entry.handles) handle._end('refused', e);
      this.#cache.delete(site);
      this.#texts.delete(site);
      this.#replays.delete(site);
      this.#core?.unsubscribe(site);
    }
    this.#emitError(e);
  }

  // ----- subscriptions -----

  #site(site) {
    let entry = this.#sites.get(site);
    if (!entry) this.#sites.set(site, (entry = { held: 0, handles: new Set(), info: null }));
    return entry;
  }

  #subscribed(info) {
    const entry = this.#sites.get(info.site);
    if (!entry) return;
    const { site: _site, ...result } = info;
    entry.info = result;
    this.#log('subscribed', info);
    // A replay after a handle asked for a rewind is that rewind (every subscribe of the site
    // carries it until it is confirmed): what it brings that the client delivered before goes
    // again to the listeners of such handles (what is new, to every listener as usual).
    const to = [];
    for (const handle of entry.handles) {
      if (result.replayed && handle._replay) {
        to.push(...handle._replay);
        handle._replay = null;
      }
      handle._confirm(result);
    }
    if (to.length) this.#replays.set(info.site, { left: result.replayed, to });
  }

  /** The client closed: pending handles reject. */
  #settleAll(state) {
    const e =
      state.error ??
      new DatastreamError('closed', `datastream client closed (${state.code}): ${state.reason}`, { code: state.code, state });
    for (const entry of this.#sites.values()) for (const handle of entry.handles) handle._end('closed', e);
  }

  /**
   * Subscribes to `site` and returns a handle on the subscription: `ready` resolves once the
   * relay confirmed it, `on()` registers listeners of that site, `unsubscribe()` releases it.
   * The relay's subscription ends when the last holder of the site lets go.
   * `options.rewind` first replays up to that many recent publications.
   */
  subscribe(site, options) {
    check('site', site);
    const rewind = options?.rewind;
    const entry = this.#site(site);
    const first = entry.held === 0;
    entry.held += 1;
    const handle = new Subscription(
      site,
      (h) => this.#release(site, entry, h),
      (topic, callback, latest) => this.#listen(topic, callback, site, latest),
    );
    if (rewind !== undefined) handle._replay = [];
    entry.handles.add(handle);
    if (this.#closed) handle._end('closed', this.#final?.error ?? new DatastreamError('closed', 'datastream client is closed', { code: 1000 }));
    else if (entry.info) handle._confirm(entry.info);
    if (first || rewind !== undefined) {
      this.#log('subscribe', { site, rewind });
      this.#call((core) => core.subscribe(site, rewind ?? undefined));
    }
    return handle;
  }

  #release(site, entry, handle) {
    entry.handles.delete(handle);
    const replay = this.#replays.get(site);
    if (replay) replay.to = replay.to.filter((e) => e[2] !== handle);
    if (this.#sites.get(site) === entry && --entry.held === 0) this.unsubscribe(site);
  }

  /**
   * Ends the subscription to `site` whoever holds it; its handles end too. The last site's
   * socket closes after a linger (5 s) unless a site comes meanwhile.
   */
  unsubscribe(site) {
    check('site', site);
    const entry = this.#sites.get(site);
    this.#sites.delete(site);
    this.#replays.delete(site);
    for (const handle of entry?.handles ?? []) handle._end('unsubscribed');
    this.#log('unsubscribe', { site });
    this.#call((core) => {
      this.#cache.delete(site);
      this.#texts.delete(site);
      core.unsubscribe(site);
    });
  }

  // ----- listeners -----

  /**
   * Calls `callback(data, meta)` for every publication on `topic` (`'*'`: every topic), of
   * `options.site` only if given (one site or an array), which the listener then holds as a
   * subscription handle would, until it is removed. With `options.latest`, first with the
   * latest publication of each topic (of each kind, for a topic kept per kind of state),
   * `meta.latest` true, oldest first: what the client holds at once, the rest from the relay.
   * Returns a function that removes it.
   */
  on(topic, callback, options) {
    checkListener(topic, callback);
    const site = options?.site;
    const latest = options?.latest === true;
    const sites = site == null ? null : [].concat(site).map((s) => check('site', s));
    const offs = sites
      ? sites.map((s) => {
          const sub = this.subscribe(s);
          sub.on(topic, callback, { latest });
          return () => sub.unsubscribe();
        })
      : [this.#listen(topic, callback, undefined, latest)];
    const entry = [
      topic,
      callback,
      () => {
        this.#listeners.delete(entry);
        offs.forEach((off) => off());
      },
    ];
    this.#listeners.add(entry);
    return entry[2];
  }

  /** Registers a listener (of `site` only, if given); returns the function that removes it. */
  #listen(topic, callback, site, latest) {
    checkListener(topic, callback);
    return this.#register((core) => {
      // A latest listener gets what the client holds at once, oldest first. The relay is asked
      // unless that covers it: a topic of a site, held, and not kept per kind (the client cannot
      // know it holds every kind; the relay's answer brings those it lacks, the others are
      // dropped as held).
      const held = [];
      if (latest) {
        for (const [s, slots] of this.#cache) {
          if (site == null || s === site) for (const f of slots.values()) if (topic === '*' || f.topic === topic) held.push(f);
        }
        held.sort((a, b) => (a.site === b.site && a.epoch === b.epoch ? a.offset - b.offset : 0));
      }
      const covered = site != null && topic !== '*' && held.length && !this.#keys.has(topic);
      const id = core.on(topic, callback, site, latest ? (covered ? 1 : 2) : 0);
      for (const { site: s, topic: t, epoch, offset, data } of held) {
        try {
          callback(data, epoch === undefined ? { site: s, topic: t, latest } : { site: s, topic: t, epoch, offset, latest });
        } catch (error) {
          this.#emitError(new DatastreamError('callback', `a callback for topic ${t} of site ${s} threw`, { site: s, topic: t, cause: error, error }));
        }
      }
      return id;
    });
  }

  /**
   * The data of the last publication received of `site` on `topic` (live, replayed or latest),
   * or undefined: up to 64 per site are held while the site is subscribed. For a topic kept per
   * kind of state (`sitestatus`, by `statusType`), `key` names the kind; without it, the most
   * recent of every kind.
   */
  latest(site, topic, key) {
    const slots = this.#cache.get(site);
    if (key !== undefined) return slots?.get(slotOf(topic, key))?.data;
    let last;
    // Least recently updated first: the newest by offset, unless a later one is of another epoch.
    for (const f of slots?.values() ?? []) if (f.topic === topic && (!last || f.epoch !== last.epoch || !(f.offset <= last.offset))) last = f;
    return last?.data;
  }

  /** Removes every registration of `callback` for `topic`, releasing the sites they held. */
  off(topic, callback) {
    for (const [t, c, off] of this.#listeners) if (t === topic && c === callback) off();
  }

  /** Calls `callback(state)` on every state change. Returns a function that removes it. */
  onState(callback) {
    return this.#hook('state', callback);
  }

  /** Calls `callback(error)`, a `DatastreamError`, when a callback throws or the server refuses a request. */
  onError(callback) {
    if (typeof callback !== 'function') throw new TypeError('callback must be a function');
    this.#errorListeners.add(callback);
    return () => this.#errorListeners.delete(callback);
  }

  /**
   * Calls `callback({site, reason})` when what a site published while the client was
   * disconnected could not be recovered: refetch that site's current state.
   */
  onRecoveryFailed(callback) {
    return this.#hook('recoveryfailed', callback);
  }

  #hook(kind, callback) {
    if (typeof callback !== 'function') throw new TypeError('callback must be a function');
    return this.#register((core) => core.hook(kind, callback));
  }

  /** The current state: `{type: 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed', …}`. */
  get state() {
    if (this.#final) {
      const { error: _error, ...state } = this.#final;
      return state;
    }
    return this.#core ? this.#core.state() : { type: this.#permitted && this.#sites.size ? 'connecting' : 'idle' };
  }

  /**
   * Resolves once connected with every subscription confirmed (at once if already so); rejects
   * if the client closes first, or if the relay refuses a subscription meanwhile.
   */
  ready() {
    return new Promise((resolve, reject) => {
      const refused = (e) => {
        this.#refusalListeners.delete(refused);
        reject(e);
      };
      const settle = (f, v) => {
        this.#refusalListeners.delete(refused);
        f(v);
      };
      this.#refusalListeners.add(refused);
      const closedError = (state) =>
        new DatastreamError('closed', `datastream client closed (${state.code}): ${state.reason}`, { code: state.code, state });
      this.#call(
        (core) => {
          if (core.isReady()) return settle(resolve);
          const state = core.state();
          if (state.type === 'closed') return settle(reject, closedError(state));
          const ids = [];
          const done = () => ids.forEach((id) => core.offId(id));
          ids.push(
            core.hook('ready', () => {
              done();
              settle(resolve);
            }),
            core.hook('state', (s) => {
              if (s.type === 'closed') {
                done();
                settle(reject, closedError(s));
              }
            }),
          );
        },
        (error) => settle(reject, error),
      );
    });
  }

  /** Closes the client for good. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    live.delete(this);
    // Nothing more arrives: the bases of deltas go now, whoever still holds the client.
    this.#texts.clear();
    const core = this.#core;
    if (!core) {
      this.#fail(new DatastreamError('closed', 'closed by the client', { code: 1000 }), 1000);
      return;
    }
    core.close();
    this.#final = core.state();
    this.#core = null;
    this.#settleAll(this.#final);
    // Freed once the current task (possibly one of its own callbacks) and its microtasks, where
    // the client may still have work queued, are done.
    setTimeout(() => core.free());
  }
}

/** One holder's share of a site's subscription; `Datastream.subscribe` makes them. */
export class Subscription {
  #listen;
  #release;
  #offs = [];
  #resolve;
  #reject;

  constructor(site, release, listen) {
    this.#listen = listen;
    this.#release = release;
    /** The site. */
    this.site = site;
    /** `'subscribing'`, `'subscribed'`, then `'refused'`, `'unsubscribed'` or `'closed'` for good. */
    this.state = 'subscribing';
    /** Resolves with `{ epoch, offset, replayed, recovered }` once the relay confirmed it. */
    this.ready = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // A rejection nobody awaits is not an error of the app's.
    this.ready.catch(() => {});
  }

  /**
   * Listens to `topic` (`'*'`: every topic) of this site until `unsubscribe()`; with
   * `options.latest`, first to the latest publication of each topic.
   */
  on(topic, callback, options) {
    // Ended (released, refused, or the client closed): nothing would reach it.
    if (this.#release === null) return () => {};
    const off = this.#listen(topic, callback, options?.latest === true);
    this.#offs.push(off);
    // Asked for a rewind not yet confirmed: this listener gets its whole replay.
    this._replay?.push([topic, callback, this]);
    return off;
  }

  /** Releases this handle; the relay's subscription ends with the site's last handle. */
  unsubscribe() {
    const release = this.#release;
    this._end('unsubscribed');
    release?.(this);
  }

  _confirm(info) {
    if (this.#release === null) return;
    this.state = 'subscribed';
    this.#resolve(info);
  }

  _end(state, error) {
    if (this.#release === null) return;
    this.#release = null;
    this.state = state;
    this.#offs.forEach((off) => off());
    this.#reject(error ?? new DatastreamError('closed', `the subscription to ${this.site} has ended`));
  }
}
