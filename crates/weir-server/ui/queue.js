// A queue: its counts and config (polled every 2 s, with a throughput chart),
// its tasks in one state a page at a time (the page in the URL: ?state=&cursor=),
// and the operator's actions, each behind a confirmation.

import { api, seg, ApiError } from './api.js';
import { h, fill, link, badge, fmtInt, fmtRate, fmtAge, time, action, flash, problem, poll, STATES } from './dom.js';
import { LiveChart, rates } from './charts.js';
import { POLL_MS } from './overview.js';
import { can } from './session.js';

const PAGE_LIMIT = 50;

export function queue(main, name) {
  document.title = `${name} · weir`;
  const params = new URLSearchParams(location.search);
  const state = STATES.includes(params.get('state')) ? params.get('state') : 'pending';
  const cursor = params.get('cursor');
  const base = `/v1/queues/${seg(name)}`;

  const head = h('div', { class: 'title-row' });
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Task states' });
  const side = h('div', { class: 'facts' });
  const chart = new LiveChart(`Throughput of ${name}`, [
    { key: 'enqueued', label: 'enqueued' }, { key: 'completed', label: 'completed' }, { key: 'failed', label: 'failed' },
  ], '/s');
  const list = h('section', { class: 'tasks', 'aria-live': 'polite' });
  fill(main, h('p', { class: 'crumbs' }, h('a', { href: '/' }, 'Queues'), ' / ', name),
    head, h('div', { class: 'split' }, chart.el, side), tabs, list);

  let info = null;
  let drawn = '';
  let prev = null;
  let prevAt = 0;
  const refresh = async () => {
    try {
      info = await api('GET', base);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && !info) {
        problem(main, `Queue ${name}`, e);
        return false;
      }
      flash(`Could not refresh: ${e.message}`, true);
      return true;
    }
    const now = Date.now();
    const r = rates(prev, info.totals, now - prevAt);
    prev = info.totals;
    prevAt = now;
    chart.push(now, [r.enqueued, r.completed, r.failed]);
    // Redraw the buttons and tabs only when what they show changed, so a poll
    // never takes the focus from a button.
    const key = JSON.stringify([info.config.paused, info.counts]);
    if (key !== drawn) {
      drawn = key;
      drawHead(info);
      drawTabs(info);
    }
    drawFacts(info, r);
    return true;
  };

  // Only the writes the session's roles allow are offered (none to a reader).
  const drawHead = (q) => fill(head,
    h('h1', {}, name, q.config.paused ? badge('paused') : null),
    h('div', { class: 'actions' },
      !can('configure') ? null : q.config.paused
        ? action('Resume', `Resume queue ${name}? Workers get its tasks again.`, () => setPaused(false), { id: 'resume' })
        : action('Pause', `Pause queue ${name}? Enqueues are still taken, but nothing is leased until it is resumed.`, () => setPaused(true), { id: 'pause' }),
      can('retry') && action('Retry all dead', `Retry every dead task of ${name} (${fmtInt(q.counts.dead)})? They go back to pending with their attempts reset.`,
        async () => {
          const out = await api('POST', `${base}/dead/retry`);
          flash(`Retried ${fmtInt(out.retried)} dead task(s)${out.skipped ? `, ${out.skipped} skipped` : ''}.`);
          await reload();
        }, { id: 'retry-dead', disabled: !q.counts.dead }),
      can('delete') && action('Purge dead', `Delete every dead task of ${name} (${fmtInt(q.counts.dead)})? This cannot be undone.`,
        async () => {
          const out = await api('DELETE', `${base}/dead`);
          flash(`Deleted ${fmtInt(out.deleted)} dead task(s)${out.skipped ? `, ${out.skipped} skipped` : ''}.`);
          await reload();
        }, { id: 'purge-dead', class: 'danger', disabled: !q.counts.dead })));

  const setPaused = async (paused) => {
    await api('PUT', `${base}/config`, { paused });
    flash(paused ? `Paused ${name}.` : `Resumed ${name}.`);
    await refresh();
  };

  const drawTabs = (q) => fill(tabs, STATES.map((s) => h('a', {
    href: link.queue(name, { state: s }), class: s === state ? 'tab current' : 'tab',
    'aria-current': s === state ? 'page' : null, 'data-tab': s,
  }, s, h('span', { class: 'tab-count' }, fmtInt(q.counts[s])))));

  const drawFacts = (q, r) => {
    const c = q.config;
    const none = 'no limit';
    fill(side, h('h2', {}, 'Flow control'), h('dl', { class: 'kv' },
      kv('paused', c.paused ? 'yes' : 'no'),
      kv('rate', c.rate_per_sec == null ? none : `${c.rate_per_sec}/s`),
      kv('burst', c.burst == null ? (c.rate_per_sec == null ? none : 'one second of the rate') : fmtInt(c.burst)),
      kv('max in flight', c.max_in_flight == null ? none : fmtInt(c.max_in_flight)),
      kv('max pending', c.max_pending == null ? none : fmtInt(c.max_pending))),
    h('h2', {}, 'Now'), h('dl', { class: 'kv' },
      kv('oldest pending', fmtAge(q.oldest_pending_age_ms)),
      kv('enqueued', `${fmtRate(r.enqueued)}/s`),
      kv('completed', `${fmtRate(r.completed)}/s`),
      kv('failed', `${fmtRate(r.failed)}/s`)),
    h('h2', {}, 'Totals'), h('dl', { class: 'kv' },
      Object.entries(q.totals).map(([k, v]) => kv(k.replace('_', ' '), fmtInt(v)))));
  };

  // The task list: loaded once per page view and after each action (a list
  // that moved under the reader's cursor would be hard to act on).
  const reload = async () => {
    await refresh();
    await loadTasks();
  };
  const loadTasks = async () => {
    const q = new URLSearchParams({ state, limit: PAGE_LIMIT });
    if (cursor) q.set('cursor', cursor);
    let page;
    try {
      page = await api('GET', `${base}/tasks?${q}`);
    } catch (e) {
      fill(list, h('p', { class: 'error-text' }, e.message));
      return;
    }
    fill(list,
      h('div', { class: 'title-row' },
        h('h2', {}, `${state[0].toUpperCase()}${state.slice(1)} tasks`),
        h('button', { type: 'button', onclick: reload, id: 'refresh' }, 'Refresh')),
      page.tasks.length ? taskTable(page.tasks) : h('p', { class: 'muted', id: 'no-tasks' }, `No ${state} tasks${cursor ? ' on this page' : ''}.`),
      h('p', { class: 'pager' },
        cursor ? h('a', { href: link.queue(name, { state }) }, '« First page') : null,
        page.next_cursor ? h('a', { href: link.queue(name, { state, cursor: page.next_cursor }), id: 'next-page' }, 'Next page »') : null));
  };

  const when = { scheduled: 'run_at', pending: 'created_at', active: 'started_at' };
  // The actions column, for a session that may make any of a task's writes.
  const acts = can('retry') || can('cancel') || can('delete');
  const taskTable = (tasks) => h('div', { class: 'table-wrap' }, h('table', { class: 'grid', id: 'tasks' },
    h('thead', {}, h('tr', {}, h('th', {}, 'id'), h('th', { class: 'narrow' }, 'kind'), h('th', { class: 'num narrow' }, 'priority'),
      h('th', { class: 'num' }, 'attempt'), h('th', { class: 'narrow' }, when[state] ? when[state].replace('_at', '') : 'finished'),
      h('th', { class: 'narrow' }, 'last error'), acts && h('th', {}, ''))),
    h('tbody', {}, tasks.map((t) => h('tr', { 'data-task': t.id },
      h('td', { class: 'mono' }, h('a', { href: link.task(t.id) }, t.id)),
      h('td', { class: 'narrow' }, t.kind),
      h('td', { class: 'num narrow' }, t.priority),
      h('td', { class: 'num' }, `${t.attempt}/${t.max_attempts}`),
      h('td', { class: 'narrow' }, time(t[when[state] || 'finished_at'])),
      h('td', { class: 'narrow clip', title: t.last_error || '' }, t.last_error || ''),
      acts && h('td', { class: 'row-actions' }, taskActions(t, reload)))))));

  poll(refresh, POLL_MS);
  loadTasks();
}

