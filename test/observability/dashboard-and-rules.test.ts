import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { Redis } from 'ioredis';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { EntryCipher, cipherKey } from '../../src/tokens/entry-cipher.js';
import { testPki } from '../helpers/certs.js';
import { sharedCacheState, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DASHBOARD_FILE = join(ROOT, 'config', 'grafana', 'token-proxy.json');
const RULES_FILE = join(ROOT, 'config', 'prometheus', 'alerts.yaml');
const PROMETHEUS_FILE = join(ROOT, 'config', 'prometheus', 'prometheus.example.yaml');
const TOKEN_LIFETIME_SECONDS = 300;
/** Requests answered 200 by the partner in the traffic below: 1 cold, 5 in a row, 50 at once, 1 replayed after a 401. */
const EXPECTED_200 = 1 + 5 + 50 + 1;
/** The shared token cache's key (AES-256-GCM): 32 random bytes, base64, as the config asks. */
const SHARED_KEY = randomBytes(32).toString('base64');
const SHARED_CACHE_OPERATIONS = ['read', 'lock', 'write', 'unlock', 'decrypt'];

// ---------------------------------------------------------------------------------------------
// Prometheus text format and PromQL helpers
// ---------------------------------------------------------------------------------------------

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

interface Scrape {
  readonly text: string;
  /** Metric family name -> type (counter, gauge, histogram, summary, untyped). */
  readonly types: ReadonlyMap<string, string>;
  readonly samples: readonly Sample[];
}

function parseValue(raw: string): number {
  if (raw === '+Inf') return Infinity;
  if (raw === '-Inf') return -Infinity;
  return Number(raw);
}

function parseScrape(text: string): Scrape {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$/.exec(line);
    if (type !== null) {
      types.set(type[1] as string, type[2] as string);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/.exec(line);
    if (m === null) throw new Error(`unparsable sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1] as string] = l[2] as string;
    samples.push({ name: m[1] as string, labels, value: parseValue(m[3] as string) });
  }
  return { text, types, samples };
}

/** The value of the one sample with exactly these labels, or undefined. */
function valueOf(scrape: Scrape, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels);
  const found = scrape.samples.filter(
    (s) => s.name === name && Object.keys(s.labels).length === want.length && want.every(([k, v]) => s.labels[k] === v),
  );
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
  return found[0]?.value;
}

/** PromQL words that look like metric names but are not. */
const PROMQL_KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'le',
  'inf',
  'nan',
]);

/**
 * Every metric name a PromQL expression selects. Strings (label values), label matchers, range
 * selectors, grouping label lists and Grafana variables are removed first; what remains of the
 * form [a-zA-Z_:][a-zA-Z0-9_:]* is a metric name unless a `(` follows (a function or
 * aggregation) or it is a keyword. Grafana's label_values(metric, label) keeps the metric only.
 */
function metricNamesIn(expr: string): Set<string> {
  const stripped = expr
    .replace(/label_values\(\s*([^,()]+?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)/g, ' $1 ')
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const name = m[1] as string;
    if (m[2] !== undefined || PROMQL_KEYWORDS.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return names;
}

/** Names Prometheus itself makes: allowed in queries although the proxy does not export them. */
const PROMETHEUS_OWN = new Set(['up']);

/** Whether a series name exists in the scrape: a counter/gauge, or a histogram's _bucket/_sum/_count. */
function isExported(scrape: Scrape, name: string): boolean {
  const type = scrape.types.get(name);
  if (type !== undefined) return type !== 'histogram' && type !== 'summary'; // a bare histogram name selects nothing
  const part = /^(.+)_(bucket|sum|count)$/.exec(name);
  if (part === null) return false;
  const base = scrape.types.get(part[1] as string);
  return base === 'histogram' || (base === 'summary' && part[2] !== 'bucket');
}

function notExported(scrape: Scrape, names: Iterable<string>): string[] {
  return [...names].filter((n) => !PROMETHEUS_OWN.has(n) && !isExported(scrape, n)).sort();
}

// ---------------------------------------------------------------------------------------------
// The dashboard and the rules
// ---------------------------------------------------------------------------------------------

interface Panel {
  id: number;
  type: string;
  title: string;
  repeat?: string;
  datasource?: { type: string; uid: string };
  fieldConfig?: { defaults?: { unit?: string } };
  targets?: { expr: string; legendFormat?: string; datasource?: { type: string; uid: string } }[];
  panels?: Panel[];
}

interface Variable {
  name: string;
  type: string;
  query: string | { query: string };
  definition?: string;
  multi?: boolean;
  includeAll?: boolean;
  datasource?: { type: string; uid: string };
}

interface Dashboard {
  schemaVersion: number;
  uid: string;
  panels: Panel[];
  templating: { list: Variable[] };
}

interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

const dashboard = JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')) as Dashboard;
const rules = (
  parse(readFileSync(RULES_FILE, 'utf8')) as { groups: { name: string; rules: AlertRule[] }[] }
).groups.flatMap((g) => g.rules);
const allPanels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const dataPanels = allPanels.filter((p) => p.type !== 'row');

function variableQuery(v: Variable): string {
  return typeof v.query === 'string' ? v.query : v.query.query;
}

/** Every PromQL expression of the dashboard: panel targets and query variables. */
function dashboardExpressions(): string[] {
  const exprs = dataPanels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
  for (const v of dashboard.templating.list) if (v.type === 'query') exprs.push(variableQuery(v));
  return exprs;
}

function namesIn(exprs: string[]): Set<string> {
  return new Set(exprs.flatMap((e) => [...metricNamesIn(e)]));
}

/** The one data panel with this title. */
function panel(title: string): Panel {
  const found = dataPanels.filter((p) => p.title === title);
  if (found.length !== 1) throw new Error(`${found.length} panels titled "${title}"`);
  return found[0] as Panel;
}

function promtoolAvailable(): boolean {
  return spawnSync('promtool', ['--version'], { encoding: 'utf8' }).error === undefined;
}

function promtool(args: string[], input?: string) {
  const res = spawnSync('promtool', args, { encoding: 'utf8', cwd: ROOT, ...(input === undefined ? {} : { input }) });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr, output: `${res.stdout}${res.stderr}` };
}

// ---------------------------------------------------------------------------------------------
// The real stack and its traffic
// ---------------------------------------------------------------------------------------------

const pki = testPki();
const client = new Agent({ connections: 100 });
let tokenServer: TokenServer;
let partner: PartnerApi;
let redis: TestRedis;
/** The proxy that gets the traffic below; it shares its tokens through Redis with the two replicas. */
let proxy: RunningProxy;
let scrape: Scrape;
/** A second replica, same config: its first token comes from Redis. Scraped with Redis up, then after Redis died. */
let replica: RunningProxy;
let replicaScrape: Scrape;
let replicaDownScrape: Scrape;
/** A third replica with another encryption key, which finds an entry it cannot open under its key names. */
let otherKey: RunningProxy;
let otherKeyScrape: Scrape;
/** Token endpoint calls (and tokens issued) when each proxy was scraped. */
const tokenRequests = { proxy: -1, replica: -1, otherKey: -1, replicaDown: -1 };
let tokensIssuedByProxy = -1;
/** Unix seconds just before the last token of `partner` was requested, and just after the scrape. */
let lastTokenAsked = 0;
let scrapedAt = 0;

function proxyConfig(encryptionKey: string, upstreams: Record<string, unknown>[]) {
  return { tokenCache: { redis: { url: redis.url, encryptionKey, lockTimeoutMs: 2_000 } }, upstreams };
}

function upstream(name: string, clientId: string, extra: Record<string, unknown> = {}) {
  return {
    name,
    target: partner.url,
    pathPrefix: `/${name}`,
    ca: pki.caFile,
    tokenWaitTimeoutSeconds: 2,

    ...extra,
    auth: {
      type: 'client_credentials',
      tokenUrl: tokenServer.tokenUrl,
      clientId,
      clientSecret: 'observability-secret-41f',
    },
  };
}

async function get(path: string, via: RunningProxy = proxy): Promise<number> {
  const res = await client.request({ origin: via.url, path, method: 'GET' });
  await res.body.arrayBuffer();
  return res.statusCode;
}

async function scrapeOf(p: RunningProxy): Promise<Scrape> {
  const res = await request(`${p.adminUrl}/metrics`);
  expect(res.statusCode).toBe(200);
  return parseScrape(await res.body.text());
}

/** Waits for the shared tier's health event (Redis connects and drops asynchronously), then scrapes. */
async function sharedCacheUp(p: RunningProxy, want: 0 | 1): Promise<Scrape> {
  await sharedCacheState(p, want === 1);
  return scrapeOf(p);
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  tokenServer.lifetimeSeconds = TOKEN_LIFETIME_SECONDS;
  partner = await startVerifyingPartner(tokenServer);
  redis = await startRedis();
  // 'broken' has a circuit breaker, so the scrape has its state series (closed: a token failure is no verdict).
  const upstreams = () => [
    upstream('partner', 'observability-client'),
    upstream('broken', 'broken-client', { circuitBreaker: { consecutiveFailures: 5 } }),
  ];
  proxy = await startProxy(proxyConfig(SHARED_KEY, upstreams()));
  await sharedCacheUp(proxy, 1); // else the first fetches would bypass Redis

  // Misses and hits: one cold request fetches the token, then 5 in a row and 50 at once use it.
  expect(await get('/partner/cold')).toBe(200);
  for (let i = 0; i < 5; i += 1) expect(await get(`/partner/seq/${i}`)).toBe(200);
  expect(await Promise.all(Array.from({ length: 50 }, (_, i) => get(`/partner/busy/${i}`)))).toEqual(
    Array(50).fill(200),
  );
  // A 401 for a revoked token: renewed and replayed once, recovered.
  partner.revoked.add(tokenServer.issued[0] as string);
  expect(await get('/partner/revoked')).toBe(200);
  // A partner that refuses even the fresh token: still_unauthorized.
  partner.script = (req) => (req.path === '/always-401' ? { status: 401, body: '{"error":"no"}' } : undefined);
  lastTokenAsked = Date.now() / 1000;
  expect(await get('/partner/always-401')).toBe(401);
  partner.script = undefined;
  expect(await get('/partner/status/403')).toBe(403);
  // A token failure on an upstream with no token cached: invalid_client, answered 502.
  tokenServer.respondWith((res) => {
    res.statusCode = 401;
    res.body = { error: 'invalid_client', error_description: 'unknown client' };
  });
  expect(await get('/broken/x')).toBe(502);
  tokenServer.respondWith(undefined);

  scrape = await scrapeOf(proxy);
  scrapedAt = Date.now() / 1000;
  tokenRequests.proxy = tokenServer.requests.length;
  tokensIssuedByProxy = tokenServer.issued.length;

  // A second replica: its first request misses in memory and adopts the token the first one put
  // in Redis (a redis-tier hit, no token request); its second request finds it in memory.
  replica = await startProxy(proxyConfig(SHARED_KEY, upstreams()));
  await sharedCacheUp(replica, 1);
  expect(await get('/partner/replica/0', replica)).toBe(200);
  expect(await get('/partner/replica/1', replica)).toBe(200);
  replicaScrape = await scrapeOf(replica);
  tokenRequests.replica = tokenServer.requests.length;

  // A replica with another key names its entries by that key, so it would not even see the fleet's
  // entry. Copied under its names (as by tampering), the entry cannot be opened: decrypt errors,
  // and a token request of its own.
  const otherEncryptionKey = randomBytes(32).toString('base64');
  otherKey = await startProxy(proxyConfig(otherEncryptionKey, [upstream('partner', 'observability-client')]));
  await sharedCacheUp(otherKey, 1);
  const cacheKey = otherKey.app.tokens.get('partner')?.key as string;
  const admin = new Redis(redis.url);
  try {
    const fleetEntry = await admin.get(`token-proxy:t:{${new EntryCipher(cipherKey(SHARED_KEY)).name(cacheKey)}}`);
    expect(fleetEntry).not.toBeNull();
    const otherName = new EntryCipher(cipherKey(otherEncryptionKey)).name(cacheKey);
    await admin.set(`token-proxy:t:{${otherName}}`, fleetEntry as string, 'PX', 60_000);
  } finally {
    admin.disconnect();
  }
  expect(await get('/partner/other-key', otherKey)).toBe(200);
  otherKeyScrape = await scrapeOf(otherKey);
  tokenRequests.otherKey = tokenServer.requests.length;

  // Redis dies: the replica reports it and keeps answering from memory.
  await redis.kill();
  await sharedCacheUp(replica, 0);
  expect(await get('/partner/replica/2', replica)).toBe(200);
  replicaDownScrape = await scrapeOf(replica);
  tokenRequests.replicaDown = tokenServer.requests.length;
});

afterAll(async () => {
  await otherKey?.close();
  await replica?.close();
  await proxy?.close();
  await redis?.stop();
  await partner?.close();
  await tokenServer?.stop();
  await client.close();
});

// ---------------------------------------------------------------------------------------------

describe('the metrics after real traffic (hits, misses, 401 replays, a token failure)', () => {
  const partnerLabels = { upstream: 'partner' };
  const brokenLabels = { upstream: 'broken' };

  it('counts answers by upstream and status code, and times every one of them', () => {
    expect(valueOf(scrape, 'token_proxy_requests_total', { upstream: 'partner', code: '200' })).toBe(EXPECTED_200);
    expect(valueOf(scrape, 'token_proxy_requests_total', { upstream: 'partner', code: '401' })).toBe(1);
    expect(valueOf(scrape, 'token_proxy_requests_total', { upstream: 'partner', code: '403' })).toBe(1);
    expect(valueOf(scrape, 'token_proxy_requests_total', { upstream: 'broken', code: '502' })).toBe(1);
    expect(valueOf(scrape, 'token_proxy_requests_total', { upstream: 'broken', code: '200' })).toBeUndefined();
    const answered = EXPECTED_200 + 2;
    expect(valueOf(scrape, 'token_proxy_request_duration_seconds_count', partnerLabels)).toBe(answered);
    expect(valueOf(scrape, 'token_proxy_request_duration_seconds_bucket', { upstream: 'partner', le: '+Inf' })).toBe(
      answered,
    );
    expect(valueOf(scrape, 'token_proxy_request_duration_seconds_sum', partnerLabels)).toBeGreaterThan(0);
  });

  it('counts one miss and a memory-tier hit for every request that found the token cached', () => {
    expect(valueOf(scrape, 'token_proxy_token_cache_misses_total', partnerLabels)).toBe(1);
    // 5 in a row + 50 at once + the revoked, the always-401 and the 403 request: each found the token.
    expect(valueOf(scrape, 'token_proxy_token_cache_hits_total', { ...partnerLabels, tier: 'memory' })).toBe(
      5 + 50 + 3,
    );
    // Its three tokens came from the token endpoint, not from Redis (nothing there was usable).
    expect(valueOf(scrape, 'token_proxy_token_cache_hits_total', { ...partnerLabels, tier: 'redis' }) ?? 0).toBe(0);
    expect(valueOf(scrape, 'token_proxy_token_cache_misses_total', brokenLabels)).toBe(1);
    expect(
      scrape.samples.filter(
        (s) => s.name === 'token_proxy_token_cache_hits_total' && s.labels['upstream'] === 'broken',
      ),
    ).toEqual([]);
  });

  it('counts token requests by trigger and outcome, and times them', () => {
    expect(
      valueOf(scrape, 'token_proxy_token_refreshes_total', {
        upstream: 'partner',
        trigger: 'miss',
        outcome: 'success',
      }),
    ).toBe(1);
    expect(
      valueOf(scrape, 'token_proxy_token_refreshes_total', {
        upstream: 'partner',
        trigger: 'unauthorized',
        outcome: 'success',
      }),
    ).toBe(2);
    expect(
      valueOf(scrape, 'token_proxy_token_refreshes_total', {
        upstream: 'partner',
        trigger: 'ahead',
        outcome: 'success',
      }),
    ).toBeUndefined();
    // The token server saw those 3 requests for partner and the failed one for broken.
    expect(tokenRequests.proxy).toBe(4);
    expect(tokensIssuedByProxy).toBe(3);
    expect(
      valueOf(scrape, 'token_proxy_token_refresh_duration_seconds_count', { upstream: 'partner', outcome: 'success' }),
    ).toBe(3);
    expect(
      valueOf(scrape, 'token_proxy_token_refresh_duration_seconds_count', { upstream: 'broken', outcome: 'error' }),
    ).toBe(1);
  });

  it('counts the token failure by its reason', () => {
    const failures =
      valueOf(scrape, 'token_proxy_token_refresh_failures_total', { upstream: 'broken', reason: 'invalid_client' }) ??
      0;
    expect(failures).toBeGreaterThanOrEqual(1);
    expect(
      valueOf(scrape, 'token_proxy_token_refreshes_total', { upstream: 'broken', trigger: 'miss', outcome: 'error' }),
    ).toBe(failures);
    expect(
      scrape.samples.filter(
        (s) => s.name === 'token_proxy_token_refresh_failures_total' && s.labels['upstream'] === 'partner',
      ),
    ).toEqual([]);
  });

  it('counts 401 replays by outcome', () => {
    expect(
      valueOf(scrape, 'token_proxy_unauthorized_retries_total', { upstream: 'partner', outcome: 'recovered' }),
    ).toBe(1);
    expect(
      valueOf(scrape, 'token_proxy_unauthorized_retries_total', { upstream: 'partner', outcome: 'still_unauthorized' }),
    ).toBe(1);
  });

  it("publishes the current token's expiry, within its lifetime from now, and none for an upstream without a token", () => {
    const expiry = valueOf(scrape, 'token_proxy_token_expiry_timestamp_seconds', partnerLabels) as number;
    // The JWT exp is whole seconds, so the expiry may be up to 1 s before asked + lifetime.
    expect(expiry).toBeGreaterThanOrEqual(lastTokenAsked + TOKEN_LIFETIME_SECONDS - 1);
    expect(expiry).toBeLessThanOrEqual(scrapedAt + TOKEN_LIFETIME_SECONDS);
    expect(expiry - scrapedAt).toBeGreaterThan(0);
    expect(valueOf(scrape, 'token_proxy_token_expiry_timestamp_seconds', brokenLabels)).toBeUndefined();
  });

  it('keeps label values bounded: known label names, 3-digit codes, fixed tiers and operations, no path and no token in a label', () => {
    const allowed = new Set(['upstream', 'tenant', 'code', 'trigger', 'outcome', 'reason', 'tier', 'operation', 'le']);
    const scrapes = [scrape, replicaScrape, otherKeyScrape, replicaDownScrape];
    const ours = scrapes.flatMap((one) => one.samples.filter((s) => s.name.startsWith('token_proxy_')));
    expect(ours.length).toBeGreaterThan(20);
    for (const s of ours) {
      for (const [k, v] of Object.entries(s.labels)) {
        expect(allowed, `${s.name} label ${k}`).toContain(k);
        expect(v, `${s.name} ${k}`).not.toContain('/');
        if (k === 'code') expect(v).toMatch(/^\d{3}$/);
        if (k === 'tier') expect(['memory', 'redis'], `${s.name} tier`).toContain(v);
        if (k === 'operation') expect(SHARED_CACHE_OPERATIONS, `${s.name} operation`).toContain(v);
      }
    }
    // Both tiers and an operation did occur, so the checks above saw real values.
    expect(new Set(ours.flatMap((s) => s.labels['tier'] ?? []))).toEqual(new Set(['memory', 'redis']));
    expect(ours.some((s) => s.labels['operation'] !== undefined)).toBe(true);
    for (const one of scrapes) {
      for (const token of tokenServer.issued) expect(one.text).not.toContain(token);
      expect(one.text).not.toContain('observability-secret-41f');
      expect(one.text).not.toContain(SHARED_KEY);
    }
  });

  it("exports the Node.js process metrics without prom-client's _total-suffixed gauges", () => {
    for (const name of [
      'nodejs_active_handles_total',
      'nodejs_active_requests_total',
      'nodejs_active_resources_total',
    ]) {
      expect(scrape.types.has(name), name).toBe(false);
    }
    expect(scrape.types.get('nodejs_active_handles')).toBe('gauge');
    expect(scrape.types.get('process_cpu_seconds_total')).toBe('counter');
    expect(scrape.types.get('process_resident_memory_bytes')).toBe('gauge');
    expect(scrape.types.get('nodejs_eventloop_lag_p99_seconds')).toBe('gauge');
    // Every counter ends in _total, and nothing else does.
    const misnamed = [...scrape.types]
      .filter(([name, type]) => (type === 'counter') !== name.endsWith('_total'))
      .map(([name, type]) => `${name} (${type})`);
    expect(misnamed).toEqual([]);
  });

  it('passes `promtool check metrics` with no complaint', () => {
    // promtool comes with the Debian package `prometheus` (.ci/run installs it). Only this check
    // needs it; without it there is nothing to run, so the assertion is left out.
    if (promtoolAvailable()) {
      for (const one of [scrape, otherKeyScrape]) {
        const res = promtool(['check', 'metrics'], one.text);
        expect(res.output).toBe('');
        expect(res.status).toBe(0);
      }
    }
  });
});

describe('the shared token cache metrics (a real redis-server, three replicas)', () => {
  const partnerLabels = { upstream: 'partner' };

  it('reads 1 while Redis answers, and counts no error on a healthy path', () => {
    for (const one of [scrape, replicaScrape]) {
      expect(one.types.get('token_proxy_shared_cache_up')).toBe('gauge');
      expect(valueOf(one, 'token_proxy_shared_cache_up', {})).toBe(1);
      expect(one.types.get('token_proxy_shared_cache_errors_total')).toBe('counter');
      expect(one.samples.filter((s) => s.name === 'token_proxy_shared_cache_errors_total')).toEqual([]);
    }
  });

  it("counts a redis-tier hit when a replica adopts a sibling's token, and then memory-tier hits", () => {
    expect(tokenRequests.replica).toBe(tokenRequests.proxy); // no token request of its own
    expect(valueOf(replicaScrape, 'token_proxy_token_cache_misses_total', partnerLabels)).toBe(1);
    expect(valueOf(replicaScrape, 'token_proxy_token_cache_hits_total', { ...partnerLabels, tier: 'redis' })).toBe(1);
    expect(valueOf(replicaScrape, 'token_proxy_token_cache_hits_total', { ...partnerLabels, tier: 'memory' })).toBe(1);
    expect(replicaScrape.samples.filter((s) => s.name === 'token_proxy_token_refreshes_total')).toEqual([]);
    // The adopted token is the one the first proxy got last: same expiry.
    const expiry = valueOf(replicaScrape, 'token_proxy_token_expiry_timestamp_seconds', partnerLabels);
    expect(expiry).toBe(valueOf(scrape, 'token_proxy_token_expiry_timestamp_seconds', partnerLabels));
  });

  it('counts decrypt errors, by operation, for an entry a replica cannot open, which then fetches its own token', () => {
    // The first look at the entry, and the second one under the refresh lock.
    expect(valueOf(otherKeyScrape, 'token_proxy_shared_cache_errors_total', { operation: 'decrypt' })).toBe(2);
    for (const operation of ['read', 'lock', 'write', 'unlock']) {
      expect(
        valueOf(otherKeyScrape, 'token_proxy_shared_cache_errors_total', { operation }),
        operation,
      ).toBeUndefined();
    }
    expect(valueOf(otherKeyScrape, 'token_proxy_shared_cache_up', {})).toBe(1);
    expect(
      valueOf(otherKeyScrape, 'token_proxy_token_cache_hits_total', { ...partnerLabels, tier: 'redis' }) ?? 0,
    ).toBe(0);
    expect(
      valueOf(otherKeyScrape, 'token_proxy_token_refreshes_total', {
        ...partnerLabels,
        trigger: 'miss',
        outcome: 'success',
      }),
    ).toBe(1);
    expect(tokenRequests.otherKey).toBe(tokenRequests.replica + 1);
  });

  it('reads 0 once Redis is gone, while the replica keeps serving from memory', () => {
    expect(valueOf(replicaDownScrape, 'token_proxy_shared_cache_up', {})).toBe(0);
    expect(valueOf(replicaDownScrape, 'token_proxy_token_cache_hits_total', { ...partnerLabels, tier: 'memory' })).toBe(
      2,
    );
    expect(valueOf(replicaDownScrape, 'token_proxy_requests_total', { upstream: 'partner', code: '200' })).toBe(3);
    expect(tokenRequests.replicaDown).toBe(tokenRequests.otherKey);
  });
});

describe('the PromQL metric-name extraction', () => {
  it('finds the metric names and nothing else', () => {
    const expr =
      'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x="y", le="0.5"}[5m]))) / on (job) group_left(zone) b_total offset 10m ' +
      '> bool 3 unless absent(c{d="e"}) or sum(rate(d:e_total[$__rate_interval])) without (instance) - time() + label_values(f_info, upstream) * 1e3';
    expect(metricNamesIn(expr)).toEqual(new Set(['a_seconds_bucket', 'b_total', 'c', 'd:e_total', 'f_info']));
  });

  it('reports a name the scrape lacks, and a histogram queried by its bare name', () => {
    expect(notExported(scrape, ['token_proxy_requests_total', 'token_proxy_no_such_total', 'up'])).toEqual([
      'token_proxy_no_such_total',
    ]);
    expect(
      notExported(scrape, ['token_proxy_request_duration_seconds', 'token_proxy_request_duration_seconds_bucket']),
    ).toEqual(['token_proxy_request_duration_seconds']);
  });
});

describe('the Grafana dashboard', () => {
  it('queries only metrics that a real scrape contains', () => {
    const names = namesIn(dashboardExpressions());
    expect(names.size).toBeGreaterThan(10);
    expect(notExported(scrape, names)).toEqual([]);
  });

  it('shows every token_proxy_ metric and the process health metrics', () => {
    const names = namesIn(dashboardExpressions());
    const families = [...scrape.types.keys()].filter((n) => n.startsWith('token_proxy_'));
    expect(families).toEqual(
      expect.arrayContaining(['token_proxy_shared_cache_up', 'token_proxy_shared_cache_errors_total']),
    );
    expect(families.length).toBeGreaterThanOrEqual(11);
    for (const family of families) {
      const series = scrape.types.get(family) === 'histogram' ? `${family}_bucket` : family;
      expect(names, family).toContain(series);
    }
    for (const name of [
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_p99_seconds',
    ])
      expect(names).toContain(name);
  });

  it('has a Prometheus datasource variable, and multi-value upstream and instance variables', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(39);
    const vars = new Map(dashboard.templating.list.map((v) => [v.name, v]));
    expect(vars.get('datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    const up = vars.get('upstream') as Variable;
    expect(up).toMatchObject({ type: 'query', multi: true, includeAll: true });
    expect(variableQuery(up)).toBe('label_values(token_proxy_requests_total, upstream)');
    const inst = vars.get('instance') as Variable;
    expect(inst).toMatchObject({ type: 'query', multi: true, includeAll: true });
    expect(variableQuery(inst)).toBe('label_values(token_proxy_requests_total, instance)');
    for (const v of [up, inst]) expect(v.datasource?.uid).toBe('${datasource}');
  });

  it('sets a unit on every panel, uses the datasource variable everywhere, and repeats a row per upstream', () => {
    expect(dataPanels.length).toBeGreaterThanOrEqual(12);
    expect(new Set(allPanels.map((p) => p.id)).size).toBe(allPanels.length);
    for (const p of dataPanels) {
      expect(p.fieldConfig?.defaults?.unit, p.title).toMatch(/^[a-z]+$/);
      expect(p.datasource?.uid, p.title).toBe('${datasource}');
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) expect(t.datasource?.uid, p.title).toBe('${datasource}');
    }
    expect(allPanels.filter((p) => p.type === 'row' && p.repeat === 'upstream')).toHaveLength(1);
  });

  it('has a shared token cache (Redis) row: up per instance, errors by operation, hits by tier, fetches from Redis vs the token endpoint', () => {
    const rows = dashboard.panels.filter((p) => p.type === 'row').map((p) => p.title);
    expect(rows).toContain('Shared token cache (Redis)');
    // Below the repeated upstream row, which would otherwise take these panels into every repeat.
    expect(rows.indexOf('Shared token cache (Redis)')).toBeGreaterThan(rows.indexOf('Upstream $upstream'));
    expect(panel('Shared cache up').type).toBe('stat');
  });

  it('computes the hit ratio per tier and overall, and the shared cache panels, with the intended values (promtool)', () => {
    // Needs promtool, like the rule tests; this evaluates the panels' own PromQL on synthetic series.
    if (promtoolAvailable()) {
      const res = evaluatePanelQueries();
      expect(res.output).toContain('SUCCESS');
      expect(res.status).toBe(0);
    }
  });
});

describe('the Prometheus alert rules', () => {
  it('query only metrics that a real scrape contains (and `up`, which Prometheus makes)', () => {
    const names = namesIn(rules.map((r) => r.expr));
    expect(names).toContain('up');
    expect(names).toContain('token_proxy_token_expiry_timestamp_seconds');
    expect(names).toContain('token_proxy_shared_cache_up');
    expect(names).toContain('token_proxy_shared_cache_errors_total');
    expect(notExported(scrape, names)).toEqual([]);
  });

  it('cover the required conditions, each with a for: duration, a severity and runbook annotations', () => {
    expect(rules.map((r) => r.alert).sort()).toEqual([
      'TokenProxyCircuitOpen',
      'TokenProxyConfigReloadFailing',
      'TokenProxyGatewayErrors',
      'TokenProxyRequestsRejected',
      'TokenProxySharedCacheDown',
      'TokenProxySharedCacheErrors',
      'TokenProxyTargetDown',
      'TokenProxyTargetMissing',
      'TokenProxyTokenExpiringWithoutRefresh',
      'TokenProxyTokenRefreshFailing',
      'TokenProxyTokenRequestRejected',
      'TokenProxyUnauthorizedRetriesNotRecovering',
    ]);
    for (const r of rules) {
      expect(r.for, r.alert).toMatch(/^[1-9]\d*[mh]$/);
      expect(['warning', 'critical'], r.alert).toContain(r.labels?.['severity']);
      for (const key of ['summary', 'description', 'runbook'])
        expect(r.annotations?.[key]?.length ?? 0, `${r.alert} ${key}`).toBeGreaterThan(40);
    }
    expect(rules.find((r) => r.alert === 'TokenProxyTargetMissing')?.expr.trim()).toBe('absent(up{job="token-proxy"})');
    expect(rules.find((r) => r.alert === 'TokenProxyGatewayErrors')?.expr).toContain('code=~"502|504"');
    expect(rules.find((r) => r.alert === 'TokenProxySharedCacheDown')?.expr.trim()).toBe(
      'token_proxy_shared_cache_up == 0',
    );
    // The runbook says what an outage costs and where to look.
    const down = rules.find((r) => r.alert === 'TokenProxySharedCacheDown')?.annotations ?? {};
    for (const words of [/memory/, /on its own/, /number of replicas/]) expect(down['description']).toMatch(words);
    for (const words of [/redis-cli/, /[Cc]redentials/, /TLS/]) expect(down['runbook']).toMatch(words);
  });

  it('pass `promtool check rules` and `check config`, and fire (only) on their scenarios in `promtool test rules`', () => {
    // Like the metrics check: needs promtool (Debian package `prometheus`), else not run.
    if (promtoolAvailable()) {
      const rulesCheck = promtool(['check', 'rules', RULES_FILE]);
      expect(rulesCheck.output).toContain('SUCCESS: 12 rules found');
      expect(rulesCheck.status).toBe(0);
      const configCheck = promtool(['check', 'config', PROMETHEUS_FILE]);
      expect(configCheck.output).toContain('SUCCESS: 1 rule files found');
      expect(configCheck.status).toBe(0);
      const res = runAlertScenarios();
      expect(res.output).toContain('SUCCESS');
      expect(res.status).toBe(0);
    }
  });
});

/**
 * Evaluates panels' own PromQL with `promtool test rules` on synthetic series: Grafana's variables
 * as an operator's "All" selection, a 1m interval. promtool compares floats exactly, so values are
 * scaled by 1e6 and rounded.
 */
function evaluatePanelQueries() {
  const promql = (expr: string) =>
    `round((${expr.replaceAll('$instance', '.*').replaceAll('$upstream', '.*').replaceAll('$__rate_interval', '1m').replaceAll('$__interval', '1m')}) * 1000000)`;
  const check = (title: string, legend: string, samples: Record<string, number>) => {
    const targets = (panel(title).targets ?? []).filter((t) => t.legendFormat === legend);
    if (targets.length !== 1) throw new Error(`${targets.length} targets with legend "${legend}" in "${title}"`);
    return {
      expr: promql((targets[0] as { expr: string }).expr),
      eval_time: '5m',
      exp_samples: Object.entries(samples).map(([labels, value]) => ({ labels, value })),
    };
  };
  const s = (metric: string, labels: Record<string, string>, values: string) => ({
    series: `${metric}{${Object.entries({ job: 'token-proxy', instance: 'a', ...labels })
      .map(([k, v]) => `${k}="${v}"`)
      .join(',')}}`,
    values,
  });
  // Per 15 s: 90 memory hits, 5 redis hits, 5 misses; 1 successful and 7 failed token requests.
  const input_series = [
    s('token_proxy_token_cache_hits_total', { upstream: 'partner', tier: 'memory' }, '0+90x40'),
    s('token_proxy_token_cache_hits_total', { upstream: 'partner', tier: 'redis' }, '0+5x40'),
    s('token_proxy_token_cache_misses_total', { upstream: 'partner' }, '0+5x40'),
    s('token_proxy_token_refreshes_total', { upstream: 'partner', trigger: 'ahead', outcome: 'success' }, '0+1x40'),
    s('token_proxy_token_refreshes_total', { upstream: 'partner', trigger: 'miss', outcome: 'error' }, '0+7x40'),
    s('token_proxy_shared_cache_up', {}, '1x40'),
    s('token_proxy_shared_cache_up', { instance: 'b' }, '0x40'),
    s('token_proxy_shared_cache_errors_total', { operation: 'read' }, '0+3x40'),
    s('token_proxy_shared_cache_errors_total', { instance: 'b', operation: 'decrypt' }, '0x40'),
  ];
  const promql_expr_test = [
    // 95 of 100 lookups hit: 90 in memory, 5 in Redis.
    check('Token cache hit ratio', 'overall', { '{}': 950_000 }),
    check('Token cache hit ratio', 'memory', { '{}': 900_000 }),
    check('Token cache hit ratio', 'redis', { '{}': 50_000 }),
    check('Shared cache up', '{{instance}}', {
      '{instance="a", job="token-proxy"}': 1_000_000,
      '{instance="b", job="token-proxy"}': 0,
    }),
    check('Shared cache errors by operation', '{{operation}}', {
      '{operation="read"}': 200_000,
      '{operation="decrypt"}': 0,
    }),
    check('Token cache hits by tier', '{{tier}}', { '{tier="memory"}': 6_000_000, '{tier="redis"}': 333_333 }),
    check('Token fetches: from Redis vs from the token endpoint', 'adopted from Redis', { '{}': 20_000_000 }),
    check('Token fetches: from Redis vs from the token endpoint', 'token endpoint', { '{}': 4_000_000 }),
  ];
  const dir = mkdtempSync(join(tmpdir(), 'token-proxy-panels-'));
  try {
    writeFileSync(
      join(dir, 'tests.yaml'),
      stringify({
        rule_files: [],
        evaluation_interval: '15s',
        tests: [{ interval: '15s', input_series, promql_expr_test }],
      }),
    );
    const res = spawnSync('promtool', ['test', 'rules', 'tests.yaml'], { cwd: dir, encoding: 'utf8' });
    return { status: res.status, output: `${res.stdout}${res.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * promtool unit tests of the alerts, on synthetic series. promtool compares annotations too, so
 * the rules are copied without them: the expressions, `for:` and labels under test are the file's own.
 */
function runAlertScenarios() {
  const dir = mkdtempSync(join(tmpdir(), 'token-proxy-rules-'));
  try {
    const doc = parse(readFileSync(RULES_FILE, 'utf8')) as { groups: { rules: AlertRule[] }[] };
    for (const g of doc.groups) for (const r of g.rules) delete r.annotations;
    writeFileSync(join(dir, 'rules.yaml'), stringify(doc));
    const s = (metric: string, labels: Record<string, string>, values: string) => ({
      series: `${metric}{${Object.entries({ job: 'token-proxy', instance: 'a', ...labels })
        .map(([k, v]) => `${k}="${v}"`)
        .join(',')}}`,
      values,
    });
    const alert = (severity: string, labels: Record<string, string>) => ({
      exp_labels: { severity, job: 'token-proxy', instance: 'a', ...labels },
    });
    const tests = {
      rule_files: ['rules.yaml'],
      evaluation_interval: '15s',
      tests: [
        {
          interval: '15s',
          input_series: [
            // partner: transient failures and no success; flaky: failures but successes too.
            s('token_proxy_token_refresh_failures_total', { upstream: 'partner', reason: 'timeout' }, '0+1x60'),
            s(
              'token_proxy_token_refreshes_total',
              { upstream: 'partner', trigger: 'ahead', outcome: 'success' },
              '3x60',
            ),
            s('token_proxy_token_refresh_failures_total', { upstream: 'flaky', reason: 'timeout' }, '0+1x60'),
            s(
              'token_proxy_token_refreshes_total',
              { upstream: 'flaky', trigger: 'ahead', outcome: 'success' },
              '0+1x60',
            ),
            s('token_proxy_token_refresh_failures_total', { upstream: 'creds', reason: 'invalid_client' }, '1+1x60'),
            // Tokens expiring at t=600s: partner busy and not renewed; idle has no traffic; renewing refreshes.
            s('token_proxy_token_expiry_timestamp_seconds', { upstream: 'partner' }, '600x60'),
            s('token_proxy_token_expiry_timestamp_seconds', { upstream: 'idle' }, '600x60'),
            s('token_proxy_token_expiry_timestamp_seconds', { upstream: 'renewing' }, '600x60'),
            s('token_proxy_requests_total', { upstream: 'partner', code: '200' }, '0+10x60'),
            s('token_proxy_requests_total', { upstream: 'idle', code: '200' }, '7x60'),
            s('token_proxy_requests_total', { upstream: 'renewing', code: '200' }, '0+10x60'),
            s(
              'token_proxy_token_refreshes_total',
              { upstream: 'renewing', trigger: 'ahead', outcome: 'success' },
              '0+1x60',
            ),
            // 401 replays: partner never recovers, flaky mostly does.
            s(
              'token_proxy_unauthorized_retries_total',
              { upstream: 'partner', outcome: 'still_unauthorized' },
              '0+1x60',
            ),
            s('token_proxy_unauthorized_retries_total', { upstream: 'flaky', outcome: 'still_unauthorized' }, '0+1x60'),
            s('token_proxy_unauthorized_retries_total', { upstream: 'flaky', outcome: 'recovered' }, '0+3x60'),
            // 502s (the proxy's own status) on partner; 503s (only ever the partner's) on flaky.
            s('token_proxy_requests_total', { upstream: 'partner', code: '502' }, '0+2x60'),
            s('token_proxy_requests_total', { upstream: 'flaky', code: '200' }, '0+10x60'),
            s('token_proxy_requests_total', { upstream: 'flaky', code: '503' }, '0+2x60'),
            s('up', {}, '0x60'),
          ],
          alert_rule_test: [
            {
              eval_time: '10m',
              alertname: 'TokenProxyTokenRefreshFailing',
              exp_alerts: [alert('warning', { upstream: 'partner', reason: 'timeout' })],
            },
            {
              eval_time: '10m',
              alertname: 'TokenProxyTokenRequestRejected',
              exp_alerts: [alert('critical', { upstream: 'creds', reason: 'invalid_client' })],
            },
            { eval_time: '8m', alertname: 'TokenProxyTokenExpiringWithoutRefresh', exp_alerts: [] },
            {
              eval_time: '10m',
              alertname: 'TokenProxyTokenExpiringWithoutRefresh',
              exp_alerts: [alert('critical', { upstream: 'partner' })],
            },
            {
              eval_time: '10m',
              alertname: 'TokenProxyUnauthorizedRetriesNotRecovering',
              exp_alerts: [alert('warning', { upstream: 'partner' })],
            },
            {
              eval_time: '10m',
              alertname: 'TokenProxyGatewayErrors',
              exp_alerts: [alert('warning', { upstream: 'partner' })],
            },
            { eval_time: '1m', alertname: 'TokenProxyTargetDown', exp_alerts: [] },
            { eval_time: '10m', alertname: 'TokenProxyTargetDown', exp_alerts: [alert('critical', {})] },
            { eval_time: '10m', alertname: 'TokenProxyTargetMissing', exp_alerts: [] },
            { eval_time: '10m', alertname: 'TokenProxySharedCacheDown', exp_alerts: [] },
            { eval_time: '10m', alertname: 'TokenProxySharedCacheErrors', exp_alerts: [] },
          ],
        },
        {
          interval: '15s',
          input_series: [
            // a: Redis lost at 1m30s and not back. b: always up. c: down for one minute only.
            s('token_proxy_shared_cache_up', {}, '1x5 0x80'),
            s('token_proxy_shared_cache_up', { instance: 'b' }, '1x85'),
            s('token_proxy_shared_cache_up', { instance: 'c' }, '1x10 0x4 1x70'),
            // a: a failing read every 15 s. b: one lock error, and a read error every 5 minutes.
            s('token_proxy_shared_cache_errors_total', { operation: 'read' }, '0+1x85'),
            s('token_proxy_shared_cache_errors_total', { instance: 'b', operation: 'lock' }, '0x20 1x65'),
            s('token_proxy_shared_cache_errors_total', { instance: 'b', operation: 'read' }, '0x19 1x19 2x19 3x19 4x8'),
            // c: two decrypt errors at 2m30s (one fetch with the wrong key), none after.
            s('token_proxy_shared_cache_errors_total', { instance: 'c', operation: 'decrypt' }, '0x10 2x75'),
          ],
          alert_rule_test: [
            { eval_time: '5m', alertname: 'TokenProxySharedCacheDown', exp_alerts: [] },
            { eval_time: '7m', alertname: 'TokenProxySharedCacheDown', exp_alerts: [alert('warning', {})] },
            { eval_time: '20m', alertname: 'TokenProxySharedCacheDown', exp_alerts: [alert('warning', {})] },
            { eval_time: '8m', alertname: 'TokenProxySharedCacheErrors', exp_alerts: [] },
            {
              eval_time: '15m',
              alertname: 'TokenProxySharedCacheErrors',
              exp_alerts: [
                alert('warning', { operation: 'read' }),
                alert('warning', { instance: 'c', operation: 'decrypt' }),
              ],
            },
          ],
        },
        {
          interval: '15s',
          input_series: [
            // a: the reload at 1m is rejected and stays so. b: rejected at 1m, fixed at 5m.
            s('token_proxy_config_last_reload_successful', {}, '1x3 0x80'),
            s('token_proxy_config_last_reload_successful', { instance: 'b' }, '1x3 0x16 1x64'),
          ],
          alert_rule_test: [
            { eval_time: '12m', alertname: 'TokenProxyConfigReloadFailing', exp_alerts: [] },
            {
              eval_time: '17m',
              alertname: 'TokenProxyConfigReloadFailing',
              exp_alerts: [alert('warning', {})],
            },
          ],
        },
        {
          interval: '15s',
          input_series: [
            // down: open from 1m on (2, with half-open readings between probes); flapping: open 2 minutes only.
            s('token_proxy_upstream_circuit_state', { upstream: 'down' }, '0x4 2x10 1x1 2x60'),
            s('token_proxy_upstream_circuit_state', { upstream: 'flapping' }, '0x4 2x8 0x60'),
            // busy: 1 rate_limited rejection every 15 s; calm: one queue_full only; open: circuit_open (its own alert).
            s('token_proxy_upstream_rejected_total', { upstream: 'busy', reason: 'rate_limited' }, '0+1x80'),
            s('token_proxy_upstream_rejected_total', { upstream: 'calm', reason: 'queue_full' }, '0x10 1x70'),
            s('token_proxy_upstream_rejected_total', { upstream: 'down', reason: 'circuit_open' }, '0+5x80'),
          ],
          alert_rule_test: [
            { eval_time: '5m', alertname: 'TokenProxyCircuitOpen', exp_alerts: [] },
            {
              eval_time: '8m',
              alertname: 'TokenProxyCircuitOpen',
              exp_alerts: [alert('critical', { upstream: 'down' })],
            },
            { eval_time: '10m', alertname: 'TokenProxyRequestsRejected', exp_alerts: [] },
            {
              eval_time: '18m',
              alertname: 'TokenProxyRequestsRejected',
              exp_alerts: [alert('warning', { upstream: 'busy', reason: 'rate_limited' })],
            },
          ],
        },
        {
          interval: '15s',
          input_series: [s('token_proxy_requests_total', { upstream: 'partner', code: '200' }, '0+10x60')],
          alert_rule_test: [
            { eval_time: '4m', alertname: 'TokenProxyTargetMissing', exp_alerts: [] },
            {
              eval_time: '6m',
              alertname: 'TokenProxyTargetMissing',
              exp_alerts: [{ exp_labels: { severity: 'critical', job: 'token-proxy' } }],
            },
          ],
        },
      ],
    };
    writeFileSync(join(dir, 'tests.yaml'), stringify(tests));
    const res = spawnSync('promtool', ['test', 'rules', 'tests.yaml'], { cwd: dir, encoding: 'utf8' });
    return { status: res.status, output: `${res.stdout}${res.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
