// @photonranch/datastream/vue: composables for Vue 3 and Vue 2.7 (both export the composition
// API from 'vue'). A component registers the topics it needs on setup and releases them when it
// unmounts, through subscription handles: a site stays subscribed while any component holds it.
//
// Written without syntax newer than ES2017 and without importing the main entry (the client is
// passed in or provided), so webpack 4 apps get it as is.

import { getCurrentInstance, inject, isRef, onBeforeUnmount, provide, shallowRef, watch } from 'vue';

const KEY = '@photonranch/datastream';
let shared = null;

/** Makes `client` the one `useDatastream` uses when none is provided or passed. */
export function setDatastream(client) {
  shared = client;
}

/** Provides `client` to the calling component's descendants (call in `setup`). */
export function provideDatastream(client) {
  provide(KEY, client);
}

/**
 * Listens to `topic` (`'*'`: every topic) while the calling component is mounted and returns a
 * shallow ref holding the latest publication's data (`options.initial` until the first).
 *
 *   useDatastream(topic, { site, client, initial })
 *   useDatastream(topic, (data, meta) => {…}, { site, client })
 *
 * `site` is a site code, an array of them, a ref or a getter (the subscription follows it, e.g.
 * the route's site), or absent (every subscribed site, subscribing none). Each site is held
 * through a subscription handle while used and released on unmount or when `site` changes.
 * Outside a component, call the returned ref's `stop()` to release.
 */
export function useDatastream(topic, callback, options) {
  if (typeof callback !== 'function') {
    options = callback;
    callback = null;
  }
  options = options || {};
  const inComponent = !!getCurrentInstance();
  const client = options.client || (inComponent ? inject(KEY, null) : null) || shared;
  if (!client) {
    throw new Error('useDatastream: no client; pass { client }, or call provideDatastream(client) or setDatastream(client)');
  }
  const latest = shallowRef(options.initial);
  let held = [];
  const release = () => {
    held.forEach((release) => release());
    held = [];
  };
  const deliver = (data, meta) => {
    latest.value = data;
    if (callback) callback(data, meta);
  };
  const attach = (site) => {
    release();
    const sites = site == null ? [] : [].concat(site);
    if (sites.length === 0) {
      held.push(client.on(topic, deliver));
      return;
    }
    for (const s of sites) {
      const sub = client.subscribe(s);
      sub.on(topic, deliver);
      held.push(() => sub.unsubscribe());
    }
  };
  const site = options.site;
  let stopWatch = null;
  if (isRef(site) || typeof site === 'function') stopWatch = watch(site, attach, { immediate: true });
  else attach(site);
  latest.stop = () => {
    if (stopWatch) stopWatch();
    release();
  };
  if (inComponent) onBeforeUnmount(latest.stop);
  return latest;
}
