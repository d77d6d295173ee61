/** Options of `new Datastream(options)`. Delays are in milliseconds. */
export interface DatastreamOptions {
  /** The relay's stage endpoint, e.g. `wss://datastream.photonranch.org/dev`. */
  url: string;
  /** Sites subscribed from the start. */
  sites?: string[];
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
}

/** The connection state. */
export type State =
  | { type: 'connecting' }
  | { type: 'connected' }
  /** Lost; attempt number `attempt` (1 for the first retry) after `delay` ms. */
  | { type: 'reconnecting'; attempt: number; delay: number }
  /** Finished: `code` 1000 when closed by the app; a terminal server code (3500–3999,
   * 4500–4999) with its reason; 0 when the client could not start (invalid options, the
   * WebAssembly module failed to load). */
  | { type: 'closed'; code: number; reason: string };

/** Where a publication comes from. `epoch` and `offset` are absent in legacy mode. */
export interface Meta {
  site: string;
  topic: string;
  /** Identifies one unbroken history of the site. */
  epoch?: string;
  /** Position of the publication in the site's history (1, 2, 3…). */
  offset?: number;
}

/** What `onError` listeners receive. */
export type DatastreamError =
  /** A publication callback threw; the other callbacks still ran. */
  | { kind: 'callback'; message: string; site: string; topic: string; error: unknown }
  /** A state, ready or recovery listener threw. */
  | { kind: 'listener'; message: string; error: unknown }
  /** The server refused a request (`code` e.g. `too_many_subscriptions`, `invalid_site`). */
  | { kind: 'server'; message: string; code: string; site?: string }
  /** A frame from the server could not be read. */
  | { kind: 'frame'; message: string };

/** What `onRecoveryFailed` listeners receive: refetch that site's current state. */
export interface RecoveryFailure {
  site: string;
  /** `epoch_changed`: the relay's history restarted; `history_trimmed`: the gap is older than
   * the history it keeps. */
  reason: 'epoch_changed' | 'history_trimmed';
}

export type Callback = (data: any, meta: Meta) => void;
export type Unsubscribe = () => void;

/**
 * Loads and compiles the WebAssembly module (once). `new Datastream()` calls it; await it first
 * to have invalid options and names throw synchronously, or to load the module from elsewhere.
 */
export function load(source?: string | URL | Request | Response | BufferSource | WebAssembly.Module): Promise<unknown>;

export class Datastream {
  constructor(options: DatastreamOptions);
  /** Calls `callback(data, meta)` for each publication on `topic` (`'*'`: every topic). */
  on(topic: string, callback: Callback, options?: { site?: string }): Unsubscribe;
  /** Removes every registration of `callback` for `topic`. */
  off(topic: string, callback: Callback): void;
  onState(callback: (state: State) => void): Unsubscribe;
  onError(callback: (error: DatastreamError) => void): Unsubscribe;
  onRecoveryFailed(callback: (failure: RecoveryFailure) => void): Unsubscribe;
  /** Subscribes to `site`; `rewind` first replays up to that many of its latest publications. */
  subscribe(site: string, options?: { rewind?: number }): void;
  unsubscribe(site: string): void;
  readonly state: State;
  /** Resolves once connected with every subscription confirmed; rejects if closed first. */
  ready(): Promise<void>;
  /** Closes the client for good. */
  close(): void;
}
