import { existsSync, mkdirSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StatusReport } from '../../src/admin/status.js';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { testPki } from '../helpers/certs.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * The admin status page in a real browser (Debian's chromium, driven by playwright-core) against a
 * real proxy, token server and verifying partner: two upstreams, one with tenants, after traffic.
 * .ci/run installs chromium; the screenshot lands in .tmp/artifacts/status-page.png for CI to keep.
 */

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = '.tmp/artifacts';
const CONFIG_FILE = '/etc/token-proxy/status-test.yaml';
const pki = testPki();
const secrets = { partner: 'status-partner-secret-9f1c', a: 'status-tenant-a-secret-27d4', b: 'status-b-secret-6e0a' };

let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy;
/** The proxy's clock: real time until the test holds it still, so /status and / see the same moment. */
let heldAt: number | undefined;
const clock = { now: () => heldAt ?? Date.now() };

function auth(clientId: string, clientSecret: string) {
  return { type: 'client_credentials', tokenUrl: tokenServer.tokenUrl, clientId, clientSecret };
}

async function get(path: string, method: 'GET' | 'HEAD' | 'POST' = 'GET') {
  const res = await request(`${proxy.adminUrl}${path}`, { method });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

async function call(path: string, headers: Record<string, string> = {}): Promise<number> {
  const res = await request(`${proxy.url}${path}`, { headers });
  await res.body.dump();
  return res.statusCode;
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  proxy = await startProxy(
    {
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          ca: pki.caFile,
          auth: auth('status-partner', secrets.partner),
        },
        {
          name: 'multi',
          target: partner.url,
          pathPrefix: '/multi',
          ca: pki.caFile,
          auth: { type: 'client_credentials', tokenUrl: tokenServer.tokenUrl },
          tenants: {
            from: 'header:X-Tenant',
            credentials: {
              a: { clientId: 'status-a', clientSecret: secrets.a },
              b: { clientId: 'status-b', clientSecret: secrets.b },
            },
          },
        },
      ],
    },
    {
      clock,
      configFile: CONFIG_FILE,
      statusHooks: { breakerState: (upstream) => (upstream === 'partner' ? 'closed' : undefined) },
    },
  );
  // Traffic: the partner and tenant a get tokens; tenant b's credentials are refused.
  expect(await call('/partner/one')).toBe(200);
  expect(await call('/multi/two', { 'x-tenant': 'a' })).toBe(200);
  tokenServer.respondWith((res, req) => {
    if (req.headers.authorization?.startsWith('Basic ') !== true) return;
    const id = Buffer.from(req.headers.authorization.slice(6), 'base64').toString('utf8').split(':')[0];
    if (id !== 'status-b') return;
    res.statusCode = 401;
    res.body = { error: 'invalid_client', error_description: `client secret ${secrets.b} is wrong` };
  });
  expect(await call('/multi/three', { 'x-tenant': 'b' })).toBe(502);
  expect(tokenServer.issued).toHaveLength(2);
  heldAt = Date.now() + 1_000;
});

afterAll(async () => {
  await proxy?.close();
  await partner?.close();
  await tokenServer?.stop();
});

