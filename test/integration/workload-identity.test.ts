import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, ProxyAgent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { buildConfig } from '../../src/config/load.js';
import { summary } from '../../src/config/summary.js';
import { runTokenCommand } from '../../src/token-command.js';
import { testPki } from '../helpers/certs.js';
import { startFederatedTokenServer, type FederatedTokenServer } from '../helpers/federated-token-server.js';
import { JWT_BEARER_GRANT, startOidcServer, type OidcServer } from '../helpers/oidc-server.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { FASTEST_BACKOFF, pollUntil } from '../helpers/time.js';
import { startWorkloadIssuer, type MintedToken, type WorkloadIssuer } from '../helpers/workload-issuer.js';

const pki = testPki();
const PARTNER_HOST = 'api.partner.example';
const SUBJECT = 'system:serviceaccount:payments:orders';
let dir: string;
let issuer: WorkloadIssuer;
let oidc: OidcServer;
let federated: FederatedTokenServer;
let oidcPartner: PartnerApi;
let federatedPartner: PartnerApi;
let proxy: RunningProxy | undefined;
const client = new Agent();
/** The projected token file the test rotates, one per test. */
let tokenFile: string;
let fileNumber = 0;

/** The audience each token server wants in the workload token (what `serviceAccountToken.audience` is set to). */
const OIDC_AUDIENCE = 'https://oauth.partner.example';
const FEDERATED_AUDIENCE = 'api://AzureADTokenExchange';

const jwtBearerAuth = () => ({
  type: 'jwt_bearer',
  tokenUrl: oidc.tokenUrl,
  assertionFile: tokenFile,
  clientId: 'workload-client',
  clientAuth: 'none',
  scope: 'api.read',
});

const clientAssertionAuth = () => ({
  type: 'client_credentials',
  tokenUrl: federated.tokenUrl,
  clientId: 'my-client',
  clientAuth: 'client_assertion',
  clientAssertionFile: tokenFile,
});

function upstream(auth: Record<string, unknown>, target: PartnerApi, name = 'partner') {
  return {
    name,
    target: target.url,
    pathPrefix: `/${name}`,
    hosts: [name === 'partner' ? PARTNER_HOST : `${name}.partner.example`],
    ca: pki.caFile,
    tokenWaitTimeoutSeconds: 1,
    auth,
  };
}

async function start(...upstreams: Record<string, unknown>[]): Promise<RunningProxy> {
  proxy = await startProxy({ upstreams }, { backoff: FASTEST_BACKOFF });
  return proxy;
}

async function get(path = '/partner/x') {
  const res = await client.request({ origin: (proxy as RunningProxy).url, path, method: 'GET' });
  const text = await res.body.text();
  return { status: res.statusCode, text, json: () => JSON.parse(text) as Record<string, unknown> };
}

/** A request in forward mode: absolute-form through the proxy, as an HTTP_PROXY client sends it. */
async function forwardGet(url: string) {
  const agent = new ProxyAgent({ uri: (proxy as RunningProxy).url, proxyTunnel: false });
  try {
    const res = await request(url, { dispatcher: agent });
    return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
  } finally {
    await agent.close();
  }
}

async function readyz() {
  const res = await request(`${(proxy as RunningProxy).adminUrl}/readyz`);
  return { status: res.statusCode, text: await res.body.text() };
}

/** The parts of a JWT (RFC 7515 §7.1) none of which may show anywhere. */
function partsOf(jwt: string): string[] {
  const [header = '', payload = '', signature = ''] = jwt.split('.');
  return [jwt, payload, signature, `${header}.${payload}`];
}

