import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { Agent } from 'undici';
import { WebSocket } from 'ws';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveDpop, type DpopKey } from '../../src/config/dpop.js';
import { clientIdOnly } from '../../src/oauth/client-auth.js';
import { DpopSigner } from '../../src/oauth/dpop-signer.js';
import { requestToken } from '../../src/oauth/token-endpoint.js';
import { testPki } from '../helpers/certs.js';
import { curl } from '../helpers/clients.js';
import { startDpopPartner, type DpopPartner } from '../helpers/dpop-partner.js';
import { generateClientKey, startOidcServer, type OidcCall, type OidcServer } from '../helpers/oidc-server.js';
import { buildConfig } from '../../src/config/load.js';
import { runTokenCommand } from '../../src/token-command.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startScriptedServer } from '../helpers/scripted-server.js';

const pki = testPki();
const HOST = 'api.dpop-partner.example';
const dir = mkdtempSync(join(tmpdir(), 'tp-dpop-'));
const client = new Agent({ connections: 20 });
let oidc: OidcServer;
/** Verifies every proof and asks for its current nonce. */
let nonced: DpopPartner;
/** Verifies every proof; no nonces. */
let plain: DpopPartner;
let proxy: RunningProxy | undefined;
let jwtKey: Awaited<ReturnType<typeof generateClientKey>>;

/** A private key file as an operator keeps one (mode 600), and its RFC 7638 thumbprint. */
async function keyFile(name: string, key: KeyObject): Promise<{ file: string; thumbprint: string }> {
  const file = join(dir, name);
  writeFileSync(file, key.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const jwk = createPublicKey(key).export({ format: 'jwk' }) as JWK;
  return { file, thumbprint: await calculateJwkThumbprint(jwk) };
}

function auth(clientId: string, dpop: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    type: 'client_credentials',
    tokenUrl: oidc.tokenUrl,
    clientId,
    clientSecret: `${clientId}-secret`,
    scope: 'api',
    dpop,
    ...extra,
  };
}

async function start(partner: DpopPartner, authBlock: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  proxy = await startProxy({
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        hosts: [HOST],
        ca: pki.caFile,
        tokenWaitTimeoutSeconds: 5,
        auth: authBlock,
        ...extra,
      },
    ],
  });
  return proxy;
}

async function call(
  path = '/partner/v1/items?page=2',
  init: { method?: string; body?: string; headers?: Record<string, string> } = {},
) {
  const res = await client.request({
    origin: (proxy as RunningProxy).url,
    path,
    method: init.method ?? 'GET',
    headers: init.headers ?? {},
    body: init.body ?? null,
  });
  return { status: res.statusCode, text: await res.body.text() };
}

/** The token endpoint calls for `clientId` made since `from` (an index into oidc.calls). */
function tokenCalls(clientId: string, from = 0): Pick<OidcCall, 'status' | 'error'>[] {
  return oidc.calls
    .slice(from)
    .filter((c) => c.clientId === clientId)
    .map((c) => ({ status: c.status, error: c.error }));
}

