// DOM building and formatting. Everything the dashboard shows goes through `h`,
// which makes text nodes of strings: producer payloads, errors and names are
// never parsed as HTML.

/** An element with attributes (`on…` keys are listeners) and children. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

/** Dashboard links: path segments are always encoded. */
export const link = {
  queue: (q, query) => `/ui/queues/${encodeURIComponent(q)}${query ? '?' + new URLSearchParams(query) : ''}`,
  task: (id) => `/ui/tasks/${encodeURIComponent(id)}`,
  group: (id) => `/ui/groups/${encodeURIComponent(id)}`,
};

export const STATES = ['scheduled', 'pending', 'active', 'completed', 'dead', 'canceled'];
export const TERMINAL = new Set(['completed', 'dead', 'canceled']);

/** A task or group state as a coloured badge. */
export function badge(state, extra) {
  return h('span', { class: `badge s-${state}`, 'data-state': state }, extra || state);
}

const num = new Intl.NumberFormat();
export const fmtInt = (n) => (n == null ? '–' : num.format(n));

/** Tasks per second, to three significant digits; `–` before there are two reads. */
export function fmtRate(r) {
  if (r == null) return '–';
  if (r === 0) return '0';
  if (r < 0.01) return '<0.01';
  return r >= 100 ? num.format(Math.round(r)) : r.toPrecision(3).replace(/\.?0+$/, '');
}

/** A duration in milliseconds, shortest readable form. */
export function fmtAge(ms) {
  if (ms == null) return '–';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${m % 60} min`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

/** An RFC 3339 time as local time, with the exact value on hover. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '–');
  const d = new Date(iso);
  const ago = Date.now() - d.getTime();
  const rel = ago >= 0 ? `${fmtAge(ago)} ago` : `in ${fmtAge(-ago)}`;
  return h('time', { datetime: iso, title: `${iso} (${rel})` }, d.toLocaleString());
}

/** A button that asks before it acts (every write does), then reports. */
export function action(label, question, run, attrs) {
  return h('button', {
    type: 'button', ...attrs,
    onclick: async (ev) => {
      const b = ev.currentTarget;
      if (!window.confirm(question)) return;
      b.disabled = true;
      try { await run(); } catch (e) { flash(e.message || String(e), true); } finally { b.disabled = false; }
    },
  }, label);
}

/** A line at the top of the page: what an action did, or what went wrong. */
export function flash(text, error) {
  const el = document.getElementById('flash');
  el.hidden = !text;
  el.classList.toggle('error', !!error);
  fill(el, text || '');
}

/** A page's "this does not exist / could not load" message. */
export function problem(main, title, err) {
  fill(main, h('h1', {}, title), h('p', { class: 'error-text' }, err.message || String(err)));
}

/** Calls `tick` now and then every `ms` while the page is visible, never two at once. */
export function poll(tick, ms) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    timer = null;
    if (stopped || document.hidden) return;
    let again = true;
    try { again = (await tick()) !== false; } catch (e) { console.warn(e); }
    if (again && !stopped) timer = setTimeout(run, ms);
    else stopped = true;
  };
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && !stopped && timer === null) run();
  });
  run();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

/** A trace id from a W3C traceparent (`version-traceid-parentid-flags`). */
export function traceId(traceparent) {
  const parts = (traceparent || '').split('-');
  return parts.length >= 4 ? parts[1] : null;
}
