// @photonranch/datastream/vue/composition-api: the composables of ./vue.js for Vue 2.6 apps that
// use @vue/composition-api (installed with Vue.use(VueCompositionAPI) as usual).

import { getCurrentInstance, inject, isRef, onBeforeUnmount, provide, shallowRef, watch } from '@vue/composition-api';
import { composables } from './vue-composables.js';

export const { setDatastream, provideDatastream, useDatastream, stopDatastream } = composables({
  getCurrentInstance,
  inject,
  isRef,
  onBeforeUnmount,
  provide,
  shallowRef,
  watch,
});
