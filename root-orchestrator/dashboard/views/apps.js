// Applications and their services, with each service's instances counted by status; kept
// current by the event stream. Below: the latest changes the stream brought.

import { api, get } from '../api.js';
import { badge, card, fill, h, table, toast } from '../dom.js';

/** "2/3 running" for an instance list. */
export function instanceSummary(list) {
  const running = list.filter(i => i.status === 'RUNNING').length;
  return `${running}/${list.length} running`;
}

/** One line of the activity list; `names` maps service ids to names. */
export function activityLine(i, names) {
  const when = (i.seenAt || new Date()).toLocaleTimeString();
  const service = i.service_id || i.object_id;
  const what = i.kind === 'instance'
    ? `instance ${names.get(service) || service} #${i.instance}`
    : `${i.kind} ${i.name || names.get(i.object_id) || i.object_id}`;
  const status = i.status ? ` ${i.status}${i.detail ? `: ${i.detail}` : ''}` : i.action === 'put' ? ' changed' : '';
  return `${when}  ${i.action === 'delete' ? 'deleted ' : ''}${what}${status}`;
}

export function render(main, _params, ctx) {
  const list = h('div', { id: 'apps' }, h('p', { class: 'muted' }, 'Loading…'));
  const feedList = h('ul', { class: 'feed', id: 'activity' });
  main.append(
    h('div', { class: 'row' }, h('h1', null, 'Applications'),
      h('a', { href: '#/deploy', class: 'button primary', role: 'button' }, 'Deploy an SLA')),
    list,
    card('Recent changes', null, h('p', { class: 'muted small' }, 'Live from the root\'s event stream since this page was opened.'), feedList));

  let disposed = false;

  async function load() {
    try {
      const [apps, services] = await Promise.all([get('/api/applications'), get('/api/services')]);
      if (disposed) return;
      const byApp = new Map();
      for (const s of services) {
        ctx.names.set(s.microserviceID, s.job_name);
        if (!byApp.has(s.applicationID)) byApp.set(s.applicationID, []);
        byApp.get(s.applicationID).push(s);
      }
      showActivity();
      if (!apps.length) {
        fill(list, h('p', { class: 'empty card' }, 'No applications yet. ', h('a', { href: '#/deploy' }, 'Deploy an SLA'), ' to start one.'));
        return;
      }
      fill(list, apps.map(a => appCard(a, byApp.get(a.applicationID) || [])));
    } catch (e) {
      if (!disposed) fill(list, h('p', { class: 'error' }, e.message));
    }
  }

  function appCard(a, services) {
    const del = h('button', {
      class: 'danger',
      dataset: { action: 'delete-app' },
      onclick: async () => {
        if (!confirm(`Delete application ${a.application_name} with its ${services.length} service(s) and their instances?`)) return;
        del.disabled = true;
        try {
          await api('DELETE', `/api/application/${encodeURIComponent(a.applicationID)}`);
          toast(`Application ${a.application_name} deleted`);
          load();
        } catch (e) {
          toast(e.message, true);
          del.disabled = false;
        }
      },
    }, 'Delete');
    const title = h('div', null, h('h2', null, a.application_name),
      h('span', { class: 'muted small' }, ` ${a.application_namespace} · ${a.userId}${a.application_desc ? ` · ${a.application_desc}` : ''}`));
    const body = services.length
      ? table([
        { label: 'Service', cell: s => h('a', { href: `#/service/${s.microserviceID}` }, s.service_name) },
        { label: 'Status', cell: s => badge(s.status, s.status_detail) },
        { label: 'Instances', cell: s => h('span', { dataset: { count: s.instance_list.length } }, instanceSummary(s.instance_list)) },
        { label: 'Kind', cell: s => s.virtualization || '' },
        { label: 'Service IP', class: 'mono', cell: s => s.RR_ip },
        { label: 'Code', class: 'mono small', cell: s => s.image || s.code || '' },
      ], services, s => ({ dataset: { service: s.microserviceID, name: s.service_name } }))
      : h('p', { class: 'muted' }, 'No services.');
    const c = card(title, [del], body);
    c.dataset.app = a.applicationID;
    c.dataset.name = a.application_name;
    return c;
  }

  function showActivity() {
    fill(feedList, ctx.activity.length
      ? ctx.activity.slice(0, 30).map(i => h('li', {
        dataset: { kind: i.kind, action: i.action, status: i.status || '', service: i.service_id || i.object_id },
      }, activityLine(i, ctx.names)))
      : h('li', { class: 'muted' }, 'Nothing yet.'));
  }

  const reload = ctx.debounce(load);
  load();
  showActivity();
  return {
    onChange(item) {
      showActivity();
      if (!item || ['application', 'service', 'instance'].includes(item.kind)) reload();
    },
    dispose() {
      disposed = true;
    },
  };
}
