// Log in: user name, password and (optionally) the organisation; the tokens are kept for
// this tab only.

import { login } from '../api.js';
import { h } from '../dom.js';

export function render(main, _params, ctx) {
  const error = h('p', { class: 'error', role: 'alert', id: 'login-error' });
  const user = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const org = h('input', { name: 'organization', placeholder: 'root' });
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Log in');
  const form = h('form', {
    class: 'card login',
    onsubmit: async e => {
      e.preventDefault();
      submit.disabled = true;
      error.textContent = '';
      try {
        await login(user.value.trim(), pass.value, org.value.trim() || undefined);
        ctx.go('#/');
      } catch (err) {
        error.textContent = err.message;
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('div', { class: 'brand' }, h('img', { src: '/ui/icon.svg', alt: '', width: 30, height: 30 }), 'Canopy'),
  h('label', null, h('span', null, 'User'), user),
  h('label', null, h('span', null, 'Password'), pass),
  h('label', null, h('span', null, 'Organisation (optional)'), org),
  error,
  submit);
  main.append(form);
  user.focus();
  return {};
}
