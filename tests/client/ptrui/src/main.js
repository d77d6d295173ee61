import Vue from 'vue';
import './route';
// The store, and with it the datastream client, is created at import time...
import store from './store';
import { ds } from './store/datastream';
import { authCalls, fakeAuth0, installAuth } from './auth';
import { prefix } from './config';
import App from './App.vue';
import { scenarios } from './scenarios';

window.__renders = [];
// ...and Auth0 installed afterwards, as in ptr_ui.
installAuth(fakeAuth0([prefix + 'mrc', prefix + 'mrc2', prefix + 'mrcw']));

new Vue({ store, render: (h) => h(App) }).$mount('#app');

window.__app = { store, ds, authCalls };
window.__run = (name) => scenarios[name]();
window.__loaded = true;
