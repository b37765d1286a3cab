import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { ConfigError } from '../../src/errors.js';
import { runTokenCommand } from '../../src/token-command.js';
import { createCaFiles } from '../../src/mitm/certificate-authority.js';
import { testPki } from '../helpers/certs.js';
import { curl } from '../helpers/clients.js';
import { issueClientCertificate, startOidcServer, type OidcServer } from '../helpers/oidc-server.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { FASTEST_BACKOFF } from '../helpers/time.js';

/**
 * RFC 8705 §3 certificate-bound access tokens, end to end: oidc-provider binds each token to the
 * certificate the proxy presents at its token endpoint (`cnf.x5t#S256` in the JWT), and the
 * partner accepts a token only over a connection that presents that same certificate.
 */

const PARTNER_HOST = 'api.partner.example';
const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-bound-'));
const client = new Agent();
let oidc: OidcServer;
let partner: PartnerApi;
let proxy: RunningProxy | undefined;
let mitmCaFile: string;
/** The certificate tokens are bound to (auth.mtls), and another one the same CA issued. */
let tokenCert: { cert: string; key: string; thumbprint: string };
let otherCert: { cert: string; key: string; thumbprint: string };

/** RFC 8705 §3.1: base64url SHA-256 of the DER certificate. */
function thumbprint(pem: string): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');
}

function certFiles(name: string) {
  const issued = issueClientCertificate(name);
  writeFileSync(join(dir, `${name}.pem`), issued.certPem);
  writeFileSync(join(dir, `${name}-key.pem`), issued.keyPem);
  return {
    cert: join(dir, `${name}.pem`),
    key: join(dir, `${name}-key.pem`),
    thumbprint: thumbprint(issued.certPem),
    subjectDn: issued.subjectDn,
  };
}

const mtlsOf = (c: { cert: string; key: string }) => ({ cert: c.cert, key: c.key });

function boundAuth(extra: Record<string, unknown> = {}) {
  return {
    type: 'client_credentials',
    tokenUrl: oidc.tokenUrl,
    clientId: 'bound-client',
    clientAuth: 'tls_client_auth',
    scope: 'api',
    mtls: mtlsOf(tokenCert),
    ...extra,
  };
}

function upstreamDoc(extra: Record<string, unknown> = {}) {
  return {
    name: 'partner',
    target: partner.url,
    pathPrefix: '/partner',
    hosts: [PARTNER_HOST],
    ca: pki.caFile,
    tokenWaitTimeoutSeconds: 2,
    auth: boundAuth(),
    ...extra,
  };
}

async function start(upstream: Record<string, unknown>) {
  proxy = await startProxy(
    {
      upstreams: [upstream],
      mitm: { caCert: mitmCaFile, caKey: join(dir, 'ca-key.pem') },
    },
    { backoff: FASTEST_BACKOFF },
  );
  return proxy;
}

async function get(path = '/partner/x', headers: Record<string, string> = {}) {
  const res = await client.request({ origin: (proxy as RunningProxy).url, path, method: 'GET', headers });
  const text = await res.body.text();
  return { status: res.statusCode, json: () => JSON.parse(text) as Record<string, unknown> };
}

function cnfOf(claims: Record<string, unknown> | undefined): unknown {
  return (claims?.['cnf'] as Record<string, unknown> | undefined)?.['x5t#S256'];
}

beforeAll(async () => {
  const token = certFiles('bound-client');
  tokenCert = token;
  otherCert = certFiles('other-client');
  mitmCaFile = (await createCaFiles(dir)).certFile;
  const bound = { authMethod: 'tls_client_auth' as const, tlsSubjectDn: token.subjectDn };
  oidc = await startOidcServer({
    certificateBoundAccessTokens: true,
    clients: [
      {
        clientId: 'bound-client',
        ...bound,
        grantTypes: ['client_credentials'],
        scope: 'api',
        certificateBoundAccessTokens: true,
      },
      {
        clientId: 'bound-client-2',
        ...bound,
        grantTypes: ['client_credentials'],
        scope: 'api',
        certificateBoundAccessTokens: true,
      },
    ],
  });
  partner = await startPartnerApi({
    jwksUrl: oidc.jwksUrl,
    issuer: oidc.issuer,
    audience: oidc.audience,
    issuerCa: pki.ca,
    tls: { key: pki.key, cert: pki.cert, clientCa: pki.ca },
    certificateBound: true,
  });
});

afterAll(async () => {
  await partner.close();
  await oidc.stop();
  await client.close();
});

