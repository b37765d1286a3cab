import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { testPki } from '../helpers/certs.js';
import { startOidcServer, type OidcServer } from '../helpers/oidc-server.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';

/**
 * The 401 policy end to end: oidc-provider issues the tokens (password grant, rotating refresh
 * tokens with reuse detection), the partner verifies each one against the provider's keys, and
 * clients send real concurrent requests. Time is the proxy's injected clock.
 */

const pki = testPki();
let oidc: OidcServer;
let partner: PartnerApi;
let proxy: RunningProxy | undefined;
const client = new Agent({ connections: 200 });
const clock = { offsetMs: 0, now: () => Date.now() + clock.offsetMs };
const INVALID_TOKEN = {
  status: 401,
  headers: { 'www-authenticate': 'Bearer error="invalid_token", error_description="rejected"' },
  body: '{"error":"invalid_token"}',
};

async function start() {
  proxy = await startProxy(
    {
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          ca: pki.caFile,
          tokenWaitTimeoutSeconds: 5,
          auth: {
            type: 'password',
            tokenUrl: oidc.tokenUrl,
            clientId: 'pw-client',
            clientSecret: 'pw-secret',
            username: 'alice',
            password: 'wonderland',
            scope: 'api',
          },
        },
      ],
    },
    { clock, backoff: { baseMs: 10, maxMs: 50, maxRetryAfterMs: 50, permanentMinMs: 5_000, random: () => 0 } },
  );
  return proxy;
}

async function get(path: string): Promise<number> {
  const res = await client.request({ origin: (proxy as RunningProxy).url, path, method: 'GET' });
  await res.body.dump();
  return res.statusCode;
}

/** `n` simultaneous requests; their statuses, counted. */
async function burst(n: number, path: (i: number) => string): Promise<Record<number, number>> {
  const statuses = await Promise.all(Array.from({ length: n }, (_, i) => get(path(i))));
  const counts: Record<number, number> = {};
  for (const s of statuses) counts[s] = (counts[s] ?? 0) + 1;
  return counts;
}

/** The token the partner last accepted. */
const lastAccepted = () => partner.seen.filter((s) => s.status === 200).at(-1)?.token as string;

/** Spends the proxy's current refresh token behind its back: oidc-provider then revokes the grant (reuse detection). */
const stealRefreshToken = () => oidc.spendRefreshToken('pw-client', 'pw-secret', oidc.lastIssuedRefreshToken());

const grants = () => oidc.calls.map((c) => `${c.grantType}:${c.status}`);

beforeAll(async () => {
  oidc = await startOidcServer({
    users: { alice: 'wonderland' },
    clients: [
      {
        clientId: 'pw-client',
        clientSecret: 'pw-secret',
        authMethod: 'client_secret_basic',
        grantTypes: ['password', 'refresh_token'],
        scope: 'api',
      },
    ],
  });
  partner = await startPartnerApi({
    jwksUrl: oidc.jwksUrl,
    issuer: oidc.issuer,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
  });
});

afterAll(async () => {
  await partner.close();
  await oidc.stop();
  await client.close();
});

beforeEach(() => {
  clock.offsetMs = 0;
  oidc.calls.length = 0;
  oidc.usedRefreshTokens.length = 0;
  oidc.issuedRefreshTokens.length = 0;
  partner.seen.length = 0;
  partner.revoked.clear();
  partner.script = undefined;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

describe('401 policy: every revocation recovered, futile renewals bounded', () => {
  it('a token revoked twice within one second: two renewals with the newest rotated refresh token, 100 clients each time, no 401 reaches a client', async () => {
    await start();
    expect(await get('/partner/first')).toBe(200);
    partner.revoked.add(lastAccepted());
    expect(await burst(100, (i) => `/partner/a${i}`)).toEqual({ 200: 100 });
    partner.revoked.add(lastAccepted()); // the renewed token, revoked at once
    expect(await burst(100, (i) => `/partner/b${i}`)).toEqual({ 200: 100 });
    expect(grants()).toEqual(['password:200', 'refresh_token:200', 'refresh_token:200']);
    // Each renewal presented the refresh token the previous answer issued.
    expect(oidc.usedRefreshTokens).toEqual(oidc.issuedRefreshTokens.slice(0, 2));
  });

  it('a revoked token whose refresh token was also spent: the invalid_grant fallback to the full grant runs each time, twice within a second', async () => {
    await start();
    expect(await get('/partner/first')).toBe(200);
    for (const round of ['a', 'b']) {
      await stealRefreshToken();
      partner.revoked.add(lastAccepted());
      expect(await burst(20, (i) => `/partner/${round}${i}`)).toEqual({ 200: 20 });
    }
    expect(grants()).toEqual([
      'password:200',
      'refresh_token:200', // the test's theft
      'refresh_token:400', // the proxy's refresh: invalid_grant (reuse detected)
      'password:200', // the full grant
      'refresh_token:200',
      'refresh_token:400',
      'password:200',
    ]);
  });

  it('a path that answers 401 whatever the token: a few token requests a minute, the 401 reaches its clients after at most one replay, and genuine revocations elsewhere are recovered at once', async () => {
    await start();
    partner.script = (req) => (req.path.startsWith('/always401') ? INVALID_TOKEN : undefined);
    expect(await get('/partner/ok')).toBe(200);
    // Twelve bursts of 20 clients, 5 s apart (one simulated minute), with other traffic between.
    for (let second = 0; second < 60; second += 5) {
      clock.offsetMs = second * 1_000;
      expect(await burst(20, () => '/partner/always401')).toEqual({ 401: 20 });
      expect(await get('/partner/ok')).toBe(200);
    }
    const renewals = oidc.calls.length - 1;
    expect(renewals).toBeGreaterThanOrEqual(1);
    expect(renewals).toBeLessThanOrEqual(4); // at 0, 5, 15 and 35 s at most (pauses of 5, 10, 20 s …)
    // At most one replay per client request: 240 requests, at most 480 attempts on that path.
    const attempts = partner.seen.filter((s) => s.path.startsWith('/always401')).length;
    expect(attempts).toBeGreaterThanOrEqual(240);
    expect(attempts).toBeLessThanOrEqual(480);
    // A genuine revocation on another path, right after: recovered at once.
    partner.revoked.add(lastAccepted());
    const before = oidc.calls.length;
    expect(await burst(20, (i) => `/partner/after${i}`)).toEqual({ 200: 20 });
    expect(oidc.calls.length).toBe(before + 1);
  });

  it('a partner that rejects every token: a trickle of token requests backing off from 5 s, reset by the first accepted request', async () => {
    await start();
    expect(await get('/partner/first')).toBe(200);
    partner.script = () => INVALID_TOKEN;
    const statuses: number[] = [];
    for (let second = 0; second < 120; second++) {
      clock.offsetMs = second * 1_000;
      statuses.push(await get(`/partner/r${second}`));
    }
    expect(statuses).toEqual(Array(120).fill(401));
    // Renewals at 0, 5, 15, 35, 75 s: 5 in two minutes, not one per request.
    expect(oidc.calls.length - 1).toBe(5);
    // The partner accepts tokens again: the first accepted request resets the backoff, so a
    // revocation right after is recovered at once.
    partner.script = undefined;
    expect(await get('/partner/back')).toBe(200);
    partner.revoked.add(lastAccepted());
    expect(await get('/partner/revoked-after')).toBe(200);
    expect(oidc.calls.length - 1).toBe(6);
  });
});
