import { randomBytes } from 'node:crypto';
import { Agent, ProxyAgent, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { testPki } from '../helpers/certs.js';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { sharedCacheState, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis } from '../helpers/redis.js';
import { buildConfig } from '../../src/config/load.js';
import { rawRequest } from '../helpers/raw-http.js';
import { eventually } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const SECRET = 'tracing-secret-Xy7!';
const PARTNER_HOST = 'api.partner.example';
const SERVER = 2;
const CLIENT = 3;
const INTERNAL = 1;
const ERROR = 2;
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0([01])$/;
const pki = testPki();
let tokenServer: TokenServer;
let partner: PartnerApi;
let receiver: OtlpReceiver;
const proxies: RunningProxy[] = [];
const client = new Agent();

function tracedDoc(sampleRatio: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        hosts: [PARTNER_HOST],
        ca: pki.caFile,
        auth: {
          type: 'client_credentials',
          tokenUrl: tokenServer.tokenUrl,
          clientId: 'traced-client',
          clientSecret: SECRET,
        },
      },
    ],
    tracing: { otlp: { endpoint: receiver.endpoint }, sampleRatio, serviceName: 'proxy-under-test' },
    ...extra,
  };
}

async function tracedProxy(sampleRatio: number, extra: Record<string, unknown> = {}): Promise<RunningProxy> {
  const proxy = await startProxy(tracedDoc(sampleRatio, extra), { tracing: { scheduledDelayMillis: 20 } });
  proxies.push(proxy);
  return proxy;
}

async function call(proxy: RunningProxy, path: string, headers: Record<string, string> = {}) {
  const res = await client.request({ origin: proxy.url, path, method: 'GET', headers });
  return { status: res.statusCode, body: await res.body.text() };
}

/** The spans of one trace, once `count` of them have arrived, its server span (the last to end) among them. */
async function trace(traceId: string, count: number): Promise<ReceivedSpan[]> {
  const of = () => receiver.spans.filter((s) => s.traceId === traceId);
  await eventually(() => of().length >= count && of().some((s) => s.kind === SERVER), {
    timeoutMs: 5_000,
    what: `${count} spans of trace ${traceId}`,
  });
  return of();
}

function one(spans: ReceivedSpan[], name: string, kind: number): ReceivedSpan {
  const found = spans.filter((s) => s.name === name && s.kind === kind);
  expect(found, `${name} spans`).toHaveLength(1);
  return found[0] as ReceivedSpan;
}

function lastTraceparent(): RegExpExecArray {
  const seen = partner.seen.at(-1)?.headers['traceparent'];
  expect(typeof seen).toBe('string');
  const m = TRACEPARENT.exec(seen as string);
  expect(m, `traceparent ${String(seen)}`).not.toBeNull();
  return m as RegExpExecArray;
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  receiver = await startOtlpReceiver();
});

afterEach(async () => {
  partner.revoked.clear();
  for (const p of proxies.splice(0)) await p.close();
});

afterAll(async () => {
  await client.close();
  await partner.close();
  await tokenServer.stop();
  await receiver.close();
});

