import { once } from 'node:events';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingHttpHeaders } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { setTimeout as delay } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProxyAgent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { ConfigError } from '../../src/errors.js';
import { createCaFiles } from '../../src/mitm/certificate-authority.js';
import { testPki } from '../helpers/certs.js';
import { curl, pythonGet } from '../helpers/clients.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const PARTNER_HOST = 'api.partner.example';
const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-forward-'));
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy;
let mitmCaFile: string;
/** An unrelated host reachable only through the egress policy: records what it was sent. */
let other: { url: string; port: number; seen: IncomingHttpHeaders[]; close: () => void };
let otherTls: { port: number; seen: IncomingHttpHeaders[]; close: () => void };

function upstream(extra: Record<string, unknown> = {}) {
  return {
    name: 'partner',
    target: partner.url,
    pathPrefix: '/partner',
    hosts: [PARTNER_HOST],
    ca: pki.caFile,
    ...extra,
    auth: {
      type: 'client_credentials',
      tokenUrl: tokenServer.tokenUrl,
      clientId: 'forward-client',
      clientSecret: 'forward-secret',
    },
  };
}

/** The proxy's config document (as startProxy completes it, for app.reload). */
function proxyDoc(doc: Record<string, unknown> = {}) {
  return {
    upstreams: [upstream()],
    mitm: { caCert: mitmCaFile, caKey: join(dir, 'ca-key.pem') },
    egress: { default: 'deny', allow: ['127.0.0.1'], connectPorts: [443, otherTls.port] },
    ...doc,
  };
}

async function proxyWith(doc: Record<string, unknown> = {}) {
  proxy = await startProxy(proxyDoc(doc));
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  mitmCaFile = (await createCaFiles(dir)).certFile;
  const seen: IncomingHttpHeaders[] = [];
  const plain = createHttpServer((req, res) => {
    seen.push(req.headers);
    res.end('other host');
  }).listen(0, '127.0.0.1');
  await once(plain, 'listening');
  const port = (plain.address() as AddressInfo).port;
  other = { url: `http://127.0.0.1:${port}`, port, seen, close: () => plain.close() };
  const tlsSeen: IncomingHttpHeaders[] = [];
  const secure = createHttpsServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    tlsSeen.push(req.headers);
    res.end('other tls host');
  }).listen(0, '127.0.0.1');
  await once(secure, 'listening');
  otherTls = { port: (secure.address() as AddressInfo).port, seen: tlsSeen, close: () => secure.close() };
});

afterAll(async () => {
  await partner.close();
  await tokenServer.stop();
  other.close();
  otherTls.close();
});

beforeEach(async () => {
  partner.seen.length = 0;
  partner.script = undefined;
  other.seen.length = 0;
  otherTls.seen.length = 0;
  await proxyWith();
});

afterEach(async () => {
  for (const tunnel of tunnelsToClose.splice(0)) tunnel.destroy();
  await proxy.close();
});

function lastPartnerRequest() {
  const seen = partner.seen.at(-1);
  expect(seen?.claims?.['client_id']).toBe('forward-client'); // the partner verified the token
  return seen;
}

describe('forward proxy with real clients', () => {
  it('curl --proxy: plain http in, TLS origination out, token injected', async () => {
    const res = await curl(['--proxy', proxy.url, `http://${PARTNER_HOST}/v1/orders?x=1`]);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toMatchObject({ ok: true, path: '/v1/orders?x=1', client: 'forward-client' });
    expect(lastPartnerRequest()?.path).toBe('/v1/orders?x=1');
  });

  it('curl with http_proxy / HTTPS_PROXY from the environment, https through CONNECT and interception', async () => {
    const env = { http_proxy: proxy.url, HTTPS_PROXY: proxy.url };
    expect((await curl([`http://${PARTNER_HOST}/env-http`], env)).status).toBe(200);
    const tls = await curl(['--cacert', mitmCaFile, `https://${PARTNER_HOST}/env-https`], env);
    expect(tls.status).toBe(200);
    expect(JSON.parse(tls.body)).toMatchObject({ path: '/env-https', client: 'forward-client' });
    expect(lastPartnerRequest()?.headers['x-forwarded-proto']).toBe('https');
  });

  it('the interception certificate is trusted only by clients that trust the generated CA', async () => {
    const res = await curl(['--cacert', pki.caFile, '--proxy', proxy.url, `https://${PARTNER_HOST}/x`]);
    expect(res.code).toBe(60); // curl: peer certificate cannot be authenticated with given CA certificates
    expect(partner.seen).toHaveLength(0);
  });

  it('Python urllib with http_proxy / https_proxy and SSL_CERT_FILE', async () => {
    const env = { http_proxy: proxy.url, https_proxy: proxy.url, SSL_CERT_FILE: mitmCaFile };
    const plain = await pythonGet(`http://${PARTNER_HOST}/py-http`, env);
    expect([plain.status, (JSON.parse(plain.body) as { path: string }).path]).toEqual([200, '/py-http']);
    const tls = await pythonGet(`https://${PARTNER_HOST}/py-https`, env);
    expect([tls.status, (JSON.parse(tls.body) as { path: string }).path]).toEqual([200, '/py-https']);
    lastPartnerRequest();
  });

  it("undici's ProxyAgent: CONNECT host:80 for http:// URLs and CONNECT host:443 with interception", async () => {
    const agent = new ProxyAgent({ uri: proxy.url, requestTls: { ca: readFileSync(mitmCaFile, 'utf8') } });
    try {
      const plain = await request(`http://${PARTNER_HOST}/undici-http`, { dispatcher: agent });
      expect(plain.statusCode).toBe(200);
      expect(await plain.body.json()).toMatchObject({ path: '/undici-http', client: 'forward-client' });
      const tls = await request(`https://${PARTNER_HOST}/undici-https`, {
        dispatcher: agent,
        method: 'POST',
        body: 'hello',
      });
      expect(tls.statusCode).toBe(200);
      expect(await tls.body.json()).toMatchObject({ path: '/undici-https', bodyBytes: 5 });
    } finally {
      await agent.close();
    }
  });
});

