// Users (admins only): create, change roles, delete.

import { api, get, isAdmin } from '../api.js';
import { card, fill, h, table, toast } from '../dom.js';

export const ROLES = ['Admin', 'Organization_Admin', 'Application_Provider', 'Infrastructure_Provider'];

/** Role checkboxes; returns [element, () => chosen roles]. */
export function roleChoice(current = []) {
  const boxes = ROLES.map(r => h('input', { type: 'checkbox', value: r, checked: current.includes(r), dataset: { role: r } }));
  const el = h('span', { class: 'roles' }, ROLES.map((r, k) => h('label', { class: 'check' }, boxes[k], h('span', null, r.replace('_', ' ')))));
  return [el, () => boxes.filter(b => b.checked).map(b => b.value)];
}

/** Oakestra's created_at is free text; Canopy's is unix seconds. */
function created(at) {
  if (!at) return '—';
  return /^\d+(\.\d+)?$/.test(at) ? new Date(Number(at) * 1000).toLocaleDateString() : at;
}

export function render(main) {
  main.append(h('h1', null, 'Users'));
  if (!isAdmin()) {
    main.append(h('p', { class: 'error' }, 'Only admins manage users.'));
    return {};
  }
  const list = h('div', { id: 'users' }, h('p', { class: 'muted' }, 'Loading…'));
  const name = h('input', { name: 'name', required: true, pattern: '[A-Za-z0-9_.@-]+', autocomplete: 'off' });
  const password = h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' });
  const email = h('input', { name: 'email', type: 'email' });
  const [roles, chosen] = roleChoice(['Application_Provider']);
  const form = h('form', {
    class: 'inline', id: 'new-user',
    onsubmit: async e => {
      e.preventDefault();
      try {
        await api('POST', '/api/auth/register', { name: name.value.trim(), password: password.value, email: email.value.trim(), roles: chosen() });
        toast(`User ${name.value} created`);
        form.reset();
        load();
      } catch (err) {
        toast(err.message, true);
      }
    },
  },
  h('label', null, h('span', null, 'Name'), name),
  h('label', null, h('span', null, 'Password'), password),
  h('label', null, h('span', null, 'E-mail'), email),
  h('div', null, roles),
  h('button', { class: 'primary', type: 'submit' }, 'Create user'));
  main.append(card('Users', null, list), card('New user', null, form));

  async function load() {
    try {
      const users = await get('/api/users');
      fill(list, table([
        { label: 'Name', cell: u => h('strong', null, u.name) },
        { label: 'E-mail', cell: u => u.email || '—' },
        { label: 'Roles', cell: u => rolesEditor(u) },
        { label: 'Created', class: 'small', cell: u => created(u.created_at) },
        { label: '', cell: u => h('button', {
          class: 'danger', dataset: { action: 'delete-user', user: u.name },
          onclick: async () => {
            if (!confirm(`Delete user ${u.name}?`)) return;
            try {
              await api('DELETE', `/api/user/${encodeURIComponent(u.name)}`);
              toast(`User ${u.name} deleted`);
            } catch (err) {
              toast(err.message, true);
            }
            load();
          },
        }, 'Delete') },
      ], users, u => ({ dataset: { user: u.name } })));
    } catch (e) {
      fill(list, h('p', { class: 'error' }, e.message));
    }
  }

  function rolesEditor(u) {
    const [el, get] = roleChoice(u.roles);
    const save = h('button', {
      type: 'button',
      onclick: async () => {
        try {
          await api('PUT', `/api/user/${encodeURIComponent(u.name)}`, { roles: get() });
          toast(`Roles of ${u.name} saved`);
        } catch (err) {
          toast(err.message, true);
        }
        load();
      },
    }, 'Save roles');
    return h('div', null, el, save);
  }

  load();
  return {};
}
