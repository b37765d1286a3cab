import { once } from 'node:events';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, ProxyAgent, request, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { createCaFiles } from '../../src/mitm/certificate-authority.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest } from '../helpers/raw-http.js';
import { startScriptedServer } from '../helpers/scripted-server.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * No leaks (issue 7): a mix of everything the proxy does, with known secrets, and then a grep of
 * every log line, every answer the clients got (status, headers, body) and the admin endpoints
 * for them. Then: each token goes to its own target only.
 */
const SECRET = 'nl-client-secret-7Hq2vXp9Wm';
const SECRET_A = 'nl-exact-a-secret-Rt5uYk';
const SECRET_B = 'nl-wild-b-secret-Pz3nCv';
const TENANT_A_SECRET = 'nl-tenant-a-secret-Qw3Jd';
const TENANT_B_SECRET = 'nl-tenant-b-secret-Er4Lf';
const PROXY_PASSWORD = 'nl-proxy-pass-Zx8Bn';
const WRONG_PROXY_PASSWORD = 'nl-wrong-pass-Vb6Hm';
const LEGACY_PASSWORD = 'nl-legacy-pass-Lk5Gs';
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const CLIENT_AUTH = basic('legacy-user', LEGACY_PASSWORD);
const CLIENT_BEARER = 'Bearer nl-client-bearer-Tg7Ws';
const PROXY_AUTH = basic('app', PROXY_PASSWORD);
const WRONG_PROXY_AUTH = basic('app', WRONG_PROXY_PASSWORD);

const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-no-leaks-'));
let tokenServer: TokenServer;
let partner: PartnerApi;
let partnerA: PartnerApi;
let partnerB: PartnerApi;
let failingTokenEndpoint: Awaited<ReturnType<typeof startScriptedServer>>;
let proxy: RunningProxy;
let proxyPort: number;
let mitmCa: string;
/** A host reached only through the egress policy (passthrough and redirect target): records what it got. */
let other: { url: string; port: number; seen: IncomingHttpHeaders[]; close: () => void };
const client = new Agent({ connections: 50 });
let forward: ProxyAgent;
let tunnel: ProxyAgent;
/** Everything the clients were told: status lines, headers and bodies. */
const answers: string[] = [];

async function record(
  res: Dispatcher.ResponseData,
  label: string,
): Promise<{ status: number; text: string; headers: IncomingHttpHeaders }> {
  const text = await res.body.text();
  answers.push(`${label} ${res.statusCode} ${JSON.stringify(res.headers)}\n${text}`);
  return { status: res.statusCode, text, headers: res.headers };
}

const reverse = async (path: string, headers: Record<string, string> = {}) =>
  record(await client.request({ origin: proxy.url, path, method: 'GET', headers }), `GET ${path}`);
const viaForward = async (url: string, headers: Record<string, string> = {}, dispatcher: Dispatcher = forward) =>
  record(await request(url, { dispatcher, headers }), `forward ${url}`);
const raw = async (bytes: string) => {
  const res = await rawRequest(proxyPort, bytes);
  answers.push(res.raw);
  return res;
};