function expectNowhere(jwt: string, ...texts: string[]): void {
  for (const text of texts) for (const part of partsOf(jwt)) expect(text).not.toContain(part);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tp-workload-'));
  issuer = await startWorkloadIssuer();
  oidc = await startOidcServer({
    clients: [{ clientId: 'workload-client', authMethod: 'none', grantTypes: [JWT_BEARER_GRANT], scope: 'api.read' }],
    jwtBearer: { issuer: issuer.issuer, audience: OIDC_AUDIENCE, jwks: issuer.jwks },
  });
  federated = await startFederatedTokenServer({
    trust: { issuer: issuer.issuer, jwks: issuer.jwks },
    assertionAudience: FEDERATED_AUDIENCE,
    credentials: [{ clientId: 'my-client', subject: SUBJECT, scope: 'api.read' }],
  });
  oidcPartner = await startPartnerApi({
    jwksUrl: oidc.jwksUrl,
    issuer: oidc.issuer,
    audience: oidc.audience,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
  });
  federatedPartner = await startPartnerApi({
    jwksUrl: federated.jwksUrl,
    issuer: federated.issuer,
    audience: federated.resource,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
  });
});

afterAll(async () => {
  await oidcPartner.close();
  await federatedPartner.close();
  await oidc.stop();
  await federated.stop();
  await client.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  tokenFile = join(dir, `token-${(fileNumber += 1)}`);
  oidc.calls.length = 0;
  oidc.bearerAssertions.length = 0;
  federated.calls.length = 0;
  federated.issued.length = 0;
  federated.echoAssertion = false;
  oidcPartner.seen.length = 0;
  federatedPartner.seen.length = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

const writeOidcToken = (expiresInSeconds?: number): Promise<MintedToken> =>
  issuer.writeTo(tokenFile, {
    audience: OIDC_AUDIENCE,
    ...(expiresInSeconds === undefined ? {} : { expiresInSeconds }),
  });
const writeFederatedToken = (expiresInSeconds?: number): Promise<MintedToken> =>
  issuer.writeTo(tokenFile, {
    audience: FEDERATED_AUDIENCE,
    ...(expiresInSeconds === undefined ? {} : { expiresInSeconds }),
  });

describe('jwt_bearer grant (RFC 7523 §2.1)', () => {
  it('gets a token with the projected token as the grant, which the partner verifies (reverse mode)', async () => {
    const minted = await writeOidcToken();
    await start(upstream(jwtBearerAuth(), oidcPartner));
    const res = await get('/partner/orders');
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ client: 'workload-client', scope: 'api.read' });
    expect(oidc.calls).toMatchObject([{ grantType: JWT_BEARER_GRANT, clientId: 'workload-client', status: 200 }]);
    expect(oidc.bearerAssertions.map((a) => [a.jti, a.sub])).toEqual([[minted.jti, SUBJECT]]);
    expect(oidcPartner.seen.map((s) => [s.status, s.claims?.sub, s.claims?.['client_id']])).toEqual([
      [200, SUBJECT, 'workload-client'],
    ]);
  });

  it('gets a token the same way for a request in forward mode', async () => {
    const minted = await writeOidcToken();
    await start(upstream(jwtBearerAuth(), oidcPartner));
    const res = await forwardGet(`http://${PARTNER_HOST}/who`);
    expect(res).toMatchObject({ status: 200, json: { client: 'workload-client', path: '/who' } });
    expect(oidc.bearerAssertions.map((a) => a.jti)).toEqual([minted.jti]);
    expect(oidcPartner.seen.map((s) => s.claims?.sub)).toEqual([SUBJECT]);
  });

  it('reads the rotated file for the next token request', async () => {
    const first = await writeOidcToken();
    await start(upstream(jwtBearerAuth(), oidcPartner));
    expect((await get('/partner/a')).status).toBe(200);
    // The platform rotates the file; the partner then refuses the token, so the proxy needs a new one.
    const second = await issuer.writeTo(tokenFile, { audience: OIDC_AUDIENCE, subject: `${SUBJECT}-rotated` });
    oidcPartner.revoked.add(oidcPartner.seen[0]?.token as string);
    expect((await get('/partner/b')).status).toBe(200);
    expect(oidc.bearerAssertions.map((a) => [a.jti, a.sub])).toEqual([
      [first.jti, SUBJECT],
      [second.jti, `${SUBJECT}-rotated`],
    ]);
    expect(oidcPartner.seen.map((s) => [s.path, s.status, s.claims?.sub])).toEqual([
      ['/a', 200, SUBJECT],
      ['/b', 401, SUBJECT],
      ['/b', 200, `${SUBJECT}-rotated`],
    ]);
  });

  it('never sends an expired or expiring assertion: 502 assertion_expired, until the file is rotated', async () => {
    await start(upstream(jwtBearerAuth(), oidcPartner));
    for (const expiresInSeconds of [-30, 5]) {
      const stale = await writeOidcToken(expiresInSeconds);
      const res = await get('/partner/x');
      expect(res.status).toBe(502);
      expect(res.json()).toMatchObject({
        error: 'token_unavailable',
        upstream: 'partner',
        reason: 'assertion_expired',
      });
      expectNowhere(stale.token, res.text, (proxy as RunningProxy).logs.join('\n'));
      const failure = (proxy as RunningProxy).logs.find(
        (l) => l.includes('"event":"token_refresh_failed"') && l.includes(`exp ${stale.exp}`),
      );
      expect(failure).toContain(tokenFile);
    }
    expect(oidc.calls).toHaveLength(0);
    expect(oidcPartner.seen).toHaveLength(0);
    // Not a permanent failure: the platform's next rotation is picked up without a restart. A
    // request may still join the last attempt of the failed request's fetch (made before the
    // rotation), so the first answer may be that 502: the next ones are not.
    const fresh = await writeOidcToken();
    const answered = await pollUntil(
      async () => (await get('/partner/y')).status,
      (status) => status === 200,
      10_000,
    );
    expect(answered).toBe(200);
    expect(oidc.bearerAssertions.map((a) => a.jti)).toEqual([fresh.jti]);
  });

  it('cuts an assertion the token endpoint echoes out of the error and the logs', async () => {
    // A server that quotes its input: the federated endpoint answers the jwt-bearer grant with
    // unsupported_grant_type and the assertion it was sent.
    federated.echoAssertion = true;
    const minted = await writeOidcToken();
    await start(upstream({ ...jwtBearerAuth(), tokenUrl: federated.tokenUrl }, federatedPartner));
    const res = await get('/partner/x');
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ reason: 'unsupported_grant_type' });
    expect(federated.calls).toMatchObject([{ grantType: JWT_BEARER_GRANT, status: 400 }]);
    expect(res.json()['description']).toContain('[redacted]');
    expectNowhere(minted.token, res.text, (proxy as RunningProxy).logs.join('\n'));
  });
});