beforeAll(async () => {
  jwtKey = await generateClientKey('ES256', 'dpop-jwt-key');
  const secretClient = (clientId: string) => ({
    clientId,
    clientSecret: `${clientId}-secret`,
    authMethod: 'client_secret_basic' as const,
    grantTypes: ['client_credentials'],
    scope: 'api',
  });
  oidc = await startOidcServer({
    dpop: { requireNonce: true },
    clients: [
      ...['dpop-es256', 'dpop-ps256', 'dpop-eddsa', 'dpop-generated', 'dpop-nonce', 'dpop-rotate', 'dpop-forward']
        .concat(['dpop-body', 'dpop-stream', 'dpop-revoked', 'dpop-client-header', 'dpop-websocket'])
        .concat(['dpop-tenant-a', 'dpop-tenant-b', 'dpop-token-command'])
        .map(secretClient),
      {
        clientId: 'dpop-jwt',
        authMethod: 'private_key_jwt',
        jwks: { keys: [jwtKey.publicJwk] },
        grantTypes: ['client_credentials'],
        scope: 'api',
      },
    ],
  });
  nonced = await startDpopPartner({ jwksUrl: oidc.jwksUrl, issuer: oidc.issuer, requireNonce: true });
  plain = await startDpopPartner({ jwksUrl: oidc.jwksUrl, issuer: oidc.issuer, requireNonce: false });
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

afterAll(async () => {
  await Promise.all([nonced.close(), plain.close(), oidc.stop(), client.close()]);
});

describe('DPoP token requests (RFC 9449 §5, §8)', () => {
  for (const [alg, key] of [
    ['ES256', () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey],
    ['PS256', () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey],
    ['EdDSA', () => generateKeyPairSync('ed25519').privateKey],
  ] as const) {
    it(`gets a token bound to the ${alg} key file, answering the token endpoint's nonce challenge with exactly one retry`, async () => {
      const clientId = `dpop-${alg.toLowerCase()}`;
      const { file, thumbprint } = await keyFile(`${alg}.pem`, key());
      const from = oidc.calls.length;
      await start(plain, auth(clientId, { key: file }));
      const first = await call();
      expect(first.status).toBe(200);
      expect(await call()).toMatchObject({ status: 200 });
      expect(tokenCalls(clientId, from)).toEqual([
        { status: 400, error: 'use_dpop_nonce' },
        { status: 200, error: undefined },
      ]);
      const [a, b] = plain.seen.slice(-2);
      expect(a?.verdict).toBe('ok');
      expect(b?.verdict).toBe('ok');
      expect(a?.tokenClaims?.['cnf']).toEqual({ jkt: thumbprint });
      expect(a?.proofHeader?.['alg']).toBe(alg);
      expect(b?.token).toBe(a?.token);
    });
  }

  it('generates a key at start when none is given, and binds the token to it', async () => {
    const from = oidc.calls.length;
    await start(plain, auth('dpop-generated', {}));
    expect((await call()).status).toBe(200);
    const seen = plain.seen.at(-1);
    expect(seen?.verdict).toBe('ok');
    expect(seen?.proofHeader?.['alg']).toBe('ES256');
    const jkt = await calculateJwkThumbprint(seen?.proofHeader?.['jwk'] as JWK);
    expect(seen?.tokenClaims?.['cnf']).toEqual({ jkt });
    expect(tokenCalls('dpop-generated', from)).toHaveLength(2);
  });

  it('gets a DPoP-bound token through the token command, naming the key it is bound to', async () => {
    const from = oidc.calls.length;
    const config = buildConfig(
      {
        upstreams: [
          {
            name: 'partner',
            target: plain.url,
            pathPrefix: '/partner',
            ca: pki.caFile,
            auth: auth('dpop-token-command', {}),
          },
        ],
      },
      { env: {} },
    );
    const result = await runTokenCommand(config, { upstream: 'partner', tenant: undefined, showToken: false });
    expect(result.code).toBe(0);
    const jkt = /bound to {5}DPoP key jkt=([\w-]{43}) \(RFC 9449\)/.exec(result.text)?.[1];
    expect(jkt).toBeDefined();
    expect(result.text).toContain(`"cnf": {\n`);
    expect(tokenCalls('dpop-token-command', from)).toEqual([
      { status: 400, error: 'use_dpop_nonce' },
      { status: 200, error: undefined },
    ]);
  });

  it('makes a fresh client assertion for the nonce retry (private_key_jwt: its jti is single use)', async () => {
    const { file } = await keyFile('jwt-dpop.pem', generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
    const keyPem = join(dir, 'client-assertion.pem');
    writeFileSync(keyPem, jwtKey.privatePem);
    const from = oidc.calls.length;
    await start(plain, {
      type: 'client_credentials',
      tokenUrl: oidc.tokenUrl,
      clientId: 'dpop-jwt',
      clientAuth: 'private_key_jwt',
      privateKey: { file: keyPem, alg: 'ES256', kid: 'dpop-jwt-key' },
      scope: 'api',
      dpop: { key: file, alg: 'ES256' },
    });
    expect((await call()).status).toBe(200);
    expect(tokenCalls('dpop-jwt', from)).toEqual([
      { status: 400, error: 'use_dpop_nonce' },
      { status: 200, error: undefined },
    ]);
  });

  it('retries a token endpoint that keeps asking for a new nonce once, then fails', async () => {
    let n = 0;
    const seenProofs: string[] = [];
    const server = await startScriptedServer((req, res) => {
      seenProofs.push(String(req.headers['dpop']));
      n += 1;
      res.writeHead(400, { 'content-type': 'application/json', 'dpop-nonce': `nonce-${n}` });
      res.end('{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}');
    });
    const dispatcher = new Agent();
    try {
      const problems: string[] = [];
      const key = resolveDpop({}, 'dpop', dir, problems) as DpopKey;
      const request = requestToken(
        {
          url: new URL(`${server.url}/token?x=1`),
          dispatcher,
          clientAuth: clientIdOnly('scripted'),
          timeoutMs: 5_000,
          dpop: new DpopSigner(key, () => Date.now()),
        },
        { grant_type: 'client_credentials' },
        () => Date.now(),
      );
      await expect(request).rejects.toMatchObject({ reason: 'bad_response', status: 400 });
      expect(server.hits).toBe(2);
      const payload = (proof: string | undefined) =>
        JSON.parse(Buffer.from((proof ?? '').split('.')[1] ?? '', 'base64url').toString()) as Record<string, unknown>;
      expect(payload(seenProofs[0])['nonce']).toBeUndefined();
      expect(payload(seenProofs[1])['nonce']).toBe('nonce-1');
      expect(payload(seenProofs[1])['htu']).toBe(`${server.url}/token`);
      expect(payload(seenProofs[1])['htm']).toBe('POST');
    } finally {
      await Promise.all([server.close(), dispatcher.close()]);
    }
  });

  it('refuses a Bearer token from a token endpoint that ignored the proof', async () => {
    const server = await startScriptedServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"access_token":"unbound","token_type":"Bearer","expires_in":300}');
    });
    try {
      await start(plain, { ...auth('scripted', {}), tokenUrl: `${server.url}/token` });
      const before = plain.seen.length;
      const res = await call();
      expect(res.status).toBe(502);
      expect(JSON.parse(res.text)).toMatchObject({ reason: 'bad_response' });
      expect((proxy as RunningProxy).logs.join('\n')).toContain('token_type Bearer is not DPoP');
      expect(plain.seen.length).toBe(before);
    } finally {
      await server.close();
    }
  });
});

