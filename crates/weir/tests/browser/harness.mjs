// What the dashboard's browser test and its measurement share: a real `weir
// serve` (the built binary, a free port, a temporary data directory), Debian's
// chromium under playwright-core (its own browser download cannot work here),
// and the JSON API over HTTP for setting the scene.

import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const CHROMIUM = process.env.WEIR_CHROMIUM || '/usr/bin/chromium';
export const SHOTS = join(ROOT, 'target', 'dashboard-screenshots');
const run = promisify(execFile);

/** Whether chromium is there; on CI (`CI=true`) its absence is a failure, not a skip. */
export function haveChromium() {
  if (existsSync(CHROMIUM)) return true;
  if (process.env.CI === 'true') throw new Error(`${CHROMIUM} is missing: the dashboard's browser test needs Debian's chromium on CI`);
  console.log(`# note: ${CHROMIUM} not found; skipping the dashboard's browser test (apt-get install chromium)`);
  return false;
}

/**
 * Starts `weir serve` and resolves once it printed the address it listens on.
 * With `auth`, the server checks API keys (`--require-auth`), and the first
 * admin key is made on its data directory beforehand (`weir keys create`, as an
 * operator would): it is `adminKey` of the answer.
 */
export async function startWeir({ auth = false } = {}) {
  const bin = process.env.WEIR_BIN || join(ROOT, 'target', 'debug', 'weir');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: build it first (cargo build -p weir)`);
  const dir = mkdtempSync(join(tmpdir(), 'weir-ui-'));
  const env = { ...process.env, WEIR_LOG: 'warn' };
  const args = ['serve', '--listen', '127.0.0.1:0', '--data-dir', dir];
  let adminKey = null;
  if (auth) {
    const { stdout } = await run(bin, ['keys', 'create', '--data-dir', dir, '--name', 'browser-admin', '--role', 'admin'], { env });
    adminKey = stdout.match(KEY)?.[0];
    if (!adminKey) throw new Error(`weir keys create printed no key: ${stdout}`);
    args.push('--require-auth');
  }
  const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const base = await new Promise((ok, fail) => {
    child.once('exit', (code) => fail(new Error(`weir serve exited (${code}) before it listened`)));
    lines.on('line', (line) => {
      const at = line.indexOf('weir listening on http://');
      if (at >= 0) ok(line.slice(at + 'weir listening on '.length).trim());
    });
  });
  return {
    base,
    adminKey,
    async stop() {
      const exited = new Promise((ok) => child.once('exit', ok));
      child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An API key's text: `weir_<16 hex id>_<64 hex secret>`. */
export const KEY = /weir_[0-9a-f]{16}_[0-9a-f]{64}/;

/**
 * Headless Debian chromium, quiet: no network of its own. Playwright gives each
 * launch a fresh profile of its own (`--user-data-dir` in a new temporary
 * directory, removed at close) and refuses that flag from its caller.
 */
export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
}

/** One JSON API call; a status other than `expect` throws with the answer. */
export async function http(base, method, path, body, { expect, headers } = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const ok = expect === undefined ? res.ok : res.status === expect;
  if (!ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export function shotsDir() {
  mkdirSync(SHOTS, { recursive: true });
  return SHOTS;
}

/**
 * Collects into `problems` what must not happen on a dashboard page: a console
 * error (a CSP violation is one), a script error, or a failed request other
 * than the API's own 4xx answers (a search meets a 404 before it finds a group;
 * a signed-out page meets 401s; the browser logs those) and a poll aborted by a
 * navigation.
 */
export function watch(page, problems) {
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('response', (r) => {
    const api = new URL(r.url()).pathname.startsWith('/v1/') && r.status() < 500;
    if (r.status() >= 400 && !api) problems.push(`${r.status()} for ${r.url()}`);
  });
  page.on('requestfailed', (r) => {
    const why = r.failure()?.errorText || '';
    if (!why.includes('ERR_ABORTED')) problems.push(`request failed: ${r.url()} ${why}`);
  });
  return page;
}