describe('egress policy for hosts no upstream serves', () => {
  it('forwards an allowed plain request without any token, and keeps the client Authorization as the client sent it', async () => {
    const res = await curl(['--proxy', proxy.url, '-H', 'Authorization: Basic b3duOmNyZWRz', `${other.url}/plain`]);
    expect([res.status, res.body]).toEqual([200, 'other host']);
    expect(other.seen[0]?.authorization).toBe('Basic b3duOmNyZWRz');
  });

  it('tunnels an allowed CONNECT blindly (end-to-end TLS with the real server, nothing injected)', async () => {
    const res = await curl([
      '--cacert',
      pki.caFile,
      '--proxy',
      proxy.url,
      `https://127.0.0.1:${otherTls.port}/tunnelled`,
    ]);
    expect([res.status, res.body]).toEqual([200, 'other tls host']);
    expect(otherTls.seen[0]?.authorization).toBeUndefined();
  });

  it('refuses hosts outside the allow list with 403, a JSON body naming the rule, and Proxy-Status', async () => {
    const plain = await curl(['-i', '--proxy', proxy.url, 'http://denied.example/x']);
    expect(plain.status).toBe(403);
    expect(plain.body).toMatch(/proxy-status: token-proxy; error=destination_ip_prohibited/i);
    expect(JSON.parse(plain.body.slice(plain.body.indexOf('{')))).toMatchObject({
      error: 'egress_denied',
      host: 'denied.example',
      rule: 'egress.default: deny',
    });
    const tunnel = await curl(['-v', '--proxy', proxy.url, 'https://denied.example/x']);
    expect(tunnel.stderr).toMatch(/CONNECT tunnel failed, response 403|403/);
  });

  it('refuses CONNECT to a listed host on a port outside connectPorts', async () => {
    const res = await curl(['-v', '--proxy', proxy.url, `https://127.0.0.1:${other.port}/`]);
    expect(res.stderr).toMatch(/response 403/);
  });

  it('refuses CONNECT to an upstream host when no interception CA is configured, saying why', async () => {
    await proxy.close();
    await proxyWith({ mitm: undefined });
    const res = await curl(['-v', '--proxy', proxy.url, `https://${PARTNER_HOST}/x`]);
    expect(res.stderr).toMatch(/response 403/);
    const raw = await rawConnect(proxy.url, `${PARTNER_HOST}:443`);
    expect(raw).toMatch(/^HTTP\/1\.1 403/);
    expect(raw).toContain('"error":"interception_not_configured"');
    expect(raw).toContain('without TLS interception');
  });

  it('passes a partner redirect on, and the follow-up to the other host carries no token', async () => {
    partner.script = (req) =>
      req.path === '/moved' ? { status: 302, headers: { location: `${other.url}/landing` }, body: '' } : undefined;
    const res = await curl(['-L', '--proxy', proxy.url, `http://${PARTNER_HOST}/moved`]);
    expect([res.status, res.body]).toEqual([200, 'other host']);
    expect(partner.seen.map((s) => s.status)).toEqual([302]);
    expect(other.seen).toHaveLength(1);
    expect(other.seen[0]?.authorization).toBeUndefined();
  });
});

