import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { createCaFiles } from '../../src/mitm/certificate-authority.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest } from '../helpers/raw-http.js';
import { withTimeout } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * Issue 19, findings 5, 7 and 8: connections that must be closed (half-open after an error
 * answer, a stalled interception handshake), connections a reload must judge again, and
 * refusals that must be seen (logged, counted) and throttled. Raw sockets throughout.
 */
const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'refusals-'));
const basic = (user: string) => `Basic ${Buffer.from(`${user}:pa55-word`).toString('base64')}`;
let tokenServer: TokenServer;
let partner: PartnerApi;
let echo: Server; // a host reached through a blind tunnel: echoes what it gets
let echoPort: number;
let caCert: string;
const proxies: RunningProxy[] = [];
const sockets: Socket[] = [];

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  echo = createServer((s) => s.pipe(s)).listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as AddressInfo).port;
  caCert = (await createCaFiles(dir)).certFile;
}, 30_000);

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});

afterAll(async () => {
  await partner.close();
  await tokenServer.stop();
  echo.close();
});

function doc(users = ['app-a', 'app-b'], allowCidrs = ['127.0.0.0/8']) {
  return {
    listen: '127.0.0.1:0',
    admin: { listen: '127.0.0.1:0' },
    limits: { headersTimeoutSeconds: 1, maxRequestBodyBytes: 1024 },
    inbound: { allowCidrs, proxyAuth: { users: users.map((name) => ({ name, password: 'pa55-word' })) } },
    mitm: { caCert, caKey: join(dir, 'ca-key.pem') },
    egress: { default: 'deny', allow: [`127.0.0.1:${echoPort}`], connectPorts: [echoPort] },
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        hosts: ['api.partner.example'],
        ca: pki.caFile,
        auth: {
          type: 'client_credentials',
          tokenUrl: tokenServer.tokenUrl,
          clientId: 'r-client',
          clientSecret: 'r-secret',
        },
      },
    ],
  };
}

async function proxyWith(d = doc()): Promise<{ proxy: RunningProxy; port: number }> {
  const proxy = await startProxy(d);
  proxies.push(proxy);
  return { proxy, port: Number(new URL(proxy.url).port) };
}

function open(port: number, allowHalfOpen = false): Socket {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen });
  socket.on('error', () => undefined);
  sockets.push(socket);
  return socket;
}

/** Writes `bytes` and reads one whole answer (Content-Length framed) off a kept-alive socket. */
function ask(socket: Socket, bytes: string): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve) => {
      let text = '';
      const onData = (chunk: Buffer) => {
        text += chunk.toString('latin1');
        const end = text.indexOf('\r\n\r\n');
        const length = /content-length: (\d+)/i.exec(text.slice(0, end))?.[1];
        if (end !== -1 && (length === undefined || text.length - end - 4 >= Number(length))) {
          socket.off('data', onData);
          resolve(text);
        }
      };
      socket.on('data', onData);
      socket.write(bytes);
    }),
    10_000,
    'an answer',
  );
}