beforeAll(async () => {
  tokenServer = await startTokenServer();
  const partnerOptions = {
    jwksUrl: tokenServer.jwksUrl,
    issuer: tokenServer.url,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
  };
  [partner, partnerA, partnerB] = await Promise.all([
    startPartnerApi(partnerOptions),
    startPartnerApi(partnerOptions),
    startPartnerApi(partnerOptions),
  ]);
  failingTokenEndpoint = await startScriptedServer((_req, res) => {
    res.writeHead(401, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        error: 'invalid_client',
        error_description: 'client authentication failed: unknown client or wrong secret',
      }),
    );
  });
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    seen.push(req.headers);
    res.end('other host');
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  other = { url: `http://127.0.0.1:${port}`, port, seen, close: () => server.close() };
  const ca = await createCaFiles(dir);
  mitmCa = readFileSync(ca.certFile, 'utf8');
  const cc = (clientId: string, clientSecret: string) => ({
    type: 'client_credentials',
    tokenUrl: tokenServer.tokenUrl,
    clientId,
    clientSecret,
  });
  proxy = await startProxy({
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        hosts: ['api.partner.example'],
        ca: pki.caFile,
        auth: cc('nl-client', SECRET),
      },
      {
        name: 'failing',
        target: partner.url,
        pathPrefix: '/failing',
        ca: pki.caFile,
        tokenWaitTimeoutSeconds: 2,
        auth: {
          type: 'client_credentials',
          tokenUrl: `${failingTokenEndpoint.url}/token`,
          clientId: 'nl-failing',
          clientSecret: SECRET,
        },
      },
      {
        name: 'tenanted',
        target: partner.url,
        pathPrefix: '/tenanted',
        ca: pki.caFile,
        auth: { type: 'client_credentials', tokenUrl: tokenServer.tokenUrl }, // credentials per tenant
        tenants: {
          from: 'header:X-Tenant',
          credentials: {
            'app-a': { clientId: 'tenant-a', clientSecret: TENANT_A_SECRET },
            'app-b': { clientId: 'tenant-b', clientSecret: TENANT_B_SECRET },
          },
        },
      },
      // Overlapping host patterns: the exact name belongs to A, every other *.example to B.
      { name: 'exact-a', target: partnerA.url, hosts: ['api.example'], ca: pki.caFile, auth: cc('client-a', SECRET_A) },
      { name: 'wild-b', target: partnerB.url, hosts: ['*.example'], ca: pki.caFile, auth: cc('client-b', SECRET_B) },
    ],
    mitm: { caCert: ca.certFile, caKey: ca.keyFile },
    egress: { default: 'deny', allow: ['127.0.0.1'], connectPorts: [443] },
    inbound: { proxyAuth: { users: [{ name: 'app', password: PROXY_PASSWORD }] } },
  });
  proxyPort = Number(new URL(proxy.url).port);
  forward = new ProxyAgent({ uri: proxy.url, token: PROXY_AUTH, proxyTunnel: false });
  tunnel = new ProxyAgent({ uri: proxy.url, token: PROXY_AUTH, requestTls: { ca: mitmCa } });
});

afterAll(async () => {
  await proxy.close();
  await Promise.all([
    partner.close(),
    partnerA.close(),
    partnerB.close(),
    tokenServer.stop(),
    failingTokenEndpoint.close(),
    client.close(),
    forward.close(),
    tunnel.close(),
  ]);
  other.close();
});