beforeEach(() => {
  partner.seen.length = 0;
  oidc.calls.length = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

describe('with only auth.mtls set, the target is presented the certificate the tokens are bound to', () => {
  it('reverse mode: the bound token reaches the partner over a connection with its certificate', async () => {
    await start(upstreamDoc());
    const res = await get();
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ ok: true, client: 'bound-client' });
    expect(partner.seen).toHaveLength(1);
    const seen = partner.seen[0];
    expect(cnfOf(seen?.claims)).toBe(tokenCert.thumbprint);
    expect(seen?.clientCertificate).toBe(tokenCert.thumbprint);
    expect(oidc.calls.map((c) => [c.clientId, c.status])).toEqual([['bound-client', 200]]);
  });

  it('forward mode: curl through the proxy, plain http and https with interception', async () => {
    await start(upstreamDoc());
    const plain = await curl(['--proxy', (proxy as RunningProxy).url, `http://${PARTNER_HOST}/v1/plain`]);
    expect([plain.status, JSON.parse(plain.body)]).toMatchObject([200, { path: '/v1/plain', client: 'bound-client' }]);
    const env = { HTTPS_PROXY: (proxy as RunningProxy).url };
    const tls = await curl(['--cacert', mitmCaFile, `https://${PARTNER_HOST}/v1/tls`], env);
    expect([tls.status, JSON.parse(tls.body)]).toMatchObject([200, { path: '/v1/tls', client: 'bound-client' }]);
    expect(partner.seen.map((s) => [s.path, s.status, s.clientCertificate, cnfOf(s.claims)])).toEqual([
      ['/v1/plain', 200, tokenCert.thumbprint, tokenCert.thumbprint],
      ['/v1/tls', 200, tokenCert.thumbprint, tokenCert.thumbprint],
    ]);
  });
});

describe('the token command', () => {
  it('says which certificate the token is bound to, and why a mismatched one is not used', async () => {
    const ok = await runTokenCommand(buildConfig({ upstreams: [upstreamDoc()] }, { env: {} }), {
      upstream: 'partner',
      tenant: undefined,
      showToken: false,
    });
    expect(ok.code).toBe(0);
    expect(ok.text).toContain(
      `bound to     client certificate x5t#S256=${tokenCert.thumbprint} (RFC 8705), the one the target is presented`,
    );
    const mismatched = buildConfig(
      { upstreams: [upstreamDoc({ mtls: mtlsOf(otherCert), auth: boundAuth({ certificateBoundTokens: false }) })] },
      { env: {} },
    );
    const failed = await runTokenCommand(mismatched, { upstream: 'partner', tenant: undefined, showToken: false });
    expect(failed.code).toBe(1);
    expect(failed.text).toContain(
      `FAILED: certificate_mismatch: token is bound to client certificate x5t#S256=${tokenCert.thumbprint} (RFC 8705 §3) but the target is presented certificate x5t#S256=${otherCert.thumbprint}: not sent`,
    );
  });
});

describe('the test partner (RFC 8705 §3 resource server)', () => {
  it('accepts a bound token only over a connection that presents its certificate', async () => {
    await start(upstreamDoc());
    const token = await (proxy as RunningProxy).app.tokens.get('partner')?.obtain();
    const call = async (c: { cert: string; key: string }) => {
      const direct = new Agent({
        connect: { ca: pki.ca, cert: readFileSync(c.cert, 'utf8'), key: readFileSync(c.key, 'utf8') },
      });
      try {
        const res = await direct.request({
          origin: partner.url,
          path: '/direct',
          method: 'GET',
          headers: { authorization: `Bearer ${token?.value ?? ''}` },
        });
        await res.body.text();
        return [res.statusCode, res.headers['www-authenticate']];
      } finally {
        await direct.close();
      }
    };
    expect(await call(otherCert)).toEqual([
      401,
      'Bearer error="invalid_token", error_description="token is bound to another certificate"',
    ]);
    expect(await call(tokenCert)).toEqual([200, undefined]);
  });
});

describe('a bound token never goes out with another certificate', () => {
  it('certificateBoundTokens false and another upstreams[].mtls: the token is not sent, 502 certificate_mismatch, logged once', async () => {
    await start(upstreamDoc({ mtls: mtlsOf(otherCert), auth: boundAuth({ certificateBoundTokens: false }) }));
    const first = await get();
    const second = await get();
    expect([first.status, second.status]).toEqual([502, 502]);
    for (const res of [first, second]) {
      expect(res.json()).toMatchObject({
        error: 'token_unavailable',
        upstream: 'partner',
        reason: 'certificate_mismatch',
      });
    }
    expect(partner.seen).toHaveLength(0);
    // The token endpoint was asked (the token was bound there), the second request met the remembered failure.
    expect(oidc.calls.map((c) => [c.clientId, c.status])).toEqual([['bound-client', 200]]);
    const logs = (proxy as RunningProxy).logs;
    const mismatch = logs.filter((l) => l.includes('"event":"token_certificate_mismatch"'));
    expect(mismatch).toHaveLength(1);
    expect(mismatch[0]).toContain(`x5t#S256=${tokenCert.thumbprint}`);
    expect(mismatch[0]).toContain(`x5t#S256=${otherCert.thumbprint}`);
  });

  it('certificateBoundTokens false and no upstreams[].mtls: a bound token is not sent to a target presented no certificate', async () => {
    await start(upstreamDoc({ auth: boundAuth({ certificateBoundTokens: false }) }));
    const res = await get();
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ error: 'token_unavailable', reason: 'certificate_mismatch' });
    expect(res.json()['message']).toBe('no token for upstream partner: certificate_mismatch');
    expect(partner.seen).toHaveLength(0);
  });
});

