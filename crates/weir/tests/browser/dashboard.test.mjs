// The dashboard in a real browser against a real `weir serve`: the overview's
// live counts, a dead task retried from its page behind a confirmation, the
// queue and group pages, the search box, a phone-sized screen, and no console
// error or CSP violation anywhere. Screenshots of each page go to
// target/dashboard-screenshots/. Run: `node --test crates/weir/tests/browser/`
// after `npm ci` there and `cargo build -p weir` (.ci/run does all three).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { haveChromium, startWeir, launch, http, shotsDir, watch as watchPage } from './harness.mjs';

// Arbitrary producer JSON: markup that must stay text, an integer JSON.parse
// would round, and key order that must survive.
const PAYLOAD = '{"zeta":1,"html":"<img src=x onerror=alert(1)><b>bold?</b>","big":12345678901234567890,"alpha":[true,null]}';
const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';

test('the dashboard, driven in chromium', { timeout: 60_000 }, async (t) => {
  if (!haveChromium()) return t.skip('chromium is not installed');
  const weir = await startWeir();
  const browser = await launch();
  const shots = shotsDir();
  const problems = [];
  const watch = (page) => watchPage(page, problems);
  const shot = (page, name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  const { base } = weir;
  try {
    // The scene, over HTTP: three pending emails, a dead report (one attempt,
    // leased and failed), a group of two.
    for (let i = 0; i < 3; i++) await http(base, 'POST', '/v1/queues/emails/tasks', { payload: { n: i }, kind: 'email.send' });
    const enqueued = await fetch(`${base}/v1/queues/reports/tasks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: `00-${TRACE_ID}-00f067aa0ba902b7-01` },
      body: `{"payload":${PAYLOAD},"kind":"report.render","max_attempts":1}`,
    });
    assert.equal(enqueued.status, 201);
    const dead = (await enqueued.json()).id;
    const { tasks: [leased] } = await http(base, 'POST', '/v1/queues/reports/lease', { max: 1, worker: 'browser-test-worker' });
    assert.equal(leased.id, dead);
    await http(base, 'POST', `/v1/tasks/${dead}/fail`, { lease_id: leased.lease_id, error: 'boom: <script>alert(1)</script>' });
    assert.equal((await http(base, 'GET', `/v1/tasks/${dead}`)).state, 'dead');
    const g = await http(base, 'POST', '/v1/groups', { queue: 'render', tasks: [{ payload: { page: 1 } }, { payload: { page: 2 } }] });

    const page = watch(await browser.newPage({ viewport: { width: 1280, height: 900 } }));

    // Overview: the live count follows an enqueue made behind its back.
    await page.goto(`${base}/`);
    const pending = 'tr[data-queue="emails"] [data-count="pending"]';
    await page.waitForFunction((s) => document.querySelector(s)?.textContent === '3', pending);
    // With auth off there is no sign-in and no account in the header.
    assert.equal(await page.locator('#signin').count(), 0);
    assert.equal(await page.isHidden('#account'), true);
    await http(base, 'POST', '/v1/queues/emails/tasks', { payload: { n: 3 } });
    await page.waitForFunction((s) => document.querySelector(s)?.textContent === '4', pending);
    // Rates need two polls; the enqueue above shows as a rate above zero.
    await page.waitForFunction(() => /[1-9]/.test(document.querySelector('[data-tile="enqueued"] .tile-value')?.textContent || ''));
    assert.equal(await page.locator('.chart canvas').count() >= 2, true, 'two uPlot charts');
    await shot(page, '01-overview');

    // Queue page: the dead tab lists the dead task; a dismissed confirmation
    // changes nothing.
    await page.click('tr[data-queue="reports"] th a');
    await page.waitForSelector('[data-tab="dead"]');
    await page.click('[data-tab="dead"]');
    await page.waitForSelector(`#tasks tr[data-task="${dead}"]`);
    await page.waitForSelector('#purge-dead:not([disabled])');
    page.once('dialog', (d) => d.dismiss());
    await page.click('#purge-dead');
    assert.equal((await http(base, 'GET', `/v1/tasks/${dead}`)).state, 'dead', 'a dismissed confirmation is no action');
    await shot(page, '02-queue-dead');

    // Task page: markup in the payload and error is text, the big integer keeps
    // its digits, the trace id is the traceparent's second field.
    await page.click(`#tasks tr[data-task="${dead}"] td a`);
    await page.waitForSelector('h1 .badge[data-state="dead"]');
    const shown = await page.textContent('#payload');
    assert.match(shown, /"html": "<img src=x onerror=alert\(1\)><b>bold\?<\/b>"/);
    assert.match(shown, /"big": 12345678901234567890/);
    assert.ok(shown.indexOf('"zeta"') < shown.indexOf('"alpha"'), 'key order kept');
    assert.equal(await page.locator('main img, main b, main script').count(), 0, 'nothing rendered as HTML');
    assert.equal(await page.textContent('#last-error'), 'boom: <script>alert(1)</script>');
    assert.equal(await page.textContent('#trace-id'), TRACE_ID);
    await shot(page, '03-task-dead');

    // Retry it, accepting the confirmation: the page shows it pending.
    let asked = '';
    page.once('dialog', (d) => { asked = d.message(); d.accept(); });
    await page.click('button.retry');
    await page.waitForSelector('h1 .badge[data-state="pending"]');
    assert.match(asked, /Retry task/);
    assert.equal((await http(base, 'GET', `/v1/tasks/${dead}`)).state, 'pending');
    await shot(page, '04-task-retried');

    // Group page, from a member's group link.
    await page.goto(`${base}/ui/tasks/${g.task_ids[0]}`);
    await page.click('#group-link');
    await page.waitForSelector(`#members tr[data-task="${g.task_ids[1]}"]`);
    assert.equal(await page.textContent('#group-id'), g.id);
    await shot(page, '05-group');

    // The search box finds a task, a group and a queue.
    for (const [q, path] of [[dead, `/ui/tasks/${dead}`], [g.id, `/ui/groups/${g.id}`], ['emails', '/ui/queues/emails']]) {
      await page.fill('#search-input', q);
      await Promise.all([page.waitForURL(`${base}${path}`), page.press('#search-input', 'Enter')]);
    }
    await page.waitForSelector('[data-tab="pending"]');
    await shot(page, '06-queue-pending');

    // A phone: nothing wider than the screen.
    const phone = watch(await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 }));
    await phone.goto(`${base}/`);
    await phone.waitForSelector(pending);
    await phone.waitForSelector('.chart canvas');
    const wide = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(wide <= 0, `the overview is ${wide}px wider than a phone`);
    await shot(phone, '07-phone-overview');
    await phone.goto(`${base}/ui/tasks/${dead}`);
    await phone.waitForSelector('h1 .badge[data-state="pending"]');
    assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'the task page fits a phone');
    await shot(phone, '08-phone-task');
    await phone.goto(`${base}/ui/queues/emails`);
    await phone.waitForSelector('#tasks tr[data-task]');
    assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'the queue page fits a phone');
    await shot(phone, '09-phone-queue');

    assert.deepEqual(problems, [], 'no console error, page error or CSP violation');
  } finally {
    await browser.close();
    await weir.stop();
  }
});
