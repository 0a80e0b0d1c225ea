import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fixture, until } from './helpers/procs.js';
import { call, startServe } from './helpers/serve.js';
import type { ServeChild } from './helpers/serve.js';

/**
 * The dashboard in a real headless Chromium (Debian's `chromium`, driven by playwright-core)
 * against a real `tidepool serve`: workers move through `running` to `reaped`, counters
 * change, a task cancelled from the page leaves. The screenshot is kept as an artifact
 * (`artifacts/dashboard.png`). `.ci/run` installs Chromium; without it this test fails.
 */

/** Chromium on PATH (Debian's `chromium` package), or TIDEPOOL_CHROMIUM. */
const CHROMIUM =
  process.env.TIDEPOOL_CHROMIUM ??
  (process.env.PATH ?? '')
    .split(':')
    .map((dir) => join(dir, 'chromium'))
    .find((file) => existsSync(file)) ??
  'chromium';
const ARTIFACTS = fileURLToPath(new URL('../artifacts/', import.meta.url));
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

let browser: Browser;
let root: string;
let serve: ServeChild | null = null;

beforeAll(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
});
afterAll(async () => {
  await browser?.close();
});
afterEach(async () => {
  if (serve) {
    serve.child.kill('SIGTERM');
    await serve.exited;
    serve = null;
  }
  rmSync(root, { recursive: true, force: true });
});

/** The page's row of a worker running `taskId`, as [state, pid]. */
async function rowOf(page: Page, taskId: string): Promise<{ state: string; worker: string } | null> {
  return page.evaluate((id) => {
    for (const row of document.querySelectorAll<HTMLTableRowElement>('#workers-body tr')) {
      if (row.querySelector('td.task')?.textContent === id) return { state: row.dataset.state!, worker: row.dataset.worker! };
    }
    return null;
  }, taskId);
}

const counter = (page: Page, label: string) =>
  page.evaluate((l) => Number(document.querySelector(`[data-counter="${l}"] b`)?.textContent ?? NaN), label);

