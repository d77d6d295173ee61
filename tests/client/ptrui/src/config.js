// What a deployment would configure; here from the test page's query string.
const q = new URLSearchParams(location.search);

export const relayUrl = q.get('relay');
export const control = 'http://127.0.0.1:' + q.get('control');
export const authMode = q.get('auth') || 'anonymous';
/** Prefixes the site codes, so each browser's run has sites of its own. */
export const prefix = q.get('prefix') || '';