describe('OpenTelemetry tracing (OTLP/HTTP to a real receiver)', () => {
  it('continues an incoming traceparent: server span, token wait, token request and the attempt the partner saw', async () => {
    const proxy = await tracedProxy(1);
    const incomingTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const incomingSpan = '00f067aa0ba902b7';
    const res = await call(proxy, '/partner/v1/orders?secret-query=1', {
      traceparent: `00-${incomingTrace}-${incomingSpan}-01`,
      tracestate: 'vendor=abc',
    });
    expect(res.status).toBe(200);

    const spans = await trace(incomingTrace, 4);
    const server = one(spans, 'GET', SERVER);
    expect(server.parentSpanId).toBe(incomingSpan);
    expect(server.serviceName).toBe('proxy-under-test');
    expect(server.attributes).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/partner/v1/orders',
      'http.response.status_code': 200,
      'token_proxy.route': 'reverse',
      'token_proxy.upstream': 'partner',
      'client.address': '127.0.0.1',
    });
    const wait = one(spans, 'token wait', INTERNAL);
    expect(wait.parentSpanId).toBe(server.spanId);
    expect(wait.attributes).toMatchObject({
      'token_proxy.token.fetch': 'started',
      'token_proxy.token.trigger': 'miss',
    });
    const fetch = one(spans, 'token request', INTERNAL);
    expect(fetch.parentSpanId).toBe(wait.spanId);
    expect(fetch.attributes).toMatchObject({
      'token_proxy.upstream': 'partner',
      'token_proxy.token.grant': 'client_credentials',
      'token_proxy.token.client_auth': 'client_secret_basic',
      'token_proxy.token.trigger': 'miss',
      'token_proxy.token.outcome': 'success',
    });
    const attempt = one(spans, 'GET', CLIENT);
    expect(attempt.parentSpanId).toBe(server.spanId);
    expect(attempt.attributes).toMatchObject({
      'http.request.method': 'GET',
      'server.address': '127.0.0.1',
      'url.scheme': 'https',
      'url.path': '/v1/orders',
      'http.response.status_code': 200,
    });
    expect(attempt.attributes['http.request.resend_count']).toBeUndefined();

    // The partner got one traceparent, the proxy's: this trace, the attempt span as the parent.
    const [, traceId, parentId, sampled] = lastTraceparent();
    expect([traceId, parentId, sampled]).toEqual([incomingTrace, attempt.spanId, '1']);
    expect(partner.seen.at(-1)?.headers['tracestate']).toBe('vendor=abc');
  });

  it('a 401 replay is a second attempt span, after a token wait and token request of its own', async () => {
    const proxy = await tracedProxy(1);
    await call(proxy, '/partner/warm'); // a token in the cache
    partner.revoked.add(tokenServer.issued.at(-1) as string);
    const traceId = '11111111111111111111111111111111';
    const res = await call(proxy, '/partner/v1/replayed', { traceparent: `00-${traceId}-2222222222222222-01` });
    expect(res.status).toBe(200);

    const spans = await trace(traceId, 5);
    const server = one(spans, 'GET', SERVER);
    const attempts = spans.filter((s) => s.kind === CLIENT);
    expect(attempts.map((a) => [a.parentSpanId, a.attributes['http.response.status_code']])).toEqual([
      [server.spanId, 401],
      [server.spanId, 200],
    ]);
    expect(attempts[0]?.status.code).toBe(ERROR);
    expect(attempts[1]?.attributes['http.request.resend_count']).toBe(1);
    const wait = one(spans, 'token wait', INTERNAL);
    expect([wait.parentSpanId, wait.attributes['token_proxy.token.trigger']]).toEqual([server.spanId, 'unauthorized']);
    const fetch = one(spans, 'token request', INTERNAL);
    expect([fetch.parentSpanId, fetch.attributes['token_proxy.token.trigger']]).toEqual([wait.spanId, 'unauthorized']);
    // Each attempt carried its own span as the partner's parent.
    const parents = partner.seen.slice(-2).map((s) => TRACEPARENT.exec(String(s.headers['traceparent']))?.[2]);
    expect(parents).toEqual(attempts.map((a) => a.spanId));
  });

  it('sampleRatio 0 records no new trace but honours a sampled parent; the partner gets a traceparent either way', async () => {
    const proxy = await tracedProxy(0);
    expect((await call(proxy, '/partner/unsampled')).status).toBe(200);
    const [, unsampledTrace, , flag] = lastTraceparent();
    expect(flag).toBe('0');
    const sampledTrace = '33333333333333333333333333333333';
    expect(
      (await call(proxy, '/partner/sampled', { traceparent: `00-${sampledTrace}-4444444444444444-01` })).status,
    ).toBe(200);
    await trace(sampledTrace, 2); // exported after the unsampled request's spans would have been
    await proxy.close(); // flushes whatever is left
    proxies.length = 0;
    expect(receiver.spans.filter((s) => s.traceId === unsampledTrace)).toEqual([]);
  });

  it('forward mode and a request inside a CONNECT tunnel each get a server span', async () => {
    const proxy = await tracedProxy(1);
    const forwardTrace = '55555555555555555555555555555555';
    const forwarded = await client.request({
      origin: proxy.url,
      path: `http://${PARTNER_HOST}/v1/forward`,
      method: 'GET',
      headers: { traceparent: `00-${forwardTrace}-6666666666666666-01` },
    });
    expect(forwarded.statusCode).toBe(200);
    await forwarded.body.text();
    const tunnelTrace = '77777777777777777777777777777777';
    const agent = new ProxyAgent({ uri: proxy.url });
    try {
      const tunnelled = await request(`http://${PARTNER_HOST}/v1/tunnel`, {
        dispatcher: agent,
        headers: { traceparent: `00-${tunnelTrace}-8888888888888888-01` },
      });
      expect(tunnelled.statusCode).toBe(200);
      await tunnelled.body.text();
    } finally {
      await agent.close();
    }
    const viaForward = one(await trace(forwardTrace, 2), 'GET', SERVER);
    expect(viaForward.attributes).toMatchObject({ 'token_proxy.route': 'forward', 'url.path': '/v1/forward' });
    const viaTunnel = one(await trace(tunnelTrace, 2), 'GET', SERVER);
    expect(viaTunnel.attributes).toMatchObject({ 'token_proxy.route': 'tunnel', 'url.path': '/v1/tunnel' });
  });

  it('an upgrade handshake gets a server span and an attempt span whose id the partner received', async () => {
    const proxy = await tracedProxy(1);
    const traceId = 'abababababababababababababababab';
    const res = await rawRequest(
      Number(new URL(proxy.url).port),
      'GET /partner/v1/socket HTTP/1.1\r\nHost: proxy\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
        `traceparent: 00-${traceId}-cdcdcdcdcdcdcdcd-01\r\n\r\n`,
    );
    expect(res.status).toBe(200); // the partner speaks no WebSocket: its answer passes as it came
    const spans = await trace(traceId, 4);
    const server = one(spans, 'GET', SERVER);
    expect(server.attributes).toMatchObject({ 'token_proxy.route': 'upgrade', 'http.response.status_code': 200 });
    const attempt = one(spans, 'GET', CLIENT);
    expect(attempt.parentSpanId).toBe(server.spanId);
    expect(one(spans, 'token wait', INTERNAL).parentSpanId).toBe(server.spanId);
    const [, seenTrace, parentId] = lastTraceparent();
    expect([seenTrace, parentId]).toEqual([traceId, attempt.spanId]);
  });

  it('with a shared cache, the refresh lock held during the token request is a span under it', async () => {
    const redis = await startRedis();
    try {
      const proxy = await tracedProxy(1, {
        tokenCache: { redis: { url: redis.url, encryptionKey: randomBytes(32).toString('base64') } },
      });
      await sharedCacheState(proxy);
      const traceId = 'acacacacacacacacacacacacacacacac';
      expect(
        (await call(proxy, '/partner/v1/locked', { traceparent: `00-${traceId}-bdbdbdbdbdbdbdbd-01` })).status,
      ).toBe(200);
      const spans = await trace(traceId, 5);
      const fetch = one(spans, 'token request', INTERNAL);
      const lock = one(spans, 'token cache lock', INTERNAL);
      expect(lock.parentSpanId).toBe(fetch.spanId);
      expect(fetch.attributes['token_proxy.token.outcome']).toBe('success');
      await proxy.close();
      proxies.length = 0;
    } finally {
      await redis.stop();
    }
  });

  it('a reload that changes tracing says it takes effect after a restart, and tracing goes on as configured', async () => {
    const proxy = await tracedProxy(1);
    const base = { listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, logLevel: 'debug' };
    const same = await proxy.app.reload(buildConfig({ ...base, ...tracedDoc(1) }, { env: {} }));
    expect(same.filter((w) => w.startsWith('tracing'))).toEqual([]);
    const changed = await proxy.app.reload(buildConfig({ ...base, ...tracedDoc(0) }, { env: {} }));
    expect(changed).toContain('tracing changed: takes effect after a restart');
    await call(proxy, '/partner/v1/after-reload');
    const [, traceId, , sampled] = lastTraceparent();
    expect(sampled).toBe('1'); // still sampling at the ratio it started with
    await trace(traceId as string, 2);
  });

  it('sends the configured OTLP headers, and logs a refused export once (never the key) and its recovery', async () => {
    const keyed = await startProxy(
      tracedDoc(1, {
        tracing: { otlp: { endpoint: receiver.endpoint, headers: { 'x-api-key': 'otlp-key-Qw3!' } }, sampleRatio: 1 },
      }),
      { tracing: { scheduledDelayMillis: 20 } },
    );
    proxies.push(keyed);
    const exportsBefore = receiver.apiKeys.length;
    receiver.failWith = 400;
    try {
      await call(keyed, '/partner/v1/refused-export');
      await call(keyed, '/partner/v1/refused-again');
      await eventually(() => keyed.logs.some((l) => l.includes('"trace_export_failed"')), {
        timeoutMs: 5_000,
        what: 'trace_export_failed',
      });
    } finally {
      receiver.failWith = undefined;
    }
    const traceId = 'fafafafafafafafafafafafafafafafa';
    await call(keyed, '/partner/v1/accepted-export', { traceparent: `00-${traceId}-fbfbfbfbfbfbfbfb-01` });
    await trace(traceId, 2);
    await eventually(() => keyed.logs.some((l) => l.includes('"trace_export_recovered"')), {
      timeoutMs: 5_000,
      what: 'trace_export_recovered',
    });
    expect(keyed.logs.filter((l) => l.includes('"trace_export_failed"'))).toHaveLength(1);
    expect(receiver.apiKeys.slice(exportsBefore).every((k) => k === 'otlp-key-Qw3!')).toBe(true);
    expect(keyed.logs.join('\n')).not.toContain('otlp-key-Qw3!');
  });

  it('a proxy-made error ends the server span with status ERROR and its stable reason', async () => {
    const proxy = await tracedProxy(1);
    const traceId = '99999999999999999999999999999999';
    const res = await call(proxy, '/nowhere', { traceparent: `00-${traceId}-aaaaaaaaaaaaaaaa-01` });
    expect(res.status).toBe(404);
    const server = one(await trace(traceId, 1), 'GET', SERVER);
    expect(server.status).toMatchObject({ code: ERROR, message: 'no_route' });
    expect(server.attributes).toMatchObject({ 'error.type': 'no_route', 'http.response.status_code': 404 });
  });

  it('no secret, token or Authorization value appears anywhere in the exported bytes', async () => {
    const proxy = await tracedProxy(1);
    const traceId = 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb';
    await call(proxy, '/partner/v1/secrets?api_key=query-secret-123', {
      traceparent: `00-${traceId}-cccccccccccccccc-01`,
      authorization: 'Bearer client-own-credential-456',
      cookie: 'session=cookie-secret-789',
    });
    await trace(traceId, 4);
    await proxy.close();
    proxies.length = 0;
    expect(receiver.contentTypes.every((t) => t.startsWith('application/json'))).toBe(true);
    const exported = Buffer.concat(receiver.bodies).toString('utf8');
    expect(exported).toContain(traceId); // the export is what was searched
    const secrets = [
      SECRET,
      Buffer.from(`traced-client:${SECRET}`).toString('base64'),
      'query-secret-123',
      'client-own-credential-456',
      'cookie-secret-789',
      'Bearer',
      ...tokenServer.issued,
    ];
    expect(tokenServer.issued.length).toBeGreaterThan(0);
    for (const secret of secrets) expect(exported, secret).not.toContain(secret);
  });
});

