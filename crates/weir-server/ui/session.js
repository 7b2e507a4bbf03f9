// Who is signed in, and which writes their key's roles let the dashboard offer.
// The server says (`/v1/session`); the page keeps its answer in memory only. The
// session itself is an HttpOnly cookie the browser holds, out of a script's
// reach, and its CSRF token goes to api.js, which sends it with every write.
// The key is never kept: it goes out once, in the sign-in request's body.

import { api, useCsrf, ApiError } from './api.js';

/** The session: `{auth: false}` when the server checks no keys, else the key's name, roles and queues. */
let current = { auth: false };

/**
 * The roles of which a key needs one (an admin may do anything) for each write
 * the dashboard offers, as the server's rules have them (`auth::RULES`). Queue
 * patterns need no check here: the server refuses a read outside the key's
 * queues, so a page showing a task or a queue has already passed that check.
 */
const NEEDS = {
  configure: ['admin'], // pause and resume a queue
  retry: ['admin'], // a dead or canceled task, or every dead task of a queue
  delete: ['admin'], // a finished task, or every dead task of a queue
  cancel: ['producer'], // a task or a group
};

/** Whether the session may make the write `what` (a key of NEEDS): always, with auth off. */
export function can(what) {
  const needs = NEEDS[what];
  if (!needs) throw new Error(`no such write: ${what}`);
  if (!current.auth) return true;
  const roles = current.roles || [];
  return roles.includes('admin') || needs.some((r) => roles.includes(r));
}

/** The session in force. */
export function session() {
  return current;
}

function hold(s) {
  current = { auth: !!s.auth, name: s.name, key_id: s.key_id, roles: s.roles || [], queues: s.queues ?? null };
  useCsrf(s.auth ? s.csrf : null);
  return current;
}

/** The server's session for this browser, or null when one must sign in first (401). */
export async function load() {
  try {
    return hold(await api('GET', '/v1/session', undefined, { session: true }));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

/** Trades a key for a session cookie; throws the server's refusal (401 for a bad key). */
export async function signIn(key) {
  return hold(await api('POST', '/v1/session', { key }, { session: true }));
}

/** Forgets the session here and on the server (whose answer clears the cookie). */
export async function signOut() {
  await api('DELETE', '/v1/session', undefined, { session: true });
  lose();
}

/** Forgets the session here (the server has already: a 401 said so). */
export function lose() {
  current = { auth: true, roles: [] };
  useCsrf(null);
}
