// The datastream wiring, as npm/README.md's guide for ptr_ui has it: one client for the app,
// created with the store (at import time, before Auth0 is installed: it asks for no token and
// opens no socket until there is a site), the site and its weather station following
// site_config, every message committed to the store.
import { Datastream } from '@photonranch/datastream';
import { setDatastream } from '@photonranch/datastream/vue';
import { getAuth } from '../auth';
import { relayUrl } from '../config';

export const ds = new Datastream({
  url: relayUrl,
  // Logged in: a token (with the `sites` claim); not logged in: none, for the public sites.
  getToken: () => getAuth().getTokenSilently().catch((e) => (e.error === 'login_required' ? null : Promise.reject(e))),
});
setDatastream(ds);

const statusMutations = {
  weather: 'sitestatus/new_weather_status',
  enclosure: 'sitestatus/new_enclosure_status',
  device: 'sitestatus/new_device_status',
};

export function datastreamPlugin(store) {
  // Each kind of status as it stands, then live ones.
  ds.on('sitestatus', (data) => statusMutations[data.statusType] && store.commit(statusMutations[data.statusType], data), {
    latest: true,
  });
  ds.on('userstatus', (data) => store.commit('userstatus/add_log', data));
  ds.on('imagedata', (data) => store.dispatch('images/update_new_image', data));

  let held = [];
  store.watch(
    (state, getters) => [state.site_config.selected_site, getters['site_config/wema_name']],
    (sites) => {
      const previous = held;
      held = sites.filter(Boolean).map((site) => ds.subscribe(site));
      previous.forEach((sub) => sub.unsubscribe());
    },
    { immediate: true },
  );
}
