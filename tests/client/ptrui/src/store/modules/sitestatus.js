export default {
  namespaced: true,
  state: { weather: null, enclosure: null, device: null, latest_weather_timestamp_ms: 0, latest_enclosure_timestamp_ms: 0 },
  mutations: {
    new_weather_status(state, status) {
      state.weather = status;
      state.latest_weather_timestamp_ms = status.server_timestamp_ms;
    },
    new_enclosure_status(state, status) {
      state.enclosure = status;
      state.latest_enclosure_timestamp_ms = status.server_timestamp_ms;
    },
    new_device_status(state, status) {
      state.device = status;
    },
  },
};
