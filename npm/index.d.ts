/** Options of `new Datastream(options)`. Delays are in milliseconds. */
export interface DatastreamOptions {
  /** The relay's stage endpoint, e.g. `wss://datastream.photonranch.org/dev`. */
  url: string;
  /** Sites subscribed from the start, held by the client itself (until `unsubscribe(site)`).
   * Without a site (here, from `subscribe` or from `on` with a site) the client opens no socket
   * and asks for no token. */
  sites?: readonly string[];
  /** `'v2'` (default): every site over one socket, with recovery. `'legacy'`: the original
   * service's protocol, one socket per site, no recovery. */
  protocol?: 'v2' | 'legacy';
  /** Smallest reconnect delay and base of the exponential growth. Default 500. */
  minReconnectDelay?: number;
  /** Largest reconnect delay. Default 20000. */
  maxReconnectDelay?: number;
  /** Silence tolerated beyond the server's ping interval before the connection is declared dead.
   * Default 10000. */
  heartbeatGrace?: number;
  /** Longest wait for a socket to open and the server to accept it. Default 10000. */
  connectTimeout?: number;
  /** A JWT for a relay that requires one; never refreshed (prefer `getToken`). */
  token?: string;
  /** Returns a (fresh) JWT, or `null`/`undefined`/`''` to connect without one (an anonymous
   * visitor): called before each connection attempt, shortly before the token's `exp`
   * (refreshed in-band), and at once when the relay closes over its token (3002 expired; 3501
   * refused, asked once more before giving up). A rejection is reported (`onError`, kind
   * `'token'`) and fails that attempt only: it is retried after the reconnect delay. E.g.
   * `() => auth0.getTokenSilently().catch((e) => (e.error === 'login_required' ? null : Promise.reject(e)))`. */
  getToken?: () => Promise<string | null | undefined> | string | null | undefined;
  /** `false`: connect only once `connect()` is called (default `true`: as soon as there is a
   * site). */
  autoConnect?: boolean;
  /** The `WebSocket` constructor to use (e.g. in Node without a global one). */
  WebSocket?: new (url: string, protocols?: string | string[]) => unknown;
  /** Where to load the `.wasm` from, when not beside the bundle (see the README per toolchain). */
  wasmUrl?: string | URL;
  /** Logs connects, subscribes, recoveries, token refreshes and closes with `console.debug`. */
  debug?: boolean;
  /** Receives what `debug` would log instead. Tokens are never part of it. */
  logger?: (event: LogEvent, detail: Record<string, unknown>) => void;
  /** Topics whose latest value is kept per kind of state: topic → the top-level data field
   * telling the kinds apart, e.g. `{ sitestatus: 'statusType' }`. Default: what the relay
   * announces (v2); none in legacy mode. */
  latestKeys?: Record<string, string>;
  /** `false`: receive every publication in full. Default `true` (v2): when the relay offers
   * deltas, a publication may come as the difference from the previous one of its kind of state,
   * rebuilt here and checked before anything sees it (callbacks get the data as published); one
   * that cannot be rebuilt is treated as a gap and recovered. A device status comes in ~1/17 of
   * its size. */
  delta?: boolean;
}

/** What `debug` logs and `logger` receives. */
export type LogEvent = 'connect' | 'state' | 'subscribe' | 'subscribed' | 'unsubscribe' | 'refused' | 'token';

/** The connection state. */
export type State =
  /** No site to subscribe to, so no socket (before the first site; 5 s after the last one). */
  | { type: 'idle' }
  | { type: 'connecting' }
  | { type: 'connected' }
  /** Lost, or an attempt failed (`reason`, e.g. `heartbeat timeout`, `getToken() failed`);
   * attempt number `attempt` (1 for the first retry) after `delay` ms. */
  | { type: 'reconnecting'; attempt: number; delay: number; reason: string }
  /** Finished: `code` 1000 when closed by the app; a terminal server code (3500–3999,
   * 4500–4999) with its reason; 0 when the client could not start (invalid options, the
   * WebAssembly module failed to load or is of another version). */
  | { type: 'closed'; code: number; reason: string };

export type StateType = State['type'];

/** Where a publication comes from. `epoch` and `offset` are absent in legacy mode. */
export interface Meta {
  site: string;
  topic: string;
  /** Identifies one unbroken history of the site. */
  epoch?: string;
  /** Position of the publication in the site's history (1, 2, 3…). */
  offset?: number;
  /** Present (`true`) on a listener's latest value: the topic's last publication (of one kind,
   * for a topic kept per kind of state) from before it listened (from the client's cache, or sent
   * by the relay), not a live one. */
  latest?: true;
}

/** Options of `on`. */
export interface OnOptions {
  /** Only this site's publications (or these sites'). */
  site?: string | readonly string[];
  /** First the latest publication of each topic (of each kind, for a topic kept per kind of
   * state such as `sitestatus`), oldest first, `meta.latest` true: at once if the client holds
   * it, else from the relay (v2); then live ones. Each value reaches the callback once. */
  latest?: boolean;
}

