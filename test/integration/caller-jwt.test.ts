import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { testPki } from '../helpers/certs.js';
import { curl } from '../helpers/clients.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const pki = testPki();
let idp: TokenServer; // issues the callers' JWTs
let partnerIdp: TokenServer; // issues the partner tokens the proxy injects
let partner: PartnerApi;
let proxy: RunningProxy;
const client = new Agent();

async function callerToken(claims: Record<string, unknown> = {}, expiresIn = 300, typ?: string): Promise<string> {
  return idp.server.issuer.buildToken({
    expiresIn,
    scopesOrTransform: (header, payload) => {
      if (typ !== undefined) header['typ'] = typ; // the issuer's default is JWT
      Object.assign(payload, {
        sub: 'caller-42',
        aud: 'token-proxy',
        scope: 'partner.read other',
        client_id: 'app-a',
        ...claims,
      });
    },
  });
}

async function call(headers: Record<string, string>, path = '/partner/x') {
  const res = await client.request({ origin: proxy.url, path, method: 'GET', headers });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

function proxyConfig(extra: Record<string, unknown> = {}, jwt: Record<string, unknown> = {}) {
  return {
    inbound: {
      jwt: {
        ...jwt,
        jwksUrl: idp.jwksUrl,
        issuer: idp.url,
        audience: 'token-proxy',
        algorithms: ['RS256'],
        requiredClaims: { scope: 'partner.read' },
        forwardClaims: { sub: 'X-Caller-Sub' },
        ca: pki.caFile,
      },
    },
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        ca: pki.caFile,
        auth: {
          type: 'client_credentials',
          tokenUrl: partnerIdp.tokenUrl,
          clientId: 'proxy-client',
          clientSecret: 'proxy-secret',
        },
        ...extra,
      },
    ],
  };
}

beforeAll(async () => {
  idp = await startTokenServer();
  partnerIdp = await startTokenServer();
  partner = await startPartnerApi({
    jwksUrl: partnerIdp.jwksUrl,
    issuer: partnerIdp.url,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
  });
});

afterAll(async () => {
  await partner.close();
  await partnerIdp.stop();
  await client.close();
});

beforeEach(async () => {
  partner.seen.length = 0;
  proxy = await startProxy(proxyConfig());
});

afterEach(async () => {
  await proxy.close();
});