describe('a mix of traffic with known secrets', () => {
  it('reverse mode: success, with the client Authorization and Proxy-Authorization replaced or dropped', async () => {
    const res = await reverse('/partner/ok', { authorization: CLIENT_AUTH, 'proxy-authorization': PROXY_AUTH });
    expect(res.status).toBe(200);
    const seen = partner.seen.at(-1);
    expect(seen?.headers.authorization).toBe(`Bearer ${tokenServer.issued.at(-1)}`);
    expect(seen?.headers['proxy-authorization']).toBeUndefined();
  });

  it('a 401 from the partner: renewed and replayed once', async () => {
    const current = proxy.app.tokens.get('partner')?.current()?.value as string;
    partner.revoked.add(current);
    const res = await reverse('/partner/replayed', { authorization: CLIENT_BEARER });
    expect(res.status).toBe(200);
    expect(proxy.logs.some((l) => l.includes('"event":"unauthorized_retry"'))).toBe(true);
    // A partner that rejects every token: the 401 goes to the client as the partner sent it.
    partner.script = (r) =>
      r.path === '/always-401'
        ? {
            status: 401,
            headers: { 'www-authenticate': 'Bearer error="invalid_token"' },
            body: '{"error":"invalid_token"}',
          }
        : undefined;
    expect((await reverse('/partner/always-401')).status).toBe(401);
    partner.script = undefined;
  });

  it('a token endpoint failure with a description: 502 with the reason, never the credentials', async () => {
    const res = await reverse('/failing/x', { authorization: CLIENT_AUTH });
    expect(res.status).toBe(502);
    expect(JSON.parse(res.text)).toMatchObject({
      error: 'token_unavailable',
      reason: 'invalid_client',
      description: 'client authentication failed: unknown client or wrong secret',
    });
    expect(failingTokenEndpoint.hits).toBeGreaterThan(0);
  });

  it('forward mode: absolute-form with proxy credentials, and 407 with wrong ones', async () => {
    expect((await viaForward('http://api.partner.example/fwd', { authorization: CLIENT_AUTH })).status).toBe(200);
    // undici's ProxyAgent turns a 407 into an error: the wrong credentials go in by hand.
    const rawWrong = await raw(
      `GET http://api.partner.example/x HTTP/1.1\r\nHost: api.partner.example\r\nProxy-Authorization: ${WRONG_PROXY_AUTH}\r\nConnection: close\r\n\r\n`,
    );
    expect(rawWrong.status).toBe(407);
  });

  it('CONNECT with interception: https through the generated CA', async () => {
    const res = await viaForward('https://api.partner.example/mitm', { authorization: CLIENT_AUTH }, tunnel);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({ path: '/mitm', client: 'nl-client' });
  });

  it('egress: refusals (plain and CONNECT) and an allowed passthrough that gets no token', async () => {
    expect((await viaForward('http://denied.invalid/x', { authorization: CLIENT_AUTH })).status).toBe(403);
    const refused = await raw(
      `CONNECT denied.invalid:443 HTTP/1.1\r\nHost: denied.invalid:443\r\nProxy-Authorization: ${PROXY_AUTH}\r\n\r\n`,
    );
    expect(refused.status).toBe(403);
    const before = other.seen.length;
    expect((await viaForward(`${other.url}/pass`, { authorization: CLIENT_BEARER })).status).toBe(200);
    expect(other.seen.length).toBe(before + 1);
    // The client's own header is the client's business; a token never is.
    expect(other.seen.at(-1)?.authorization).toBe(CLIENT_BEARER);
    expect(other.seen.at(-1)?.['proxy-authorization']).toBeUndefined();
  });

  it('malformed requests carrying credentials are refused without echoing them', async () => {
    const creds = `Authorization: ${CLIENT_AUTH}\r\nProxy-Authorization: ${PROXY_AUTH}`;
    const cases = [
      `GET /partner/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n${creds}\r\nConnection: close\r\n\r\n`,
      `GET /partner/x HTTP/1.1\r\nHost: a\r\n${creds}\r\nBad Header: x\r\n\r\n`,
      `GET /partner/x HTTP/1.1\r\nHost: a\r\n${creds}\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`,
      `POST /partner/x HTTP/1.1\r\nHost: a\r\n${creds}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      `GET http://app:${PROXY_PASSWORD}@api.partner.example/x HTTP/1.1\r\nHost: api.partner.example\r\n${creds}\r\nConnection: close\r\n\r\n`,
      `GET /partner/%2e%2e/${SECRET.slice(0, 4)} HTTP/1.1\r\nHost: a\r\n${creds}\r\nConnection: close\r\n\r\n`,
      `GET /nowhere HTTP/1.1\r\nHost: a\r\n${creds}\r\nConnection: close\r\n\r\n`,
    ];
    for (const bytes of cases) expect((await raw(bytes)).status).toBeGreaterThanOrEqual(400);
  });
});

