// One service: what it is, its instances with live status (the event stream), scale up and
// down, stop/start/restart/remove an instance, delete the service, an instance's log
// followed, and the service's events.

import { api, get } from '../api.js';
import { ago, badge, card, fill, h, mb, meter, table, toast } from '../dom.js';
import { followLog } from '../logs.js';

const USAGE_REFRESH_MS = 10000;

export function render(main, [id], ctx) {
  const title = h('div', { class: 'row' }, h('h1', null, 'Service'));
  const facts = h('div', { id: 'service-facts' }, h('p', { class: 'muted' }, 'Loading…'));
  const count = h('strong', { id: 'instance-count' }, '…');
  const scaleDown = h('button', { dataset: { action: 'scale-down' }, title: 'remove the highest-numbered instance', 'aria-label': 'one instance fewer' }, '−');
  const scaleUp = h('button', { dataset: { action: 'scale-up' }, title: 'deploy one more instance', 'aria-label': 'one instance more' }, '+');
  const delService = h('button', { class: 'danger', dataset: { action: 'delete-service' } }, 'Delete service');
  const instances = h('div', { id: 'instances' });
  const logOut = h('pre', { class: 'log', id: 'log', tabindex: 0 });
  const logMode = h('span', { class: 'muted small', id: 'log-mode' });
  const logTitle = h('h2', null, 'Log');
  const logClose = h('button', { dataset: { action: 'close-log' } }, 'Close');
  const logCard = card(h('div', null, logTitle, ' ', logMode), [logClose], logOut);
  logCard.id = 'log-card';
  logCard.hidden = true;
  const events = h('div', { id: 'events' });
  const updated = h('span', { class: 'muted small' });

  main.append(
    h('p', { class: 'small' }, h('a', { href: '#/' }, '← Applications')),
    title,
    card('Instances', [h('span', { class: 'row' }, scaleDown, count, scaleUp), delService], instances, updated),
    logCard,
    card('Details', null, facts),
    card('Events', null, events));

  let svc = null;
  let disposed = false;
  let stopLog = null;
  let busy = false;

  async function load() {
    try {
      const [s, nodes, clusters, evs] = await Promise.all([
        get(`/api/service/${encodeURIComponent(id)}`),
        get('/api/nodes').catch(() => []),
        get('/api/clusters').catch(() => []),
        get(`/api/service/${encodeURIComponent(id)}/events`).catch(() => []),
      ]);
      if (disposed) return;
      svc = s;
      show(s, new Map(nodes.map(n => [n.node_id, n.name])), new Map(clusters.map(c => [c._id.$oid, c.cluster_name])), evs);
    } catch (e) {
      if (disposed) return;
      if (e.status === 404) gone();
      else fill(instances, h('p', { class: 'error' }, e.message));
    }
  }

  function gone() {
    svc = null;
    fill(title, h('h1', null, 'Service deleted'));
    fill(instances, h('p', { class: 'muted', id: 'service-gone' }, 'This service no longer exists. ', h('a', { href: '#/' }, 'Back to the applications')));
    for (const b of [scaleUp, scaleDown, delService]) b.disabled = true;
    closeLog();
  }

  function show(s, nodeNames, clusterNames, evs) {
    fill(title, h('h1', null, s.service_name), badge(s.status, s.status_detail), h('span', { class: 'muted mono small' }, s.job_name));
    fill(count, String(s.instance_list.length));
    count.dataset.count = s.instance_list.length;
    scaleDown.disabled = busy || !s.instance_list.length;
    scaleUp.disabled = busy;
    const list = [...s.instance_list].sort((a, b) => a.instance_number - b.instance_number);
    fill(instances, list.length
      ? table([
        { label: '#', cell: i => String(i.instance_number) },
        { label: 'Status', cell: i => h('span', null, badge(i.status), i.status_detail ? h('div', { class: 'muted small' }, i.status_detail) : null) },
        { label: 'Cluster', cell: i => clusterNames.get(i.cluster_id) || i.cluster_id || '—' },
        { label: 'Worker', cell: i => nodeNames.get(i.worker_id) || i.worker_id || '—' },
        { label: 'Address', class: 'mono', cell: i => i.instance_ip },
        { label: 'CPU', cell: i => meter(i.cpu_percent) },
        { label: 'Memory', class: 'num', cell: i => mb(i.memory) },
        { label: 'Changed', class: 'small', cell: i => ago(i.last_modified_timestamp) },
        { label: '', cell: i => instanceActions(i) },
      ], list, i => ({ dataset: { instance: i.instance_number, status: i.status } }))
      : h('p', { class: 'muted' }, 'No instances: press + to deploy one.'));
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    fill(facts, h('dl', { class: 'facts' },
      fact('Job name', h('code', null, s.job_name)),
      fact('Service IP', h('code', null, s.RR_ip)),
      fact('Kind', s.virtualization || '—'),
      fact('Code', h('code', null, s.image || s.code || '—')),
      s.cmd?.length ? fact('Command', h('code', null, s.cmd.join(' '))) : null,
      fact('Memory', s.memory ? `${s.memory} MB` : '—'),
      fact('vCPUs', s.vcpus ?? '—'),
      s.port ? fact('Ports', h('code', null, s.port)) : null,
      fact('Service id', h('code', null, s.microserviceID)),
      fact('Application', h('code', null, s.applicationID))));
    fill(events, evs.length
      ? table([
        { label: 'When', class: 'small', cell: e => new Date(e.at * 1000).toLocaleTimeString() },
        { label: 'Instance', cell: e => e.instance ?? '' },
        { label: 'What', cell: e => e.what },
        { label: 'Why', class: 'small', cell: e => e.why },
        { label: 'Outcome', class: 'small', cell: e => e.outcome },
      ], [...evs].reverse().slice(0, 30))
      : h('p', { class: 'muted' }, 'No events.'));
  }

  function fact(k, v) {
    return [h('dt', null, k), h('dd', null, v)];
  }

  function instanceActions(i) {
    const n = i.instance_number;
    const op = (label, operation) => h('button', {
      dataset: { action: operation, instance: n },
      onclick: () => run(`${operation} instance ${n}`, () => api('POST', `/api/service/${encodeURIComponent(id)}/instance/${n}/${operation}`)),
    }, label);
    const stopped = i.status === 'STOPPED';
    return h('div', { class: 'actions' },
      h('button', { dataset: { action: 'log', instance: n }, onclick: () => openLog(n) }, 'Log'),
      stopped ? op('Start', 'start') : op('Stop', 'stop'),
      op('Restart', 'restart'),
      h('button', {
        class: 'danger',
        dataset: { action: 'remove', instance: n },
        onclick: () => run(`remove instance ${n}`, () => api('DELETE', `/api/service/${encodeURIComponent(id)}/instance/${n}`)),
      }, 'Remove'));
  }

  async function run(what, f) {
    busy = true;
    scaleUp.disabled = scaleDown.disabled = true;
    try {
      await f();
      toast(`${what}: done`);
    } catch (e) {
      toast(`${what}: ${e.message}`, true);
    } finally {
      busy = false;
      load();
    }
  }

  scaleUp.addEventListener('click', () => run('scale up', () => api('POST', `/api/service/${encodeURIComponent(id)}/instance`)));
  scaleDown.addEventListener('click', () => {
    const last = Math.max(...(svc?.instance_list || []).map(i => i.instance_number));
    if (!Number.isFinite(last)) return;
    run('scale down', () => api('DELETE', `/api/service/${encodeURIComponent(id)}/instance/${last}`));
  });
  delService.addEventListener('click', () => {
    if (!svc || !confirm(`Delete service ${svc.service_name} and its ${svc.instance_list.length} instance(s)?`)) return;
    run('delete service', () => api('DELETE', `/api/service/${encodeURIComponent(id)}`));
  });

  function openLog(n) {
    closeLog();
    logCard.hidden = false;
    logCard.dataset.instance = n;
    logTitle.textContent = `Log of instance ${n}`;
    logOut.textContent = '';
    logMode.textContent = 'connecting…';
    stopLog = followLog(id, n, logOut, (mode, detail) => {
      logCard.dataset.mode = mode;
      logMode.textContent = {
        stream: 'following',
        ended: `stream ended${detail ? `: ${detail}` : ''}`,
        error: `error: ${detail}`,
      }[mode];
    });
    logCard.scrollIntoView({ block: 'nearest' });
  }

  function closeLog() {
    stopLog?.();
    stopLog = null;
    logCard.hidden = true;
  }
  logClose.addEventListener('click', closeLog);

  const reload = ctx.debounce(load);
  const timer = setInterval(() => document.visibilityState === 'visible' && svc && load(), USAGE_REFRESH_MS);
  load();
  return {
    onChange(item) {
      if (!item || item.service_id === id || item.object_id === id) reload();
    },
    dispose() {
      disposed = true;
      clearInterval(timer);
      closeLog();
    },
  };
}
