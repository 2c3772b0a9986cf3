// Organisations (admins only): create, add and remove members with their roles, delete.

import { api, get, isAdmin } from '../api.js';
import { card, fill, h, table, toast } from '../dom.js';
import { roleChoice } from './users.js';

export function render(main) {
  main.append(h('h1', null, 'Organisations'));
  if (!isAdmin()) {
    main.append(h('p', { class: 'error' }, 'Only admins manage organisations.'));
    return {};
  }
  const list = h('div', { id: 'organizations' }, h('p', { class: 'muted' }, 'Loading…'));
  const name = h('input', { name: 'name', required: true, autocomplete: 'off' });
  const form = h('form', {
    class: 'inline', id: 'new-organization',
    onsubmit: async e => {
      e.preventDefault();
      try {
        await api('POST', '/api/organization', { name: name.value.trim(), member: [] });
        toast(`Organisation ${name.value} created`);
        form.reset();
        load();
      } catch (err) {
        toast(err.message, true);
      }
    },
  }, h('label', null, h('span', null, 'Name'), name), h('button', { class: 'primary', type: 'submit' }, 'Create organisation'));
  main.append(h('div', { id: 'org-cards' }, list), card('New organisation', null, form));

  async function put(o, member) {
    await api('PUT', `/api/organization/${encodeURIComponent(o._id.$oid)}`, { name: o.name, member });
  }

  async function load() {
    try {
      const [orgs, users] = await Promise.all([get('/api/organization'), get('/api/users')]);
      const userName = new Map(users.map(u => [u._id.$oid, u.name]));
      fill(list, orgs.map(o => {
        const pick = h('select', { name: 'user' }, users.map(u => h('option', { value: u._id.$oid }, u.name)));
        const [roles, chosen] = roleChoice(['Application_Provider']);
        const add = h('form', {
          class: 'inline',
          onsubmit: async e => {
            e.preventDefault();
            const member = o.member.filter(m => m.user_id !== pick.value).concat([{ user_id: pick.value, roles: chosen() }]);
            try {
              await put(o, member);
              toast(`${userName.get(pick.value)} is a member of ${o.name}`);
            } catch (err) {
              toast(err.message, true);
            }
            load();
          },
        }, h('label', null, h('span', null, 'User'), pick), roles, h('button', { type: 'submit' }, 'Add or change member'));
        const del = h('button', {
          class: 'danger', dataset: { action: 'delete-organization' },
          onclick: async () => {
            if (!confirm(`Delete organisation ${o.name}?`)) return;
            try {
              await api('DELETE', `/api/organization/${encodeURIComponent(o._id.$oid)}`);
              toast(`Organisation ${o.name} deleted`);
            } catch (err) {
              toast(err.message, true);
            }
            load();
          },
        }, 'Delete');
        const members = o.member.length
          ? table([
            { label: 'Member', cell: m => userName.get(m.user_id) || m.user_id },
            { label: 'Roles', cell: m => m.roles.join(', ') || '—' },
            { label: '', cell: m => h('button', {
              onclick: async () => {
                try {
                  await put(o, o.member.filter(x => x.user_id !== m.user_id));
                } catch (err) {
                  toast(err.message, true);
                }
                load();
              },
            }, 'Remove') },
          ], o.member)
          : h('p', { class: 'muted' }, 'No members.');
        const c = card(o.name, [del], members, add);
        c.dataset.organization = o.name;
        return c;
      }));
    } catch (e) {
      fill(list, h('p', { class: 'error' }, e.message));
    }
  }

  load();
  return {};
}