describe('each token goes to its own target only', () => {
  it('a redirect to another host: the 3xx passes on, the follow-up carries no token', async () => {
    partner.script = (r) =>
      r.path === '/moved' ? { status: 302, headers: { location: `${other.url}/landing` }, body: '' } : undefined;
    const moved = await viaForward('http://api.partner.example/moved');
    partner.script = undefined;
    expect(moved.status).toBe(302);
    const before = other.seen.length;
    const landing = await viaForward(moved.headers.location as string);
    expect([landing.status, landing.text]).toEqual([200, 'other host']);
    expect(other.seen.length).toBe(before + 1);
    expect(other.seen.at(-1)?.authorization).toBeUndefined();
  });

  it('an egress passthrough host never gets a token, whatever the client sends', async () => {
    for (const headers of [{}, { 'x-tenant': 'app-a' }, { authorization: CLIENT_AUTH }] as Record<string, string>[])
      await viaForward(`${other.url}/again`, headers);
    for (const h of other.seen) expect(tokenServer.issued.some((t) => JSON.stringify(h).includes(t))).toBe(false);
  });

  it('two tenants on one upstream never cross over', async () => {
    const before = partner.seen.length;
    const tenants = Array.from({ length: 60 }, (_, i) => (i % 3 === 0 ? 'app-b' : 'app-a'));
    const results = await Promise.all(tenants.map((t, i) => reverse(`/tenanted/n${i}`, { 'x-tenant': t })));
    expect(results.every((r) => r.status === 200)).toBe(true);
    const seen = partner.seen.slice(before);
    expect(seen).toHaveLength(60);
    const expected: Record<string, string> = { 'app-a': 'tenant-a', 'app-b': 'tenant-b' };
    for (const s of seen) expect(s.claims?.['client_id']).toBe(expected[s.headers['x-tenant'] as string]);
    const tokensOf = (t: string) => new Set(seen.filter((s) => s.headers['x-tenant'] === t).map((s) => s.token));
    expect([...tokensOf('app-a')].filter((t) => tokensOf('app-b').has(t))).toEqual([]);
    // An unknown tenant is refused, never served with another tenant's token.
    expect((await reverse('/tenanted/x', { 'x-tenant': 'app-c' })).status).toBe(403);
    expect((await reverse('/tenanted/x')).status).toBe(403);
  });

  it('overlapping host patterns: api.example (exact, A) and *.example (wildcard, B) each get their own token at their own target', async () => {
    const aBefore = partnerA.seen.length;
    const bBefore = partnerB.seen.length;
    expect((await viaForward('http://api.example/a1')).status).toBe(200);
    expect((await viaForward('https://api.example/a2', {}, tunnel)).status).toBe(200);
    expect((await viaForward('http://b.example/b1')).status).toBe(200);
    expect((await viaForward('https://b.example/b2', {}, tunnel)).status).toBe(200);
    expect((await viaForward('http://deep.api.example/b3')).status).toBe(200);
    const atA = partnerA.seen.slice(aBefore);
    const atB = partnerB.seen.slice(bBefore);
    expect(atA.map((s) => s.path)).toEqual(['/a1', '/a2']);
    expect(atB.map((s) => s.path)).toEqual(['/b1', '/b2', '/b3']);
    expect(atA.every((s) => s.claims?.['client_id'] === 'client-a')).toBe(true);
    expect(atB.every((s) => s.claims?.['client_id'] === 'client-b')).toBe(true);
    const tokensA = new Set(atA.map((s) => s.token));
    expect(atB.filter((s) => tokensA.has(s.token))).toEqual([]);
    // And neither token ever reached the other partners.
    for (const s of partner.seen) expect([...tokensA, ...atB.map((b) => b.token)]).not.toContain(s.token);
  });
});

describe('after the mix', () => {
  it('finds no secret, token, token signature or client credential in any log line, answer or metric', async () => {
    const metrics = await (await request(`${proxy.adminUrl}/metrics`)).body.text();
    const readyz = await (await request(`${proxy.adminUrl}/readyz`)).body.text();
    expect(metrics).toContain('token_proxy_');
    expect(tokenServer.issued.length).toBeGreaterThanOrEqual(5);
    expect(proxy.logs.length).toBeGreaterThan(20);
    expect(answers.length).toBeGreaterThan(20);
    const needles: Record<string, string> = {
      'client secret': SECRET,
      'secret of A': SECRET_A,
      'secret of B': SECRET_B,
      'tenant A secret': TENANT_A_SECRET,
      'tenant B secret': TENANT_B_SECRET,
      'proxy password': PROXY_PASSWORD,
      'wrong proxy password': WRONG_PROXY_PASSWORD,
      'client Basic credentials': CLIENT_AUTH.slice(6),
      'client password': LEGACY_PASSWORD,
      'client bearer': CLIENT_BEARER.slice(7),
      'Proxy-Authorization': PROXY_AUTH.slice(6),
      'wrong Proxy-Authorization': WRONG_PROXY_AUTH.slice(6),
      'client secret, form-encoded in Basic': Buffer.from(`nl-client:${SECRET}`).toString('base64'),
    };
    tokenServer.issued.forEach((token, i) => {
      needles[`token #${i}`] = token;
      needles[`signature of token #${i}`] = token.split('.')[2] as string;
    });
    const haystacks: [string, string[]][] = [
      ['log line', proxy.logs],
      ['client answer', answers],
      ['metrics', [metrics]],
      ['readyz', [readyz]],
    ];
    const found: string[] = [];
    for (const [where, texts] of haystacks) {
      for (const text of texts) {
        for (const [what, needle] of Object.entries(needles))
          if (needle.length >= 8 && text.includes(needle)) found.push(`${what} in a ${where}: ${text.slice(0, 200)}`);
      }
    }
    expect(found).toEqual([]);
  });
});

