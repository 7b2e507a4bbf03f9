// The sign-in view, for a server that checks API keys: one password field for
// the key and a line saying why a key was refused. And the header's account
// control while signed in: the key's name, its roles and a sign-out button.

import { ApiError } from './api.js';
import { h, fill, flash } from './dom.js';
import { signIn, signOut } from './session.js';

/** Shows the header's links and search (signed in), or hides them with the account control. */
function chrome(signedIn) {
  document.querySelector('.top nav').hidden = !signedIn;
  document.getElementById('search').hidden = !signedIn;
  if (!signedIn) document.getElementById('account').hidden = true;
}

/**
 * Replaces the page with the sign-in form. `done(session)` runs once the server
 * took a key; by then the key is gone from the field and from memory (it lived
 * only in the submit handler, for the one request that carried it).
 */
export function signInView(main, done) {
  document.title = 'Sign in · weir';
  chrome(false);
  const input = h('input', {
    id: 'signin-key', type: 'password', name: 'key', required: true, placeholder: 'weir_…',
    autocomplete: 'off', spellcheck: 'false', autocapitalize: 'off', 'aria-describedby': 'signin-error',
  });
  const error = h('p', { class: 'error-text signin-error', id: 'signin-error', role: 'alert' });
  const submit = h('button', { type: 'submit', id: 'signin-submit' }, 'Sign in');
  const form = h('form', {
    class: 'signin-form', id: 'signin',
    onsubmit: async (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      submit.disabled = true;
      fill(error);
      let s;
      try {
        s = await signIn(key);
      } catch (e) {
        const why = e.message.replace(/\.$/, '');
        fill(error, e instanceof ApiError && e.status === 401 ? `That key was refused: ${why}.` : `Could not sign in: ${why}.`);
        input.select();
        return;
      } finally {
        submit.disabled = false;
      }
      input.value = '';
      flash('');
      done(s);
    },
  }, h('label', { for: 'signin-key' }, 'API key'), h('div', { class: 'signin-row' }, input, submit));
  fill(main, h('section', { class: 'signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('p', { class: 'muted' }, 'This server asks for an API key (weir_…). The dashboard trades it for a session ',
      'that ends when you sign out, and keeps nothing of the key itself.'),
    form, error));
  input.focus();
}

/**
 * The header while signed in: the key's name and roles, and a sign-out button
 * (`out()` runs once the server has ended the session). Nothing with auth off.
 */
export function account(s, out) {
  chrome(true);
  const el = document.getElementById('account');
  if (!s.auth) return;
  const queues = s.queues ? `queues ${s.queues.join(', ')}` : 'every queue';
  fill(el,
    h('span', { class: 'account-name', id: 'account-name', title: `key ${s.key_id}: ${s.roles.join(', ')}; ${queues}` }, s.name),
    h('span', { class: 'muted small account-roles', id: 'account-roles' }, s.roles.join(', ')),
    h('button', {
      type: 'button', id: 'sign-out',
      onclick: async (ev) => {
        const b = ev.currentTarget;
        b.disabled = true;
        try {
          await signOut();
        } catch (e) {
          b.disabled = false;
          flash(`Could not sign out: ${e.message}`, true);
          return;
        }
        out();
      },
    }, 'Sign out'));
  el.hidden = false;
}