describe('GET /status and GET / on the admin listener', () => {
  it('reports each upstream and tenant: token state, expiry, last refresh, last failure reason, breaker', async () => {
    const res = await get('/status');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/json');
    const report = JSON.parse(res.text) as StatusReport;
    expect(report.generatedAt).toBe(new Date(heldAt as number).toISOString());
    expect(report.sharedCache).toBe('not_configured');
    expect(report.config).toMatchObject({ file: CONFIG_FILE, lastReloadOutcome: 'start' });
    expect(report.upstreams.map((u) => [u.name, u.breaker, u.tokenSource])).toEqual([
      ['partner', 'closed', 'upstream'],
      ['multi', 'not_configured', 'tenants'],
    ]);
    const [p, a, b] = report.upstreams.flatMap((u) => u.tokens);
    expect(p).toMatchObject({ tenant: null, state: 'valid', lastFailureReason: null });
    expect(a).toMatchObject({ tenant: 'a', state: 'valid', lastFailureReason: null });
    expect(b).toMatchObject({ tenant: 'b', state: 'failing', expiresInSeconds: null, lastRefreshAt: null });
    expect(b?.lastFailureReason).toBe('invalid_client');
    // 300 s tokens; the clock is held a second past the traffic.
    expect(p?.expiresInSeconds).toBeGreaterThanOrEqual(295);
    expect(p?.expiresInSeconds).toBeLessThanOrEqual(299);
    expect(p?.lastRefreshDurationMs).toBeGreaterThanOrEqual(0);
    expect(Date.parse(p?.lastRefreshAt ?? '')).toBeLessThan(heldAt as number);
  });

  it('never shows a token, client secret or Authorization value in the JSON or the page', async () => {
    const json = await get('/status');
    const html = await get('/');
    expect([json.status, html.status]).toEqual([200, 200]);
    const bodies = json.text + html.text;
    // Both list all three token sources and the failure, so there is something to leak from.
    for (const body of [json.text, html.text]) expect(body.split('invalid_client').length - 1).toBe(1);
    expect(tokenServer.issued).toHaveLength(2);
    for (const token of tokenServer.issued) {
      expect(bodies).not.toContain(token);
      expect(bodies).not.toContain(token.split('.')[2] as string);
    }
    for (const secret of Object.values(secrets)) expect(bodies).not.toContain(secret);
    expect(bodies).not.toContain(Buffer.from(`status-partner:${secrets.partner}`).toString('base64'));
    expect(bodies.toLowerCase()).not.toContain('bearer');
  });

  it('serves the page self-contained under a strict Content-Security-Policy, nosniff, no-store', async () => {
    const page = await get('/');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.headers['content-security-policy']).toBe(
      "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    expect(page.headers['cache-control']).toBe('no-store');
    expect(page.text).not.toMatch(/<script|<link|src=|href=|url\(/i);
  });

  it('answers HEAD with the headers and no body, like the other admin endpoints', async () => {
    for (const path of ['/', '/status']) {
      const head = await get(path, 'HEAD');
      expect(head.status).toBe(200);
      expect(head.text).toBe('');
      expect(Number(head.headers['content-length'])).toBeGreaterThan(0);
    }
  });

  it('refuses other methods with 405 and unknown paths with 404, with no token in the body', async () => {
    for (const path of ['/', '/status']) {
      const post = await get(path, 'POST');
      expect(post.status).toBe(405);
      expect(JSON.parse(post.text)).toEqual({ error: 'method_not_allowed' });
    }
    const unknown = await get('/status/partner');
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.text)).toEqual({ error: 'not_found' });
    expect((await get('/index.html')).status).toBe(404);
    for (const token of tokenServer.issued) expect(unknown.text).not.toContain(token);
  });
});

