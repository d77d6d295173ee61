// @photonranch/datastream: the browser client of the datastream relay.
//
// The client itself is WebAssembly (built from the `datastream-client` crate); this module only
// loads it and gives it a JavaScript-shaped API: `new` works before the module has loaded (calls
// are queued and run in order once it has), and listener ids become unsubscribe functions.

import init, { DatastreamCore } from './wasm/datastream.js';

let loading = null;

/**
 * Loads and compiles the WebAssembly module (once). Called by the first `new Datastream()`;
 * await it first to have invalid options and names throw synchronously, or to load the module
 * from somewhere else than next to this file (pass a URL, Response, BufferSource or Module).
 */
export function load(source) {
  if (!loading) {
    loading = init(source === undefined ? undefined : { module_or_path: source });
  }
  return loading;
}

/** Clients not yet closed; kept reachable so an app holding only callbacks keeps receiving. */
const live = new Set();

const CONNECTING = Object.freeze({ type: 'connecting' });

export class Datastream {
  #options;
  #core = null;
  /** Calls made before the module loaded: `[run(core), fail(error)]`. */
  #pending = [];
  #closed = false;
  /** The final state once closed by the app, or the error that kept the client from starting. */
  #final = null;

  /**
   * @param {import('./index.js').DatastreamOptions} options
   */
  constructor(options) {
    if (options === null || typeof options !== 'object' || typeof options.url !== 'string') {
      throw new TypeError('new Datastream(options): options.url must be a string');
    }
    this.#options = { ...options, sites: options.sites ? [...options.sites] : undefined };
    live.add(this);
    load().then(
      () => this.#start(),
      (error) => this.#fail(error),
    );
  }

  #start() {
    if (this.#closed) return;
    try {
      this.#core = new DatastreamCore(this.#options);
    } catch (error) {
      this.#fail(error);
      return;
    }
    const pending = this.#pending;
    this.#pending = [];
    for (const [run] of pending) {
      try {
        run(this.#core);
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
    const pending = this.#pending;
    this.#pending = [];
    for (const [, fail] of pending) fail?.(error);
  }

  /** Runs `run(core)` now, or once the module has loaded. */
  #call(run, fail) {
    if (this.#core) return run(this.#core);
    if (this.#closed) {
      fail?.(this.#final?.error ?? new Error('datastream client is closed'));
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

  /**
   * Calls `callback(data, meta)` for every publication on `topic` (`'*'`: every topic), of
   * `options.site` only if given. Returns a function that removes the listener.
   */
  on(topic, callback, options) {
    if (typeof callback !== 'function') throw new TypeError('on(topic, callback): callback must be a function');
    const site = options?.site;
    return this.#register((core) => core.on(String(topic), callback, site ?? undefined));
  }

  /** Removes every registration of `callback` for `topic`. */
  off(topic, callback) {
    this.#call((core) => core.off(String(topic), callback));
  }

  /** Calls `callback(state)` on every state change. Returns a function that removes it. */
  onState(callback) {
    return this.#hook('state', callback);
  }

  /** Calls `callback(error)` when a callback throws or the server refuses a request. */
  onError(callback) {
    return this.#hook('error', callback);
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

  /** Subscribes to `site`; `options.rewind` first replays up to that many recent publications. */
  subscribe(site, options) {
    const rewind = options?.rewind;
    this.#call((core) => core.subscribe(String(site), rewind ?? undefined));
  }

  /** Unsubscribes from `site`. */
  unsubscribe(site) {
    this.#call((core) => core.unsubscribe(String(site)));
  }

  /** The current state: `{type: 'connecting' | 'connected' | 'reconnecting' | 'closed', …}`. */
  get state() {
    if (this.#final) {
      const { error: _error, ...state } = this.#final;
      return state;
    }
    return this.#core ? this.#core.state() : CONNECTING;
  }

  /**
   * Resolves once connected with every subscription confirmed (at once if already so); rejects
   * if the client closes first.
   */
  ready() {
    return new Promise((resolve, reject) => {
      const closedError = (state) =>
        Object.assign(new Error(`datastream client closed (${state.code}): ${state.reason}`), { state });
      this.#call(
        (core) => {
          if (core.isReady()) return resolve();
          const state = core.state();
          if (state.type === 'closed') return reject(closedError(state));
          const ids = [];
          const done = () => ids.forEach((id) => core.offId(id));
          ids.push(
            core.hook('ready', () => {
              done();
              resolve();
            }),
            core.hook('state', (s) => {
              if (s.type === 'closed') {
                done();
                reject(closedError(s));
              }
            }),
          );
        },
        (error) => reject(error),
      );
    });
  }

  /** Closes the client for good. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    live.delete(this);
    const core = this.#core;
    if (!core) {
      this.#fail(new Error('closed by the client'), 1000);
      return;
    }
    core.close();
    this.#final = core.state();
    this.#core = null;
    // Freed once the current call stack (possibly inside one of its own callbacks) has unwound.
    queueMicrotask(() => core.free());
  }
}
