// A task group: its state, counts and every member, polled every 2 s while it
// runs, and a confirmed cancel.

import { api, seg, ApiError } from './api.js';
import { h, fill, link, badge, time, action, flash, problem, poll, fmtInt, STATES } from './dom.js';
import { POLL_MS } from './overview.js';
import { can } from './session.js';

export function group(main, id) {
  document.title = `Group ${id} · weir`;
  let shown = '';
  poll(async () => {
    let g;
    try {
      g = await api('GET', `/v1/groups/${seg(id)}`);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 400)) {
        problem(main, `Group ${id}`, e);
        return false;
      }
      throw e;
    }
    const key = JSON.stringify(g);
    if (key !== shown) {
      shown = key;
      draw(main, g);
    }
    return g.state === 'running';
  }, POLL_MS);
}

function draw(main, g) {
  const cancel = g.state === 'running' && can('cancel')
    ? action('Cancel group', `Cancel every member of group ${g.id} that has not ended?`, async () => {
      await api('POST', `/v1/groups/${seg(g.id)}/cancel`);
      flash(`Group ${g.id} is canceled.`);
      location.reload();
    }, { class: 'danger', id: 'cancel-group' })
    : null;
  fill(main,
    h('p', { class: 'crumbs' }, h('a', { href: '/' }, 'Queues'), ' / ', h('a', { href: link.queue(g.queue) }, g.queue), ' / group'),
    h('div', { class: 'title-row' },
      h('h1', {}, 'Group ', h('span', { class: 'mono', id: 'group-id' }, g.id), ' ', badge(g.state)),
      h('div', { class: 'actions' }, cancel)),
    h('dl', { class: 'kv wide' },
      kv('queue', h('a', { href: link.queue(g.queue) }, g.queue)),
      kv('members', fmtInt(g.total)),
      kv('fail fast', g.fail_fast ? 'yes' : 'no'),
      kv('created', time(g.created_at)),
      kv('finished', time(g.finished_at)),
      kv('by state', STATES.filter((s) => g.counts[s]).map((s) => [badge(s, `${s} ${g.counts[s]}`), ' ']))),
    h('h2', {}, 'Members'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'grid', id: 'members' },
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'task'), h('th', {}, 'state'), h('th', { class: 'num' }, 'attempt'), h('th', {}, 'result or error'))),
      h('tbody', {}, g.tasks.map((t, i) => h('tr', { 'data-task': t.id },
        h('td', { class: 'num' }, i + 1),
        h('td', { class: 'mono' }, h('a', { href: link.task(t.id) }, t.id)),
        h('td', {}, badge(t.state), t.cancel_requested ? ' (cancel requested)' : ''),
        h('td', { class: 'num' }, t.attempt),
        h('td', { class: 'clip mono', title: outcome(t) }, outcome(t))))))));
}

/** A member's result (compact JSON) or error, for one table cell. */
function outcome(t) {
  if (t.last_error != null && t.state !== 'completed') return t.last_error;
  return t.result == null ? '' : JSON.stringify(t.result);
}

function kv(k, v) {
  return [h('dt', {}, k), h('dd', {}, v)];
}