describe('partner text that echoes a credential', () => {
  // A secret with characters that RFC 6749 §2.3.1 form-urlencodes before Basic encoding.
  const SPECIAL = 'nl:sec ret/+%7Hq2vXp9Wm';
  const formEncoded = (v: string) => new URLSearchParams({ v }).toString().slice(2);
  const echoes: [string, (authorization: string) => string][] = [
    [
      'the secret as it decodes it',
      (a) =>
        `bad credentials ${decodeURIComponent(Buffer.from(a.slice(6), 'base64').toString('utf8').replace(/\+/g, ' '))}`,
    ],
    ['the Authorization header as it came (Basic, base64)', (a) => `bad credentials in header: ${a}`],
    [
      'the id:secret pair still form-urlencoded',
      (a) => `bad credentials ${Buffer.from(a.slice(6), 'base64').toString('utf8')}`,
    ],
    [
      'the secret at the end of a long text that is cut short',
      (a) =>
        `${'x'.repeat(180)} ${decodeURIComponent(Buffer.from(a.slice(6), 'base64').toString('utf8').split(':')[1]?.replace(/\+/g, ' ') ?? '')}`,
    ],
  ];

  it.each(echoes)(
    'a token endpoint whose error_description repeats %s: no form of the secret appears anywhere',
    async (_style, echo) => {
      const endpoint = await startScriptedServer((req, res) => {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'invalid_client', error_description: echo(req.headers.authorization ?? '') }));
      });
      const echoing = await startProxy({
        upstreams: [
          {
            name: 'echo',
            target: partner.url,
            pathPrefix: '/echo',
            ca: pki.caFile,
            tokenWaitTimeoutSeconds: 2,
            auth: {
              type: 'client_credentials',
              tokenUrl: `${endpoint.url}/token`,
              clientId: 'nl-echo',
              clientSecret: SPECIAL,
            },
          },
        ],
      });
      try {
        const res = await client.request({ origin: echoing.url, path: '/echo/x', method: 'GET' });
        const text = await res.body.text();
        expect(res.statusCode).toBe(502);
        expect(endpoint.hits).toBeGreaterThan(0);
        const forms = {
          plain: SPECIAL,
          'form-urlencoded': formEncoded(SPECIAL),
          'Basic credentials (base64)': Buffer.from(`nl-echo:${formEncoded(SPECIAL)}`).toString('base64'),
          'a 10-character prefix': SPECIAL.slice(0, 10),
        };
        const found = Object.entries(forms).flatMap(([form, needle]) =>
          [text, ...echoing.logs]
            .filter((t) => t.includes(needle))
            .map((t) => `${form} in ${t === text ? 'the 502 body' : 'a log line'}: ${t.slice(0, 300)}`),
        );
        expect(found).toEqual([]);
      } finally {
        await echoing.close();
        await endpoint.close();
      }
    },
  );
});

