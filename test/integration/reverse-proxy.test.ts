import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const SECRET = 'integration-secret-Zq8!';
const pki = testPki();
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy;
const client = new Agent({ connections: 300 });

function upstreamDoc(overrides: Record<string, unknown> = {}, auth: Record<string, unknown> = {}) {
  return {
    name: 'partner',
    target: partner.url,
    pathPrefix: '/partner',
    ca: pki.caFile,
    retryBodyLimitBytes: 65_536,
    ...overrides,
    auth: {
      type: 'client_credentials',
      tokenUrl: tokenServer.tokenUrl,
      clientId: 'proxy-client',
      clientSecret: SECRET,
      scope: 'orders.read orders.write',
      ...auth,
    },
  };
}

async function call(
  path: string,
  init: { method?: string; body?: Buffer | Readable; headers?: Record<string, string> } = {},
) {
  // origin + path: a URL string would be normalised by the client (WHATWG resolves %2e%2e).
  const res = await client.request({
    origin: proxy.url,
    path,
    method: init.method ?? 'GET',
    body: init.body ?? null,
    headers: init.headers ?? {},
  });
  const body = Buffer.from(await res.body.arrayBuffer());
  return {
    status: res.statusCode,
    headers: res.headers,
    body,
    json: () => JSON.parse(body.toString('utf8')) as Record<string, unknown>,
  };
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
});

afterAll(async () => {
  await partner.close();
  await tokenServer.stop();
  await client.close();
});

beforeEach(async () => {
  tokenServer.requests.length = 0;
  tokenServer.issued.length = 0;
  tokenServer.respondWith(undefined);
  tokenServer.lifetimeSeconds = 300;
  partner.seen.length = 0;
  partner.revoked.clear();
  partner.script = undefined;
  proxy = await startProxy({ upstreams: [upstreamDoc()] });
});

afterEach(async () => {
  await proxy.close();
});