async function scrape(proxy: RunningProxy, accept?: string) {
  const res = await request(`${proxy.adminUrl}/metrics`, { headers: accept === undefined ? {} : { accept } });
  return { type: String(res.headers['content-type']), text: await res.body.text() };
}

/** What Prometheus 2.x sends: OpenMetrics preferred, the text format accepted. */
const PROMETHEUS_ACCEPT =
  'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';

describe('exemplars and the OpenMetrics exposition', () => {
  it('an OpenMetrics scrape carries trace ids on the request and refresh histograms; a plain scrape after it keeps every name', async () => {
    const proxy = await tracedProxy(1);
    const traceId = 'dddddddddddddddddddddddddddddddd';
    expect(
      (await call(proxy, '/partner/v1/exemplar', { traceparent: `00-${traceId}-eeeeeeeeeeeeeeee-01` })).status,
    ).toBe(200);
    const open = await scrape(proxy, PROMETHEUS_ACCEPT);
    expect(open.type).toBe('application/openmetrics-text; version=1.0.0; charset=utf-8');
    expect(open.text.endsWith('# EOF\n')).toBe(true);
    expect(open.text).toMatch(
      new RegExp(
        `^token_proxy_request_duration_seconds_bucket\\{[^}]*upstream="partner"[^}]*\\} 1 # \\{trace_id="${traceId}"\\} `,
        'm',
      ),
    );
    expect(open.text).toMatch(
      new RegExp(`^token_proxy_token_refresh_duration_seconds_bucket\\{[^}]*\\} 1 # \\{trace_id="${traceId}"\\} `, 'm'),
    );
    expect(open.text).toContain('# TYPE token_proxy_requests counter');
    expect(open.text).toContain('token_proxy_requests_total{upstream="partner",code="200"} 1');

    for (const accept of [undefined, 'text/plain;version=0.0.4']) {
      const plain = await scrape(proxy, accept);
      expect(plain.type).toBe('text/plain; version=0.0.4; charset=utf-8');
      expect(plain.text).toContain('# TYPE token_proxy_requests_total counter');
      expect(plain.text).toContain('token_proxy_requests_total{upstream="partner",code="200"} 1');
      expect(plain.text).toContain('# TYPE token_proxy_token_refreshes_total counter');
      expect(plain.text).toContain('# TYPE token_proxy_refusals_total counter');
      expect(plain.text).not.toContain('# {trace_id=');
      expect(plain.text).not.toMatch(/^token_proxy_requests\{/m);
    }
    // And OpenMetrics again, after the plain scrapes: unchanged.
    expect((await scrape(proxy, PROMETHEUS_ACCEPT)).text).toContain(
      'token_proxy_requests_total{upstream="partner",code="200"} 1',
    );
  });

  it('without tracing: no exemplars, and OpenMetrics scrapes never rename the plain scrape’s counters', async () => {
    const proxy = await startProxy({
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          ca: pki.caFile,
          auth: {
            type: 'client_credentials',
            tokenUrl: tokenServer.tokenUrl,
            clientId: 'untraced',
            clientSecret: SECRET,
          },
        },
      ],
    });
    proxies.push(proxy);
    expect(
      (
        await call(proxy, '/partner/v1/untraced', {
          traceparent: '00-ffffffffffffffffffffffffffffffff-1234567812345678-01',
        })
      ).status,
    ).toBe(200);
    // Tracing off: the client's own traceparent passes through unchanged.
    expect(partner.seen.at(-1)?.headers['traceparent']).toBe('00-ffffffffffffffffffffffffffffffff-1234567812345678-01');
    const open = await scrape(proxy, 'application/openmetrics-text');
    expect(open.type.startsWith('application/openmetrics-text')).toBe(true);
    expect(open.text).not.toContain('# {');
    expect(open.text).toContain('token_proxy_requests_total{upstream="partner",code="200"} 1');
    const plain = await scrape(proxy);
    expect(plain.text).toContain('# TYPE token_proxy_requests_total counter');
    expect(plain.text).toContain('token_proxy_requests_total{upstream="partner",code="200"} 1');
    expect(plain.text).toContain('# TYPE token_proxy_token_cache_misses_total counter');
  });
});