/** The request body a scripted partner received, as text. */
async function bodyOf(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Every string inside a JSON text (log lines and error bodies are JSON), decoded, or the text itself. */
function decodedStrings(text: string): string[] {
  const out = [text];
  const walk = (node: unknown): void => {
    if (typeof node === 'string') out.push(node);
    else if (node !== null && typeof node === 'object') for (const v of Object.values(node)) walk(v);
  };
  try {
    walk(JSON.parse(text));
  } catch {
    // not JSON: the raw text is searched as it is
  }
  return out;
}

/** `form in the 502 body: …` for each needle found in the client's answer or a log line. */
function leaks(needles: Record<string, string>, answer: string, logs: readonly string[]): string[] {
  return [answer, ...logs].flatMap((text) =>
    Object.entries(needles)
      .filter(([, needle]) => decodedStrings(text).some((s) => s.includes(needle)))
      .map(([form]) => `${form} in ${text === answer ? 'the 502 body' : 'a log line'}: ${text.slice(0, 300)}`),
  );
}

describe('secrets made or filled in for one request', () => {
  const formEncoded = (v: string) => new URLSearchParams({ v }).toString().slice(2);

  /** The client assertion (RFC 7523) the token endpoint got, in each way a careless server repeats it. */
  const assertionEchoes: [string, (assertion: string, body: string) => { error: string; error_description: string }][] =
    [
      [
        'the assertion in error_description',
        (a) => ({ error: 'invalid_client', error_description: `bad assertion ${a}` }),
      ],
      [
        'the form parameters as received, the assertion first, in error_description',
        (_a, body) => {
          const form = new URLSearchParams(body);
          form.sort(); // client_assertion comes first, where the 200-character cut does not hide it
          return { error: 'invalid_client', error_description: form.toString() };
        },
      ],
      [
        'each part on its own, signature first',
        (a) => ({ error: 'invalid_client', error_description: a.split('.').reverse().join(' and ') }),
      ],
      ['the assertion as the error code', (a) => ({ error: `bad_assertion:${a}`, error_description: 'see error' })],
      [
        'the assertion after a long text that is cut short',
        (a) => ({ error: 'invalid_client', error_description: `${'x'.repeat(120)} ${a}` }),
      ],
    ];

  it.each(assertionEchoes)(
    'a token endpoint that echoes the private_key_jwt client assertion (%s): no piece of it appears in the 502 body or a log line',
    async (_style, echo) => {
      const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const keyFile = join(dir, `assertion-key-${randomUUID()}.pem`);
      writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));
      const assertions: string[] = [];
      const endpoint = await startScriptedServer((req, res) => {
        void bodyOf(req).then((body) => {
          const assertion = new URLSearchParams(body).get('client_assertion') ?? '';
          assertions.push(assertion);
          res.writeHead(401, { 'content-type': 'application/json' });
          res.end(JSON.stringify(echo(assertion, body)));
        });
      });
      const echoing = await startProxy({
        upstreams: [
          {
            name: 'echo',
            target: partner.url,
            pathPrefix: '/echo',
            ca: pki.caFile,
            tokenWaitTimeoutSeconds: 2,
            auth: {
              type: 'client_credentials',
              tokenUrl: `${endpoint.url}/token`,
              clientId: 'nl-jwt-client',
              clientAuth: 'private_key_jwt',
              privateKey: { file: keyFile, alg: 'ES256', kid: 'nl-key-1' },
            },
          },
        ],
      });
      try {
        const res = await client.request({ origin: echoing.url, path: '/echo/x', method: 'GET' });
        const text = await res.body.text();
        expect(res.statusCode).toBe(502);
        expect(JSON.parse(text)).toMatchObject({ error: 'token_unavailable' });
        expect(assertions.length).toBeGreaterThan(0);
        const needles: Record<string, string> = {};
        assertions.forEach((a, i) => {
          const [header = '', payload = '', signature = ''] = a.split('.');
          expect([header, payload, signature].every((part) => part.length > 20)).toBe(true);
          Object.assign(needles, {
            [`assertion #${i}`]: a,
            [`assertion #${i}, form-encoded`]: formEncoded(a),
            [`signing input of #${i}`]: `${header}.${payload}`,
            [`header of #${i}`]: header,
            [`payload of #${i}`]: payload,
            [`signature of #${i}`]: signature,
            [`the first 12 characters of the payload of #${i}`]: payload.slice(0, 12),
            [`the first 12 characters of the signature of #${i}`]: signature.slice(0, 12),
          });
        });
        expect(leaks(needles, text, echoing.logs)).toEqual([]);
        // What is left is still told: the reason, and that the partner said something.
        expect(echoing.logs.some((l) => l.includes('"reason":"invalid_client"'))).toBe(true);
      } finally {
        await echoing.close();
        await endpoint.close();
      }
    },
  );

  // Characters that form-encoding, URI-encoding and JSON escaping each change.
  const LOGIN_PASSWORD = 'nl-login "pass\\word"/+%é';
  const BODY_CLIENT_SECRET = 'nl-body-secret "q\\z"/+%ü';
  const BODY_API_KEY = 'nl-body-api-key+Zq8/Ww==';
  const NESTED_SIGNATURE = 'nl-nested-sig Hy7\\Tq"';
  const loginEchoes: [string, (body: string) => unknown][] = [
    ['the JSON body as received in message', (body) => ({ message: `rejected ${body}` })],
    [
      'each value decoded, in error_description',
      (body) => ({ error_description: `rejected ${JSON.stringify(Object.values(JSON.parse(body) as object))}` }),
    ],
    [
      'the body re-encoded as a form, in detail',
      (body) => ({
        detail: `rejected ${new URLSearchParams(
          Object.entries(JSON.parse(body) as Record<string, unknown>).map(([k, v]): [string, string] => [
            k,
            typeof v === 'string' ? v : JSON.stringify(v),
          ]),
        ).toString()}`,
      }),
    ],
    [
      'each value URI-encoded, as the error',
      (body) => ({
        error: Object.values(JSON.parse(body) as Record<string, unknown>)
          .map((v) => encodeURIComponent(typeof v === 'string' ? v : JSON.stringify(v)))
          .join(' '),
      }),
    ],
  ];

  it.each(loginEchoes)(
    'a login API that echoes the secrets of its loginBody template (%s): none appears in the 502 body or a log line',
    async (_style, echo) => {
      const bodies: string[] = [];
      const loginApi = await startScriptedServer((req, res) => {
        void bodyOf(req).then((body) => {
          bodies.push(body);
          res.writeHead(401, { 'content-type': 'application/json' });
          res.end(JSON.stringify(echo(body)));
        });
      });
      const echoing = await startProxy({
        upstreams: [
          {
            name: 'login-echo',
            target: partner.url,
            pathPrefix: '/login-echo',
            ca: pki.caFile,
            tokenWaitTimeoutSeconds: 2,
            auth: {
              type: 'login',
              loginUrl: `${loginApi.url}/auth/login`,
              username: 'nl-login-user',
              password: LOGIN_PASSWORD,
              loginBody: {
                user: '{{username}}',
                pass: '{{password}}',
                client_secret: BODY_CLIENT_SECRET,
                apiKey: BODY_API_KEY,
                proof: { signature: NESTED_SIGNATURE, algorithm: 'plain' },
              },
            },
          },
        ],
      });
      try {
        const res = await client.request({ origin: echoing.url, path: '/login-echo/x', method: 'GET' });
        const text = await res.body.text();
        expect(res.statusCode).toBe(502);
        expect(JSON.parse(text)).toMatchObject({ error: 'token_unavailable' });
        expect(bodies.length).toBeGreaterThan(0);
        // The template was filled in and sent as written: the secrets did reach the login API.
        expect(JSON.parse(bodies[0] ?? '{}')).toEqual({
          user: 'nl-login-user',
          pass: LOGIN_PASSWORD,
          client_secret: BODY_CLIENT_SECRET,
          apiKey: BODY_API_KEY,
          proof: { signature: NESTED_SIGNATURE, algorithm: 'plain' },
        });
        const needles: Record<string, string> = {};
        for (const [name, secret] of Object.entries({
          password: LOGIN_PASSWORD,
          'client_secret in the template': BODY_CLIENT_SECRET,
          'apiKey in the template': BODY_API_KEY,
          'nested signature in the template': NESTED_SIGNATURE,
        })) {
          Object.assign(needles, {
            [name]: secret,
            [`${name}, form-encoded`]: formEncoded(secret),
            [`${name}, URI-encoded`]: encodeURIComponent(secret),
            [`${name}, JSON-escaped`]: JSON.stringify(secret).slice(1, -1),
            [`${name}, first 10 characters`]: secret.slice(0, 10),
          });
        }
        expect(leaks(needles, text, echoing.logs)).toEqual([]);
        expect(echoing.logs.some((l) => l.includes('"event":"token_refresh_failed"'))).toBe(true);
      } finally {
        await echoing.close();
        await loginApi.close();
      }
    },
  );
});
