// Stands in for ptr_ui's Auth0 client (@auth0/auth0-spa-js), which main.js installs after the
// store was created: getTokenSilently() resolves an access token, or rejects with
// `{ error: 'login_required' }` for a visitor who is not logged in.
import { authMode, control } from './config';

let client = null;
export const authCalls = { count: 0 };

export function installAuth(c) {
  client = c;
}

export function getAuth() {
  if (!client) throw new Error('Auth0 is not installed yet');
  return client;
}

const fail = (error, message) => Promise.reject(Object.assign(new Error(message), { error }));

/** `anonymous`: never logged in; `user`: a token granting `sites`; `flaky`: as `user`, after two failures. */
export function fakeAuth0(sites) {
  return {
    getTokenSilently() {
      authCalls.count += 1;
      if (authMode === 'anonymous') return fail('login_required', 'Login required');
      if (authMode === 'flaky' && authCalls.count <= 2) return fail('timeout', 'Timeout');
      return fetch(control + '/token', { method: 'POST', body: JSON.stringify({ sites, ttl_ms: 600000 }) })
        .then((r) => r.json())
        .then((r) => r.token);
    },
  };
}
