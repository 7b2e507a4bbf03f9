// Measures the overview page in Debian's chromium (BENCHMARKS.md, "issue 10:
// dashboard"): bytes over the wire and time to first render, the median of
// LOADS loads with a cold cache (a fresh browser context each) and of LOADS
// reloads with a warm one. Run from the repository root:
//   cargo build --release -p weir
//   (cd crates/weir/tests/browser && npm ci)
//   WEIR_BIN=target/release/weir node crates/weir/tests/browser/measure.mjs
// RTT_MS=50 adds that much latency to every request (Chromium's network
// emulation), as a dashboard across a network would see.

import { startWeir, launch, http } from './harness.mjs';

const LOADS = Number(process.env.LOADS || 7);
const RTT_MS = Number(process.env.RTT_MS || 0);

/** A page in `ctx`, behind RTT_MS of latency if asked. */
async function newPage(ctx) {
  const page = await ctx.newPage();
  if (RTT_MS) {
    const cdp = await ctx.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: RTT_MS, downloadThroughput: -1, uploadThroughput: -1 });
  }
  return page;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** What one load of the overview cost, read from the page's own performance entries. */
async function load(page, url) {
  await page.goto(url);
  await page.waitForSelector('#queues tr[data-queue]');
  await page.waitForFunction(() => performance.getEntriesByName('weir:overview-data').length > 0);
  return page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const entries = [nav, ...performance.getEntriesByType('resource')];
    const sum = (k, f = () => true) => entries.filter(f).reduce((a, e) => a + e[k], 0);
    const isApi = (e) => new URL(e.name).pathname.startsWith('/v1/');
    const paint = Object.fromEntries(performance.getEntriesByType('paint').map((p) => [p.name, p.startTime]));
    return {
      requests: entries.length,
      transfer: sum('transferSize'),
      encoded: sum('encodedBodySize'),
      decoded: sum('decodedBodySize'),
      assetEncoded: sum('encodedBodySize', (e) => !isApi(e)),
      assetDecoded: sum('decodedBodySize', (e) => !isApi(e)),
      fcp: paint['first-contentful-paint'],
      data: performance.getEntriesByName('weir:overview-data')[0].startTime,
      domContentLoaded: nav.domContentLoadedEventEnd,
    };
  });
}

const weir = await startWeir();
const browser = await launch();
try {
  for (const q of ['emails', 'reports', 'render', 'thumbnails', 'webhooks']) {
    await http(weir.base, 'POST', `/v1/queues/${q}/tasks:batch`, { tasks: Array.from({ length: 20 }, (_, i) => ({ payload: { i } })) });
  }
  const url = `${weir.base}/`;
  const cold = [];
  for (let i = 0; i < LOADS; i++) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    cold.push(await load(await newPage(ctx), url));
    await ctx.close();
  }
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await newPage(ctx);
  await load(page, url);
  const warm = [];
  for (let i = 0; i < LOADS; i++) warm.push(await load(page, url));
  await ctx.close();

  const report = (name, xs) => {
    const m = (k) => median(xs.map((x) => x[k]));
    console.log(`${name}${RTT_MS ? `, ${RTT_MS} ms RTT` : ''} (median of ${xs.length}): requests ${m('requests')}, ` +
      `transferred ${m('transfer')} B (bodies: ${m('encoded')} B gzip, ${m('decoded')} B uncompressed; ` +
      `static assets ${m('assetEncoded')} B gzip / ${m('assetDecoded')} B uncompressed), ` +
      `first-contentful-paint ${m('fcp').toFixed(1)} ms, DOMContentLoaded ${m('domContentLoaded').toFixed(1)} ms, ` +
      `queues shown ${m('data').toFixed(1)} ms`);
  };
  report('cold cache', cold);
  report('warm cache', warm);
} finally {
  await browser.close();
  await weir.stop();
}