describe('client_assertion client authentication (RFC 7523 §2.2)', () => {
  it('authenticates with the projected token and the partner verifies the token (reverse mode)', async () => {
    const minted = await writeFederatedToken();
    await start(upstream(clientAssertionAuth(), federatedPartner));
    const res = await get('/partner/orders');
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ client: 'my-client', scope: 'api.read' });
    expect(federated.calls.map((c) => [c.grantType, c.clientId, c.status, c.assertion?.jti, c.assertion?.sub])).toEqual(
      [['client_credentials', 'my-client', 200, minted.jti, SUBJECT]],
    );
    expect(federatedPartner.seen.map((s) => [s.status, s.claims?.sub])).toEqual([[200, SUBJECT]]);
  });

  it('authenticates the same way for a request in forward mode', async () => {
    const minted = await writeFederatedToken();
    await start(upstream(clientAssertionAuth(), federatedPartner));
    const res = await forwardGet(`http://${PARTNER_HOST}/who`);
    expect(res).toMatchObject({ status: 200, json: { client: 'my-client', path: '/who' } });
    expect(federated.calls.map((c) => c.assertion?.jti)).toEqual([minted.jti]);
  });

  it('reads the rotated file for the next token request', async () => {
    const first = await writeFederatedToken();
    await start(upstream(clientAssertionAuth(), federatedPartner));
    expect((await get('/partner/a')).status).toBe(200);
    const second = await writeFederatedToken();
    federatedPartner.revoked.add(federated.issued[0] as string);
    expect((await get('/partner/b')).status).toBe(200);
    expect(federated.calls.map((c) => [c.status, c.assertion?.jti, c.assertion?.sub])).toEqual([
      [200, first.jti, SUBJECT],
      [200, second.jti, SUBJECT],
    ]);
    expect(federatedPartner.seen.map((s) => [s.path, s.status, s.token])).toEqual([
      ['/a', 200, federated.issued[0]],
      ['/b', 401, federated.issued[0]],
      ['/b', 200, federated.issued[1]],
    ]);
  });

  it('never sends an expired assertion: 502 assertion_expired and no token request', async () => {
    const stale = await writeFederatedToken(-1);
    await start(upstream(clientAssertionAuth(), federatedPartner));
    const res = await get('/partner/x');
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ error: 'token_unavailable', reason: 'assertion_expired' });
    expect(federated.calls).toHaveLength(0);
    expect(federatedPartner.seen).toHaveLength(0);
    expectNowhere(stale.token, res.text, (proxy as RunningProxy).logs.join('\n'));
  });

  it('cuts a client assertion the token endpoint echoes out of the error and the logs', async () => {
    federated.echoAssertion = true;
    // Signed for another audience: verified and refused, and quoted back.
    const minted = await issuer.writeTo(tokenFile, { audience: 'https://someone-else.example' });
    await start(upstream(clientAssertionAuth(), federatedPartner));
    const res = await get('/partner/x');
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ reason: 'invalid_client' });
    expect(federated.calls).toMatchObject([{ status: 401, error: 'invalid_client', assertion: { jti: minted.jti } }]);
    expect(res.json()['description']).toContain('[redacted]');
    expectNowhere(minted.token, res.text, (proxy as RunningProxy).logs.join('\n'));
  });
});

