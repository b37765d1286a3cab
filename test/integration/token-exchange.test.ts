import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { buildConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { testPki } from '../helpers/certs.js';
import { curl } from '../helpers/clients.js';
import { startOidcServer, TOKEN_EXCHANGE_GRANT, type OidcServer } from '../helpers/oidc-server.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { FASTEST_BACKOFF, offsetClock } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-exchange-'));
let callerIdp: TokenServer; // issues the callers' JWTs (its own JWKS)
let strangerIdp: TokenServer; // another issuer: its tokens are not the callers'
let sts: OidcServer; // the partner's security token service (RFC 8693)
let partner: PartnerApi; // verifies the exchanged tokens against the STS's JWKS
let proxy: RunningProxy | undefined;
const clock = offsetClock();
const client = new Agent({ connections: 200 });

/** A caller's JWT, as the callers' IdP signs it: `sub` names the caller. */
async function callerToken(sub: string, expiresIn = 300, idp = callerIdp, claims: Record<string, unknown> = {}) {
  return idp.server.issuer.buildToken({
    expiresIn,
    scopesOrTransform: (_header, payload) => {
      Object.assign(payload, { sub, aud: 'token-proxy', ...claims });
    },
  });
}

function exchangeConfig(auth: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  return {
    inbound: {
      jwt: { jwksUrl: callerIdp.jwksUrl, issuer: callerIdp.url, audience: 'token-proxy', ca: pki.caFile },
    },
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        ca: pki.caFile,
        tokenWaitTimeoutSeconds: 5,
        auth: {
          type: 'token_exchange',
          tokenUrl: sts.tokenUrl,
          clientId: 'gateway',
          clientSecret: 'gateway-secret',
          subjectToken: 'caller',
          audience: sts.audience,
          scope: 'orders.read',
          ...auth,
        },
      },
    ],
    ...extra,
  };
}

async function start(doc: Record<string, unknown> = exchangeConfig()): Promise<RunningProxy> {
  proxy = await startProxy(doc, { clock, backoff: FASTEST_BACKOFF });
  return proxy;
}

