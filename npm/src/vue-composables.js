// The composables, made from a composition API: Vue's own (Vue 3, Vue 2.7: ./vue.js) or
// @vue/composition-api's (Vue 2.6: ./vue-composition-api.js).
//
// Written without syntax newer than ES2017 and without importing the main entry (the client is
// passed in or provided), so webpack 4 apps get it as is.

const KEY = '@photonranch/datastream';

export function composables({ getCurrentInstance, inject, isRef, onBeforeUnmount, provide, shallowRef, watch }) {
  let shared = null;
  const stops = new WeakMap();

  /** Releases what `useDatastream` returned `latest` for (done on unmount in a component). */
  function stopDatastream(latest) {
    const stop = stops.get(latest);
    stops.delete(latest);
    if (stop) stop();
  }

  /** Makes `client` the one `useDatastream` uses when none is provided or passed. */
  function setDatastream(client) {
    shared = client;
  }

  /** Provides `client` to the calling component's descendants (call in `setup`). */
  function provideDatastream(client) {
    provide(KEY, client);
  }

  /**
   * Listens to `topic` (`'*'`: every topic) while the calling component is mounted and returns a
   * shallow ref holding the latest publication's data (`options.initial` until the first).
   *
   *   useDatastream(topic, { site, client, initial, latest })
   *   useDatastream(topic, (data, meta) => {…}, { site, client, latest })
   *
   * `site` is a site code, an array of them, a ref or a getter (the subscription follows it, e.g.
   * the route's site), or absent (every subscribed site, subscribing none). Each site is held
   * through a subscription handle while used and released on unmount or when `site` changes.
   * With `latest`, the ref starts from the topic's latest publication: at once when the client
   * holds it (before the component first renders), else as soon as the relay sends it.
   * Outside a component, release with `stopDatastream(ref)`.
   */
  function useDatastream(topic, callback, options) {
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
    const on = { latest: options.latest === true };
    const attach = (site) => {
      release();
      const sites = site == null ? [] : [].concat(site);
      if (sites.length === 0) {
        held.push(client.on(topic, deliver, on));
        return;
      }
      for (const s of sites) {
        const sub = client.subscribe(s);
        sub.on(topic, deliver, on);
        held.push(() => sub.unsubscribe());
      }
    };
    const site = options.site;
    let stopWatch = null;
    if (isRef(site) || typeof site === 'function') stopWatch = watch(site, attach, { immediate: true });
    else attach(site);
    const stop = () => {
      if (stopWatch) stopWatch();
      release();
    };
    // Not a property of the ref: @vue/composition-api's refs are sealed.
    stops.set(latest, stop);
    if (inComponent) onBeforeUnmount(stop);
    return latest;
  }

  return { setDatastream, provideDatastream, useDatastream, stopDatastream };
}
