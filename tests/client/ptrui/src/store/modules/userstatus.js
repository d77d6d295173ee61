export default {
  namespaced: true,
  state: { logs: [] },
  mutations: {
    add_log(state, log) {
      state.logs.push(log);
    },
  },
};