describe('who may use the proxy', () => {
  it('answers 407 with Proxy-Authenticate without or with wrong credentials, and strips them when right', async () => {
    await proxy.close();
    await proxyWith({ inbound: { proxyAuth: { users: [{ name: 'app-a', password: 'pa55-word' }] } } });
    const none = await curl(['-i', '--proxy', proxy.url, `http://${PARTNER_HOST}/x`]);
    expect(none.status).toBe(407);
    expect(none.body).toMatch(/proxy-authenticate: Basic realm="token-proxy"/i);
    const wrong = await curl(['--proxy', proxy.url, '--proxy-user', 'app-a:nope', `http://${PARTNER_HOST}/x`]);
    expect(wrong.status).toBe(407);
    const tunnel = await curl([
      '-v',
      '--proxy',
      proxy.url,
      '--proxy-user',
      'app-a:nope',
      '--cacert',
      mitmCaFile,
      `https://${PARTNER_HOST}/x`,
    ]);
    expect(tunnel.stderr).toMatch(/response 407/);
    expect(partner.seen).toHaveLength(0);
    const right = await curl(['--proxy', proxy.url, '--proxy-user', 'app-a:pa55-word', `http://${PARTNER_HOST}/x`]);
    expect(right.status).toBe(200);
    expect(lastPartnerRequest()?.headers['proxy-authorization']).toBeUndefined();
    // Reverse mode is not forward mode: it needs no proxy credentials.
    expect((await curl([`${proxy.url}/partner/x`])).status).toBe(200);
  });

  it('refuses a client outside inbound.allowCidrs', async () => {
    await proxy.close();
    await proxyWith({ inbound: { allowCidrs: ['10.0.0.0/8'] } });
    const res = await curl(['-i', `${proxy.url}/partner/x`]);
    expect(res.status).toBe(403);
    expect(res.body).toContain('"error":"client_not_allowed"');
    expect(partner.seen).toHaveLength(0);
  });

  it('never forwards a request sent along with the connection by a refused client', async () => {
    await proxy.close();
    await proxyWith({ inbound: { allowCidrs: ['10.0.0.0/8'] }, shutdownTimeoutSeconds: 1 });
    const tokenRequests = tokenServer.requests.length;
    const { port } = new URL(proxy.url);
    // The request goes out with the connection, and the client keeps its side open (half-close):
    // only the proxy can end the exchange.
    const socket = connect({ host: '127.0.0.1', port: Number(port), allowHalfOpen: true });
    socket.write(`POST /partner/payments HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}`);
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    await once(socket, 'end'); // the proxy has said all it will say
    expect(answer).toMatch(/^HTTP\/1\.1 403 /);
    expect(answer).toContain('"error":"client_not_allowed"');
    // Closing drains every request the proxy took on (the client is still there to answer): had
    // it taken this one on, the partner would have it now.
    await proxy.close();
    socket.destroy();
    expect(partner.seen).toHaveLength(0);
    expect(tokenServer.requests.length).toBe(tokenRequests);
    await proxyWith(); // for afterEach
  });

  it('closes a tunnel to an upstream host whose client sends nothing within limits.headersTimeoutSeconds', async () => {
    await proxy.close();
    await proxyWith({ limits: { headersTimeoutSeconds: 0.3 } });
    const { socket, head } = await openTunnel(proxy.url, `${PARTNER_HOST}:443`);
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    await once(socket, 'close'); // the proxy's doing: the client stays silent and open
    expect(partner.seen).toHaveLength(0);
  });

  it('closes a blind tunnel idle for limits.tunnelIdleTimeoutSeconds, and one that is busy only when idle', async () => {
    await proxy.close();
    await proxyWith({ limits: { tunnelIdleTimeoutSeconds: 1 } });
    const { socket, head } = await openTunnel(proxy.url, `127.0.0.1:${otherTls.port}`);
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    // TLS through the tunnel, then a request every 300 ms for 1.5 s: traffic keeps it open.
    const tls = tlsConnect({ socket, servername: 'localhost', ca: pki.ca });
    await once(tls, 'secureConnect');
    const closed = once(socket, 'close');
    let answers = 0;
    tls.on('data', (chunk: Buffer) => (answers += (chunk.toString().match(/other tls host/g) ?? []).length));
    for (let i = 0; i < 5; i++) {
      tls.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
      await new Promise((resolve) => tls.once('data', resolve));
      await delay(300); // wall-clock gaps, each well under the idle limit: what is under test is real time
    }
    expect(answers).toBe(5);
    expect(socket.destroyed).toBe(false);
    await closed; // then silence: closed by the proxy
    expect(otherTls.seen).toHaveLength(5);
  });

  it('serves a long-lived intercepted tunnel with the configuration in force after a reload', async () => {
    const ask = await interceptedTunnel();
    expect(await ask('/before')).toBe('HTTP/1.1 200 OK');
    // The reload resolves once the old configuration's requests are done and its pools closed.
    const doc = { listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, ...proxyDoc() };
    expect(await proxy.app.reload(buildConfig(doc, { env: {} }))).toEqual([]);
    expect(await ask('/after')).toBe('HTTP/1.1 200 OK'); // the same tunnel, the new pool
    expect(partner.seen.map((s) => [s.path, s.status])).toEqual([
      ['/before', 200],
      ['/after', 200],
    ]);
  });

  it('checks an open tunnel again after a reload: a user removed from proxyAuth gets nothing more through it', async () => {
    await proxy.close();
    const allowing = (...names: string[]) => ({
      inbound: { proxyAuth: { users: names.map((name) => ({ name, password: 'pa55-word' })) } },
    });
    await proxyWith(allowing('app-a', 'app-b'));
    const ask = await interceptedTunnel(
      `Proxy-Authorization: Basic ${Buffer.from('app-a:pa55-word').toString('base64')}\r\n`,
    );
    expect(await ask('/before')).toBe('HTTP/1.1 200 OK');
    const doc = { listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, ...proxyDoc(allowing('app-b')) };
    expect(await proxy.app.reload(buildConfig(doc, { env: {} }))).toEqual([]);
    expect(await ask('/after')).toBe('HTTP/1.1 407 Proxy Authentication Required');
    expect(partner.seen.map((s) => s.path)).toEqual(['/before']);
  });

  it('closes open tunnels on shutdown instead of waiting for them', async () => {
    const { socket, head } = await openTunnel(proxy.url, `127.0.0.1:${otherTls.port}`);
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    const closed = once(socket, 'close');
    await proxy.close(); // would wait for the tunnel (600 s idle limit) without closing it
    await closed;
    await proxyWith(); // for afterEach
  });

  it('refuses to start on a non-loopback address without inbound control', () => {
    const doc = { listen: '0.0.0.0:8080', upstreams: [upstream()] };
    expect(() => buildConfig(doc, { env: {} })).toThrow(ConfigError);
    expect(() => buildConfig(doc, { env: {} })).toThrow(
      /inbound: listen 0\.0\.0\.0:8080 is reachable from other machines/,
    );
    expect(buildConfig({ ...doc, inbound: { allowAnyone: true } }, { env: {} }).inbound.allowAnyone).toBe(true);
    expect(buildConfig({ ...doc, inbound: { allowCidrs: ['10.0.0.0/8'] } }, { env: {} }).listen).toBe('0.0.0.0:8080');
    // Proxy credentials guard forward mode only; reverse mode (a pathPrefix) asks for none.
    const proxyAuth = { users: [{ name: 'app-a', password: 'pa55-word' }] };
    expect(() => buildConfig({ ...doc, inbound: { proxyAuth } }, { env: {} })).toThrow(
      /inbound\.proxyAuth guards forward mode only: the upstreams with a pathPrefix \(reverse mode\) would inject their tokens for anyone/,
    );
    const { pathPrefix: _reverse, ...forwardOnly } = upstream();
    expect(buildConfig({ ...doc, upstreams: [forwardOnly], inbound: { proxyAuth } }, { env: {} }).listen).toBe(
      '0.0.0.0:8080',
    );
  });
});

