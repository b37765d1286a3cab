import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { testPki } from '../helpers/certs.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest, type RawResponse } from '../helpers/raw-http.js';
import { eventually, offsetClock } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * Issue 21 part 3: protecting the partner. Real targets on loopback: one that holds its answers
 * (concurrency and queue), one that resets connections (retries, breaker), a port that refuses
 * them, and the verifying partner answering 429/503 with Retry-After. The proxy's clock is an
 * offset clock: rate and breaker timing move with it, nothing sleeps.
 */
const pki = testPki();
const clock = offsetClock();
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy;
let port: number;

/** Holds every answer until the test releases it; counts what arrived and the most at once. */
const held: ServerResponse[] = [];
let holdArrived = 0;
let holdMostAtOnce = 0;
let holding: Server;

/** Resets the connection of the next `resetNext` requests before any answer byte; answers the rest 200. */
let resetNext = 0;
let resetRequests = 0;
let resetConnections = 0;
/** The client port of each request the resetting server saw: tells its connections apart. */
const resetPorts: (number | undefined)[] = [];
let resetting: Server;

let refusedPort: number;

/** A token endpoint that holds its answers until the test releases them. */
const tokenAnswers: ServerResponse[] = [];
let slowTokens: Server;

async function listen(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  tokenServer.lifetimeSeconds = 3_600; // the clock moves minutes ahead: no refresh falls in between
  partner = await startVerifyingPartner(tokenServer);
  holding = createServer((_req: IncomingMessage, res: ServerResponse) => {
    holdArrived += 1;
    held.push(res);
    holdMostAtOnce = Math.max(holdMostAtOnce, held.length);
  });
  resetting = createServer((req, res) => {
    resetRequests += 1;
    resetPorts.push(req.socket.remotePort);
    if (resetNext > 0) {
      resetNext -= 1;
      req.socket.resetAndDestroy(); // RST before any answer byte
      return;
    }
    res.end('after the reset');
  });
  resetting.on('connection', () => (resetConnections += 1));
  slowTokens = createServer((req, res) => {
    req.resume();
    tokenAnswers.push(res);
  });
  const slowTokenPort = await listen(slowTokens);
  const holdPort = await listen(holding);
  const resetPort = await listen(resetting);
  // A port with nothing listening: bound once for a free number, then closed.
  const probe = createServer();
  refusedPort = await listen(probe);
  await new Promise((resolve) => probe.close(resolve));
  const auth = {
    type: 'client_credentials',
    tokenUrl: tokenServer.tokenUrl,
    clientId: 'guard',
    clientSecret: 's3cret-guard',
  };
  const up = (name: string, target: string, extra: Record<string, unknown>) => ({
    name,
    target,
    pathPrefix: `/${name}`,
    ca: pki.caFile,
    auth,
    ...extra,
  });
  proxy = await startProxy(
    {
      upstreams: [
        up('slow', `http://127.0.0.1:${holdPort}`, {
          limits: { maxConcurrentRequests: 2, maxQueuedRequests: 3, queueTimeoutSeconds: 20 },
        }),
        up('brief', `http://127.0.0.1:${holdPort}`, {
          limits: { maxConcurrentRequests: 1, maxQueuedRequests: 1, queueTimeoutSeconds: 0.3 },
        }),
        up('rate', partner.url, { limits: { requestsPerSecond: 1, burst: 2, maxQueuedRequests: 0 } }),
        up('reset', `http://127.0.0.1:${resetPort}`, { retry: { connectionFailures: 1 } }),
        up('refused', `http://127.0.0.1:${refusedPort}`, {
          retry: { connectionFailures: 1 },
          circuitBreaker: { consecutiveFailures: 2, openSeconds: 30 },
        }),
        up('breaker', `http://127.0.0.1:${resetPort}`, { circuitBreaker: { consecutiveFailures: 2, openSeconds: 30 } }),
        up('paused', partner.url, { respectRetryAfter: true }),
        up('replayed', partner.url, { circuitBreaker: { consecutiveFailures: 2, openSeconds: 30 } }),
        up('plain', partner.url, {}),
        {
          ...up('late', `http://127.0.0.1:${resetPort}`, {
            limits: { maxConcurrentRequests: 1, maxQueuedRequests: 0 },
          }),
          auth: { ...auth, tokenUrl: `http://127.0.0.1:${slowTokenPort}/token` },
        },
        {
          ...up('late-plain', `http://127.0.0.1:${resetPort}`, { maxConnections: 1, maxQueuedRequests: 0 }),
          auth: { ...auth, clientId: 'guard-plain', tokenUrl: `http://127.0.0.1:${slowTokenPort}/token` },
        },
      ],
    },
    { clock },
  );
  port = Number(new URL(proxy.url).port);
  // Every upstream's token in hand: the requests below go straight to the gate.
  partner.script = () => ({ status: 200, body: 'warm' });
  for (const name of ['rate', 'paused', 'plain', 'replayed']) expect((await get(`/${name}/warm`)).status).toBe(200);
  resetNext = 0;
  for (const name of ['reset', 'breaker']) expect((await get(`/${name}/warm`)).status).toBe(200);
}, 30_000);

