// The few things the driver and convert.rs ask of the browser in JavaScript rather than through
// web-sys: each is one call across the boundary instead of several, and smaller on both sides.
// npm/build.sh leaves these comments out of the package.

/**
 * Calls `event(true)` when the browser goes back online and `event(false)` when the page becomes
 * visible again; returns the function that removes both listeners. In a worker (no `window`)
 * there is nothing to listen to: the client relies on its heartbeat alone.
 */
export function listen(event) {
  const w = typeof window === 'object' ? window : undefined;
  const d = w && w.document;
  const online = () => event(true);
  const visible = () => d.visibilityState === 'visible' && event(false);
  if (w) w.addEventListener('online', online);
  if (d) d.addEventListener('visibilitychange', visible);
  return () => {
    if (w) w.removeEventListener('online', online);
    if (d) d.removeEventListener('visibilitychange', visible);
  };
}

/** `{k1: a, k2: b, …}` for the space-separated `keys`, in that order: the objects of states and
 * events (convert.rs), built here in one call rather than field by field across the boundary. */
export function shape(keys, ...values) {
  const o = {};
  keys.split(' ').forEach((k, i) => (o[k] = values[i]));
  return o;
}
