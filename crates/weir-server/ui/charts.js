// Live line charts on uPlot (vendored: vendor/uPlot.iife.min.js, MIT). Each
// chart keeps the last POINTS_MAX samples in memory; a page starts with empty
// charts and fills them as it polls.

import { h, fmtRate } from './dom.js';

const POINTS_MAX = 150; // 5 minutes at one sample every 2 s
const WINDOW_MIN_S = 60;

export const COLORS = {
  enqueued: '#2563eb', completed: '#16a34a', failed: '#dc2626',
  pending: '#d97706', active: '#7c3aed', scheduled: '#0891b2',
};

/**
 * The x scale: the samples, at least WINDOW_MIN_S wide, ending at the last one.
 * Read from the data, not from uPlot's proposal: for a single sample it proposes
 * 86,400,000 s (its day in milliseconds, read as seconds).
 */
function xRange(u, min, max) {
  const xs = u.data[0];
  const hi = xs.length ? xs[xs.length - 1] : Number.isFinite(max) ? max : Date.now() / 1000;
  const lo = xs.length ? xs[0] : hi;
  return [Math.min(lo, hi - WINDOW_MIN_S), hi];
}

export class LiveChart {
  /**
   * @param title  shown above the chart
   * @param series [{key, label}] — values pushed in this order
   * @param unit   shown after values in the legend
   */
  constructor(title, series, unit) {
    this.data = [[], ...series.map(() => [])];
    this.el = h('figure', { class: 'chart' }, h('figcaption', {}, title));
    this.plotEl = h('div', { class: 'plot' });
    this.el.append(this.plotEl);
    if (typeof window.uPlot !== 'function') {
      this.plotEl.append(h('p', { class: 'muted' }, 'Charts are unavailable (uPlot did not load).'));
      return;
    }
    // Canvas strokes take no CSS variables: read the page's text colour once.
    const ink = getComputedStyle(document.body).color;
    const grid = { stroke: 'rgba(128,128,128,0.18)' };
    const fmt = unit === '/s' ? (v) => (v == null ? '–' : fmtRate(v) + '/s') : (v) => (v == null ? '–' : String(Math.round(v)));
    this.plot = new window.uPlot({
      width: 400,
      height: 170,
      series: [
        {},
        // uPlot draws a series' points only while they are sparse: a chart's
        // first samples show as dots before there is a line.
        ...series.map((s) => ({ label: s.label, stroke: COLORS[s.key], width: 2, value: (u, v) => fmt(v) })),
      ],
      // At least a minute wide: a few seconds of samples would be labelled in
      // milliseconds, and a single one in years.
      scales: { x: { time: true, range: xRange }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, unit === '/s' ? 1 : 5)] } },
      axes: [{ stroke: ink, grid, ticks: { show: false } }, { stroke: ink, size: 48, grid, ticks: { show: false } }],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    }, this.data, this.plotEl);
    // Follow the container's width (a phone, a resized window).
    new ResizeObserver(() => {
      const w = Math.floor(this.plotEl.clientWidth);
      if (w > 0 && w !== this.plot.width) this.plot.setSize({ width: w, height: 170 });
    }).observe(this.plotEl);
  }

  /** Adds one sample at `t` (ms since the epoch); null values leave a gap. */
  push(t, values) {
    this.data[0].push(t / 1000);
    values.forEach((v, i) => this.data[i + 1].push(v));
    if (this.data[0].length > POINTS_MAX) this.data.forEach((col) => col.shift());
    if (this.plot) this.plot.setData(this.data);
  }
}

/**
 * Rates from a queue's monotonic totals between two reads: tasks per second
 * enqueued, completed and failed (an attempt that failed: retried or dead). Null
 * on the first read, or when a total went down (the queue was deleted and made
 * again, or another embedded server started).
 */
export function rates(prev, cur, dtMs) {
  if (!prev || dtMs <= 0) return { enqueued: null, completed: null, failed: null };
  const d = (k) => cur[k] - prev[k];
  if (['enqueued', 'completed', 'dead', 'retried'].some((k) => d(k) < 0)) {
    return { enqueued: null, completed: null, failed: null };
  }
  const s = dtMs / 1000;
  return { enqueued: d('enqueued') / s, completed: d('completed') / s, failed: (d('dead') + d('retried')) / s };
}
