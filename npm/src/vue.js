// @photonranch/datastream/vue: composables for Vue 3 and Vue 2.7 (both export the composition
// API from 'vue'). A component registers the topics it needs on setup and releases them when it
// unmounts, through subscription handles: a site stays subscribed while any component holds it.
// Vue 2.6 with @vue/composition-api: @photonranch/datastream/vue/composition-api.

import { getCurrentInstance, inject, isRef, onBeforeUnmount, provide, shallowRef, watch } from 'vue';
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
