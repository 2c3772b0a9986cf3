// Deploy an SLA: pasted, uploaded or dropped. JSON syntax is checked here; the root checks
// the rest and names each problem by its JSON path, which is listed and selected in the text.
// On success one instance (or N) of every new service is requested, as `canopy apply` does.

import { ApiError, api } from '../api.js';
import { card, fill, h, toast } from '../dom.js';
import { lineColumn, locate, syntaxError } from '../sla.js';

const EXAMPLE = {
  sla_version: 'v2.0',
  customerID: 'Admin',
  applications: [{
    application_name: 'demo',
    application_namespace: 'demo',
    application_desc: 'an example',
    microservices: [{
      microservice_name: 'web',
      microservice_namespace: 'demo',
      virtualization: 'container',
      code: 'docker.io/library/nginx:1.27',
      port: '8080:80',
      memory: 64,
      vcpus: 1,
    }],
  }],
};

export function render(main, _params, ctx) {
  const text = h('textarea', {
    id: 'sla', name: 'sla', spellcheck: 'false', autocomplete: 'off',
    placeholder: 'Paste an SLA (sla_version "v2.0"), upload a file, or drop one here.',
    'aria-label': 'SLA',
  });
  const file = h('input', { type: 'file', accept: '.json,application/json', id: 'sla-file' });
  const replicas = h('input', { type: 'number', min: 0, max: 50, value: 1, id: 'replicas' });
  const deploy = h('button', { class: 'primary', type: 'submit', id: 'deploy' }, 'Deploy');
  const result = h('div', { id: 'deploy-result', role: 'alert' });

  main.append(h('h1', null, 'Deploy an SLA'),
    h('form', {
      onsubmit: e => {
        e.preventDefault();
        submit();
      },
    },
    card('SLA', [
      h('label', { class: 'button' }, 'Upload…', file),
      h('button', { type: 'button', onclick: () => { text.value = JSON.stringify(EXAMPLE, null, 2); } }, 'Example'),
    ], text, result,
    h('div', { class: 'row' },
      h('label', { class: 'check' }, h('span', null, 'Instances per service'), replicas),
      deploy))));
  file.hidden = true;

  file.addEventListener('change', async () => {
    if (file.files[0]) text.value = await file.files[0].text();
  });
  text.addEventListener('dragover', e => e.preventDefault());
  text.addEventListener('drop', async e => {
    const f = e.dataTransfer?.files?.[0];
    if (!f) return;
    e.preventDefault();
    text.value = await f.text();
  });

  function select(range) {
    if (!range) return;
    const [start, end] = range;
    text.focus();
    text.setSelectionRange(start, end);
    const { line } = lineColumn(text.value, start);
    const lh = parseFloat(getComputedStyle(text).lineHeight) || 18;
    text.scrollTop = Math.max(0, (line - 3) * lh);
  }

  function showProblems(message, problems) {
    const src = text.value;
    const items = problems.map(p => {
      const range = p.offset !== undefined ? [p.offset, p.offset + 1] : locate(src, p.path);
      const where = range ? lineColumn(src, range[0]) : null;
      return h('li', { dataset: { path: p.path } },
        h('code', null, p.path || '(document)'), `: ${p.message}`,
        where ? h('span', { class: 'muted small' }, ` — line ${where.line}, column ${where.column} `) : ' ',
        range ? h('button', { type: 'button', class: 'link', onclick: () => select(range) }, 'show') : null);
    });
    fill(result, h('p', { class: 'error' }, message), h('ul', { class: 'problems', id: 'problems' }, items));
    const first = problems[0];
    if (first) select(first.offset !== undefined ? [first.offset, first.offset + 1] : locate(src, first.path));
  }

  async function submit() {
    fill(result);
    const src = text.value;
    if (!src.trim()) {
      showProblems('Nothing to deploy.', []);
      return;
    }
    const bad = syntaxError(src);
    if (bad) {
      showProblems('The SLA is not valid JSON.', [{ path: '', message: bad.message, ...(bad.offset !== null ? { offset: bad.offset } : {}) }]);
      return;
    }
    const sla = JSON.parse(src);
    deploy.disabled = true;
    try {
      const apps = await api('POST', '/api/application', src);
      const names = (sla.applications || []).map(a => a.application_name);
      const created = apps.filter(a => names.includes(a.application_name));
      const services = created.flatMap(a => a.microservices);
      const n = Math.max(0, Number(replicas.value) || 0);
      for (const id of services) {
        for (let k = 0; k < n; k++) await api('POST', `/api/service/${encodeURIComponent(id)}/instance`);
      }
      toast(`Deployed ${created.length} application(s), ${services.length} service(s)`);
      ctx.go(services.length === 1 ? `#/service/${services[0]}` : '#/');
    } catch (e) {
      if (e instanceof ApiError) {
        const problems = e.body.problems?.length
          ? e.body.problems
          : [{ path: e.body.field || '', message: e.body.message || e.message }];
        showProblems(e.body.message || e.message, problems);
      } else {
        showProblems(e.message, []);
      }
    } finally {
      deploy.disabled = false;
    }
  }

  return {};
}
