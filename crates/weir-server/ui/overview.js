// The overview: every queue with its counts, rates and oldest pending age, and
// live charts summed over all queues. Polls GET /v1/queues every 2 s; rates are
// the differences of each queue's totals between two polls.

import { api } from './api.js';
import { h, fill, link, badge, fmtInt, fmtRate, fmtAge, poll } from './dom.js';
import { LiveChart, rates } from './charts.js';
import { session } from './session.js';

export const POLL_MS = 2000;

export function overview(main) {
  document.title = 'Queues · weir';
  const status = h('p', { class: 'muted small', id: 'updated' }, 'Loading…');
  const tiles = h('div', { class: 'tiles' });
  const throughput = new LiveChart('Throughput, all queues', [
    { key: 'enqueued', label: 'enqueued' }, { key: 'completed', label: 'completed' }, { key: 'failed', label: 'failed' },
  ], '/s');
  const backlog = new LiveChart('Backlog, all queues', [
    { key: 'pending', label: 'pending' }, { key: 'active', label: 'active' }, { key: 'scheduled', label: 'scheduled' },
  ], 'tasks');
  const table = h('div', { class: 'table-wrap' });
  fill(main,
    h('div', { class: 'title-row' }, h('h1', {}, 'Queues'), status),
    tiles,
    h('div', { class: 'charts' }, throughput.el, backlog.el),
    table);

  let prev = new Map(); // queue name -> totals at the previous poll
  let prevAt = 0;
  poll(async () => {
    let queues;
    try {
      ({ queues } = await api('GET', '/v1/queues'));
    } catch (e) {
      fill(status, h('span', { class: 'error-text' }, `Could not refresh: ${e.message}. Retrying…`));
      return;
    }
    const now = Date.now();
    const rows = queues.map((q) => ({ q, r: rates(prev.get(q.name), q.totals, now - prevAt) }));
    prev = new Map(queues.map((q) => [q.name, q.totals]));
    const first = prevAt === 0;
    prevAt = now;

    const sum = (f) => rows.reduce((a, x) => a + (f(x) ?? 0), 0);
    const total = Object.fromEntries(['scheduled', 'pending', 'active', 'dead'].map((k) => [k, sum((x) => x.q.counts[k])]));
    const rate = first ? { enqueued: null, completed: null, failed: null }
      : Object.fromEntries(['enqueued', 'completed', 'failed'].map((k) => [k, sum((x) => x.r[k])]));
    throughput.push(now, [rate.enqueued, rate.completed, rate.failed]);
    backlog.push(now, [total.pending, total.active, total.scheduled]);
    const oldest = Math.max(-1, ...queues.map((q) => q.oldest_pending_age_ms ?? -1));

    fill(tiles,
      tile('Pending', fmtInt(total.pending), 'pending'),
      tile('Active', fmtInt(total.active), 'active'),
      tile('Dead', fmtInt(total.dead), 'dead', total.dead > 0),
      tile('Enqueued', `${fmtRate(rate.enqueued)}/s`, 'enqueued'),
      tile('Completed', `${fmtRate(rate.completed)}/s`, 'completed'),
      tile('Failed', `${fmtRate(rate.failed)}/s`, 'failed', rate.failed > 0),
      tile('Oldest pending', oldest < 0 ? '–' : fmtAge(oldest), 'oldest'));
    fill(table, queues.length ? queueTable(rows) : empty());
    fill(status, `Updated ${new Date(now).toLocaleTimeString()} · every ${POLL_MS / 1000} s`);
    // When the page first showed data (BENCHMARKS.md reads it).
    if (first) performance.mark('weir:overview-data');
  }, POLL_MS);
}

/** One headline figure; `bad` shows it in red (dead tasks, failures). */
function tile(label, value, key, bad) {
  return h('div', { class: `tile${bad ? ' bad' : ''}`, 'data-tile': key }, h('div', { class: 'tile-value' }, value), h('div', { class: 'tile-label' }, label));
}

const COLS = [
  // [header, cell, class] — `narrow` columns are hidden on a phone
  ['scheduled', (x) => count(x.q, 'scheduled'), 'num narrow'],
  ['pending', (x) => count(x.q, 'pending'), 'num'],
  ['active', (x) => count(x.q, 'active'), 'num'],
  ['completed', (x) => count(x.q, 'completed'), 'num narrow'],
  ['dead', (x) => count(x.q, 'dead'), 'num'],
  ['canceled', (x) => count(x.q, 'canceled'), 'num narrow'],
  ['enq/s', (x) => fmtRate(x.r.enqueued), 'num'],
  ['done/s', (x) => fmtRate(x.r.completed), 'num'],
  ['fail/s', (x) => fmtRate(x.r.failed), 'num'],
  ['oldest pending', (x) => fmtAge(x.q.oldest_pending_age_ms), 'num narrow'],
];

function count(q, state) {
  const n = q.counts[state];
  return n ? h('a', { href: link.queue(q.name, { state }), 'data-count': state }, fmtInt(n))
    : h('span', { class: 'zero', 'data-count': state }, '0');
}

function queueTable(rows) {
  return h('table', { class: 'grid', id: 'queues' },
    h('thead', {}, h('tr', {}, h('th', {}, 'queue'), COLS.map(([t, , c]) => h('th', { class: c }, t)))),
    h('tbody', {}, rows.map((x) => h('tr', { 'data-queue': x.q.name },
      h('th', { scope: 'row' }, h('a', { href: link.queue(x.q.name) }, x.q.name), x.q.config.paused ? badge('paused') : null),
      COLS.map(([, cell, c]) => h('td', { class: c }, cell(x)))))));
}

function empty() {
  return h('div', { class: 'empty' },
    h('p', {}, 'No queues yet. A queue appears with its first enqueue:'),
    h('pre', {}, `curl -XPOST ${location.origin}/v1/queues/emails/tasks${session().auth ? ' -H "authorization: Bearer $WEIR_API_KEY"' : ''}`,
      ` -d '{"payload": {"to": "ada@example.com"}}'`));
}
