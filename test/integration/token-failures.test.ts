import { createServer } from 'node:net';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startScriptedServer } from '../helpers/scripted-server.js';
import { FAST_BACKOFF, offsetClock } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const SECRET = 'failure-secret-8d1c27';
const pki = testPki();
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy | undefined;
const client = new Agent();
/** The proxy's clock: real time plus an offset a test can advance instead of sleeping. */
const clock = offsetClock();

async function proxyFor(tokenUrl: string, auth: Record<string, unknown> = {}, upstream: Record<string, unknown> = {}) {
  proxy = await startProxy(
    {
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          ca: pki.caFile,
          tokenWaitTimeoutSeconds: 1,
          ...upstream,
          auth: {
            type: 'client_credentials',
            tokenUrl,
            clientId: 'failing-client',
            clientSecret: SECRET,
            requestTimeoutSeconds: 0.3,
            ...auth,
          },
        },
      ],
    },
    { backoff: FAST_BACKOFF, clock },
  );
  return proxy;
}

async function get(path = '/partner/x') {
  const res = await client.request({ origin: (proxy as RunningProxy).url, path, method: 'GET' });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    json: () => JSON.parse(text) as Record<string, unknown>,
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
  clock.offsetMs = 0;
  tokenServer.lifetimeSeconds = 300;
  tokenServer.requests.length = 0;
  tokenServer.issued.length = 0;
  tokenServer.respondWith(undefined);
  partner.seen.length = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

describe('token endpoint failures answer 502 token_unavailable with the observed reason', () => {
  const permanent = [
    'invalid_client',
    'invalid_scope',
    'unsupported_grant_type',
    'invalid_request',
    'unauthorized_client',
  ] as const;
  for (const code of permanent) {
    it(`maps ${code} to reason ${code}, does not retry it in a loop, and caches nothing`, async () => {
      tokenServer.respondWith((res) => {
        res.statusCode = code === 'invalid_client' ? 401 : 400;
        res.body = { error: code, error_description: `the server says ${code}` };
      });
      await proxyFor(tokenServer.tokenUrl);
      const first = await get();
      expect(first.status).toBe(502);
      expect(first.json()).toMatchObject({
        error: 'token_unavailable',
        upstream: 'partner',
        reason: code,
        description: `the server says ${code}`,
      });
      // A request inside the backoff window is answered from the remembered failure.
      const second = await get();
      expect(second.json()).toMatchObject({ reason: code });
      expect(tokenServer.requests).toHaveLength(1);
      expect(partner.seen).toHaveLength(0);
    });
  }

  it('retries a 503 with backoff and serves once the endpoint recovers', async () => {
    let failures = 2;
    tokenServer.respondWith((res) => {
      if (failures-- > 0) {
        res.statusCode = 503;
        res.body = { error: 'temporarily_unavailable' };
      } else {
        tokenServer.respondWith(undefined);
      }
    });
    await proxyFor(tokenServer.tokenUrl);
    const res = await get();
    expect(res.status).toBe(200);
    expect(tokenServer.requests).toHaveLength(3);
  });

  it('gives up after tokenWaitTimeoutSeconds on a 500 that never ends, with reason server_error', async () => {
    tokenServer.respondWith((res) => {
      res.statusCode = 500;
      res.body = { error: 'server_error' };
    });
    await proxyFor(tokenServer.tokenUrl);
    const res = await get();
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ reason: 'server_error' });
    // Backoff bounds the calls: with a 20 ms base doubling to 200 ms, a 1 s wait allows a handful.
    expect(tokenServer.requests.length).toBeGreaterThan(1);
    expect(tokenServer.requests.length).toBeLessThan(10);
  });

  it('maps 429 to rate_limited and honours Retry-After', async () => {
    tokenServer.respondWith((res) => {
      res.statusCode = 429;
      res.body = { error: 'slow_down' };
    });
    const limiter = await startScriptedServer((_req, res) => {
      res.writeHead(429, { 'retry-after': '30', 'content-type': 'application/json' });
      res.end('{"error":"slow_down"}');
    });
    await proxyFor(`${limiter.url}/token`);
    const res = await get();
    expect(res.json()).toMatchObject({ error: 'token_unavailable', reason: 'rate_limited' });
    // Retry-After: 30 s is longer than the request may wait: one call, no retry inside the wait.
    expect(limiter.hits).toBe(1);
    expect((await get()).json()).toMatchObject({ reason: 'rate_limited' });
    expect(limiter.hits).toBe(1);
    await limiter.close();
  });

  it('treats an HTML error page as bad_response', async () => {
    const html = await startScriptedServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html><body>Gateway login</body></html>');
    });
    await proxyFor(`${html.url}/token`);
    expect((await get()).json()).toMatchObject({ reason: 'bad_response' });
    await html.close();
  });

  it('treats a response without access_token as bad_response and caches nothing', async () => {
    tokenServer.respondWith((res) => {
      res.body = { token_type: 'Bearer', expires_in: 300 };
    });
    await proxyFor(tokenServer.tokenUrl);
    expect((await get()).json()).toMatchObject({ reason: 'bad_response' });
    const calls = tokenServer.requests.length;
    expect(calls).toBeGreaterThan(1); // retried, as a gateway's garbled answer may be transient
    expect(calls).toBeLessThan(10); // but with backoff, not in a hot loop
    tokenServer.respondWith(undefined);
    clock.offsetMs += 1_000; // past the backoff: the next request fetches again and succeeds
    expect((await get()).status).toBe(200);
    expect(tokenServer.requests).toHaveLength(calls + 1);
    expect(partner.seen[0]?.token).toBe(tokenServer.issued[0]);
  });

  it('maps a refused connection to network', async () => {
    const probe = createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const { port } = probe.address() as AddressInfo;
    probe.close();
    await proxyFor(`http://127.0.0.1:${port}/token`);
    expect((await get()).json()).toMatchObject({ reason: 'network' });
  });

  it('maps a token endpoint that never answers to timeout, within the configured bounds', async () => {
    const hanging = await startScriptedServer(() => {
      /* never answers */
    });
    await proxyFor(`${hanging.url}/token`);
    const res = await get();
    expect(res.json()).toMatchObject({ reason: 'timeout' });
    // Each call is cut off after requestTimeoutSeconds (0.3 s) and retried until
    // tokenWaitTimeoutSeconds (1 s) runs out: more than one call, and no more than fit in the wait.
    expect(hanging.hits).toBeGreaterThanOrEqual(2);
    expect(hanging.hits).toBeLessThanOrEqual(4);
    await hanging.close();
  });

  it('keeps serving the valid cached token while background refreshes fail', async () => {
    await proxyFor(tokenServer.tokenUrl);
    expect((await get()).status).toBe(200);
    tokenServer.respondWith((res) => {
      res.statusCode = 503;
      res.body = { error: 'unavailable' };
    });
    const source = (proxy as RunningProxy).app.tokens.get('partner');
    const failed = new Promise((resolve) => source?.once('refreshError', resolve));
    clock.offsetMs = 200_000; // a 300 s token enters its refresh window at 150 s
    expect((await get()).status).toBe(200); // the cached token, while a refresh is attempted
    await failed;
    expect((await get()).status).toBe(200);
    expect(partner.seen.map((s) => s.token)).toEqual([
      tokenServer.issued[0],
      tokenServer.issued[0],
      tokenServer.issued[0],
    ]);
    expect(tokenServer.requests.length).toBeGreaterThanOrEqual(2);
  });

  it('while the endpoint is down, serves the cached token through its last clockSkewSeconds, until about a second before expiry', async () => {
    await proxyFor(tokenServer.tokenUrl);
    expect((await get()).status).toBe(200);
    tokenServer.respondWith((res) => {
      res.statusCode = 503;
      res.body = { error: 'unavailable' };
    });
    // 285 s into a 300 s token: past the 30 s skew margin, when a replacement would have been
    // awaited. None can be had, so the token that is still valid serves (it used to be a 502).
    clock.offsetMs = 285_000;
    expect((await get()).status).toBe(200);
    clock.offsetMs = 297_000;
    expect((await get()).status).toBe(200);
    expect(partner.seen.map((s) => s.token)).toEqual(Array(3).fill(tokenServer.issued[0]));
    // Never within a second of its expiry (the expiry is kept on the whole second, rounded down).
    clock.offsetMs = 299_500;
    const late = await get();
    expect(late.status).toBe(502);
    expect(late.json()).toMatchObject({ reason: 'server_error' });
    expect(partner.seen).toHaveLength(3);
  });

  it('never injects an expired token, even while the token endpoint is down', async () => {
    await proxyFor(tokenServer.tokenUrl);
    expect((await get()).status).toBe(200);
    tokenServer.respondWith((res) => {
      res.statusCode = 503;
      res.body = { error: 'unavailable' };
    });
    clock.offsetMs = 301_000; // past expiry
    const res = await get();
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ reason: 'server_error' });
    expect(partner.seen).toHaveLength(1);
  });
});
