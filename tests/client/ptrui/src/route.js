// Stands in for vue-router's current route (ptr_ui: /site/:sitecode/…): reactive, read by
// components as this.$route.
import Vue from 'vue';

export const route = Vue.observable({ params: { sitecode: '' } });
Object.defineProperty(Vue.prototype, '$route', { get: () => route });