afterAll(async () => {
  for (const res of held.splice(0)) res.end();
  await proxy.close();
  await partner.close();
  await tokenServer.stop();
  holding.close();
  resetting.close();
  slowTokens.close();
});

beforeEach(() => {
  partner.script = undefined;
  partner.seen.length = 0;
});

function get(path: string, method = 'GET', body = ''): Promise<RawResponse> {
  const length = method === 'GET' ? '' : `Content-Length: ${body.length}\r\n`;
  return rawRequest(port, `${method} ${path} HTTP/1.1\r\nHost: p\r\n${length}\r\n${body}`, { timeoutMs: 20_000 });
}

async function scrape(): Promise<string> {
  return (await fetch(`${proxy.adminUrl}/metrics`)).text();
}

function value(metrics: string, series: string): number | undefined {
  const line = metrics.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

const rejected = (upstream: string, reason: string) =>
  `token_proxy_upstream_rejected_total{upstream="${upstream}",reason="${reason}"}`;

describe('concurrency and queue (limits)', () => {
  it('sends maxConcurrentRequests to the target, queues maxQueuedRequests, answers the rest 503 overloaded at once', async () => {
    const answers = Array.from({ length: 7 }, (_, i) => get(`/slow/${i}`));
    await eventually(() => holdArrived === 2, { timeoutMs: 5_000, what: 'two requests at the target' });
    // The two over the queue are answered while the others are held.
    await eventually(async () => value(await scrape(), rejected('slow', 'queue_full')) === 2, {
      timeoutMs: 5_000,
      what: 'two queue_full rejections',
    });
    expect(value(await scrape(), 'token_proxy_upstream_requests_in_hand{upstream="slow"}')).toBe(5);
    expect(holdArrived).toBe(2);
    // Release the held answers one by one: each frees a slot for the head of the queue.
    while (holdArrived < 5 || held.length > 0) {
      await eventually(() => held.length > 0, { timeoutMs: 5_000, what: 'a held request' });
      held.shift()?.end('done');
    }
    const done = await Promise.all(answers);
    const statuses = done.map((a) => a.status).sort();
    expect(statuses).toEqual([200, 200, 200, 200, 200, 503, 503]);
    expect(holdArrived).toBe(5);
    expect(holdMostAtOnce).toBe(2);
    for (const full of done.filter((a) => a.status === 503)) {
      expect(full.headers['retry-after']).toBe('1');
      expect(full.headers['proxy-status']).toBe('token-proxy; error=connection_limit_reached');
      expect(JSON.parse(full.body)).toMatchObject({ error: 'overloaded', upstream: 'slow' });
    }
    const m = await scrape();
    expect(value(m, rejected('slow', 'queue_full'))).toBe(2);
    expect(value(m, rejected('slow', 'queue_timeout'))).toBe(0);
    expect(value(m, 'token_proxy_upstream_requests_in_hand{upstream="slow"}')).toBe(0);
  });

  it('answers 503 queue_timeout after queueTimeoutSeconds, and a client that leaves the queue frees its place', async () => {
    holdArrived = 0;
    const first = get('/brief/held');
    await eventually(() => holdArrived === 1, { timeoutMs: 5_000, what: 'the first request at the target' });
    const timedOut = await get('/brief/waits');
    expect(timedOut.status).toBe(503);
    expect(timedOut.headers['retry-after']).toBe('1');
    expect(timedOut.headers['proxy-status']).toBe('token-proxy; error=connection_limit_reached');
    expect(JSON.parse(timedOut.body)).toMatchObject({ error: 'queue_timeout', upstream: 'brief' });

    // A queued client that hangs up: its place is free for the next one, which is not refused.
    const leaving = connect(port, '127.0.0.1');
    leaving.write('GET /brief/leaves HTTP/1.1\r\nHost: p\r\n\r\n');
    await eventually(
      async () => value(await scrape(), 'token_proxy_upstream_requests_in_hand{upstream="brief"}') === 2,
      {
        timeoutMs: 5_000,
        what: 'the second request queued',
      },
    );
    leaving.destroy();
    await eventually(
      async () => value(await scrape(), 'token_proxy_upstream_requests_in_hand{upstream="brief"}') === 1,
      {
        timeoutMs: 5_000,
        what: 'the place freed',
      },
    );
    const next = get('/brief/next');
    await eventually(
      async () => value(await scrape(), 'token_proxy_upstream_requests_in_hand{upstream="brief"}') === 2,
      {
        timeoutMs: 5_000,
        what: 'the next request queued',
      },
    );
    held.shift()?.end('first');
    await eventually(() => held.length === 1, { timeoutMs: 5_000, what: 'the next request at the target' });
    held.shift()?.end('next');
    expect((await first).status).toBe(200);
    expect((await next).status).toBe(200);
    expect(holdArrived).toBe(2); // the one that left never reached the target
    const m = await scrape();
    expect(value(m, rejected('brief', 'queue_timeout'))).toBe(1);
    expect(value(m, rejected('brief', 'queue_full'))).toBe(0);
  });
});

describe('a client that leaves before its turn', () => {
  it.each(['late', 'late-plain'])('%s: gives its place back when it left while waiting for the token', async (name) => {
    const leaving = connect(port, '127.0.0.1');
    leaving.on('error', () => undefined);
    leaving.write(`GET /${name}/first HTTP/1.1\r\nHost: p\r\n\r\n`);
    await eventually(() => tokenAnswers.length === 1, { timeoutMs: 5_000, what: 'the token request' });
    leaving.destroy();
    await once(leaving, 'close');
    const before = resetRequests;
    resetNext = 0;
    tokenAnswers
      .shift()
      ?.writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ access_token: 'late-token', token_type: 'Bearer', expires_in: 3600 }));
    await eventually(
      async () => value(await scrape(), `token_proxy_requests_total{upstream="${name}",code="499"}`) === 1,
      {
        timeoutMs: 5_000,
        what: 'the 499 of the client that left',
      },
    );
    expect(value(await scrape(), `token_proxy_upstream_requests_in_hand{upstream="${name}"}`)).toBe(0);
    // One place and no queue (limits, or maxConnections without them): a leaked place would make this 503.
    expect((await get(`/${name}/next`)).status).toBe(200);
    expect(resetRequests - before).toBe(1);
  });
});

