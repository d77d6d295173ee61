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
   *   useDatastream(topic, { site, client, initial, latest, rewind })
   *   useDatastream(topic, (data, meta) => {…}, { site, client, latest, rewind })
   *
   * `site` is a site code, an array of them, a ref or a getter (the subscription follows it, e.g.
   * the route's site); given but empty (`''`, `null`, `undefined`): no site, nothing received;
   * absent: every subscribed site, subscribing none. Each site is held through a subscription
   * handle while used and released on unmount or when `site` changes; then the ref goes back to
   * `initial` at once, and only the new sites' publications reach it and the callback.
   * With `latest`, the ref starts from the topic's latest publication: at once when the client
   * holds it (before the component first renders), else as soon as the relay sends it. With
   * `rewind: n`, each subscription first replays the site's recent publications (up to n, as
   * `subscribe(site, { rewind })`). The ref never goes back to an older publication of its site.
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
    const on = { latest: options.latest === true };
    const rewind = options.rewind;
    const given = 'site' in options;
    let held = [];
    // The sites listened to (null: every site) and the position of the ref's value.
    let current = null;
    let last = null;
    const release = () => {
      held.forEach((release) => release());
      held = [];
    };
    const attach = (site) => {
      const sites = given ? [].concat(site == null ? [] : site).filter((s, i, all) => s && all.indexOf(s) === i) : null;
      if (held.length && sites && current && sites.join() === current.join()) return;
      release();
      // The previous sites' value goes at once, before their release could let anything through.
      if (current) latest.value = options.initial;
      last = null;
      current = sites;
      // The latest values handed over (from the cache or the relay) that a replay may bring again.
      const seen = new Set();
      const deliver = (data, meta) => {
        if (current !== sites || (sites && sites.indexOf(meta.site) < 0)) return;
        const key = meta.site + ' ' + meta.epoch + ' ' + meta.offset;
        if (meta.latest) seen.add(key);
        else if (seen.delete(key)) return;
        if (!last || last.site !== meta.site || last.epoch !== meta.epoch || !(meta.offset < last.offset)) {
          last = meta;
          latest.value = data;
        }
        if (callback) callback(data, meta);
      };
      if (!sites) {
        held.push(client.on(topic, deliver, on));
        return;
      }
      for (const s of sites) {
        const sub = client.subscribe(s, rewind === undefined ? undefined : { rewind });
        sub.on(topic, deliver, on);
        held.push(() => sub.unsubscribe());
      }
    };
    const site = options.site;
    let stopWatch = null;
    // Synchronous: nothing of the old site can arrive between the change and the release.
    if (isRef(site) || typeof site === 'function') stopWatch = watch(site, attach, { immediate: true, flush: 'sync' });
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
