// The dashboard against a server that checks API keys (`weir serve
// --require-auth`, the first admin key made with `weir keys create`), in a real
// chromium: the sign-in view and a refused key, a reader who sees the queues
// but no write button, an admin whose write carries the session's CSRF token,
// signing out, and a session whose key is revoked under an open page. The key
// is never left in the page: not in a field, not in storage, and the session
// cookie is out of the script's reach. Screenshots go to
// target/dashboard-screenshots/ (20-… onwards). Run as dashboard.test.mjs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { haveChromium, startWeir, launch, http, shotsDir, watch, KEY } from './harness.mjs';

/** Every write button the dashboard has, by selector. */
const WRITES = '#pause, #resume, #retry-dead, #purge-dead, #cancel-group, button.retry, button.cancel, button.delete';

test('the dashboard with API keys, driven in chromium', { timeout: 90_000 }, async (t) => {
  if (!haveChromium()) return t.skip('chromium is not installed');
  const weir = await startWeir({ auth: true });
  const browser = await launch();
  const shots = shotsDir();
  const problems = [];
  const shot = (page, name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  const { base, adminKey } = weir;
  const admin = { headers: { authorization: `Bearer ${adminKey}` } };
  try {
    // Without a key the API answers 401, the dashboard's pages still load.
    await http(base, 'GET', '/v1/queues', undefined, { expect: 401 });
    await http(base, 'GET', '/v1/session', undefined, { expect: 401 });

    // The scene, with the admin key: a reader key, two pending emails, a dead
    // report (one attempt, leased and failed) and a running group.
    const reader = await http(base, 'POST', '/v1/keys', { name: 'ops-reader', roles: ['reader'] }, admin);
    assert.match(reader.key, KEY);
    for (let i = 0; i < 2; i++) await http(base, 'POST', '/v1/queues/emails/tasks', { payload: { n: i } }, admin);
    const { id: dead } = await http(base, 'POST', '/v1/queues/reports/tasks', { payload: { r: 1 }, max_attempts: 1 }, admin);
    const { tasks: [leased] } = await http(base, 'POST', '/v1/queues/reports/lease', { max: 1, worker: 'w' }, admin);
    await http(base, 'POST', `/v1/tasks/${dead}/fail`, { lease_id: leased.lease_id, error: 'boom' }, admin);
    const g = await http(base, 'POST', '/v1/groups', { queue: 'render', tasks: [{ payload: { page: 1 } }] }, admin);

    // (a) The sign-in view: a password field, and no header links or search
    // that would only meet 401s.
    const page = watch(await browser.newPage({ viewport: { width: 1280, height: 800 } }), problems);
    await page.goto(`${base}/`);
    await page.waitForSelector('#signin-key');
    assert.equal(await page.getAttribute('#signin-key', 'type'), 'password');
    assert.equal(await page.isHidden('#search'), true, 'no search while signed out');
    assert.equal(await page.isHidden('#account'), true);
    assert.equal(await page.locator('#queues').count(), 0);
    await shot(page, '20-signin');

    // A key the server refuses: the error line says so, the view stays.
    await page.fill('#signin-key', `weir_${'0'.repeat(16)}_${'0'.repeat(64)}`);
    await page.click('#signin-submit');
    await page.waitForFunction(() => document.getElementById('signin-error')?.textContent !== '');
    assert.match(await page.textContent('#signin-error'), /^That key was refused: /);
    await shot(page, '21-signin-refused');

    // The reader's key: the queues show, the key is gone from the page.
    await page.fill('#signin-key', reader.key);
    await page.click('#signin-submit');
    await page.waitForSelector('tr[data-queue="emails"] [data-count="pending"]');
    assert.equal(await page.textContent('#account-name'), 'ops-reader');
    assert.equal(await page.textContent('#account-roles'), 'reader');
    assert.equal(await page.locator('#signin-key').count(), 0, 'the key field is gone');
    const kept = await page.evaluate(() => ({
      storage: localStorage.length + sessionStorage.length,
      cookie: document.cookie,
      fields: [...document.querySelectorAll('input')].map((i) => i.value).join(''),
    }));
    assert.deepEqual(kept, { storage: 0, cookie: '', fields: '' }, 'no key in storage or fields; the cookie is HttpOnly');
    assert.equal(await page.locator(WRITES).count(), 0);
    await shot(page, '22-reader-overview');

    // A reader sees a queue's dead task, a task and a group, with no write button.
    await page.goto(`${base}/ui/queues/reports?state=dead`);
    await page.waitForSelector(`#tasks tr[data-task="${dead}"]`);
    await page.waitForSelector('[data-tab="dead"] .tab-count');
    assert.equal(await page.locator(WRITES).count(), 0, 'no write button on the queue page');
    assert.equal(await page.locator('#tasks .row-actions').count(), 0, 'no actions column');
    await shot(page, '23-reader-queue');
    await page.goto(`${base}/ui/tasks/${dead}`);
    await page.waitForSelector('h1 .badge[data-state="dead"]');
    assert.equal(await page.locator(WRITES).count(), 0, 'no write button on the task page');
    await page.goto(`${base}/ui/groups/${g.id}`);
    await page.waitForSelector(`#members tr[data-task="${g.task_ids[0]}"]`);
    assert.equal(await page.locator(WRITES).count(), 0, 'no write button on the group page');
    // The server refuses a reader's write anyway.
    const refused = await page.evaluate(async () => (await fetch('/v1/queues/reports/dead/retry', { method: 'POST' })).status);
    assert.equal(refused, 403);

    // (b) An admin, in a browser profile of its own: write buttons, and a retry
    // that works, its request carrying the session's CSRF token.
    const adminPage = watch(await browser.newPage({ viewport: { width: 1280, height: 800 } }), problems);
    await adminPage.goto(`${base}/ui/queues/reports?state=dead`);
    await adminPage.fill('#signin-key', adminKey);
    await adminPage.click('#signin-submit');
    await adminPage.waitForSelector(`#tasks tr[data-task="${dead}"] button.retry`);
    assert.equal(await adminPage.textContent('#account-name'), 'browser-admin');
    for (const sel of ['#pause', '#retry-dead', '#purge-dead']) await adminPage.waitForSelector(sel);
    await shot(adminPage, '24-admin-queue');
    let csrf = null;
    adminPage.on('request', (r) => {
      if (r.method() === 'POST' && r.url().endsWith(`/v1/tasks/${dead}/retry`)) csrf = r.headers()['x-csrf-token'];
    });
    adminPage.once('dialog', (d) => d.accept());
    await adminPage.click(`#tasks tr[data-task="${dead}"] button.retry`);
    await adminPage.waitForSelector('#flash:not([hidden])');
    assert.match(await adminPage.textContent('#flash'), /is pending again/);
    assert.equal((await http(base, 'GET', `/v1/tasks/${dead}`, undefined, admin)).state, 'pending');
    assert.match(csrf || '', /^[0-9a-f]{16,}$/, 'the write carried X-CSRF-Token');
    // Without the token, the same cookie's write is refused.
    const bare = await adminPage.evaluate(async () => {
      const r = await fetch('/v1/queues/reports/config', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"paused":true}' });
      return [r.status, (await r.json()).type];
    });
    assert.deepEqual(bare, [403, 'urn:weir:problem:csrf']);

    // (c) Signing out: back to the sign-in view, and the cookie is gone (a
    // reload still asks for a key).
    await adminPage.click('#sign-out');
    await adminPage.waitForSelector('#signin-key');
    assert.match(await adminPage.textContent('#flash'), /Signed out/);
    assert.equal(await adminPage.evaluate(async () => (await fetch('/v1/session')).status), 401);
    await adminPage.reload();
    await adminPage.waitForSelector('#signin-key');
    await shot(adminPage, '25-signed-out');

    // A session that ends under an open page (its key revoked): the next poll
    // takes the reader back to the sign-in view, saying why.
    await page.goto(`${base}/`);
    await page.waitForSelector('tr[data-queue="emails"]');
    await http(base, 'DELETE', `/v1/keys/${reader.id}`, undefined, { ...admin, expect: 204 });
    await page.waitForSelector('#signin-key', { timeout: 10_000 });
    assert.match(await page.textContent('#flash'), /You were signed out/);
    assert.equal(await page.isHidden('#account'), true);
    await shot(page, '26-session-lost');

    assert.deepEqual(problems, [], 'no console error, page error or CSP violation');
  } finally {
    await browser.close();
    await weir.stop();
  }
});
