import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { buildConfig } from '../../src/config/load.js';
import { testPki } from '../helpers/certs.js';
import { generateClientKey, issueClientCertificate, startOidcServer, type OidcServer } from '../helpers/oidc-server.js';
import { nextToken, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { FASTEST_BACKOFF, offsetClock } from '../helpers/time.js';

const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-grants-'));
const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text);
  return join(dir, name);
};
let oidc: OidcServer;
let partner: PartnerApi;
let mtlsPartner: PartnerApi;
let proxy: RunningProxy | undefined;
const client = new Agent({ connections: 100 });
/** The proxy's clock: real time plus an offset a test advances instead of sleeping. */
const clock = offsetClock();
let jwtKey: { privatePem: string };
let clientCert: { certPem: string; keyPem: string; subjectDn: string };

async function start(upstream: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  proxy = await startProxy(
    {
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          ca: pki.caFile,
          tokenWaitTimeoutSeconds: 2,
          ...upstream,
        },
      ],
      ...extra,
    },
    { clock, backoff: FASTEST_BACKOFF },
  );
  return proxy;
}

async function get(path = '/partner/x', headers: Record<string, string> = {}) {
  const res = await client.request({ origin: (proxy as RunningProxy).url, path, method: 'GET', headers });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    json: () => JSON.parse(text) as Record<string, unknown>,
  };
}

