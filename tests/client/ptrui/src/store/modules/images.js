export default {
  namespaced: true,
  state: { latest: null },
  mutations: {
    setLatest(state, image) {
      state.latest = image;
    },
  },
  actions: {
    update_new_image({ commit }, image) {
      commit('setLatest', image);
    },
  },
};
