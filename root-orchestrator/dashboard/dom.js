// Small DOM helpers: elements, tables that turn into cards on phones, status badges, meters.
// Text always goes in as text nodes (never as HTML), so nothing from the API is interpreted.

/** An element: h('button', {class: 'primary', onclick: f, dataset: {x: 1}}, 'text', child…). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === 'checked') el.checked = el.defaultChecked = v; // form.reset() keeps it
    else if (k === 'value' || k === 'disabled' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * A table: columns are {label, cell: row => node|text, class?}; `rowProps(row)` gives the
 * row's attributes (dataset for tests and links). On phones each row is a card whose cells
 * carry their column's label.
 */
export function table(columns, rows, rowProps = () => ({})) {
  return h('table', { class: 'list' },
    h('thead', null, h('tr', null, columns.map(c => h('th', null, c.label)))),
    h('tbody', null, rows.map(r => h('tr', rowProps(r),
      columns.map(c => h('td', { class: c.class, 'data-label': c.label }, c.cell(r)))))));
}

const OK = new Set(['RUNNING', 'COMPLETED', 'active']);
const WAIT = new Set(['REQUESTED', 'CLUSTER_SCHEDULED', 'NODE_SCHEDULED', 'CREATING', 'CREATED']);
const OFF = new Set(['STOPPED', 'UNDEPLOYED', 'inactive', '']);

/** What kind of status this is: ok, wait, off or bad (failures and scheduling refusals). */
export function statusClass(status) {
  if (OK.has(status)) return 'ok';
  if (WAIT.has(status)) return 'wait';
  if (OFF.has(status)) return 'off';
  return 'bad';
}

export function badge(status, title) {
  return h('span', { class: `status ${statusClass(status)}`, title: title || undefined }, status || '—');
}

/** A usage bar with its figure: `percent` of 100. */
export function meter(percent, label) {
  const p = Number.isFinite(percent) ? Math.max(0, Math.min(100, percent)) : 0;
  const fillBar = h('i');
  fillBar.style.width = `${p}%`; // CSSOM, allowed by the page's style-src 'self'
  return h('div', { class: 'meter', title: label || undefined },
    h('div', { class: `bar${p >= 85 ? ' high' : ''}` }, fillBar),
    h('span', null, `${p.toFixed(p < 10 ? 1 : 0)}%`));
}

export function mb(n) {
  if (!Number.isFinite(n)) return '—';
  return n >= 1024 ? `${(n / 1024).toFixed(1)} GB` : `${Math.round(n)} MB`;
}

/** "12 s ago" for unix seconds (— for 0). */
export function ago(unixSeconds) {
  if (!unixSeconds) return '—';
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(unixSeconds * 1000).toLocaleString();
}

/** A short message at the bottom of the screen. */
export function toast(message, bad = false) {
  const box = document.getElementById('toast');
  const m = h('div', { class: `msg${bad ? ' bad' : ''}` }, message);
  box.append(m);
  while (box.children.length > 2) box.firstElementChild.remove();
  setTimeout(() => m.remove(), bad ? 6000 : 2500);
}

/** A card with a heading, optional actions on the right, and a body. */
export function card(title, actions, ...body) {
  return h('section', { class: 'card' },
    h('header', null, typeof title === 'string' ? h('h2', null, title) : title,
      actions ? h('div', { class: 'actions' }, actions) : null),
    body);
}
