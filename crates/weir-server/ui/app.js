// The dashboard's entry point: asks the server for the session (signing in
// first when it checks API keys), then picks the page from the path (every page
// is the same shell, served by the server for `/` and `/ui/…`) and runs the
// search box.

import { api, seg, ApiError, onSessionLost } from './api.js';
import { link, flash, fill, h, problem } from './dom.js';
import { load, lose } from './session.js';
import { signInView, account } from './signin.js';
import { overview } from './overview.js';
import { queue } from './queue.js';
import { task } from './task.js';
import { group } from './group.js';

const main = document.getElementById('main');
const path = location.pathname;
const at = (re) => {
  const m = path.match(re);
  return m ? decodeURIComponent(m[1]) : null;
};

function route() {
  let m;
  if (path === '/' || path === '/ui' || path === '/ui/') overview(main);
  else if ((m = at(/^\/ui\/queues\/([^/]+)$/)) !== null) queue(main, m);
  else if ((m = at(/^\/ui\/tasks\/([^/]+)$/)) !== null) task(main, m);
  else if ((m = at(/^\/ui\/groups\/([^/]+)$/)) !== null) group(main, m);
  else fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/' }, 'Back to the queues')));
}

// Whether a page was drawn: its polls then run on, each waiting for good on
// the 401 that ended the session, so the next sign-in reloads rather than
// drawing a second page beside them.
let drawn = false;
let signedIn = false;

function enter(s) {
  signedIn = true;
  account(s, () => gate('Signed out.'));
  route();
  drawn = true;
}

/** The sign-in view in place of the page, with `notice` above it. */
function gate(notice) {
  signedIn = false;
  signInView(main, (s) => (drawn ? location.reload() : enter(s)));
  flash(notice || '');
}

// A session that ends under a page (it expired, or its key was revoked) takes
// the reader back to the sign-in view, once, however many calls hear of it.
onSessionLost((e) => {
  if (!signedIn) return;
  lose();
  gate(`You were signed out: ${e.message.replace(/\.$/, '')}.`);
});

// Search: a task id, then a group id, then a queue name; the first that exists
// is opened.
const form = document.getElementById('search');
const input = document.getElementById('search-input');
form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const q = input.value.trim();
  if (!q) return;
  // Task and group ids are ULIDs (26 characters of Crockford's base 32); only
  // those are looked up as ids.
  const ulid = /^[0-9A-HJKMNP-TV-Z]{26}$/i.test(q);
  const tries = [
    ...(ulid ? [[`/v1/tasks/${seg(q)}`, link.task(q)], [`/v1/groups/${seg(q)}`, link.group(q)]] : []),
    [`/v1/queues/${seg(q)}`, link.queue(q)],
  ];
  for (const [api_path, page] of tries) {
    try {
      await api('GET', api_path);
      location.assign(page);
      return;
    } catch (e) {
      if (!(e instanceof ApiError) || e.status === 0) {
        flash(e.message, true);
        return;
      }
    }
  }
  flash(`No task, group or queue is named “${q}”.`, true);
});

try {
  const s = await load();
  if (s) enter(s);
  else gate();
} catch (e) {
  problem(main, 'The dashboard could not start', e);
}
