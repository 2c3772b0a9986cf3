// Clusters with their capacity (free vCPUs and memory, cores, GPUs) and usage (CPU and
// memory of their workers), and every worker; changes come from the event stream, usage
// figures are read again every 10 s.

import { get } from '../api.js';
import { ago, badge, card, fill, h, mb, meter, table } from '../dom.js';

const REFRESH_MS = 10000;

export function render(main, _params, ctx) {
  const clusters = h('div', { id: 'clusters', class: 'grid' }, h('p', { class: 'muted' }, 'Loading…'));
  const workers = h('div', { id: 'workers' });
  const updated = h('span', { class: 'muted small' });
  main.append(h('h1', null, 'Clusters'), clusters, card('Workers', [updated], workers));
  let disposed = false;

  async function load() {
    try {
      const [cs, ns] = await Promise.all([get('/api/clusters'), get('/api/nodes')]);
      if (disposed) return;
      fill(clusters, cs.length ? cs.map(clusterCard) : h('p', { class: 'empty' }, 'No cluster has registered yet.'));
      const names = new Map(cs.map(c => [c._id.$oid, c.cluster_name]));
      fill(workers, ns.length
        ? table([
          { label: 'Worker', cell: n => h('strong', null, n.name) },
          { label: 'Cluster', cell: n => n.cluster_name || names.get(n.cluster_id) || n.cluster_id },
          { label: 'State', cell: n => badge(n.active ? 'active' : 'inactive') },
          { label: 'Arch', cell: n => n.architecture },
          { label: 'Runs', class: 'small', cell: n => n.virtualizations.join(', ') },
          { label: 'CPU', cell: n => meter(n.cpu_percent) },
          { label: 'Memory', cell: n => meter(n.memory_percent) },
          { label: 'Instances', class: 'num', cell: n => String(n.instances) },
        ], ns, n => ({ dataset: { node: n.node_id, name: n.name } }))
        : h('p', { class: 'empty' }, 'No workers.'));
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (!disposed) fill(clusters, h('p', { class: 'error' }, e.message));
    }
  }

  function clusterCard(c) {
    const el = card(h('div', null, h('h2', null, c.cluster_name), ' ', badge(c.active ? 'active' : 'inactive')), null,
      h('dl', { class: 'facts' },
        fact('CPU in use', meter(c.aggregated_cpu_percent)),
        fact('Memory in use', meter(c.memory_percent)),
        fact('Free vCPUs', String(c.vcpus)),
        fact('Free memory', mb(c.memory)),
        fact('CPU cores', String(c.total_cpu_cores)),
        fact('GPUs', String(c.total_gpu_cores)),
        fact('Workers', String(c.active_nodes)),
        fact('Runs', c.virtualization.join(', ') || '—'),
        c.cluster_location ? fact('Location', c.cluster_location) : null,
        fact('Last report', ago(c.last_modified_timestamp))));
    el.dataset.cluster = c._id.$oid;
    el.dataset.name = c.cluster_name;
    return el;
  }

  function fact(k, v) {
    return [h('dt', null, k), h('dd', null, v)];
  }

  const reload = ctx.debounce(load);
  const timer = setInterval(() => document.visibilityState === 'visible' && load(), REFRESH_MS);
  load();
  return {
    onChange(item) {
      if (!item || item.kind === 'cluster' || item.kind === 'node') reload();
    },
    dispose() {
      disposed = true;
      clearInterval(timer);
    },
  };
}
