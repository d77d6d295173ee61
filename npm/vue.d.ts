import type { Datastream, Meta } from './index.js';

/** A shallow ref to the latest data. */
export interface LatestRef<T> {
  readonly value: T;
}

/** A site, several, or something that yields them (a ref or a getter, e.g. the route's site). */
export type SiteSource = string | readonly string[] | null | undefined | { readonly value: string | readonly string[] | null | undefined } | (() => string | readonly string[] | null | undefined);

export interface UseDatastreamOptions<T> {
  /** The sites to listen to, held while used; given but empty (`''`, `null`, `undefined`): none,
   * the ref stays at `initial`; absent: every site the client is subscribed to. When it
   * changes, the ref goes back to `initial` at once and only the new sites' values reach it. */
  site?: SiteSource;
  /** The client; else the one provided by an ancestor, else the one `setDatastream` set. */
  client?: Datastream;
  /** The value until the first publication. */
  initial?: T;
  /** Start from the topic's latest publication (`meta.latest` true): at once when the client
   * holds it, else as soon as the relay sends it. */
  latest?: boolean;
  /** Each subscription first replays up to this many of the site's recent publications (of the
   * topics the client follows on it; those of `topic` reach the ref and the callback), oldest
   * first, as `subscribe(site, { rewind })`. */
  rewind?: number;
}

/** Makes `client` the one `useDatastream` uses when none is provided or passed. */
export function setDatastream(client: Datastream | null): void;
/** Provides `client` to the calling component's descendants (call in `setup`). */
export function provideDatastream(client: Datastream): void;
/** Releases what `useDatastream` returned `latest` for: done on unmount in a component; call it
 * when `useDatastream` was used outside one. */
export function stopDatastream(latest: LatestRef<unknown>): void;
/** Listens to `topic` while the calling component is mounted; returns the latest data. */
export function useDatastream<T = any>(topic: string, options?: UseDatastreamOptions<T>): LatestRef<T | undefined>;
export function useDatastream<T = any>(
  topic: string,
  callback: (data: T, meta: Meta) => void,
  options?: UseDatastreamOptions<T>,
): LatestRef<T | undefined>;
