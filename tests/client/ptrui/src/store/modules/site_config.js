import { prefix } from '../../config';

// Each site and its weather station ("wema"): mrc and mrc2 share one.
const wemas = { mrc: 'mrcw', mrc2: 'mrcw', sro: 'srow' };
const global_config = {};
Object.keys(wemas).forEach((site) => {
  global_config[prefix + site] = { wema_name: prefix + wemas[site] };
});

export default {
  namespaced: true,
  state: { selected_site: '', global_config },
  getters: {
    wema_name: (state) => {
      const config = state.global_config[state.selected_site];
      return config ? config.wema_name : '';
    },
  },
  mutations: {
    setActiveSite(state, site) {
      state.selected_site = site;
    },
  },
};