/** Where an error comes from. */
export type ErrorKind =
  /** A publication callback threw (`site`, `topic`, `cause`); the other callbacks still ran. */
  | 'callback'
  /** A state, ready or recovery listener threw (`cause`). */
  | 'listener'
  /** The server refused a request (`code`, e.g. `forbidden`, `too_many_subscriptions`,
   * `invalid_token`; `site` when it was a subscription). */
  | 'server'
  /** A frame from the server could not be read. */
  | 'frame'
  /** An invalid name, thrown synchronously (`code` `invalid_site` or `invalid_topic`). */
  | 'invalid'
  /** `getToken()` failed (`cause`): before a connection attempt (retried after the reconnect
   * delay) or when refreshing a token. */
  | 'token'
  /** The WebAssembly module is not of this package's version (`code`: its version). */
  | 'version'
  /** The client or the subscription ended (`code`: the close code, when the client closed). */
  | 'closed';

/** Every error the client throws, rejects with or reports to `onError`. */
export class DatastreamError extends Error {
  readonly name: 'DatastreamError';
  readonly kind: ErrorKind;
  /** The server's error code (`kind: 'server'`), `invalid_site`/`invalid_topic` (`'invalid'`),
   * or the close code (`'closed'`). */
  readonly code?: string | number;
  readonly site?: string;
  readonly topic?: string;
  /** What a callback or `getToken` threw. */
  readonly cause?: unknown;
  /** The final state (`kind: 'closed'`). */
  readonly state?: State;
}

/** What `onRecoveryFailed` listeners receive: refetch that site's current state. */
export interface RecoveryFailure {
  site: string;
  /** `epoch_changed`: the relay's history restarted; `history_trimmed`: the gap is older than
   * the history it keeps. */
  reason: 'epoch_changed' | 'history_trimmed';
}

/** What a subscription's `ready` resolves with. In legacy mode only `replayed` (0). */
export interface Subscribed {
  /** The site's history's epoch. */
  epoch?: string;
  /** The site's latest offset when the subscription took effect: publications after it follow. */
  offset?: number;
  /** How many publications (rewound or recovered) are replayed before live ones. */
  replayed: number;
  /** Present after a reconnect: whether the gap was recovered exactly. */
  recovered?: boolean;
}

export type SubscriptionState = 'subscribing' | 'subscribed' | 'refused' | 'unsubscribed' | 'closed';

/** One holder's share of a site's subscription; the relay's subscription ends with the last. */
export class Subscription {
  private constructor();
  readonly site: string;
  readonly state: SubscriptionState;
  /** Resolves once the relay confirmed the subscription; rejects with a `DatastreamError`
   * (`kind: 'server'`, `code` e.g. `forbidden`, `too_many_subscriptions`) when it refused it, or
   * (`kind: 'closed'`) when it ended first. */
  readonly ready: Promise<Subscribed>;
  /** Listens to `topic` (`'*'`: every topic) of this site until `unsubscribe()`; with `latest`,
   * first to the latest publication of each topic. Does nothing on a handle that has ended. */
  on(topic: string, callback: Callback, options?: { latest?: boolean }): Unsubscribe;
  /** Releases this handle and its listeners. */
  unsubscribe(): void;
}

export type Callback = (data: any, meta: Meta) => void;
export type Unsubscribe = () => void;

/**
 * Loads and compiles the WebAssembly module (once). `new Datastream()` calls it; await it first
 * to load the module from elsewhere. Rejects with a `DatastreamError` of kind `version` when the
 * module is not of this package's version.
 */
export function load(source?: string | URL | Response | BufferSource | WebAssembly.Module): Promise<unknown>;

export class Datastream {
  constructor(options: DatastreamOptions);
  /** Calls `callback(data, meta)` for each publication on `topic` (`'*'`: every topic), of
   * `site` only if given (one or several), which it then holds subscribed, as a handle would,
   * until removed; with `latest`, first with each topic's latest. */
  on(topic: string, callback: Callback, options?: OnOptions): Unsubscribe;
  /** The data of the last publication received of `site` on `topic` (live, replayed or latest),
   * or `undefined`: up to 64 per site, held while the site is subscribed. For a topic kept per
   * kind of state (`sitestatus`, by `statusType`), `key` names the kind (e.g. `'enclosure'`);
   * without it, the most recent of any kind. */
  latest<T = any>(site: string, topic: string, key?: string): T | undefined;
  /** Removes every registration of `callback` for `topic` made by `on` (releasing the sites
   * they held); a handle's listeners go with the handle. */
  off(topic: string, callback: Callback): void;
  onState(callback: (state: State) => void): Unsubscribe;
  onError(callback: (error: DatastreamError) => void): Unsubscribe;
  onRecoveryFailed(callback: (failure: RecoveryFailure) => void): Unsubscribe;
  /** Subscribes to `site` and returns a handle on it; `rewind` first replays up to that many of
   * its latest publications, to the handle's listeners even those the client had delivered
   * before. Throws a `DatastreamError` (`kind: 'invalid'`) for an invalid name. */
  subscribe(site: string, options?: { rewind?: number }): Subscription;
  /** Ends the subscription to `site`, whoever holds it. */
  unsubscribe(site: string): void;
  /** Lets a client created with `autoConnect: false` connect (as soon as it has a site). */
  connect(): void;
  readonly state: State;
  /** Resolves once connected with every subscription confirmed; rejects if the client closes
   * first or the relay refuses a subscription meanwhile. */
  ready(): Promise<void>;
  /** Closes the client for good. */
  close(): void;
}
