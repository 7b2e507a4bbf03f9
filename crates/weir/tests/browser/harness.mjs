// What the dashboard's browser test and its measurement share: a real `weir
// serve` (the built binary, a free port, a temporary data directory), Debian's
// chromium under playwright-core (its own browser download cannot work here),
// and the JSON API over HTTP for setting the scene.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const CHROMIUM = process.env.WEIR_CHROMIUM || '/usr/bin/chromium';
export const SHOTS = join(ROOT, 'target', 'dashboard-screenshots');

/** Whether chromium is there; on CI (`CI=true`) its absence is a failure, not a skip. */
export function haveChromium() {
  if (existsSync(CHROMIUM)) return true;
  if (process.env.CI === 'true') throw new Error(`${CHROMIUM} is missing: the dashboard's browser test needs Debian's chromium on CI`);
  console.log(`# note: ${CHROMIUM} not found; skipping the dashboard's browser test (apt-get install chromium)`);
  return false;
}

/** Starts `weir serve` and resolves once it printed the address it listens on. */
export async function startWeir() {
  const bin = process.env.WEIR_BIN || join(ROOT, 'target', 'debug', 'weir');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: build it first (cargo build -p weir)`);
  const dir = mkdtempSync(join(tmpdir(), 'weir-ui-'));
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dir], {
    env: { ...process.env, WEIR_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
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
    async stop() {
      const exited = new Promise((ok) => child.once('exit', ok));
      child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

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
