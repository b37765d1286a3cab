import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startDemo, type Demo } from '../../src/demo/demo.js';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { startTokenServer, type TokenServer } from '../../src/demo/token-server.js';
import { parseDockerfile } from '../../scripts/lib/dockerfile.mjs';
import { pollUntil } from '../helpers/time.js';

/**
 * `npm start` and `token-proxy demo` (also in the container image, which installs production
 * dependencies only: issue 19, finding 12): a client-credentials token server made with jose, a
 * partner that verifies each token's signature, issuer and audience, and the proxy between them.
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const LOOPBACK = { proxy: '127.0.0.1:0', admin: '127.0.0.1:0' };
const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const server of open.splice(0).reverse()) await server.close();
});

async function demo(tokenSeconds?: number): Promise<Demo> {
  const d = await startDemo(LOOPBACK, 'silent', tokenSeconds === undefined ? {} : { tokenSeconds });
  open.push(d);
  return d;
}

async function tokenServer(secret = 'right-secret'): Promise<TokenServer> {
  const server = await startTokenServer({
    clientId: 'c1',
    clientSecret: secret,
    scope: 'a b',
    audience: 'partner-x',
    tokenSeconds: 60,
  });
  open.push(server);
  return server;
}

async function partnerFor(server: TokenServer, audience = 'partner-x'): Promise<PartnerApi> {
  const partner = await startPartnerApi({ jwksUrl: server.jwksUrl, issuer: server.issuer, audience });
  open.push(partner);
  return partner;
}

function post(url: string, form: Record<string, string>, headers: Record<string, string> = {}) {
  return request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(form).toString(),
  });
}

const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;

async function accessToken(server: TokenServer): Promise<string> {
  const res = await post(
    server.tokenUrl,
    { grant_type: 'client_credentials' },
    { authorization: basic('c1', 'right-secret') },
  );
  expect(res.statusCode).toBe(200);
  return ((await res.body.json()) as { access_token: string }).access_token;
}

describe('demo', () => {
  it('serves /partner/hello through the proxy with a client-credentials token the partner verified against the token server JWKS', async () => {
    const d = await demo();
    const res = await request(`${d.proxyUrl}/partner/hello`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toMatchObject({ ok: true, client: 'demo-client', scope: 'demo.read' });
    expect(d.tokenServer.issued).toBe(1);
    expect(d.partner.seen).toHaveLength(1);
    const seen = d.partner.seen[0]!;
    expect(seen.status).toBe(200);
    expect(decodeProtectedHeader(seen.token!)).toMatchObject({ alg: 'RS256', typ: 'at+jwt' });
    expect(seen.claims).toMatchObject({
      iss: d.tokenServer.issuer,
      aud: 'demo-partner',
      sub: 'demo-client',
      client_id: 'demo-client',
      scope: 'demo.read',
    });
    expect(seen.claims!.exp! - seen.claims!.iat!).toBe(120);
    // A second call reuses the cached token.
    expect((await request(`${d.proxyUrl}/partner/again`)).statusCode).toBe(200);
    expect(d.tokenServer.issued).toBe(1);
    expect(d.partner.seen[1]!.token).toBe(seen.token);
  });

  it(
    'renews the token before it expires: a later call carries a new token that the partner verifies',
    { timeout: 30_000 },
    async () => {
      const d = await demo(4);
      expect((await request(`${d.proxyUrl}/partner/first`)).statusCode).toBe(200);
      const first = d.partner.seen[0]!.token;
      // Renewal is due half-way through a 4 s lifetime: a call from then on starts it in the background.
      const later = await pollUntil(
        async () => {
          await (await request(`${d.proxyUrl}/partner/later`)).body.dump();
          return d.partner.seen.at(-1)!;
        },
        (seen) => seen.token !== first,
        20_000,
        100,
      );
      expect(later.token).not.toBe(first);
      expect(later.status).toBe(200);
      expect(later.claims!['jti']).not.toBe(decodeJwt(first!).jti);
      expect(later.claims!.iss).toBe(d.tokenServer.issuer);
      expect(later.claims!.iat).toBeLessThan(decodeJwt(first!).exp!);
      expect(d.tokenServer.issued).toBeGreaterThanOrEqual(2);
      expect(d.partner.seen.every((s) => s.status === 200)).toBe(true);
    },
  );

  it('listens on all interfaces when told to, as in the container image, admitting only loopback and private addresses', async () => {
    const d = await startDemo({ proxy: '0.0.0.0:0', admin: '127.0.0.1:0' }, 'silent');
    open.push(d);
    expect(d.app.config.inbound.allowCidrs?.entries).toEqual([
      '127.0.0.0/8',
      '::1/128',
      '10.0.0.0/8',
      '172.16.0.0/12',
      '192.168.0.0/16',
      'fc00::/7',
    ]);
    const port = new URL(d.proxyUrl).port;
    const res = await request(`http://127.0.0.1:${port}/partner/hello`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toMatchObject({ ok: true, client: 'demo-client' });
    expect((await demo()).app.config.inbound.allowCidrs).toBeUndefined();
  });
});

describe('token-proxy demo', () => {
  it(
    'runs with the container image ENV (TOKEN_PROXY_CONFIG among it) and exits 0 on SIGTERM',
    { timeout: 30_000 },
    async () => {
      const stages = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
      const imageEnv = Object.fromEntries(stages[stages.length - 1]!.env);
      expect(imageEnv['TOKEN_PROXY_CONFIG']).toBe('/etc/token-proxy/config.yaml');
      const child = spawn(process.execPath, [join(ROOT, 'dist', 'cli.js'), 'demo'], {
        env: {
          PATH: process.env['PATH'] ?? '',
          ...imageEnv,
          TOKEN_PROXY_LISTEN: '127.0.0.1:0',
          TOKEN_PROXY_ADMIN_LISTEN: '127.0.0.1:0',
        },
      });
      let output = '';
      const exited = once(child, 'exit') as Promise<[number | null, string | null]>;
      const ready = new Promise<string | undefined>((resolve) => {
        const onData = (chunk: Buffer) => {
          output += chunk.toString();
          const m = /curl -s (http:\/\/127\.0\.0\.1:\d+)\/partner\/hello/.exec(output);
          if (m) resolve(m[1]);
        };
        child.stdout.on('data', onData);
        child.stderr.on('data', onData);
        void exited.then(() => resolve(undefined));
      });
      const proxyUrl = await ready;
      try {
        expect(proxyUrl, output).toBeDefined();
        const res = await request(`${proxyUrl}/partner/hello`);
        expect(res.statusCode).toBe(200);
        expect(await res.body.json()).toMatchObject({ ok: true, client: 'demo-client', scope: 'demo.read' });
      } finally {
        child.kill('SIGTERM');
      }
      expect(await exited).toEqual([0, null]);
    },
  );
});

describe('demo token server', () => {
  it('answers errors as RFC 6749 §5.2 says and issues a token only to the client with its secret', async () => {
    const server = await tokenServer();
    const wrong = await post(
      server.tokenUrl,
      { grant_type: 'client_credentials' },
      { authorization: basic('c1', 'guess') },
    );
    expect(wrong.statusCode).toBe(401);
    expect(wrong.headers['www-authenticate']).toBe('Basic realm="token-proxy demo"');
    expect(await wrong.body.json()).toMatchObject({ error: 'invalid_client' });
    const otherId = await post(server.tokenUrl, {
      grant_type: 'client_credentials',
      client_id: 'c2',
      client_secret: 'right-secret',
    });
    expect(otherId.statusCode).toBe(401);
    expect(await otherId.body.json()).toMatchObject({ error: 'invalid_client' });
    const anonymous = await post(server.tokenUrl, { grant_type: 'client_credentials' });
    expect(anonymous.statusCode).toBe(401);
    expect(await anonymous.body.json()).toMatchObject({ error: 'invalid_client' });
    const twoMethods = await post(
      server.tokenUrl,
      { grant_type: 'client_credentials', client_id: 'c1', client_secret: 'right-secret' },
      { authorization: basic('c1', 'right-secret') },
    );
    expect(twoMethods.statusCode).toBe(400);
    expect(await twoMethods.body.json()).toMatchObject({ error: 'invalid_request' });
    const password = await post(
      server.tokenUrl,
      { grant_type: 'password', username: 'u', password: 'p' },
      { authorization: basic('c1', 'right-secret') },
    );
    expect(password.statusCode).toBe(400);
    expect(await password.body.json()).toMatchObject({ error: 'unsupported_grant_type' });
    const scope = await post(
      server.tokenUrl,
      { grant_type: 'client_credentials', scope: 'a admin' },
      { authorization: basic('c1', 'right-secret') },
    );
    expect(scope.statusCode).toBe(400);
    expect(await scope.body.json()).toMatchObject({ error: 'invalid_scope' });
    expect(server.issued).toBe(0);

    const viaBody = await post(server.tokenUrl, {
      grant_type: 'client_credentials',
      client_id: 'c1',
      client_secret: 'right-secret',
      scope: 'b',
    });
    expect(viaBody.statusCode).toBe(200);
    expect(viaBody.headers['cache-control']).toBe('no-store');
    const body = (await viaBody.body.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ token_type: 'Bearer', expires_in: 60, scope: 'b' });
    expect(decodeJwt(body['access_token'] as string)).toMatchObject({
      iss: server.issuer,
      aud: 'partner-x',
      scope: 'b',
    });
    expect(server.issued).toBe(1);
  });

  it('is checked by the partner: a token signed by another server or for another audience gets 401', async () => {
    const server = await tokenServer();
    const partner = await partnerFor(server);
    const good = await accessToken(server);
    const forgery = await accessToken(await tokenServer());
    const elsewhere = await accessToken(server);
    const otherPartner = await partnerFor(server, 'partner-y');
    const call = async (url: string, token: string) => {
      const res = await request(`${url}/x`, { headers: { authorization: `Bearer ${token}` } });
      await res.body.dump();
      return res.statusCode;
    };
    expect(await call(partner.url, good)).toBe(200);
    expect(await call(partner.url, forgery)).toBe(401);
    expect(await call(otherPartner.url, elsewhere)).toBe(401);
    expect(partner.seen.map((s) => s.status)).toEqual([200, 401]);
    expect(otherPartner.seen.map((s) => s.status)).toEqual([401]);
  });
});
