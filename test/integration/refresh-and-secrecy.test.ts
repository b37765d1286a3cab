import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { testPki } from '../helpers/certs.js';
import { nextToken, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { FASTEST_BACKOFF, offsetClock } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const SECRET = 'secrecy-secret-4f2a9b71e0';
const pki = testPki();
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy;
const client = new Agent();
/** The proxy's clock: real time plus an offset a test advances instead of sleeping. */
const clock = offsetClock();

async function get(path = '/partner/x') {
  const res = await client.request({ origin: proxy.url, path, method: 'GET' });
  return { status: res.statusCode, text: await res.body.text() };
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
  clock.offsetMs = 0;
  tokenServer.requests.length = 0;
  tokenServer.issued.length = 0;
  tokenServer.respondWith(undefined);
  tokenServer.lifetimeSeconds = 300;
  partner.seen.length = 0;
  partner.revoked.clear();
  proxy = await startProxy(
    {
      tokenCache: { refreshBeforeExpirySeconds: 60 },
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          ca: pki.caFile,
          tokenWaitTimeoutSeconds: 1,
          auth: {
            type: 'client_credentials',
            tokenUrl: tokenServer.tokenUrl,
            clientId: 'secret-keeper',
            clientSecret: SECRET,
            requestTimeoutSeconds: 0.3,
          },
        },
      ],
    },
    { clock, backoff: FASTEST_BACKOFF },
  );
});

afterEach(async () => {
  await proxy.close();
});

describe('refresh ahead of expiry', () => {
  it('refreshes in the background inside the refresh window while requests keep the valid token', async () => {
    expect((await get()).status).toBe(200);
    const first = tokenServer.issued[0];
    clock.offsetMs = 250_000; // inside the window: refresh from exp - 60 s, usable until exp - 30 s
    const refreshed = nextToken(proxy);
    expect((await get()).status).toBe(200);
    expect(partner.seen[1]?.token).toBe(first); // this request did not wait for the refresh
    const fresh = await refreshed;
    expect(fresh.value).toBe(tokenServer.issued[1]);
    expect((await get()).status).toBe(200);
    expect(partner.seen[2]?.token).toBe(tokenServer.issued[1]);
    expect(tokenServer.requests).toHaveLength(2);
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    expect(metrics).toContain(
      'token_proxy_token_refreshes_total{upstream="partner",trigger="ahead",outcome="success"} 1',
    );
    expect(metrics).toContain(
      `token_proxy_token_expiry_timestamp_seconds{upstream="partner"} ${fresh.expiresAt / 1000}`,
    );
  });

  it('does not refresh a short token on every request', async () => {
    tokenServer.lifetimeSeconds = 10; // window: last 5 s (half the life), skew 2.5 s
    expect((await get()).status).toBe(200);
    for (let i = 0; i < 20; i++) expect((await get()).status).toBe(200);
    expect(tokenServer.requests).toHaveLength(1);
  });

  it('waits until half the remaining time has passed when the server hands back the token it already gave', async () => {
    expect((await get()).status).toBe(200);
    const cached = tokenServer.issued[0] as string;
    tokenServer.respondWith((res) => {
      // Like servers that return their own cached token until it expires.
      res.body = { access_token: cached, token_type: 'Bearer', expires_in: 80 };
    });
    clock.offsetMs = 245_000; // past refreshAt (exp - 60 s), before usableUntil (exp - 30 s)
    const same = nextToken(proxy);
    await get();
    const token = await same;
    expect(token.value).toBe(cached);
    const calls = tokenServer.requests.length;
    for (let i = 0; i < 10; i++) expect((await get()).status).toBe(200);
    expect(tokenServer.requests).toHaveLength(calls); // no loop
    expect(token.refreshAt).toBeGreaterThan(clock.now() + 5_000);
  });
});

describe('nothing secret is logged, answered or exported', () => {
  it('keeps tokens, the client secret and Authorization headers out of logs, error bodies and metrics', async () => {
    const bodies: string[] = [];
    bodies.push((await get('/partner/a')).text);
    partner.revoked.add(tokenServer.issued[0] as string); // 401 → refresh → replay
    bodies.push((await get('/partner/b')).text);
    bodies.push(
      await client
        .request({
          origin: proxy.url,
          path: '/partner/c',
          method: 'GET',
          headers: { authorization: 'Bearer client-own-credential-77' },
        })
        .then((r) => r.body.text()),
    );
    tokenServer.respondWith((res) => {
      res.statusCode = 401;
      res.body = { error: 'invalid_client', error_description: 'bad credentials' };
    });
    partner.revoked.add(tokenServer.issued[1] as string);
    clock.offsetMs += 6_000; // past the pause between two 401-triggered renewals
    bodies.push((await get('/partner/d')).text); // 401, then the refresh fails: 502
    expect(bodies.at(-1)).toContain('token_unavailable');
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    const everything = [...proxy.logs, ...bodies, metrics].join('\n');
    const secrets = [
      SECRET,
      'client-own-credential-77',
      ...tokenServer.issued,
      ...tokenServer.issued.map((t) => t.split('.')[2] ?? t),
    ];
    expect(tokenServer.issued.length).toBeGreaterThanOrEqual(2);
    for (const secret of secrets) expect(everything).not.toContain(secret);
    expect(everything.toLowerCase()).not.toContain('bearer ');
    // The auth events an operator needs are there, by fingerprint.
    expect(proxy.logs.some((l) => l.includes('"event":"token_obtained"'))).toBe(true);
    expect(proxy.logs.some((l) => l.includes('"event":"unauthorized_retry"'))).toBe(true);
    expect(
      proxy.logs.some((l) => l.includes('"event":"unauthorized_retry_outcome"') && l.includes('"outcome":"recovered"')),
    ).toBe(true);
    expect(
      proxy.logs.some((l) => l.includes('"event":"token_refresh_failed"') && l.includes('"reason":"invalid_client"')),
    ).toBe(true);
  });
});