describe('rate (requestsPerSecond, burst)', () => {
  it('lets the burst through, answers the next 503 rate_limited with Retry-After, and one more after a second', async () => {
    clock.offsetMs += 10_000; // a full bucket
    const answers = [await get('/rate/a'), await get('/rate/b'), await get('/rate/c')];
    expect(answers.map((a) => a.status)).toEqual([200, 200, 503]);
    const limited = answers[2] as RawResponse;
    expect(JSON.parse(limited.body)).toMatchObject({ error: 'rate_limited', upstream: 'rate' });
    expect(limited.headers['retry-after']).toBe('1');
    expect(limited.headers['proxy-status']).toBe('token-proxy; error=connection_limit_reached');
    expect(partner.seen).toHaveLength(2);
    clock.offsetMs += 1_000;
    expect((await get('/rate/d')).status).toBe(200);
    expect((await get('/rate/e')).status).toBe(503);
    expect(partner.seen).toHaveLength(3);
    expect(value(await scrape(), rejected('rate', 'rate_limited'))).toBe(2);
    expect(
      proxy.logs.filter((l) => l.includes('"event":"upstream_rejected"') && l.includes('"upstream":"rate"')).length,
    ).toBeGreaterThanOrEqual(1);
  });
});

describe('retries of failed connections (retry.connectionFailures)', () => {
  it('sends a GET again after a reset before any answer byte, and it succeeds on the second connection', async () => {
    const before = { requests: resetRequests, connections: resetConnections };
    resetNext = 1;
    const res = await get('/reset/again');
    expect(res.status).toBe(200);
    expect(res.body).toBe('after the reset');
    expect(resetRequests - before.requests).toBe(2);
    expect(resetConnections - before.connections).toBeGreaterThanOrEqual(1);
    const [reset, retried] = resetPorts.slice(-2);
    expect(retried).not.toBe(reset); // the retry came on a new connection
    expect(value(await scrape(), 'token_proxy_upstream_retries_total{upstream="reset"}')).toBe(1);
    expect(
      proxy.logs.filter((l) => l.includes('"event":"upstream_retry"') && l.includes('"upstream":"reset"')),
    ).toHaveLength(1);
  });

  it('never sends a POST twice: 502 after one attempt', async () => {
    const before = resetRequests;
    resetNext = 1;
    const res = await get('/reset/post', 'POST', 'once');
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body)).toMatchObject({ error: 'upstream_unreachable', upstream: 'reset' });
    expect(resetRequests - before).toBe(1);
    expect(value(await scrape(), 'token_proxy_upstream_retries_total{upstream="reset"}')).toBe(1);
  });

  it('tries a refused port twice for a GET, then answers 502', async () => {
    const res = await get('/refused/x');
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body)).toMatchObject({ error: 'upstream_unreachable' });
    expect(value(await scrape(), 'token_proxy_upstream_retries_total{upstream="refused"}')).toBe(1);
  });
});