describe('reverse mode with a client-credentials token', () => {
  it('keeps at most maxConnections connections to the target; further requests queue and all succeed', async () => {
    await proxy.close();
    proxy = await startProxy({ upstreams: [upstreamDoc({ maxConnections: 3 })] });
    partner.script = () => ({ status: 200, body: 'slow', delayMs: 30 }); // keeps each connection busy for a while
    const statuses = await Promise.all(
      Array.from({ length: 40 }, (_, i) => call(`/partner/q${i}`).then((r) => r.status)),
    );
    expect(statuses).toEqual(Array(40).fill(200));
    expect(new Set(partner.seen.map((s) => s.remotePort)).size).toBe(3);
  });

  it('injects a token that the partner verifies against the issuer JWKS', async () => {
    const res = await call('/partner/orders/7?expand=lines', {
      headers: { authorization: 'Basic Y2xpZW50OnNlY3JldA==', 'x-app': 'legacy' },
    });
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({
      ok: true,
      path: '/orders/7?expand=lines',
      client: 'proxy-client',
      scope: 'orders.read orders.write',
    });
    const seen = partner.seen[0];
    expect(seen?.token).toBe(tokenServer.issued[0]);
    // The client's own Authorization never reaches the partner: the token replaced it.
    expect(seen?.headers.authorization).toBe(`Bearer ${tokenServer.issued[0]}`);
    expect(seen?.headers['x-app']).toBe('legacy');
    expect(seen?.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen?.headers['x-forwarded-proto']).toBe('http');
    expect(seen?.headers['x-forwarded-host']).toBe(new URL(proxy.url).host);
    expect(tokenServer.requests).toHaveLength(1);
    expect(tokenServer.requests[0]?.grantType).toBe('client_credentials');
    // client_secret_basic is the default (RFC 6749 §2.3.1): credentials in the header, not the body.
    // Each part form-urlencoded first (Appendix B): "!" becomes %21.
    expect(tokenServer.requests[0]?.authorization).toBe(
      `Basic ${Buffer.from('proxy-client:integration-secret-Zq8%21').toString('base64')}`,
    );
    expect(tokenServer.requests[0]?.body['client_secret']).toBeUndefined();
  });

  it('makes exactly one token request for 200 simultaneous cold requests', async () => {
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => call(`/partner/item/${i}`)));
    expect(results.map((r) => r.status)).toEqual(Array(200).fill(200));
    expect(tokenServer.requests).toHaveLength(1);
    expect(new Set(partner.seen.map((s) => s.token))).toEqual(new Set([tokenServer.issued[0]]));
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    expect(metrics).toContain(
      'token_proxy_token_refreshes_total{upstream="partner",trigger="miss",outcome="success"} 1',
    );
    expect(metrics).toMatch(/token_proxy_token_cache_misses_total\{upstream="partner"\} (\d+)/);
    expect(metrics).toContain('token_proxy_requests_total{upstream="partner",code="200"} 200');
    expect(metrics).not.toMatch(/^token_proxy_shared_cache_up /m); // no Redis configured: no sample, so no "down" alert
  });

  it('replays once after a 401 when the body was buffered, with a fresh token and the identical body', async () => {
    await call('/partner/warm');
    const first = tokenServer.issued[0] as string;
    partner.revoked.add(first);
    const body = randomBytes(40_000);
    const res = await call('/partner/orders', {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(res.status).toBe(200);
    const attempts = partner.seen.filter((s) => s.path === '/orders');
    expect(attempts.map((a) => a.status)).toEqual([401, 200]);
    expect(attempts[0]?.token).toBe(first);
    expect(attempts[1]?.token).toBe(tokenServer.issued[1]);
    const digest = createHash('sha256').update(body).digest('hex');
    expect(attempts.map((a) => a.bodySha256)).toEqual([digest, digest]);
    expect(attempts.map((a) => a.method)).toEqual(['POST', 'POST']);
    expect(tokenServer.requests).toHaveLength(2);
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    expect(metrics).toContain('token_proxy_unauthorized_retries_total{upstream="partner",outcome="recovered"} 1');
    expect(metrics).toContain(
      'token_proxy_token_refreshes_total{upstream="partner",trigger="unauthorized",outcome="success"} 1',
    );
  });

  it('passes a second 401 to the client as it came, after exactly one refresh', async () => {
    // The challenge blames the token; its description's words are not parameters.
    const challenge = 'Bearer error="invalid_token", error_description="expired, not error=insufficient_scope"';
    partner.script = () => ({
      status: 401,
      headers: { 'www-authenticate': challenge, 'x-partner': 'no' },
      body: '{"error":"nope"}',
    });
    const res = await call('/partner/secret');
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe(challenge);
    expect(res.headers['x-partner']).toBe('no');
    expect(res.body.toString()).toBe('{"error":"nope"}');
    expect(partner.seen).toHaveLength(2);
    expect(tokenServer.requests).toHaveLength(2);
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    expect(metrics).toContain(
      'token_proxy_unauthorized_retries_total{upstream="partner",outcome="still_unauthorized"} 1',
    );
  });

  it('passes a 401 whose Bearer challenge blames the scope or the request through untouched, keeping the token (RFC 6750 §3.1)', async () => {
    expect((await call('/partner/warm')).status).toBe(200);
    const challenges = [
      'Bearer realm="p", error="insufficient_scope", scope="orders.admin"',
      'Basic realm="x", Bearer error=invalid_request',
    ];
    for (const challenge of challenges) {
      partner.script = (req) =>
        req.path === '/admin'
          ? { status: 401, headers: { 'www-authenticate': challenge }, body: '{"error":"scope"}' }
          : undefined;
      const res = await call('/partner/admin');
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toBe(challenge);
      expect(res.body.toString()).toBe('{"error":"scope"}');
    }
    expect((await call('/partner/orders')).status).toBe(200);
    expect(partner.seen.map((s) => s.path)).toEqual(['/warm', '/admin', '/admin', '/orders']); // no replay
    expect(tokenServer.requests).toHaveLength(1); // and the token was kept
    expect(new Set(partner.seen.map((s) => s.token)).size).toBe(1);
  });

  it('refreshes once when 100 simultaneous requests all meet a 401 for the same token', async () => {
    await call('/partner/warm');
    partner.revoked.add(tokenServer.issued[0] as string);
    const results = await Promise.all(Array.from({ length: 100 }, () => call('/partner/x')));
    expect(results.map((r) => r.status)).toEqual(Array(100).fill(200));
    expect(tokenServer.requests).toHaveLength(2);
  });

  it('passes a 403 through byte for byte: status, repeated headers and body, with no refresh or retry', async () => {
    const viaProxy = await request(`${proxy.url}/partner/status/403`, { dispatcher: client });
    const proxiedBody = Buffer.from(await viaProxy.body.arrayBuffer());
    const direct = await request(`${partner.url}/status/403`, {
      dispatcher: new Agent({ connect: { ca: pki.ca } }),
      headers: { authorization: `Bearer ${tokenServer.issued[0]}` },
    });
    const directBody = Buffer.from(await direct.body.arrayBuffer());
    expect(viaProxy.statusCode).toBe(403);
    expect(proxiedBody.equals(directBody)).toBe(true);
    expect(viaProxy.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; Path=/']);
    expect(viaProxy.headers['content-type']).toBe(direct.headers['content-type']);
    expect(viaProxy.headers['x-partner-reason']).toBe('scripted');
    expect(viaProxy.headers['content-length']).toBe(direct.headers['content-length']);
    expect(partner.seen.filter((s) => s.status === 403)).toHaveLength(2); // one via the proxy, one direct
    expect(tokenServer.requests).toHaveLength(1);
  });

  it('streams a 5 MiB upload of known length straight through, never buffering it for replay', async () => {
    const body = randomBytes(5 * 1024 * 1024);
    const res = await call('/partner/upload', {
      method: 'PUT',
      body,
      headers: { 'content-length': String(body.length) },
    });
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({
      bodyBytes: body.length,
      bodySha256: createHash('sha256').update(body).digest('hex'),
    });
  });

  it('streams a chunked upload larger than the replay limit, and passes its 401 on while dropping the token', async () => {
    const body = randomBytes(300_000);
    const chunks = Array.from({ length: 30 }, (_, i) => body.subarray(i * 10_000, (i + 1) * 10_000));
    const ok = await call('/partner/upload', { method: 'POST', body: Readable.from(chunks) });
    expect(ok.json()).toMatchObject({
      bodyBytes: body.length,
      bodySha256: createHash('sha256').update(body).digest('hex'),
    });
    partner.revoked.add(tokenServer.issued[0] as string);
    const rejected = await call('/partner/upload', { method: 'POST', body: Readable.from(chunks) });
    expect(rejected.status).toBe(401); // not replayable: a streamed body is never sent twice
    expect(partner.seen.filter((s) => s.status === 401)).toHaveLength(1);
    const next = await call('/partner/after');
    expect(next.status).toBe(200);
    expect(partner.seen.at(-1)?.token).toBe(tokenServer.issued[1]);
  });

  it('sends client_secret_post credentials in the form body when configured', async () => {
    await proxy.close();
    proxy = await startProxy({
      upstreams: [upstreamDoc({}, { clientAuth: 'client_secret_post', audience: 'https://api.partner.example' })],
    });
    expect((await call('/partner/a')).status).toBe(200);
    const seen = tokenServer.requests[0];
    expect(seen?.authorization).toBeUndefined();
    expect(seen?.body).toMatchObject({
      client_id: 'proxy-client',
      client_secret: SECRET,
      audience: 'https://api.partner.example',
      scope: 'orders.read orders.write',
    });
  });

  it('answers 404 with a JSON reason for a path no upstream serves, and 400 for a path escaping its prefix', async () => {
    const missing = await call('/elsewhere');
    expect(missing.status).toBe(404);
    expect(missing.json()).toMatchObject({ error: 'no_route' });
    const climbing = await call('/partner/%2e%2e/admin');
    expect(climbing.status).toBe(400);
    expect(climbing.json()).toMatchObject({ error: 'bad_request' });
    expect(partner.seen).toHaveLength(0);
  });

  it('refuses TRACE with 405 and forwards nothing: the partner would echo the injected token to the client', async () => {
    const tokenRequests = tokenServer.requests.length;
    const trace = await call('/partner/v1/orders', { method: 'TRACE' });
    expect(trace.status).toBe(405);
    expect(trace.json()).toMatchObject({ error: 'method_not_allowed' });
    expect(trace.headers['allow']).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
    expect(trace.headers['proxy-status']).toBe('token-proxy; error=http_request_denied');
    expect(trace.body.toString()).not.toMatch(/bearer/i);
    expect(partner.seen).toHaveLength(0);
    expect(tokenServer.requests.length).toBe(tokenRequests);
    expect((await call('/partner/v1/orders')).status).toBe(200);
  });

  it('answers 504 upstream_timeout when the target sends no headers within timeoutSeconds, and keeps serving', async () => {
    await proxy.close();
    proxy = await startProxy({ upstreams: [upstreamDoc({ timeoutSeconds: 0.3 })] });
    partner.script = (req) => (req.path === '/slow' ? { status: 200, body: 'late', delayMs: 1_000 } : undefined);
    const slow = await call('/partner/slow');
    expect(slow.status).toBe(504);
    expect(slow.json()).toMatchObject({ error: 'upstream_timeout', upstream: 'partner' });
    expect((await call('/partner/fast')).status).toBe(200);
  });

  it('answers 502 upstream_unreachable when the target refuses connections', async () => {
    await proxy.close();
    proxy = await startProxy({ upstreams: [upstreamDoc({ target: 'https://127.0.0.1:1' })] });
    const res = await call('/partner/x');
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ error: 'upstream_unreachable', upstream: 'partner' });
  });

  it('verifies the target certificate even with NODE_TLS_REJECT_UNAUTHORIZED=0 in the environment', async () => {
    await proxy.close();
    // Without `ca`, neither the token endpoint's certificate nor the target's chains to a trusted root.
    const { ca: _trusted, ...withoutCa } = upstreamDoc({ tokenWaitTimeoutSeconds: 0.5 });
    vi.stubEnv('NODE_TLS_REJECT_UNAUTHORIZED', '0');
    try {
      proxy = await startProxy({ upstreams: [withoutCa] });
      const res = await call('/partner/x');
      expect(res.status).toBe(502);
      expect(res.json()).toMatchObject({ error: 'token_unavailable', upstream: 'partner', reason: 'network' });
      expect(tokenServer.requests).toHaveLength(0); // refused in the handshake: no request was sent
      expect(partner.seen).toHaveLength(0);
    } finally {
      vi.unstubAllEnvs();
    }
  });
});