beforeAll(async () => {
  const es256 = await generateClientKey('ES256', 'client-key-1');
  jwtKey = es256;
  clientCert = issueClientCertificate('mtls-client');
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
      {
        clientId: 'jwt-client',
        authMethod: 'private_key_jwt',
        jwks: { keys: [es256.publicJwk] },
        grantTypes: ['client_credentials'],
        scope: 'api',
      },
      {
        clientId: 'mtls-client',
        authMethod: 'tls_client_auth',
        tlsSubjectDn: clientCert.subjectDn,
        grantTypes: ['client_credentials'],
        scope: 'api',
      },
      {
        clientId: 'tenant-a',
        clientSecret: 'secret-a',
        authMethod: 'client_secret_basic',
        grantTypes: ['client_credentials'],
        scope: 'api',
      },
      {
        clientId: 'tenant-b',
        clientSecret: 'secret-b',
        authMethod: 'client_secret_basic',
        grantTypes: ['client_credentials'],
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
  mtlsPartner = await startPartnerApi({
    jwksUrl: oidc.jwksUrl,
    issuer: oidc.issuer,
    tls: { key: pki.key, cert: pki.cert, clientCa: pki.ca },
    issuerCa: pki.ca,
  });
});

afterAll(async () => {
  await partner.close();
  await mtlsPartner.close();
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
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

const passwordAuth = () => ({
  type: 'password',
  tokenUrl: oidc.tokenUrl,
  clientId: 'pw-client',
  clientSecret: 'pw-secret',
  username: 'alice',
  password: 'wonderland',
  scope: 'api',
});

describe('password grant with rotating refresh tokens (oidc-provider)', () => {
  it('logs in once, then renews with each newest refresh token: zero invalid_grant over many cycles', async () => {
    await start({ auth: passwordAuth() });
    expect((await get()).status).toBe(200);
    // One renewal ahead of expiry (the injected clock moves into the refresh window)...
    clock.offsetMs = 250_000;
    const ahead = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    await ahead;
    // ...then eight more forced by the partner rejecting each current token (401 → renew → replay).
    for (let cycle = 0; cycle < 8; cycle++) {
      partner.revoked.add((proxy as RunningProxy).app.tokens.get('partner')?.current()?.value as string);
      expect((await get(`/partner/cycle${cycle}`)).status).toBe(200);
    }
    expect(oidc.calls.map((c) => `${c.grantType}:${c.status}`)).toEqual([
      'password:200',
      ...Array<string>(9).fill('refresh_token:200'),
    ]);
    // Each refresh presented the refresh token the previous answer issued: rotation followed exactly.
    expect(oidc.usedRefreshTokens).toEqual(oidc.issuedRefreshTokens.slice(0, -1));
    expect(new Set(oidc.usedRefreshTokens).size).toBe(9);
    expect(partner.seen.every((s) => s.claims?.['client_id'] === 'pw-client')).toBe(true);
  });

  it('keeps the newest refresh token across a reload, also after a 401 dropped the cached token', async () => {
    const upstream = {
      name: 'partner',
      target: partner.url,
      pathPrefix: '/partner',
      ca: pki.caFile,
      tokenWaitTimeoutSeconds: 2,

      auth: passwordAuth(),
    };
    await start(upstream);
    expect((await get()).status).toBe(200);
    partner.revoked.add(partner.seen[0]?.token as string);
    expect((await get('/partner/renewed')).status).toBe(200); // refreshed: RT1 spent, RT2 issued
    const p = proxy as RunningProxy;
    expect(
      await p.app.reload(
        buildConfig({ listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, upstreams: [upstream] }, { env: {} }),
      ),
    ).toEqual([]);
    // The new configuration's source meets a 401: the cached token is dropped before it renews.
    partner.revoked.add(partner.seen.filter((s) => s.status === 200).at(-1)?.token as string);
    expect((await get('/partner/after-reload')).status).toBe(200);
    // It renewed with RT2, which only the old source had been given: no second login.
    expect(oidc.calls.map((c) => `${c.grantType}:${c.status}`)).toEqual([
      'password:200',
      'refresh_token:200',
      'refresh_token:200',
    ]);
    expect(oidc.usedRefreshTokens).toEqual(oidc.issuedRefreshTokens.slice(0, 2));
  });

  it('renews with the refresh token after a 401 and replays once', async () => {
    await start({ auth: passwordAuth() });
    expect((await get()).status).toBe(200);
    partner.revoked.add(partner.seen[0]?.token as string);
    expect((await get('/partner/again')).status).toBe(200);
    expect(oidc.calls.map((c) => c.grantType)).toEqual(['password', 'refresh_token']);
  });

  it('falls back to the full grant when the refresh token is rejected, and surfaces a failing grant as 502', async () => {
    await start({ auth: passwordAuth() });
    expect((await get()).status).toBe(200);
    // Reusing a rotated refresh token revokes the whole grant (oidc-provider's reuse detection):
    // use the proxy's current refresh token behind its back so its next refresh is refused.
    const source = (proxy as RunningProxy).app.tokens.get('partner');
    await oidc.spendRefreshToken('pw-client', 'pw-secret', oidc.lastIssuedRefreshToken());
    clock.offsetMs = 200_000;
    const renewed = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    await renewed;
    expect(oidc.calls.map((c) => `${c.grantType}:${c.status}`)).toEqual([
      'password:200',
      'refresh_token:200',
      'refresh_token:400',
      'password:200',
    ]);
    expect((proxy as RunningProxy).logs.some((l) => l.includes('"event":"refresh_token_rejected"'))).toBe(true);
    expect(source).toBeDefined();

    await proxy?.close();
    await start({ auth: { ...passwordAuth(), password: 'wrong' } });
    const failed = await get();
    expect(failed.status).toBe(502);
    expect(failed.json()).toMatchObject({ error: 'token_unavailable', reason: 'invalid_grant' });
  });
});

describe('refresh_token grant with a configured refresh token', () => {
  it('starts from the configured refresh token and keeps the rotated one', async () => {
    const initial = await oidc.passwordGrant('pw-client', 'pw-secret', 'alice', 'wonderland');
    oidc.calls.length = 0;
    await start({
      auth: {
        type: 'refresh_token',
        tokenUrl: oidc.tokenUrl,
        clientId: 'pw-client',
        clientSecretFile: file('pw-secret', 'pw-secret\n'),
        refreshTokenFile: file('rt', `${initial.refreshToken}\n`),
      },
    });
    expect((await get()).status).toBe(200);
    clock.offsetMs = 200_000;
    const renewed = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    await renewed;
    expect(oidc.calls.map((c) => `${c.grantType}:${c.status}`)).toEqual(['refresh_token:200', 'refresh_token:200']);
    expect(oidc.usedRefreshTokens[0]).toBe(initial.refreshToken);
    expect(oidc.usedRefreshTokens[1]).not.toBe(initial.refreshToken);
  });
});

describe('client authentication methods', () => {
  it('private_key_jwt (RFC 7523): an ES256 client assertion the token server verifies', async () => {
    await start({
      auth: {
        type: 'client_credentials',
        tokenUrl: oidc.tokenUrl,
        clientId: 'jwt-client',
        clientAuth: 'private_key_jwt',
        privateKey: { file: file('client-key.pem', jwtKey.privatePem), alg: 'ES256', kid: 'client-key-1' },
        scope: 'api',
      },
    });
    expect((await get()).status).toBe(200);
    expect(oidc.calls.map((c) => [c.clientId, c.authMethod, c.status])).toEqual([
      ['jwt-client', 'private_key_jwt', 200],
    ]);
    expect(partner.seen[0]?.claims?.['client_id']).toBe('jwt-client');
  });

  it('tls_client_auth (RFC 8705): the client certificate authenticates; without it the token server refuses', async () => {
    const auth = {
      type: 'client_credentials',
      tokenUrl: oidc.tokenUrl,
      clientId: 'mtls-client',
      clientAuth: 'tls_client_auth',
      scope: 'api',
      mtls: { cert: file('client.pem', clientCert.certPem), key: file('client-key.pem', clientCert.keyPem) },
    };
    await start({ auth });
    expect((await get()).status).toBe(200);
    expect(oidc.calls.map((c) => [c.clientId, c.authMethod, c.status])).toEqual([
      ['mtls-client', 'tls_client_auth', 200],
    ]);
    await proxy?.close();
    // Same client, but the certificate is not presented: the token server says invalid_client.
    await start({ auth: { ...auth, clientAuth: 'none', mtls: undefined } });
    const refused = await get();
    expect(refused.json()).toMatchObject({ error: 'token_unavailable', reason: 'invalid_client' });
  });

  it('mTLS towards the target with upstreams[].mtls', async () => {
    const mtls = { cert: file('client.pem', clientCert.certPem), key: file('client-key.pem', clientCert.keyPem) };
    const auth = {
      type: 'client_credentials',
      tokenUrl: oidc.tokenUrl,
      clientId: 'tenant-a',
      clientSecret: 'secret-a',
      scope: 'api',
    };
    await start({ target: mtlsPartner.url, auth });
    const without = await get();
    expect(without.status).toBe(502);
    expect(without.json()).toMatchObject({ error: 'upstream_unreachable' });
    await proxy?.close();
    await start({ target: mtlsPartner.url, mtls, auth });
    expect((await get()).status).toBe(200);
    expect(mtlsPartner.seen.at(-1)?.claims?.['client_id']).toBe('tenant-a');
  });
});

describe('tenants', () => {
  const tenantUpstream = (from: string) => ({
    // Only what the tenants share: each brings its own client id and secret.
    auth: { type: 'client_credentials', tokenUrl: oidc.tokenUrl, scope: 'api' },
    tenants: {
      from,
      credentials: {
        'app-a': { clientId: 'tenant-a', clientSecret: 'secret-a' },
        'app-b': { clientId: 'tenant-b', clientSecret: 'secret-b' },
      },
    },
  });

  it('keeps each tenant on its own token under interleaved load, with no cross-over', async () => {
    await start(tenantUpstream('header:X-Tenant'));
    const tenants = Array.from({ length: 200 }, (_, i) => (i % 3 === 0 ? 'app-b' : 'app-a'));
    const results = await Promise.all(tenants.map((t, i) => get(`/partner/n${i}`, { 'x-tenant': t })));
    expect(results.every((r) => r.status === 200)).toBe(true);
    const expected: Record<string, string> = { 'app-a': 'tenant-a', 'app-b': 'tenant-b' };
    for (const seen of partner.seen)
      expect(seen.claims?.['client_id']).toBe(expected[seen.headers['x-tenant'] as string]);
    expect(partner.seen).toHaveLength(200);
    expect(oidc.calls.map((c) => c.clientId).sort()).toEqual(['tenant-a', 'tenant-b']);
    const metrics = await (await request(`${(proxy as RunningProxy).adminUrl}/metrics`)).body.text();
    expect(metrics).toContain(
      'token_proxy_token_refreshes_total{upstream="partner",tenant="app-a",trigger="miss",outcome="success"} 1',
    );
    expect(metrics).toContain(
      'token_proxy_token_refreshes_total{upstream="partner",tenant="app-b",trigger="miss",outcome="success"} 1',
    );
  });

  it('refuses an unknown or missing tenant with 403 and Proxy-Status, never using another tenant', async () => {
    await start(tenantUpstream('header:X-Tenant'));
    for (const headers of [{ 'x-tenant': 'app-c' }, {}] as Record<string, string>[]) {
      const res = await get('/partner/x', headers);
      expect(res.status).toBe(403);
      expect(res.headers['proxy-status']).toBe('token-proxy; error=http_request_denied');
      expect(res.json()).toMatchObject({ error: 'unknown_tenant', upstream: 'partner' });
    }
    expect(oidc.calls).toHaveLength(0);
    expect(partner.seen).toHaveLength(0);
  });

  it('takes the tenant from the proxy user in forward mode', async () => {
    await start(
      { ...tenantUpstream('proxyAuthUser'), hosts: ['api.partner.example'] },
      {
        inbound: {
          proxyAuth: {
            users: [
              { name: 'app-a', password: 'pa' },
              { name: 'app-b', password: 'pb' },
            ],
          },
        },
      },
    );
    const { ProxyAgent } = await import('undici');
    for (const [user, clientId] of [
      ['app-a', 'tenant-a'],
      ['app-b', 'tenant-b'],
    ] as const) {
      const agent = new ProxyAgent({
        uri: (proxy as RunningProxy).url,
        token: `Basic ${Buffer.from(`${user}:p${user.slice(-1)}`).toString('base64')}`,
        proxyTunnel: false,
      });
      const res = await request('http://api.partner.example/who', { dispatcher: agent });
      expect(res.statusCode).toBe(200);
      expect(await res.body.json()).toMatchObject({ client: clientId });
      await agent.close();
    }
  });
});
