// A task: its state, times, worker, group and trace id, its payload and its
// result or error (shown from the API's own text, see api.rawField), and the
// actions its state allows. Polled every 2 s until it ends.

import { call, rawField, pretty, seg, ApiError } from './api.js';
import { h, fill, link, badge, time, problem, poll, traceId, TERMINAL } from './dom.js';
import { taskActions } from './queue.js';
import { POLL_MS } from './overview.js';

export function task(main, id) {
  document.title = `Task ${id} · weir`;
  let shown = '';
  let poller = null;
  const load = async () => {
    let text;
    try {
      text = await call('GET', `/v1/tasks/${seg(id)}`);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 400)) {
        problem(main, `Task ${id}`, e);
        return false;
      }
      throw e;
    }
    if (text !== shown) {
      shown = text;
      draw(main, JSON.parse(text), text, async (what) => {
        if (what === 'deleted') location.assign(link.queue(JSON.parse(text).queue));
        else await restart();
      });
    }
    return !TERMINAL.has(JSON.parse(text).state);
  };
  const restart = async () => {
    if (poller) poller.stop();
    poller = poll(load, POLL_MS);
  };
  restart();
}

function draw(main, t, text, after) {
  const trace = traceId(t.traceparent);
  const payload = rawField(text, 'payload');
  const result = rawField(text, 'result');
  fill(main,
    h('p', { class: 'crumbs' }, h('a', { href: '/' }, 'Queues'), ' / ',
      h('a', { href: link.queue(t.queue) }, t.queue), ' / ', h('a', { href: link.queue(t.queue, { state: t.state }) }, t.state)),
    h('div', { class: 'title-row' },
      h('h1', {}, 'Task ', h('span', { class: 'mono', id: 'task-id' }, t.id), ' ', badge(t.state),
        t.cancel_requested ? badge('cancel_requested', 'cancel requested') : null),
      h('div', { class: 'actions' }, taskActions(t, after))),
    h('dl', { class: 'kv wide', id: 'task-facts' },
      kv('queue', h('a', { href: link.queue(t.queue) }, t.queue)),
      kv('kind', t.kind),
      kv('attempt', `${t.attempt} of ${t.max_attempts}`),
      kv('priority', t.priority),
      kv('timeout', `${t.timeout_ms} ms`),
      kv('created', time(t.created_at)),
      kv('run at', time(t.run_at)),
      kv('started', time(t.started_at)),
      kv('finished', time(t.finished_at)),
      t.deadline ? kv('deadline', time(t.deadline)) : null,
      t.lease_expires_at ? kv('lease expires', time(t.lease_expires_at)) : null,
      kv('worker', t.worker || dash()),
      kv('group', t.group ? h('a', { href: link.group(t.group), id: 'group-link', class: 'mono' }, t.group) : dash()),
      kv('trace id', trace ? h('span', { class: 'mono', id: 'trace-id', title: t.traceparent }, trace) : dash()),
      t.tracestate ? kv('tracestate', h('span', { class: 'mono' }, t.tracestate)) : null,
      t.idempotency_key ? kv('idempotency key', h('span', { class: 'mono' }, t.idempotency_key)) : null),
    h('h2', {}, 'Payload'),
    h('pre', { class: 'json', id: 'payload' }, payload === undefined ? '' : pretty(payload)),
    t.last_error != null ? [h('h2', {}, 'Last error'), h('pre', { class: 'json error-text', id: 'last-error' }, t.last_error)] : null,
    result !== undefined && result !== 'null' ? [h('h2', {}, 'Result'), h('pre', { class: 'json', id: 'result' }, pretty(result))] : null);
}

function kv(k, v) {
  return [h('dt', {}, k), h('dd', {}, v)];
}

function dash() {
  return h('span', { class: 'muted' }, '–');
}