describe('tenants share the certificate, and so the binding', () => {
  it('each tenant gets its own bound token, and each reaches the partner with the shared certificate', async () => {
    await start(
      upstreamDoc({
        auth: {
          type: 'client_credentials',
          tokenUrl: oidc.tokenUrl,
          clientAuth: 'tls_client_auth',
          scope: 'api',
          mtls: mtlsOf(tokenCert),
        },
        tenants: {
          from: 'header:X-Tenant',
          credentials: { a: { clientId: 'bound-client' }, b: { clientId: 'bound-client-2' } },
        },
      }),
    );
    const a = await get('/partner/x', { 'x-tenant': 'a' });
    const b = await get('/partner/x', { 'x-tenant': 'b' });
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(partner.seen.map((s) => [s.claims?.['client_id'], s.clientCertificate, cnfOf(s.claims)])).toEqual([
      ['bound-client', tokenCert.thumbprint, tokenCert.thumbprint],
      ['bound-client-2', tokenCert.thumbprint, tokenCert.thumbprint],
    ]);
  });
});

describe('configuration', () => {
  const build = (upstream: Record<string, unknown>) => buildConfig({ upstreams: [upstream] }, { env: {} });
  const problemsOf = (upstream: Record<string, unknown>): readonly string[] => {
    try {
      build(upstream);
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
    return [];
  };

  it('refuses at start an upstreams[].mtls that differs from auth.mtls while tokens are bound, saying why', () => {
    expect(problemsOf(upstreamDoc({ mtls: mtlsOf(otherCert) }))).toEqual([
      `upstreams[0].mtls: the tokens are bound to upstreams[0].auth.mtls (RFC 8705 §3, certificate x5t#S256=${tokenCert.thumbprint}), and the partner accepts them only over a connection that presents that certificate, but this one is another (x5t#S256=${otherCert.thumbprint}). Remove upstreams[0].mtls (the target is then presented auth.mtls), give both the same certificate, or set upstreams[0].auth.certificateBoundTokens: false if the token server does not bind its tokens`,
    ]);
    // Said the same way with tenants, whose shared auth holds the certificate.
    const tenants = { from: 'header:X-Tenant', credentials: { a: { clientId: 'bound-client' } } };
    const shared = {
      type: 'client_credentials',
      tokenUrl: oidc.tokenUrl,
      clientAuth: 'tls_client_auth',
      mtls: mtlsOf(tokenCert),
    };
    expect(problemsOf(upstreamDoc({ mtls: mtlsOf(otherCert), auth: shared, tenants }))).toHaveLength(1);
  });

  it('presents the target auth.mtls by default, its own certificate when it is the same, none when tokens are not bound', () => {
    const tokenPem = build(upstreamDoc()).upstreams[0]?.auth.mtls?.cert;
    expect(tokenPem).toContain('BEGIN CERTIFICATE');
    expect(build(upstreamDoc()).upstreams[0]?.mtls?.cert).toBe(tokenPem);
    expect(build(upstreamDoc({ mtls: mtlsOf(tokenCert) })).upstreams[0]?.mtls?.cert).toBe(tokenPem);
    expect(
      build(upstreamDoc({ auth: boundAuth({ certificateBoundTokens: false }) })).upstreams[0]?.mtls,
    ).toBeUndefined();
    const different = build(
      upstreamDoc({ mtls: mtlsOf(otherCert), auth: boundAuth({ certificateBoundTokens: false }) }),
    );
    expect(different.upstreams[0]?.mtls?.cert).not.toBe(tokenPem);
  });

  it('refuses certificateBoundTokens without auth.mtls', () => {
    const auth = {
      type: 'client_credentials',
      tokenUrl: oidc.tokenUrl,
      clientId: 'c',
      clientSecret: 's',
      certificateBoundTokens: true,
    };
    expect(problemsOf(upstreamDoc({ auth }))).toEqual([
      'upstreams[0].auth.certificateBoundTokens: tokens are bound to the client certificate presented at the token endpoint (RFC 8705 §3): set upstreams[0].auth.mtls',
    ]);
  });

  it('refuses a tenant certificate of its own: the tenants of an upstream share auth.mtls', () => {
    const problems = problemsOf(
      upstreamDoc({
        tenants: { from: 'header:X-Tenant', credentials: { a: { clientId: 'bound-client', mtls: mtlsOf(otherCert) } } },
      }),
    );
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^upstreams\[0\]\.tenants\.credentials\.a: Unrecognized key: "mtls"/);
  });
});