/** Wait in the test's process for what the page shows (polling its DOM). */
async function pageUntil(page: Page, check: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`the page never showed ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A TCP proxy to `target`: `cut()` drops every connection, `refuse` turns new ones away. */
async function tcpProxy(target: URL) {
  const sockets = new Set<Socket>();
  const state = { refuse: false };
  const server = createServer((client) => {
    if (state.refuse) return client.destroy();
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    set refuse(value: boolean) {
      state.refuse = value;
    },
    cut: () => sockets.forEach((s) => s.destroy()),
    close: () =>
      new Promise<void>((resolve) => {
        sockets.forEach((s) => s.destroy());
        server.close(() => resolve());
      }),
  };
}

describe('the dashboard in Chromium', () => {
  it('shows workers moving through running to reaped, counters, and cancels a task from the page', async () => {
    root = mkdtempSync(join(tmpdir(), 'tidepool-dashboard-'));
    const dir = join(root, 'ran');
    mkdirSync(dir);
    const released = join(root, 'released');
    const token = 'dashboard-token-0123456789';
    serve = await startServe(['--worker', fixture('progress-until.js'), '--concurrency', '4'], { TIDEPOOL_HTTP_TOKEN: token });
    const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
    await page.goto(serve.url);
    // The service has a token: the page asks for it, then goes live.
    await pageUntil(page, async () => (await page.textContent('#connection')) === 'token needed', 'that it needs the token');
    await page.fill('#token', token);
    await page.dispatchEvent('#token', 'change');
    await pageUntil(page, async () => (await page.textContent('#connection')) === 'live', 'the live stream');
    expect(await page.textContent('#pool-state')).toBe('running');
    // Two tasks that hang until released, one to cancel later.
    for (const id of ['hang-1', 'hang-2', 'to-cancel']) {
      const answer = await call(`${serve.url}/tasks`, { body: { id, params: { dir, release: released, progress: { step: id } } }, token });
      expect(answer.status).toBe(202);
    }
    for (const id of ['hang-1', 'hang-2', 'to-cancel']) {
      await pageUntil(page, async () => (await rowOf(page, id))?.state === 'running', `${id} running`);
    }
    expect(await counter(page, 'running')).toBe(3);
    // The running worker state is highlighted on the worker statechart, with its count.
    const highlighted = await page.evaluate(() => document.querySelector('svg[data-machine="worker"] g.state[data-state="running"]')?.classList.contains('active'));
    expect(highlighted).toBe(true);
    expect(await page.textContent('svg[data-machine="worker"] g.state[data-state="running"] text.count')).toBe('3');
    // Progress reported by the handler shows on its row.
    await pageUntil(page, async () => ((await page.textContent("#workers-body")) ?? "").includes('"step":"hang-1"'), 'the progress of hang-1');

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });

    // Cancel from the page: its worker is reaped and its outcome is `cancelled`.
    const cancelled = (await rowOf(page, 'to-cancel'))!.worker;
    await page.click(`#workers-body tr[data-worker="${cancelled}"] button.cancel`);
    await pageUntil(page, async () => (await page.getAttribute('#recent-body tr[data-task="to-cancel"]', 'data-outcome').catch(() => null)) === 'cancelled', 'the cancelled outcome');
    await pageUntil(page, async () => (await page.getAttribute(`#workers-body tr[data-worker="${cancelled}"]`, 'data-state').catch(() => null)) !== 'running', 'the cancelled worker leaving running');
    // It leaves the page once reaped a while.
    await pageUntil(page, async () => (await page.$(`#workers-body tr[data-worker="${cancelled}"]`)) === null, 'the cancelled worker leaving the page');
    expect((await call(`${serve.url}/tasks/to-cancel`, { token })).json).toMatchObject({ status: 'failed', error: { kind: 'cancelled' } });

    // Release the others: they resolve, their workers reach `reaped`, the counters move.
    const resolvedBefore = await counter(page, 'resolved');
    const seenReaped = page.evaluate(
      () =>
        new Promise<boolean>((resolve) => {
          const check = () => {
            for (const row of document.querySelectorAll<HTMLTableRowElement>('#workers-body tr')) {
              if (row.querySelector('td.task')?.textContent === 'hang-1' && row.dataset.state === 'reaped') return resolve(true);
            }
            setTimeout(check, 20);
          };
          check();
        }),
    );
    writeFileSync(released, '');
    expect(await seenReaped).toBe(true);
    await pageUntil(page, async () => (await counter(page, 'resolved')) === resolvedBefore + 2, 'two more resolved');
    await pageUntil(page, async () => (await counter(page, 'running')) === 0, 'no worker running');
    expect(await page.getAttribute('#recent-body tr[data-task="hang-2"]', 'data-outcome')).toBe('resolved');
    expect(await counter(page, 'failed: cancelled')).toBe(1);
    await page.close();
  });

  it('a page that reconnects catches up from a snapshot', async () => {
    root = mkdtempSync(join(tmpdir(), 'tidepool-dashboard-'));
    serve = await startServe(['--worker', fixture('slow.js'), '--concurrency', '2']);
    // The page goes through a TCP proxy of the test's, whose connections the test can cut.
    const proxy = await tcpProxy(new URL(serve.url));
    const page = await browser.newPage();
    await page.goto(proxy.url);
    await pageUntil(page, async () => (await page.textContent('#connection')) === 'live', 'the live stream');
    for (let i = 0; i < 5; i++) expect((await call(`${serve.url}/tasks?wait=true`, { body: { id: `fast-${i}`, params: { ms: 10 } } })).status).toBe(200);
    await pageUntil(page, async () => (await counter(page, 'resolved')) === 5, 'five resolved');
    // Cut the page's connection; what happens meanwhile reaches it from the snapshot it gets
    // when it reconnects.
    proxy.refuse = true;
    proxy.cut();
    await pageUntil(page, async () => (await page.textContent('#connection')) === 'reconnecting', 'the connection lost');
    for (let i = 5; i < 8; i++) expect((await call(`${serve.url}/tasks?wait=true`, { body: { id: `fast-${i}`, params: { ms: 10 } } })).status).toBe(200);
    expect(await counter(page, 'resolved')).toBe(5);
    proxy.refuse = false;
    await pageUntil(page, async () => (await page.textContent('#connection')) === 'live', 'the stream back');
    await pageUntil(page, async () => (await counter(page, 'resolved')) === 8, 'eight resolved after the reconnection');
    // A second page, opened afterwards, starts from the snapshot with the same counters.
    const late = await browser.newPage();
    await late.goto(serve.url);
    await pageUntil(late, async () => (await counter(late, 'resolved')) === 8, 'eight resolved on a new page');
    expect(await late.$$eval('#recent-body tr', (rows) => rows.length)).toBe(8);
    // SIGTERM with pages open: their streams end, the service drains and exits 0.
    serve.child.kill('SIGTERM');
    expect(await serve.exited).toEqual({ code: 0, signal: null });
    serve = null;
    await pageUntil(late, async () => (await late.textContent('#connection')) === 'reconnecting', 'the stream ended by the service');
    await page.close();
    await late.close();
    await proxy.close();
  });
});