describe('circuit breaker', () => {
  const state = async (upstream: string) =>
    value(await scrape(), `token_proxy_upstream_circuit_state{upstream="${upstream}"}`);

  it('opens after consecutive failures: 503 circuit_open with the remaining open time, no connection tried', async () => {
    // 'refused' had one failed request above (its retry included): one more opens it.
    expect(await state('refused')).toBe(0);
    expect((await get('/refused/y')).status).toBe(502);
    expect(await state('refused')).toBe(2);
    const retriesBefore = value(await scrape(), 'token_proxy_upstream_retries_total{upstream="refused"}');
    clock.offsetMs += 10_000;
    const open = await get('/refused/z');
    expect(open.status).toBe(503);
    expect(JSON.parse(open.body)).toMatchObject({ error: 'circuit_open', upstream: 'refused' });
    expect(open.headers['retry-after']).toBe('20');
    expect(open.headers['proxy-status']).toBe('token-proxy; error=destination_unavailable');
    // No connection was tried: no retry of one either.
    expect(value(await scrape(), 'token_proxy_upstream_retries_total{upstream="refused"}')).toBe(retriesBefore);
    expect(value(await scrape(), rejected('refused', 'circuit_open'))).toBe(1);
    // The status page shows it (read-only), and no breaker for an upstream without one.
    const status = (await (await fetch(`${proxy.adminUrl}/status`)).json()) as {
      upstreams: { name: string; breaker: string }[];
    };
    const breakers = Object.fromEntries(status.upstreams.map((u) => [u.name, u.breaker]));
    expect(breakers).toMatchObject({ refused: 'open', breaker: 'closed', plain: 'not_configured' });
    expect(
      proxy.logs.filter((l) => l.includes('"event":"circuit_opened"') && l.includes('"upstream":"refused"')),
    ).toHaveLength(1);
  });

  it('after openSeconds lets one probe through: a failed probe re-opens, a good one closes', async () => {
    const before = resetRequests;
    resetNext = 2;
    expect((await get('/breaker/1')).status).toBe(502);
    expect((await get('/breaker/2')).status).toBe(502);
    expect(await state('breaker')).toBe(2);
    expect((await get('/breaker/3')).status).toBe(503);
    expect(resetRequests - before).toBe(2);

    clock.offsetMs += 30_000;
    expect(await state('breaker')).toBe(1);
    resetNext = 1;
    expect((await get('/breaker/probe-fails')).status).toBe(502);
    expect(await state('breaker')).toBe(2);
    expect((await get('/breaker/4')).status).toBe(503);

    clock.offsetMs += 30_000;
    expect((await get('/breaker/probe-ok')).status).toBe(200);
    expect(await state('breaker')).toBe(0);
    expect((await get('/breaker/5')).status).toBe(200);
    expect(resetRequests - before).toBe(5);
    const events = proxy.logs
      .filter((l) => l.includes('"upstream":"breaker"') && l.includes('"event":"circuit_'))
      .map((l) => (JSON.parse(l) as { event: string }).event);
    expect(events).toEqual([
      'circuit_opened',
      'circuit_half_open',
      'circuit_opened',
      'circuit_half_open',
      'circuit_closed',
    ]);
    expect(value(await scrape(), rejected('breaker', 'circuit_open'))).toBe(2);
  });

  it('judges a request replayed after a 401 once, by the answer its client got', async () => {
    partner.script = (req) => (req.path === '/fail' ? { status: 503, body: 'down' } : undefined);
    expect((await get('/replayed/fail')).status).toBe(503); // one failure
    // The token is refused: 401 (swallowed), a new token, the replay answered 503. Judged per
    // attempt, the 401 would have reset the count; judged once, it is the second failure in a row.
    partner.revoked.add(partner.seen.at(-1)?.token as string);
    expect((await get('/replayed/fail')).status).toBe(503);
    expect(partner.seen.map((s) => s.status)).toEqual([503, 401, 503]);
    expect(await state('replayed')).toBe(2);
  });

  it('keeps an open circuit across a reload that leaves its settings alone; new settings start closed', async () => {
    // 'refused' opened above, and its open time has passed since: half-open, the next request probes.
    expect(await state('refused')).toBe(1);
    await proxy.app.reload(proxy.app.config); // the same configuration again
    expect(await state('refused')).toBe(1);
    expect((await get('/refused/probe')).status).toBe(502); // the probe fails: open again
    expect(await state('refused')).toBe(2);
    expect(JSON.parse((await get('/refused/after-reload')).body)).toMatchObject({ error: 'circuit_open' });
    const changed = {
      ...proxy.app.config,
      upstreams: proxy.app.config.upstreams.map((u) =>
        u.name === 'refused' ? { ...u, circuitBreaker: { consecutiveFailures: 3, openSeconds: 30 } } : u,
      ),
    };
    await proxy.app.reload(changed);
    expect(await state('refused')).toBe(0);
    expect(JSON.parse((await get('/refused/new-settings')).body)).toMatchObject({ error: 'upstream_unreachable' });
  });

  it('has no circuit state series for an upstream without a breaker', async () => {
    expect(await state('plain')).toBeUndefined();
    expect(await state('slow')).toBeUndefined();
  });
});

