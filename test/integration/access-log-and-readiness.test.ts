import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import type { Token } from '../../src/tokens/token.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const pki = testPki();
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy | undefined;
const client = new Agent();

const upstream = (extra: Record<string, unknown> = {}) => ({
  name: 'partner',
  target: partner.url,
  pathPrefix: '/partner',
  ca: pki.caFile,
  ...extra,
  auth: {
    type: 'client_credentials',
    tokenUrl: tokenServer.tokenUrl,
    clientId: 'ops-client',
    clientSecret: 'ops-secret',
  },
});

async function readyz() {
  const res = await request(`${(proxy as RunningProxy).adminUrl}/readyz`);
  return {
    status: res.statusCode,
    body: (await res.body.json()) as { status: string; tokens: Record<string, unknown>[] },
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

beforeEach(() => {
  tokenServer.respondWith(undefined);
  tokenServer.issued.length = 0;
  partner.seen.length = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

function logLines(p: RunningProxy): Record<string, unknown>[] {
  return p.logs.map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('access log and request ids', () => {
  it('writes one line per request with the request id it forwards upstream, and a token fingerprint only', async () => {
    proxy = await startProxy({ logLevel: 'info', upstreams: [upstream()] });
    const given = await client.request({
      origin: proxy.url,
      path: '/partner/a',
      method: 'GET',
      headers: { 'x-request-id': 'abc-123' },
    });
    await given.body.dump();
    const fresh = await client.request({
      origin: proxy.url,
      path: '/partner/b',
      method: 'POST',
      body: 'x',
      headers: { 'x-request-id': 'bad id with spaces' },
    });
    await fresh.body.dump();
    expect(partner.seen[0]?.headers['x-request-id']).toBe('abc-123');
    const generated = partner.seen[1]?.headers['x-request-id'] as string;
    expect(generated).toMatch(/^[0-9a-f-]{36}$/);
    const lines = logLines(proxy).filter((l) => l['event'] === 'request');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({
      requestId: 'abc-123',
      method: 'GET',
      upstream: 'partner',
      status: 200,
      retried: false,
    });
    expect(lines[1]).toMatchObject({ requestId: generated, method: 'POST', status: 200 });
    expect(lines[0]?.['token']).toMatch(/^[A-Za-z0-9_-]{12}$/);
    expect(typeof lines[0]?.['durationMs']).toBe('number');
    expect(JSON.stringify(lines)).not.toContain(tokenServer.issued[0]);
  });

  it('marks a replayed request as retried', async () => {
    proxy = await startProxy({ logLevel: 'info', upstreams: [upstream()] });
    await (await client.request({ origin: proxy.url, path: '/partner/warm', method: 'GET' })).body.dump();
    partner.revoked.add(tokenServer.issued[0] as string);
    await (await client.request({ origin: proxy.url, path: '/partner/replayed', method: 'GET' })).body.dump();
    const last = logLines(proxy)
      .filter((l) => l['event'] === 'request')
      .at(-1);
    expect(last).toMatchObject({ status: 200, retried: true });
  });

  it('writes no access log when accessLog is false', async () => {
    proxy = await startProxy({ logLevel: 'info', accessLog: false, upstreams: [upstream()] });
    await (await client.request({ origin: proxy.url, path: '/partner/a', method: 'GET' })).body.dump();
    expect(logLines(proxy).filter((l) => l['event'] === 'request')).toHaveLength(0);
  });
});

describe('/readyz', () => {
  it('answers 503 until a warm-up token is in hand, with token states and no token values', async () => {
    tokenServer.respondWith((res) => {
      res.statusCode = 503;
      res.body = { error: 'temporarily_unavailable' };
    });
    proxy = await startProxy(
      { upstreams: [upstream({ warmup: true, tokenWaitTimeoutSeconds: 0.2 })] },
      { backoff: { baseMs: 10, maxMs: 20, maxRetryAfterMs: 20, permanentMinMs: 20, random: () => 0 } },
    );
    const failing = await readyz();
    expect(failing.status).toBe(503);
    const source = proxy.app.tokens.get('partner');
    const obtained = new Promise<Token>((resolve) => source?.once('token', resolve));
    tokenServer.respondWith(undefined);
    await obtained; // the warm-up loop retries on its own
    const ready = await readyz();
    expect(ready.status).toBe(200);
    expect(ready.body.tokens).toEqual([
      { upstream: 'partner', state: 'valid', expiresInSeconds: expect.any(Number) as unknown },
    ]);
    expect(JSON.stringify(ready.body)).not.toContain(tokenServer.issued[0]);
    expect(partner.seen).toHaveLength(0); // warm-up needs no traffic
  });

  it('is ready without warm-up and reports tokens not fetched yet as none, and failures by reason', async () => {
    proxy = await startProxy({ upstreams: [upstream()] });
    expect(await readyz()).toEqual({
      status: 200,
      body: { status: 'ready', tokens: [{ upstream: 'partner', state: 'none' }] },
    });
    tokenServer.respondWith((res) => {
      res.statusCode = 401;
      res.body = { error: 'invalid_client' };
    });
    await (await client.request({ origin: proxy.url, path: '/partner/a', method: 'GET' })).body.dump();
    expect((await readyz()).body.tokens).toEqual([
      { upstream: 'partner', state: 'failing', lastError: 'invalid_client' },
    ]);
  });
});