function kv(k, v) {
  return [h('dt', {}, k), h('dd', {}, v)];
}

/**
 * The actions a task in its state takes that the session may make, each
 * confirmed; `after` runs once it is done.
 */
export function taskActions(t, after) {
  const id = `/v1/tasks/${seg(t.id)}`;
  const out = [];
  if ((t.state === 'dead' || t.state === 'canceled') && can('retry')) {
    out.push(action('Retry', `Retry task ${t.id}? It goes back to pending with its attempts reset.`, async () => {
      await api('POST', `${id}/retry`);
      flash(`Task ${t.id} is pending again.`);
      await after('retried');
    }, { class: 'retry' }));
  }
  if (['scheduled', 'pending', 'active'].includes(t.state) && !t.cancel_requested && can('cancel')) {
    out.push(action('Cancel', t.state === 'active'
      ? `Ask the worker running task ${t.id} to stop? It is canceled when the worker hears of it.`
      : `Cancel task ${t.id}? It will not run.`, async () => {
      const v = await api('POST', `${id}/cancel`);
      flash(v.state === 'canceled' ? `Task ${t.id} is canceled.` : `Cancel requested for task ${t.id}.`);
      await after('canceled');
    }, { class: 'cancel' }));
  }
  if (['completed', 'dead', 'canceled'].includes(t.state) && can('delete')) {
    out.push(action('Delete', `Delete task ${t.id} now? This cannot be undone.`, async () => {
      await api('DELETE', id);
      flash(`Task ${t.id} is deleted.`);
      await after('deleted');
    }, { class: 'delete danger' }));
  }
  return out;
}