describe("the partner's Retry-After", () => {
  it('passes a 503 with Retry-After through as received; with respectRetryAfter new requests get 503 until then', async () => {
    partner.script = (req) =>
      req.path === '/pause'
        ? {
            status: 503,
            headers: { 'Retry-After': '120', 'content-type': 'text/plain', 'content-length': '21' },
            body: 'busy, come back later',
          }
        : undefined;
    const busy = await get('/paused/pause');
    expect(busy.status).toBe(503);
    expect(busy.raw).toContain('\r\nRetry-After: 120\r\n');
    expect(busy.body).toBe('busy, come back later');
    expect(busy.headers['proxy-status']).toBeUndefined(); // the partner's own answer
    clock.offsetMs += 30_000;
    const spared = await get('/paused/next');
    expect(spared.status).toBe(503);
    expect(JSON.parse(spared.body)).toMatchObject({ error: 'upstream_retry_after', upstream: 'paused' });
    expect(spared.headers['retry-after']).toBe('90');
    expect(spared.headers['proxy-status']).toBe('token-proxy; error=destination_unavailable');
    expect(partner.seen).toHaveLength(1);
    clock.offsetMs += 90_000;
    expect((await get('/paused/later')).status).toBe(200);
    expect(partner.seen).toHaveLength(2);
    expect(value(await scrape(), rejected('paused', 'retry_after'))).toBe(1);
  });

  it('reads the HTTP-date form of a 429 the same way', async () => {
    const at = new Date(clock.now() + 60_000).toUTCString();
    partner.script = (req) =>
      req.path === '/slow-down' ? { status: 429, headers: { 'retry-after': at }, body: '' } : undefined;
    const first = await get('/paused/slow-down');
    expect(first.status).toBe(429);
    expect(first.raw).toContain(`\r\nretry-after: ${at}\r\n`);
    const spared = await get('/paused/next');
    expect(spared.status).toBe(503);
    expect(Number(spared.headers['retry-after'])).toBeGreaterThanOrEqual(59);
    expect(Number(spared.headers['retry-after'])).toBeLessThanOrEqual(60);
    clock.offsetMs += 60_000;
    expect((await get('/paused/after')).status).toBe(200);
  });

  it('without respectRetryAfter, passes the 503 through and sends the next request on', async () => {
    partner.script = (req) =>
      req.path === '/pause' ? { status: 503, headers: { 'Retry-After': '120' }, body: 'busy' } : undefined;
    const busy = await get('/plain/pause');
    expect(busy.status).toBe(503);
    expect(busy.raw).toContain('\r\nRetry-After: 120\r\n');
    expect((await get('/plain/next')).status).toBe(200);
    expect(partner.seen).toHaveLength(2);
  });
});