/** One request as `caller` (its name also in a header the partner sees, to tell who sent it). */
async function call(caller: string, token: string | undefined, via = proxy as RunningProxy) {
  const headers: Record<string, string> = { 'x-test-caller': caller };
  if (token !== undefined) headers['authorization'] = `Bearer ${token}`;
  const res = await client.request({ origin: via.url, path: `/partner/orders`, method: 'GET', headers });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

const exchangeCalls = () => sts.calls.filter((c) => c.grantType === TOKEN_EXCHANGE_GRANT);

/** Every request the partner saw carried a token (verified by the partner) whose sub is the caller that sent it. */
function expectNoCrossOver(): void {
  for (const seen of partner.seen) {
    expect(seen.claims?.sub).toBeDefined();
    expect(seen.claims?.sub).toBe(seen.headers['x-test-caller']);
  }
}

beforeAll(async () => {
  callerIdp = await startTokenServer();
  strangerIdp = await startTokenServer();
  sts = await startOidcServer({
    clients: [
      {
        clientId: 'gateway',
        clientSecret: 'gateway-secret',
        authMethod: 'client_secret_basic',
        grantTypes: [TOKEN_EXCHANGE_GRANT],
        scope: 'orders.read',
      },
    ],
    // Longer than any caller token here: the caller's exp is what ends an exchanged token's use.
    accessTokenTtlSeconds: 3600,
    tokenExchange: { subjectJwksUrl: callerIdp.jwksUrl, subjectIssuer: callerIdp.url, subjectCa: pki.ca },
  });
  partner = await startPartnerApi({
    jwksUrl: sts.jwksUrl,
    issuer: sts.issuer,
    audience: sts.audience,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
  });
});

afterAll(async () => {
  await partner.close();
  await sts.stop();
  await callerIdp.stop();
  await strangerIdp.stop();
  await client.close();
});

beforeEach(() => {
  partner.seen.length = 0;
  sts.calls.length = 0;
  sts.exchanges.length = 0;
  clock.offsetMs = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

describe('token exchange (RFC 8693) in gateway mode', () => {
  it("sends each caller's requests with that caller's own exchanged token under interleaved load, one exchange per caller", async () => {
    await start();
    const callers = ['alice', 'bob', 'carol'];
    const tokens = new Map(await Promise.all(callers.map(async (c) => [c, await callerToken(c)] as const)));
    // 40 rounds of the three callers, all at once: the exchanges race each other and the requests.
    const sent = Array.from({ length: 120 }, (_, i) => callers[i % 3] as string);
    const answers = await Promise.all(sent.map((c) => call(c, tokens.get(c))));
    expect(answers.map((a) => a.status)).toEqual(sent.map(() => 200));
    expect(partner.seen).toHaveLength(120);
    expectNoCrossOver();
    for (const c of callers) expect(partner.seen.filter((s) => s.claims?.sub === c)).toHaveLength(40);
    // One exchange per caller (single flight per caller key), each with the RFC 8693 parameters.
    expect(exchangeCalls().map((c) => c.status)).toEqual([200, 200, 200]);
    expect(sts.exchanges.map((e) => e.sub).sort()).toEqual(callers);
    for (const e of sts.exchanges) {
      expect(e).toMatchObject({
        subjectTokenType: 'urn:ietf:params:oauth:token-type:jwt',
        audience: sts.audience,
        scope: 'orders.read',
        actorToken: undefined,
      });
    }
    // Three distinct tokens, each used only by its caller.
    const byCaller = new Map(
      callers.map((c) => [c, new Set(partner.seen.filter((s) => s.claims?.sub === c).map((s) => s.token))]),
    );
    for (const c of callers) expect(byCaller.get(c)?.size).toBe(1);
    expect(new Set(partner.seen.map((s) => s.token)).size).toBe(3);
    // The caller's own JWT never reaches the partner.
    for (const seen of partner.seen) expect(seen.token).not.toBe(tokens.get(seen.headers['x-test-caller'] as string));
  });

  it('never makes a token request for a caller without a valid JWT: missing, expired, foreign issuer, wrong audience', async () => {
    await start();
    const refused = [
      await call('nobody', undefined),
      await call('late', await callerToken('late', -60)),
      await call('stranger', await callerToken('stranger', 300, strangerIdp)),
      await call('elsewhere', await callerToken('elsewhere', 300, callerIdp, { aud: 'another-service' })),
      await call('garbage', 'not-a-jwt'),
    ];
    expect(refused.map((r) => r.status)).toEqual([401, 401, 401, 401, 401]);
    expect(refused.map((r) => (JSON.parse(r.text) as { error: string }).error)).toEqual(
      Array(5).fill('caller_unauthorized'),
    );
    expect(sts.calls).toHaveLength(0);
    expect(partner.seen).toHaveLength(0);
    // The same proxy exchanges at once for a valid caller: the count above could have moved.
    expect((await call('dave', await callerToken('dave'))).status).toBe(200);
    expect(exchangeCalls()).toHaveLength(1);
  });

  it("never uses an exchanged token past the caller token's exp, and refreshes none ahead of it", async () => {
    await start();
    const token = await callerToken('erin', 120); // the exchanged token itself lives 3600 s
    const exp = (JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString()) as { exp: number }).exp;
    expect((await call('erin', token)).status).toBe(200);
    const obtained = proxy?.logs
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l['event'] === 'token_obtained');
    // Capped at the caller's exp: about 120 s, not the 3600 s the STS granted.
    expect(obtained?.['lifetimeSeconds']).toBeGreaterThan(100);
    expect(obtained?.['lifetimeSeconds']).toBeLessThanOrEqual(120);
    // Two seconds before the caller's exp: the same token, no renewal (none could outlive the caller's token).
    clock.offsetMs = exp * 1000 - 2_000 - Date.now();
    expect((await call('erin', token)).status).toBe(200);
    // At exp (the validation's clock leeway still accepts the JWT): refused, nothing exchanged, nothing sent.
    clock.offsetMs = exp * 1000 - Date.now();
    const late = await call('erin', token);
    expect(late.status).toBe(401);
    expect(JSON.parse(late.text)).toMatchObject({ error: 'caller_unauthorized', reason: 'expired' });
    expect(late.headers['www-authenticate']).toBe(
      'Bearer realm="token-proxy", error="invalid_token", error_description="token expired"',
    );
    expect(exchangeCalls()).toHaveLength(1);
    expect(partner.seen).toHaveLength(2);
    expect(new Set(partner.seen.map((s) => s.token)).size).toBe(1);
    // A new caller token gets a new exchange, also capped at its own exp.
    clock.offsetMs = 0;
    expect((await call('erin', await callerToken('erin', 600))).status).toBe(200);
    expect(exchangeCalls()).toHaveLength(2);
    expectNoCrossOver();
  });

  it('evicts callers beyond tokenCache.maxEntries (their next request exchanges again) and never mixes callers', async () => {
    await start(exchangeConfig({}, { tokenCache: { maxEntries: 2 } }));
    const names = ['fay', 'gus', 'hal', 'ivy'];
    const tokens = new Map(await Promise.all(names.map(async (c) => [c, await callerToken(c)] as const)));
    // fay, gus: held; gus used again; hal evicts fay (least recently used); fay comes back: a new
    // exchange, which evicts gus.
    for (const c of ['fay', 'gus', 'gus', 'hal', 'fay']) expect((await call(c, tokens.get(c))).status).toBe(200);
    expect(sts.exchanges.map((e) => e.sub)).toEqual(['fay', 'gus', 'hal', 'fay']);
    // Four callers interleaved through two slots: many exchanges, never a token of another caller.
    const sent = Array.from({ length: 80 }, (_, i) => names[i % 4] as string);
    const answers = await Promise.all(sent.map((c) => call(c, tokens.get(c))));
    expect(answers.map((a) => a.status)).toEqual(sent.map(() => 200));
    expect(partner.seen).toHaveLength(85);
    expectNoCrossOver();
    expect(sts.exchanges.length).toBeGreaterThan(4);
    for (const e of sts.exchanges) expect(names).toContain(e.sub);
  });

  it('labels token metrics by upstream only: no caller appears in /metrics or the logs', async () => {
    await start();
    const token = await callerToken('jules');
    expect((await call('jules', token)).status).toBe(200);
    expect((await call('jules', token)).status).toBe(200);
    const metrics = await (await request(`${(proxy as RunningProxy).adminUrl}/metrics`)).body.text();
    expect(metrics).toContain(
      'token_proxy_token_refreshes_total{upstream="partner",trigger="miss",outcome="success"} 1',
    );
    expect(metrics).toContain('token_proxy_token_cache_hits_total{upstream="partner",tier="memory"} 1');
    const hash = createHash('sha256').update(token).digest('base64url');
    for (const text of [metrics, ...(proxy as RunningProxy).logs]) {
      expect(text).not.toContain('jules');
      expect(text).not.toContain(token.split('.')[2] as string);
      expect(text).not.toContain(hash);
    }
  });

  it('sends resource, requested_token_type and the actor token read from its file at each exchange', async () => {
    const actorFile = join(dir, 'actor.jwt');
    writeFileSync(actorFile, 'actor-token-one\n');
    await start(
      exchangeConfig({
        resource: 'https://api.partner.test/orders',
        requestedTokenType: 'urn:ietf:params:oauth:token-type:access_token',
        actorTokenFile: actorFile,
      }),
    );
    expect((await call('kim', await callerToken('kim'))).status).toBe(200);
    writeFileSync(actorFile, 'actor-token-two\n'); // rotated by the platform
    expect((await call('lee', await callerToken('lee'))).status).toBe(200);
    expect(sts.exchanges.map((e) => [e.sub, e.actorToken, e.actorTokenType, e.resource, e.requestedTokenType])).toEqual(
      [
        [
          'kim',
          'actor-token-one',
          'urn:ietf:params:oauth:token-type:jwt',
          'https://api.partner.test/orders',
          'urn:ietf:params:oauth:token-type:access_token',
        ],
        [
          'lee',
          'actor-token-two',
          'urn:ietf:params:oauth:token-type:jwt',
          'https://api.partner.test/orders',
          'urn:ietf:params:oauth:token-type:access_token',
        ],
      ],
    );
    expectNoCrossOver();
  });

  it('exchanges the token of forward-mode callers too (HTTP_PROXY), each with its own', async () => {
    const doc = exchangeConfig();
    (doc.upstreams[0] as Record<string, unknown>)['hosts'] = ['api.partner.example'];
    const running = await start(doc);
    for (const caller of ['olga', 'piet']) {
      const token = await callerToken(caller);
      const res = await curl([
        '--proxy',
        running.url,
        '-H',
        `Authorization: Bearer ${token}`,
        '-H',
        `X-Test-Caller: ${caller}`,
        'http://api.partner.example/orders',
      ]);
      expect(res.status).toBe(200);
    }
    expect(partner.seen.map((s) => s.claims?.sub)).toEqual(['olga', 'piet']);
    expectNoCrossOver();
    expect(sts.exchanges.map((e) => e.sub)).toEqual(['olga', 'piet']);
  });

  it("renews a caller's token after a 401 from the partner and replays once with it", async () => {
    await start();
    const token = await callerToken('mia');
    expect((await call('mia', token)).status).toBe(200);
    const first = partner.seen[0]?.token as string;
    partner.revoked.add(first);
    const res = await call('mia', token);
    expect(res.status).toBe(200);
    expect(exchangeCalls()).toHaveLength(2);
    expect(partner.seen.map((s) => s.status)).toEqual([200, 401, 200]);
    expect(partner.seen[2]?.token).not.toBe(first);
    expectNoCrossOver();
  });
});

describe('token exchange configuration', () => {
  const base = (extra: Record<string, unknown> = {}) => ({
    upstreams: [
      {
        name: 'partner',
        target: 'https://api.partner.example',
        pathPrefix: '/partner',
        auth: {
          type: 'token_exchange',
          tokenUrl: 'https://sts.partner.example/token',
          clientId: 'gateway',
          clientSecret: 'secret',
        },
        ...extra,
      },
    ],
  });
  const problems = (doc: Record<string, unknown>): string[] => {
    try {
      buildConfig(doc, { env: {} });
    } catch (err) {
      if (err instanceof ConfigError) return [...err.problems];
      throw err;
    }
    return [];
  };

  it('refuses token_exchange without inbound.jwt, saying that it needs gateway mode', () => {
    expect(problems(base())).toEqual([
      "upstreams[0].auth.type: token_exchange exchanges the caller's validated JWT and needs inbound.jwt (gateway mode): without it there is no caller token to exchange",
    ]);
  });

  it('refuses tenants and warmup with token_exchange, and requires the client credentials', () => {
    const jwt = {
      inbound: { jwt: { jwksUrl: 'https://idp.example/jwks', issuer: 'https://idp.example', audience: 'a' } },
    };
    expect(
      problems({
        ...jwt,
        ...base({ warmup: true, tenants: { from: 'jwtClaim:client_id', credentials: { a: { clientId: 'x' } } } }),
      }),
    ).toEqual([
      'upstreams[0].tenants: not with auth.type token_exchange (each caller gets its own token already)',
      'upstreams[0].warmup: not with auth.type token_exchange (no token exists before a caller asks)',
    ]);
    const noSecret = base();
    delete (noSecret.upstreams[0]?.auth as Record<string, unknown>)['clientSecret'];
    expect(problems({ ...jwt, ...noSecret })).toEqual([
      'upstreams[0].auth.clientSecret: set exactly one of clientSecret or clientSecretFile',
    ]);
    const config = buildConfig({ ...jwt, ...base() }, { env: {} });
    expect(config.upstreams[0]?.auth).toMatchObject({
      type: 'token_exchange',
      subjectTokenType: 'urn:ietf:params:oauth:token-type:jwt',
      actorTokenType: 'urn:ietf:params:oauth:token-type:jwt',
    });
  });
});

describe('token exchange with the shared tier', () => {
  let redis: TestRedis;
  const key = randomBytes(32).toString('base64');

  beforeAll(async () => {
    redis = await startRedis();
  });

  afterAll(async () => {
    await redis.stop();
  });

  it("shares a caller's exchanged token between replicas under a hash of the caller's token, never the token, until the caller token's exp", async () => {
    const doc = exchangeConfig({}, { tokenCache: { redis: { url: redis.url, encryptionKey: key } } });
    const first = await start(doc);
    const second = await startProxy(doc, { clock, backoff: FASTEST_BACKOFF });
    try {
      const token = await callerToken('nora');
      expect((await call('nora', token, first)).status).toBe(200);
      expect((await call('nora', token, second)).status).toBe(200);
      expect(exchangeCalls()).toHaveLength(1); // the second replica adopted the first one's token
      expect(partner.seen[0]?.token).toBe(partner.seen[1]?.token);
      expectNoCrossOver();
      const cli = new Redis(redis.url);
      try {
        const names = await cli.keys('*');
        const hash = createHash('sha256').update(token).digest('base64url');
        // The entry's name is an HMAC (under the encryption key) of the cache key, which itself
        // holds only the SHA-256 of the caller's token.
        const entries = names.filter((n) => n.includes('t:{'));
        expect(entries).toHaveLength(1);
        // The entry ends with the caller's token (300 s), not with the exchanged one (3600 s).
        const ttl = await cli.pttl(entries[0] as string);
        expect(ttl).toBeGreaterThan(0);
        expect(ttl).toBeLessThanOrEqual(300_000);
        for (const name of names) {
          expect(name).not.toContain(hash);
          for (const part of token.split('.')) expect(name).not.toContain(part);
        }
      } finally {
        cli.disconnect();
      }
    } finally {
      await second.close();
    }
  });
});
