// The dashboard's shell: the hash router (#/, #/service/<id>, #/deploy, #/clusters, #/users,
// #/organizations, #/login), the header, and the one event stream every view listens to.
// A view is render(main, params, ctx) → {onChange(item|null), dispose()}: onChange gets each
// change from the feed (null after a gap: list everything again).

import { session, claims, isAdmin, logout, whenLoggedOut } from './api.js';
import { Feed } from './feed.js';
import { fill, h } from './dom.js';
import * as loginView from './views/login.js';
import * as appsView from './views/apps.js';
import * as serviceView from './views/service.js';
import * as deployView from './views/deploy.js';
import * as clustersView from './views/clusters.js';
import * as usersView from './views/users.js';
import * as orgsView from './views/organizations.js';

const routes = [
  { re: /^#\/login$/, nav: null, view: loginView, open: true },
  { re: /^#?\/?$/, nav: 'apps', view: appsView },
  { re: /^#\/service\/([^/?]+)$/, nav: 'apps', view: serviceView },
  { re: /^#\/deploy$/, nav: 'deploy', view: deployView },
  { re: /^#\/clusters$/, nav: 'clusters', view: clustersView },
  { re: /^#\/users$/, nav: 'users', view: usersView },
  { re: /^#\/organizations$/, nav: 'organizations', view: orgsView },
];

/** The latest changes this page has seen on the event stream, newest first. */
const activity = [];
const ACTIVITY_MAX = 100;

let current = null;
const main = document.getElementById('view');

const feed = new Feed({
  onItem(item) {
    if (item.kind === 'service' && item.name) names.set(item.object_id, item.name);
    activity.unshift({ ...item, seenAt: new Date() });
    if (activity.length > ACTIVITY_MAX) activity.pop();
    current?.onChange?.(item);
  },
  onGap() {
    current?.onChange?.(null);
  },
  onState(state) {
    document.getElementById('live').dataset.state = state;
  },
});

/** Names of services by id (for the activity list): from the feed and from the views. */
const names = new Map();

const ctx = {
  activity,
  names,
  go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  /** f, called at most once per `ms` however many changes arrive (trailing call). */
  debounce(f, ms = 150) {
    let t = null;
    return (...args) => {
      clearTimeout(t);
      t = setTimeout(() => f(...args), ms);
    };
  },
};

function header() {
  const top = document.getElementById('top');
  const loggedIn = !!session();
  top.hidden = !loggedIn;
  if (!loggedIn) return;
  const c = claims();
  fill(document.getElementById('user'), c?.sub || session().username, isAdmin() ? h('span', { class: 'muted' }, ' (admin)') : null);
  for (const a of document.querySelectorAll('#nav [data-admin]')) a.hidden = !isAdmin();
}

function route() {
  const hash = location.hash || '#/';
  const r = routes.find(x => x.re.test(hash)) || routes[1];
  if (!r.open && !session()) {
    location.hash = '#/login';
    return;
  }
  if (session()) feed.start();
  header();
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.nav === r.nav);
  try {
    current?.dispose?.();
  } catch (e) {
    console.warn(e);
  }
  current = null;
  fill(main);
  const params = (hash.match(r.re) || []).slice(1).map(decodeURIComponent);
  current = r.view.render(main, params, ctx) || null;
}

whenLoggedOut(() => {
  feed.stop();
  activity.length = 0;
  ctx.go('#/login');
});

document.getElementById('logout').addEventListener('click', () => logout());
window.addEventListener('hashchange', route);
route();