describe('what the assertion says, never what it is', () => {
  it('/readyz shows each assertion file with its iss, sub, aud and expiry, and not the assertion', async () => {
    const bearerFile = tokenFile;
    const bearer = await writeOidcToken();
    tokenFile = join(dir, `token-${(fileNumber += 1)}`);
    const assertion = await writeFederatedToken(900);
    await start(
      upstream({ ...jwtBearerAuth(), assertionFile: bearerFile }, oidcPartner),
      upstream(clientAssertionAuth(), federatedPartner, 'other'),
    );
    expect((await get('/partner/a')).status).toBe(200);
    const res = await readyz();
    expect(res.status).toBe(200);
    const body = JSON.parse(res.text) as { tokens: Record<string, unknown>[] };
    expect(body.tokens).toEqual([
      {
        upstream: 'partner',
        state: 'valid',
        expiresInSeconds: expect.any(Number) as unknown,
        assertion: {
          file: bearerFile,
          iss: issuer.issuer,
          sub: SUBJECT,
          aud: OIDC_AUDIENCE,
          expiresAt: new Date(bearer.exp * 1000).toISOString(),
          expiresInSeconds: expect.any(Number) as unknown,
        },
      },
      {
        upstream: 'other',
        state: 'none',
        assertion: {
          file: tokenFile,
          iss: issuer.issuer,
          sub: SUBJECT,
          aud: FEDERATED_AUDIENCE,
          expiresAt: new Date(assertion.exp * 1000).toISOString(),
          expiresInSeconds: expect.any(Number) as unknown,
        },
      },
    ]);
    const [first, second] = body.tokens as { assertion: { expiresInSeconds: number } }[];
    expect(first?.assertion.expiresInSeconds).toBeGreaterThan(590);
    expect(second?.assertion.expiresInSeconds).toBeGreaterThan(890);
    expectNowhere(bearer.token, res.text);
    expectNowhere(assertion.token, res.text);
  });

  it('/readyz says when the assertion file is expired or cannot be read, quoting none of it', async () => {
    const stale = await writeFederatedToken(-60);
    await start(upstream(clientAssertionAuth(), federatedPartner));
    const expired = JSON.parse((await readyz()).text) as { tokens: { assertion: Record<string, unknown> }[] };
    expect(expired.tokens[0]?.assertion).toMatchObject({
      file: tokenFile,
      sub: SUBJECT,
      expiresAt: new Date(stale.exp * 1000).toISOString(),
      problem: `expired at ${new Date(stale.exp * 1000).toISOString()}`,
    });
    rmSync(tokenFile);
    const missing = await readyz();
    expect(JSON.parse(missing.text)).toMatchObject({
      tokens: [{ assertion: { file: tokenFile, problem: `cannot read ${tokenFile} (ENOENT)` } }],
    });
    expectNowhere(stale.token, missing.text, JSON.stringify(expired));
  });

  it('the token command shows the assertion claims and the token it got, never the assertion', async () => {
    const minted = await writeOidcToken();
    const config = buildConfig({ upstreams: [upstream(jwtBearerAuth(), oidcPartner)] }, { env: {} });
    const out = await runTokenCommand(config, { upstream: 'partner', tenant: undefined, showToken: false });
    expect(out.code).toBe(0);
    expect(out.text).toContain(`grant jwt_bearer at ${oidc.tokenUrl}, client workload-client (none)`);
    expect(out.text).toContain(`assertion    ${tokenFile}`);
    expect(out.text).toContain(`iss ${issuer.issuer}, sub ${SUBJECT}, aud ${OIDC_AUDIENCE}`);
    expect(out.text).toContain(`expires ${new Date(minted.exp * 1000).toISOString()}`);
    expect(oidc.bearerAssertions.map((a) => a.jti)).toEqual([minted.jti]);
    expectNowhere(minted.token, out.text);

    const stale = await writeOidcToken(-5);
    const failed = await runTokenCommand(config, { upstream: 'partner', tenant: undefined, showToken: false });
    expect(failed.code).toBe(1);
    expect(failed.text).toContain(`FAILED: assertion_expired: assertion in ${tokenFile} expired`);
    expect(failed.text).toContain(`exp ${stale.exp}`);
    expect(oidc.calls).toHaveLength(1); // only the first run's
    expectNowhere(stale.token, failed.text);
  });
});

