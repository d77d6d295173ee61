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

/** `{k1: a, k2: b, …}` for the space-separated `keys`, in that order, leaving out keys whose value
 * is undefined: the objects of states and events (convert.rs), built here in one call rather
 * than field by field across the boundary. */
export function shape(keys, ...values) {
  const o = {};
  keys.split(' ').forEach((k, i) => values[i] !== undefined && (o[k] = values[i]));
  return o;
}

/**
 * A WebSocket to `url` asking for `protocols`, made with `ctor` (the app's, e.g. in Node) or the
 * global one; its open and close events go to `onOpen()` and `onClose(code, reason)`. Throws
 * when the URL is refused outright (socket.rs).
 */
export function open(ctor, url, protocols, onOpen, onClose) {
  const ws = new (ctor || WebSocket)(url, protocols);
  ws.onopen = onOpen;
  ws.onclose = (e) => onClose(e.code, e.reason);
  return ws;
}

/** Sends `text` if `ws` is open: a socket not yet or no longer open drops it. */
export function send(ws, text) {
  if (ws.readyState === 1) ws.send(text);
}

/**
 * Detaches `ws`'s handlers — `detach` stops its frames' dispatch, between the open and the close
 * handler — then, if it is connecting or open, closes it with `code` and `reason` (code 0:
 * without).
 */
export function close(ws, detach, code, reason) {
  ws.onopen = null;
  detach();
  ws.onclose = null;
  if (ws.readyState < 2) {
    if (code) ws.close(code, reason);
    else ws.close();
  }
}