/** A TLS-intercepted tunnel to the partner host; `ask(path)` sends a GET through it and gives the status line. */
async function interceptedTunnel(extraHeaders = ''): Promise<(path: string) => Promise<string | undefined>> {
  const { socket, head } = await openTunnel(proxy.url, `${PARTNER_HOST}:443`, extraHeaders);
  expect(head).toMatch(/^HTTP\/1\.1 200 /);
  const tls = tlsConnect({ socket, servername: PARTNER_HOST, ca: readFileSync(mitmCaFile, 'utf8') });
  await once(tls, 'secureConnect');
  tunnelsToClose.push(tls);
  return async (path: string) => {
    tls.write(`GET ${path} HTTP/1.1\r\nHost: ${PARTNER_HOST}\r\n\r\n`);
    const [chunk] = (await once(tls, 'data')) as [Buffer];
    return chunk.toString('latin1').split('\r\n')[0];
  };
}
const tunnelsToClose: Socket[] = [];

/** Opens a CONNECT tunnel; resolves with the socket once the proxy's answer head is in. */
async function openTunnel(
  proxyUrl: string,
  authority: string,
  extraHeaders = '',
): Promise<{ socket: Socket; head: string }> {
  const { port } = new URL(proxyUrl);
  const socket = connect(Number(port), '127.0.0.1');
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${extraHeaders}\r\n`);
  let head = '';
  while (!head.includes('\r\n\r\n')) {
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    head += chunk.toString('latin1');
  }
  return { socket, head };
}

/** Sends a bare CONNECT and returns the proxy's answer as text. */
async function rawConnect(proxyUrl: string, authority: string): Promise<string> {
  const { port } = new URL(proxyUrl);
  const socket = connect(Number(port), '127.0.0.1');
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  let text = '';
  for await (const chunk of socket) text += (chunk as Buffer).toString();
  return text;
}