describe('configuration', () => {
  it('loads with no secret and without the assertion file: it is read at each token request', () => {
    const missing = join(dir, 'not-mounted-yet');
    const config = buildConfig(
      {
        upstreams: [
          upstream(
            { ...jwtBearerAuth(), assertionFile: missing, clientId: undefined, clientAuth: undefined },
            oidcPartner,
          ),
          upstream({ ...clientAssertionAuth(), clientAssertionFile: missing }, federatedPartner, 'other'),
        ],
      },
      { env: {} },
    );
    expect(config.upstreams.map((u) => u.auth)).toMatchObject([
      { type: 'jwt_bearer', clientAuth: 'none', clientId: undefined, assertionFile: missing },
      { type: 'client_credentials', clientAuth: 'client_assertion', clientAssertionFile: missing },
    ]);
    expect(summary(config)).toContain(
      `grant jwt_bearer at ${oidc.tokenUrl}, no client (none), scope "api.read", assertion from ${missing}`,
    );
    expect(summary(config)).toContain(`client my-client (client_assertion from ${missing})`);
  });

  it('names each mistake in an assertion configuration', () => {
    const problems = (auth: Record<string, unknown>) => {
      try {
        buildConfig({ upstreams: [upstream(auth, oidcPartner)] }, { env: {} });
        return [];
      } catch (err) {
        return (err as { problems: string[] }).problems;
      }
    };
    expect(problems({ ...clientAssertionAuth(), clientAssertionFile: undefined })).toEqual([
      'upstreams[0].auth.clientAssertionFile: clientAuth client_assertion needs clientAssertionFile',
    ]);
    expect(problems({ ...clientAssertionAuth(), clientAuth: 'client_secret_post', clientSecret: 's' })).toEqual([
      'upstreams[0].auth.clientAssertionFile: not used with clientAuth client_secret_post: remove it',
    ]);
    expect(problems({ ...jwtBearerAuth(), assertionFile: undefined })).toEqual([
      'upstreams[0].auth.assertionFile: Invalid input: expected string, received undefined',
    ]);
    expect(problems({ ...jwtBearerAuth(), clientId: undefined, clientAuth: 'private_key_jwt' })).toEqual([
      'upstreams[0].auth.clientId: required for clientAuth private_key_jwt',
      'upstreams[0].auth.privateKey: clientAuth private_key_jwt needs privateKey.file',
    ]);
  });
});