describe('answered connections are closed (finding 5)', () => {
  it('destroys a connection answered 400 for a malformed request even when the client never closes it', async () => {
    const { port } = await proxyWith();
    const socket = open(port, true); // half-open allowed: this client never ends its side
    const answer = await ask(socket, 'GARBAGE\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    // The proxy's side must go away: a write to a destroyed socket is answered with a reset.
    const gone = new Promise<void>((resolve) => {
      socket.once('error', () => resolve());
      socket.once('close', () => resolve());
    });
    const writer = setInterval(() => socket.write('x'), 100);
    try {
      await withTimeout(gone, 15_000, 'the proxy closing the half-open connection');
    } finally {
      clearInterval(writer);
    }
  });

  it('closes an intercepted tunnel whose TLS handshake stalls after its first byte', async () => {
    const { port } = await proxyWith();
    const socket = open(port);
    const head = await ask(
      socket,
      `CONNECT api.partner.example:443 HTTP/1.1\r\nHost: api.partner.example:443\r\nProxy-Authorization: ${basic('app-a')}\r\n\r\n`,
    );
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    socket.write(Buffer.from([0x16])); // a TLS handshake record begins, and goes no further
    await withTimeout(once(socket, 'close'), 15_000, 'the proxy closing the stalled handshake');
  });
});

describe('a reload judges open connections again (finding 7)', () => {
  it('answers 403 on a keep-alive connection whose client address a reload removed from allowCidrs', async () => {
    const { proxy, port } = await proxyWith();
    const socket = open(port);
    expect(await ask(socket, 'GET /partner/before HTTP/1.1\r\nHost: p\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    await proxy.app.reload(buildConfig(doc(['app-a', 'app-b'], ['10.0.0.0/8']), { env: {} }));
    const after = await ask(socket, 'GET /partner/after HTTP/1.1\r\nHost: p\r\n\r\n');
    expect(after).toMatch(/^HTTP\/1\.1 403 /);
    expect(after).toContain('"error":"client_not_allowed"');
    expect(partner.seen.map((s) => s.path)).not.toContain('/after');
  });

  it('closes a blind tunnel whose proxy user a reload removed, and keeps one whose user remains', async () => {
    const { proxy, port } = await proxyWith();
    const tunnel = async (user: string) => {
      const socket = open(port);
      const head = await ask(
        socket,
        `CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\nProxy-Authorization: ${basic(user)}\r\n\r\n`,
      );
      expect(head).toMatch(/^HTTP\/1\.1 200 /);
      return socket;
    };
    const removed = await tunnel('app-a');
    const kept = await tunnel('app-b');
    const closed = once(removed, 'close');
    await proxy.app.reload(buildConfig(doc(['app-b']), { env: {} }));
    await withTimeout(closed, 10_000, 'the removed user’s tunnel closing');
    kept.write('still here');
    const [echoed] = (await withTimeout(once(kept, 'data'), 10_000, 'the echo')) as [Buffer];
    expect(echoed.toString()).toBe('still here');
    expect(
      proxy.logs.some((l) => l.includes('"event":"connections_closed_by_reload"') && l.includes('"closed":1')),
    ).toBe(true);
  });
});

/** token_proxy_refusals_total by reason, from a scrape. */
async function refusals(proxy: RunningProxy): Promise<Record<string, number>> {
  const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^token_proxy_refusals_total\{reason="([a-z_]+)"\} (\d+)$/gm))
    out[m[1] as string] = Number(m[2]);
  return out;
}

describe('refusals are logged, counted and throttled (finding 8)', () => {
  it('logs each refusal at info with its reason and counts it in token_proxy_refusals_total{reason}', async () => {
    const { proxy, port } = await proxyWith();
    const before = await refusals(proxy);
    expect(before).toMatchObject({ proxy_auth_required: 0, method_not_allowed: 0, bad_request: 0 });
    const answers = await Promise.all([
      rawRequest(port, 'GET http://api.partner.example/x HTTP/1.1\r\nHost: api.partner.example\r\n\r\n'),
      rawRequest(port, 'TRACE /partner/x HTTP/1.1\r\nHost: p\r\n\r\n'),
      rawRequest(port, 'GET /partner/..%2fadmin HTTP/1.1\r\nHost: p\r\n\r\n'),
      rawRequest(port, `POST /partner/x HTTP/1.1\r\nHost: p\r\nContent-Length: 2048\r\n\r\n${'b'.repeat(2048)}`),
      rawRequest(port, `GET /partner/x HTTP/1.1\r\nHost: p\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`),
      rawRequest(
        port,
        `GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nProxy-Authorization: ${basic('app-a')}\r\n\r\n`,
      ),
      rawRequest(port, 'GET /nowhere HTTP/1.1\r\nHost: p\r\n\r\n'),
    ]);
    expect(answers.map((a) => a.status)).toEqual([407, 405, 400, 413, 431, 403, 404]);
    const after = await refusals(proxy);
    const counted: Record<string, number> = Object.fromEntries(
      Object.entries(after)
        .map(([reason, n]): [string, number] => [reason, n - (before[reason] ?? 0)])
        .filter(([, n]) => n !== 0),
    );
    expect(counted).toEqual({
      proxy_auth_required: 1,
      method_not_allowed: 1,
      bad_request: 1,
      body_too_large: 1,
      headers_too_large: 1,
      egress_denied: 1,
      no_route: 1,
    });
    const logged = proxy.logs
      .filter((l) => l.includes('"event":"refused"'))
      .map((l) => JSON.parse(l) as { reason: string; level: number });
    expect(logged.map((l) => l.reason).sort()).toEqual(Object.keys(counted).sort());
    expect(new Set(logged.map((l) => l.level))).toEqual(new Set([30])); // info
    // Never the credentials or the path in a refusal line.
    expect(proxy.logs.filter((l) => l.includes('"event":"refused"')).join('\n')).not.toMatch(/pa55|YXBw|admin/);
  });

  it('answers 429 to a client address after 10 wrong proxy credentials in a minute, even with the right ones', async () => {
    const { proxy, port } = await proxyWith();
    const forward = (credentials: string) =>
      rawRequest(
        port,
        `GET http://api.partner.example/x HTTP/1.1\r\nHost: api.partner.example\r\nProxy-Authorization: ${credentials}\r\n\r\n`,
      );
    const wrong: number[] = [];
    for (let i = 0; i < 11; i++)
      wrong.push((await forward(`Basic ${Buffer.from(`app-a:guess${i}`).toString('base64')}`)).status);
    expect(wrong).toEqual(Array(11).fill(407));
    const right = await forward(basic('app-a'));
    expect(right.status).toBe(429);
    expect(Number(right.headers['retry-after'])).toBeGreaterThan(0);
    expect(JSON.parse(right.body)).toMatchObject({ error: 'too_many_auth_failures' });
    // CONNECT is held to the same count.
    const connect = await rawRequest(
      port,
      `CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${basic('app-a')}\r\n\r\n`,
    );
    expect(connect.status).toBe(429);
    expect(await refusals(proxy)).toMatchObject({ proxy_auth_required: 11, too_many_auth_failures: 2 });
    expect(partner.seen.filter((s) => s.path === '/x')).toEqual([]);
  });
});