describe('the status page in a real browser', () => {
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)`);
    }
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 420 } });
  });

  afterAll(async () => {
    await browser?.close();
  });

  it('renders a row per upstream and tenant showing the values of GET /status, and keeps a screenshot', async () => {
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
    });
    const failed: string[] = [];
    page.on('requestfailed', (r) => failed.push(r.url()));
    const requested: string[] = [];
    page.on('request', (r) => requested.push(r.url()));

    const response = await page.goto(`${proxy.adminUrl}/`);
    expect(response?.status()).toBe(200);
    expect(await page.title()).toBe('token-proxy status');
    const report = JSON.parse((await get('/status')).text) as StatusReport;

    // Read through locators: what the browser rendered, as text (the DOM's types stay in the browser).
    const rows = [];
    for (const tr of await page.locator('tbody tr').all()) {
      const text = async (name: string) => (await tr.locator(`[data-field="${name}"]`).textContent()) ?? '';
      const time = async (name: string, read: 'text' | 'datetime') => {
        const t = tr.locator(`[data-field="${name}"] time`);
        if ((await t.count()) === 0) return null;
        return read === 'text' ? await t.textContent() : await t.getAttribute('datetime');
      };
      rows.push({
        upstream: await text('upstream'),
        tenant: await text('tenant'),
        state: await text('state'),
        expiresIn: await text('expiresIn'),
        lastRefreshAt: await time('lastRefreshAt', 'text'),
        lastRefreshDuration: await text('lastRefreshDuration'),
        lastFailureReason: await text('lastFailureReason'),
        lastFailureAt: await time('lastFailureAt', 'datetime'),
        breaker: await text('breaker'),
      });
    }
    const expected = report.upstreams.flatMap((u) =>
      u.tokens.map((t) => ({
        upstream: u.name,
        tenant: t.tenant ?? '—',
        state: t.state,
        expiresIn: t.expiresInSeconds === null ? '—' : `${t.expiresInSeconds} s`,
        lastRefreshAt: t.lastRefreshAt,
        lastRefreshDuration: t.lastRefreshDurationMs === null ? '—' : `${t.lastRefreshDurationMs} ms`,
        lastFailureReason: t.lastFailureReason ?? '—',
        lastFailureAt: t.lastFailureAt,
        breaker: u.breaker,
      })),
    );
    expect(rows).toHaveLength(3);
    expect(rows).toEqual(expected);
    expect(rows.map((r) => [r.upstream, r.tenant, r.state])).toEqual([
      ['partner', '—', 'valid'],
      ['multi', 'a', 'valid'],
      ['multi', 'b', 'failing'],
    ]);

    const header: Record<string, string | null> = {};
    for (const dd of await page.locator('dd[data-field]').all()) {
      const time = dd.locator('time');
      header[(await dd.getAttribute('data-field')) ?? ''] =
        (await time.count()) === 0 ? await dd.textContent() : await time.getAttribute('datetime');
    }
    expect(header).toEqual({
      generatedAt: report.generatedAt,
      sharedCache: report.sharedCache,
      configFile: report.config.file,
      lastReloadAt: report.config.lastReloadAt,
      lastReloadOutcome: report.config.lastReloadOutcome,
      lastReloadTrigger: report.config.lastReloadTrigger ?? '—', // null is shown as a dash
      lastSuccessfulReloadAt: report.config.lastSuccessfulReloadAt,
    });

    // The inline style applied under the CSP: a valid state is drawn green, a failing one red.
    const colours = await page.locator('td[data-field="state"]').evaluateAll((tds: unknown[]) => {
      const { getComputedStyle } = globalThis as unknown as {
        getComputedStyle(this: void, e: unknown): { color: string };
      };
      return tds.map((td) => getComputedStyle(td).color);
    });
    expect(colours).toEqual(['rgb(26, 127, 55)', 'rgb(26, 127, 55)', 'rgb(207, 34, 46)']);
    // Self-contained: the page itself was the only request (a favicon may be asked for and 404).
    expect(requested.filter((u) => !u.endsWith('/favicon.ico'))).toEqual([`${proxy.adminUrl}/`]);
    expect(failed).toEqual([]);
    expect(violations).toEqual([]);

    mkdirSync(ARTIFACTS, { recursive: true });
    const png = await page.screenshot({ path: `${ARTIFACTS}/status-page.png`, fullPage: true });
    expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
  });
});

describe('after a reload', () => {
  it('shows the reload time and outcome, and the tokens kept across it', async () => {
    const before = JSON.parse((await get('/status')).text) as StatusReport;
    heldAt = (heldAt as number) + 5_000;
    await proxy.app.reload(proxy.app.config);
    const after = JSON.parse((await get('/status')).text) as StatusReport;
    const at = new Date(heldAt).toISOString();
    expect(after.config).toEqual({
      file: CONFIG_FILE,
      lastReloadAt: at,
      lastReloadOutcome: 'success',
      lastReloadTrigger: null, // App.reload called directly: no reloader named a trigger
      lastSuccessfulReloadAt: at,
    });
    expect(after.upstreams.flatMap((u) => u.tokens.map((t) => [t.state, t.lastRefreshAt]))).toEqual(
      before.upstreams.flatMap((u) => u.tokens.map((t) => [t.state, t.lastRefreshAt])),
    );
  });
});