describe('DPoP requests to the target (RFC 9449 §7, §9)', () => {
  it('sends Authorization: DPoP and a fresh proof for this very request on every call (reverse mode)', async () => {
    await start(plain, auth('dpop-es256', {}));
    const before = plain.seen.length;
    for (let i = 0; i < 3; i++) expect((await call(`/partner/v1/items/${i}?page=${i}`)).status).toBe(200);
    const seen = plain.seen.slice(before);
    expect(seen.map((s) => s.verdict)).toEqual(['ok', 'ok', 'ok']);
    expect(seen.map((s) => s.scheme)).toEqual(['DPoP', 'DPoP', 'DPoP']);
    expect(seen.map((s) => s.proof?.['htu'])).toEqual([0, 1, 2].map((i) => `${plain.url}/v1/items/${i}`));
    expect(new Set(seen.map((s) => s.proof?.jti)).size).toBe(3);
    expect(new Set(seen.map((s) => s.token)).size).toBe(1);
  });

  it('replays a use_dpop_nonce 401 once with the nonce and the same token', async () => {
    const from = oidc.calls.length;
    await start(nonced, auth('dpop-nonce', {}));
    const before = nonced.seen.length;
    const res = await call();
    expect(res.status).toBe(200);
    const seen = nonced.seen.slice(before);
    expect(seen.map((s) => [s.status, s.verdict])).toEqual([
      [401, 'use_dpop_nonce'],
      [200, 'ok'],
    ]);
    expect(seen[1]?.token).toBe(seen[0]?.token);
    expect(seen[1]?.proof?.['nonce']).toBe(nonced.nonce);
    expect(seen[1]?.proof?.jti).not.toBe(seen[0]?.proof?.jti);
    // The nonce is remembered: the next request carries it at once.
    expect((await call()).status).toBe(200);
    expect(nonced.seen.length - before).toBe(3);
    expect(tokenCalls('dpop-nonce', from).filter((c) => c.status === 200)).toHaveLength(1);
  });

  it("follows the partner's nonce rotation mid-stream with one replay and no new token", async () => {
    const from = oidc.calls.length;
    await start(nonced, auth('dpop-rotate', {}));
    for (let i = 0; i < 3; i++) expect((await call()).status).toBe(200);
    const tokensBefore = tokenCalls('dpop-rotate', from);
    const before = nonced.seen.length;
    const rotated = nonced.rotateNonce();
    expect((await call()).status).toBe(200);
    expect((await call()).status).toBe(200);
    const seen = nonced.seen.slice(before);
    expect(seen.map((s) => [s.status, s.verdict])).toEqual([
      [401, 'use_dpop_nonce'],
      [200, 'ok'],
      [200, 'ok'],
    ]);
    expect(seen.slice(1).map((s) => s.proof?.['nonce'])).toEqual([rotated, rotated]);
    expect(new Set(seen.map((s) => s.token)).size).toBe(1);
    expect(tokenCalls('dpop-rotate', from)).toEqual(tokensBefore);
    expect(tokensBefore.filter((c) => c.status === 200)).toHaveLength(1);
  });

  it('does the same in forward mode, nonce rotation included (curl through the proxy)', async () => {
    const from = oidc.calls.length;
    await start(nonced, auth('dpop-forward', {}));
    const before = nonced.seen.length;
    const first = await curl(['--proxy', (proxy as RunningProxy).url, `http://${HOST}/v1/orders?x=1`]);
    expect(first.status).toBe(200);
    nonced.rotateNonce();
    const second = await curl(['--proxy', (proxy as RunningProxy).url, `http://${HOST}/v1/orders/7`]);
    expect(second.status).toBe(200);
    const seen = nonced.seen.slice(before);
    expect(seen.map((s) => [s.status, s.verdict])).toEqual([
      [401, 'use_dpop_nonce'],
      [200, 'ok'],
      [401, 'use_dpop_nonce'],
      [200, 'ok'],
    ]);
    expect(seen.map((s) => s.proof?.['htu'])).toEqual([
      `${nonced.url}/v1/orders`,
      `${nonced.url}/v1/orders`,
      `${nonced.url}/v1/orders/7`,
      `${nonced.url}/v1/orders/7`,
    ]);
    expect(new Set(seen.map((s) => s.token)).size).toBe(1);
    expect(tokenCalls('dpop-forward', from).filter((c) => c.status === 200)).toHaveLength(1);
  });

  it('replays a buffered POST body with the nonce, bytes and method intact', async () => {
    await start(nonced, auth('dpop-body', {}));
    const before = nonced.seen.length;
    const body = 'x'.repeat(1000);
    const res = await call('/partner/v1/orders', { method: 'POST', body, headers: { 'content-type': 'text/plain' } });
    expect(res.status).toBe(200);
    const seen = nonced.seen.slice(before);
    expect(seen.map((s) => [s.method, s.status, s.bodyBytes, s.proof?.['htm']])).toEqual([
      ['POST', 401, 1000, 'POST'],
      ['POST', 200, 1000, 'POST'],
    ]);
  });

  it('passes the nonce 401 of a streamed body to the client without renewing the token; the next request carries the nonce', async () => {
    const from = oidc.calls.length;
    await start(nonced, auth('dpop-stream', {}), { retryBodyLimitBytes: 16 });
    const before = nonced.seen.length;
    const res = await call('/partner/v1/upload', { method: 'PUT', body: 'y'.repeat(5000) });
    expect(res.status).toBe(401);
    expect(JSON.parse(res.text)).toMatchObject({ verdict: 'use_dpop_nonce' });
    expect((await call()).status).toBe(200);
    const seen = nonced.seen.slice(before);
    expect(seen.map((s) => s.status)).toEqual([401, 200]);
    expect(seen[1]?.token).toBe(seen[0]?.token);
    expect(tokenCalls('dpop-stream', from).filter((c) => c.status === 200)).toHaveLength(1);
  });

  it('renews the token after any other 401 (invalid_token) and replays with a proof of the new token', async () => {
    const from = oidc.calls.length;
    await start(plain, auth('dpop-revoked', {}));
    expect((await call()).status).toBe(200);
    const old = plain.seen.at(-1)?.token as string;
    plain.revoked.add(old);
    const before = plain.seen.length;
    expect((await call()).status).toBe(200);
    const seen = plain.seen.slice(before);
    expect(seen.map((s) => [s.status, s.verdict])).toEqual([
      [401, 'invalid_token'],
      [200, 'ok'],
    ]);
    expect(seen[1]?.token).not.toBe(old);
    expect(tokenCalls('dpop-revoked', from).filter((c) => c.status === 200)).toHaveLength(2);
  });

  it("drops a DPoP header the client sent: the partner sees the proxy's one proof", async () => {
    await start(plain, auth('dpop-client-header', {}));
    const res = await call('/partner/x', { headers: { dpop: 'client.own.proof', authorization: 'DPoP client-token' } });
    expect(res.status).toBe(200);
    const seen = plain.seen.at(-1);
    expect(seen?.proofs).toBe(1);
    expect(seen?.verdict).toBe('ok');
    expect(seen?.token).not.toBe('client-token');
  });

  it("binds every tenant's token to the upstream's one key", async () => {
    const { file, thumbprint } = await keyFile('tenants.pem', generateKeyPairSync('ed25519').privateKey);
    const from = oidc.calls.length;
    const { clientId: _id, clientSecret: _secret, ...shared } = auth('unused', { key: file });
    await start(plain, shared, {
      tenants: {
        from: 'header:X-Tenant',
        credentials: {
          a: { clientId: 'dpop-tenant-a', clientSecret: 'dpop-tenant-a-secret' },
          b: { clientId: 'dpop-tenant-b', clientSecret: 'dpop-tenant-b-secret' },
        },
      },
    });
    const before = plain.seen.length;
    for (const tenant of ['a', 'b', 'a', 'b'])
      expect((await call('/partner/t', { headers: { 'x-tenant': tenant } })).status).toBe(200);
    const seen = plain.seen.slice(before);
    expect(seen.map((s) => [s.verdict, s.tokenClaims?.['client_id'], s.tokenClaims?.['cnf']])).toEqual(
      ['dpop-tenant-a', 'dpop-tenant-b', 'dpop-tenant-a', 'dpop-tenant-b'].map((c) => ['ok', c, { jkt: thumbprint }]),
    );
    expect(seen[2]?.token).toBe(seen[0]?.token);
    expect(seen[1]?.token).not.toBe(seen[0]?.token);
    expect(tokenCalls('dpop-tenant-a', from).filter((c) => c.status === 200)).toHaveLength(1);
    expect(tokenCalls('dpop-tenant-b', from).filter((c) => c.status === 200)).toHaveLength(1);
  });

  it('proves a WebSocket handshake like any request', async () => {
    await start(plain, auth('dpop-websocket', {}));
    const before = plain.seen.length;
    const ws = new WebSocket(`${(proxy as RunningProxy).url.replace('http', 'ws')}/partner/stream?x=1`);
    const reply = await new Promise<string>((resolve, reject) => {
      ws.once('open', () => ws.send('hello'));
      ws.once('message', (data: Buffer) => resolve(data.toString()));
      ws.once('error', reject);
    });
    ws.close();
    expect(reply).toBe('echo hello');
    const seen = plain.seen.slice(before);
    expect(seen.map((s) => [s.method, s.verdict, s.scheme, s.proof?.['htu']])).toEqual([
      ['GET', 'ok', 'DPoP', `${plain.url}/stream`],
    ]);
  });

  it('never writes a proof or the key into its logs', async () => {
    const { file } = await keyFile('logged.pem', generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
    await start(nonced, auth('dpop-nonce', { key: file }));
    expect((await call()).status).toBe(200);
    const logs = (proxy as RunningProxy).logs.join('\n');
    expect(logs).toContain('dpop_nonce_retry');
    const seen = nonced.seen.slice(-2);
    for (const s of seen) {
      expect(logs).not.toContain(String(s.proof?.jti));
      expect(logs).not.toContain(s.token);
    }
    expect(logs).not.toContain('PRIVATE KEY');
  });
});
