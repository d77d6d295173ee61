import Vue from 'vue';
import Vuex from 'vuex';
import site_config from './modules/site_config';
import sitestatus from './modules/sitestatus';
import userstatus from './modules/userstatus';
import images from './modules/images';
import { datastreamPlugin } from './datastream';

Vue.use(Vuex);

export default new Vuex.Store({
  modules: { site_config, sitestatus, userstatus, images },
  plugins: [datastreamPlugin],
});