describe('gateway mode: callers must present a valid JWT', () => {
  it('lets a valid caller through, never forwards its JWT, and forwards only the configured claims', async () => {
    const token = await callerToken();
    const res = await call({ authorization: `Bearer ${token}`, 'x-caller-sub': 'spoofed-admin' });
    expect(res.status).toBe(200);
    const seen = partner.seen[0];
    expect(seen?.claims?.['client_id']).toBe('proxy-client'); // the partner token, verified by the partner
    expect(seen?.headers.authorization).not.toContain(token);
    expect(JSON.stringify(seen?.headers)).not.toContain(token.split('.')[2] as string);
    expect(seen?.headers['x-caller-sub']).toBe('caller-42'); // the claim, not what the caller claimed
  });

  it('answers 401 with an RFC 6750 challenge for a missing, expired or wrong-audience token; nothing reaches the partner', async () => {
    const missing = await call({});
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe('Bearer realm="token-proxy"');
    expect(JSON.parse(missing.text)).toMatchObject({ error: 'caller_unauthorized', reason: 'missing' });
    const expired = await call({ authorization: `Bearer ${await callerToken({}, -60)}` });
    expect(expired.status).toBe(401);
    expect(expired.headers['www-authenticate']).toMatch(
      /^Bearer realm="token-proxy", error="invalid_token", error_description="[^"]+"$/,
    );
    expect(JSON.parse(expired.text)).toMatchObject({ reason: 'expired' });
    const wrongAud = await call({ authorization: `Bearer ${await callerToken({ aud: 'someone-else' })}` });
    expect(JSON.parse(wrongAud.text)).toMatchObject({ reason: 'bad_claims' });
    const noScope = await call({ authorization: `Bearer ${await callerToken({ scope: 'other' })}` });
    expect(JSON.parse(noScope.text)).toMatchObject({ reason: 'bad_claims' });
    expect(partner.seen).toHaveLength(0);
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    expect(metrics).toContain('token_proxy_inbound_auth_total{result="missing"} 1');
    expect(metrics).toContain('token_proxy_inbound_auth_total{result="expired"} 1');
    expect(metrics).toContain('token_proxy_inbound_auth_total{result="bad_claims"} 2');
  });

  it('answers 503 for tokens it cannot check while the JWKS endpoint is down, while validated tokens keep passing', async () => {
    const known = await callerToken();
    const fresh = await callerToken({ sub: 'newcomer' });
    expect((await call({ authorization: `Bearer ${known}` })).status).toBe(200);
    await idp.stop();
    try {
      expect((await call({ authorization: `Bearer ${known}` })).status).toBe(200); // validated before: cached
      await proxy.close();
      proxy = await startProxy(proxyConfig()); // a new replica has no keys yet and cannot fetch them
      const res = await call({ authorization: `Bearer ${fresh}` });
      expect(res.status).toBe(503);
      expect(res.headers['www-authenticate']).toBe('Bearer realm="token-proxy"');
      expect(JSON.parse(res.text)).toMatchObject({ error: 'caller_auth_unavailable', reason: 'jwks_error' });
    } finally {
      idp = await startTokenServer(); // a fresh IdP for the remaining tests
    }
    await proxy.close();
    proxy = await startProxy(proxyConfig());
  });

  it('asks forward-mode callers for the same JWT: an upstream host reached through HTTP_PROXY spends the same token', async () => {
    await proxy.close();
    proxy = await startProxy(proxyConfig({ hosts: ['api.partner.example'] }));
    const missing = await curl(['-i', '--proxy', proxy.url, 'http://api.partner.example/x']);
    expect(missing.status).toBe(401);
    expect(missing.body).toContain('"error":"caller_unauthorized"');
    expect(partner.seen).toHaveLength(0);
    const token = await callerToken();
    const valid = await curl([
      '--proxy',
      proxy.url,
      '-H',
      `Authorization: Bearer ${token}`,
      'http://api.partner.example/x',
    ]);
    expect(valid.status).toBe(200);
    expect(partner.seen).toHaveLength(1);
    expect(partner.seen[0]?.claims?.['client_id']).toBe('proxy-client');
    expect(partner.seen[0]?.headers['x-caller-sub']).toBe('caller-42');
  });

  it('with requiredTyp at+jwt, refuses an ID token (typ JWT) with 401 invalid_token and lets an at+jwt access token through', async () => {
    await proxy.close();
    proxy = await startProxy(proxyConfig({}, { requiredTyp: 'at+jwt' }));
    // Same issuer, audience, scope and signature: only the JOSE typ tells the ID token apart (RFC 9068 §4).
    const idToken = await callerToken({ nonce: 'n-1' });
    const refused = await call({ authorization: `Bearer ${idToken}` });
    expect(refused.status).toBe(401);
    expect(refused.headers['www-authenticate']).toBe(
      'Bearer realm="token-proxy", error="invalid_token", error_description="token type not accepted (typ)"',
    );
    expect(JSON.parse(refused.text)).toMatchObject({ error: 'caller_unauthorized', reason: 'bad_type' });
    expect(refused.text).not.toContain(idToken.split('.')[2] as string);
    expect(partner.seen).toHaveLength(0);
    const accessToken = await callerToken({}, 300, 'at+jwt');
    const passed = await call({ authorization: `Bearer ${accessToken}` });
    expect(passed.status).toBe(200);
    expect(partner.seen).toHaveLength(1);
    expect(partner.seen[0]?.headers['x-caller-sub']).toBe('caller-42');
    expect((await call({ authorization: `Bearer ${await callerToken({}, 300, 'application/AT+JWT')}` })).status).toBe(
      200,
    );
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    expect(metrics).toContain('token_proxy_inbound_auth_total{result="bad_type"} 1');
    expect(metrics).toContain('token_proxy_inbound_auth_total{result="valid"} 2');
  });

  it('selects the tenant from a caller claim', async () => {
    await proxy.close();
    proxy = await startProxy(
      proxyConfig({
        tenants: {
          from: 'jwtClaim:client_id',
          credentials: {
            'app-a': { clientId: 'tenant-a', clientSecret: 'sa' },
            'app-b': { clientId: 'tenant-b', clientSecret: 'sb' },
          },
        },
      }),
    );
    expect((await call({ authorization: `Bearer ${await callerToken({ client_id: 'app-b' })}` })).status).toBe(200);
    expect(partner.seen.at(-1)?.claims?.['client_id']).toBe('tenant-b');
    const unknown = await call({ authorization: `Bearer ${await callerToken({ client_id: 'app-z' })}` });
    expect(unknown.status).toBe(403);
    expect(JSON.parse(unknown.text)).toMatchObject({ error: 'unknown_tenant' });
  });
});
