import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest } from '../helpers/raw-http.js';
import { eventually, pollUntil, withTimeout } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * Issue 19, findings 3, 4 and 6: the request path under attack. Forward-mode requests confined
 * to the target's base path; slow readers, full queues and replay buffers bounded; the upgrade
 * relay as careful as the main path. Raw sockets throughout, against a real partner that
 * verifies the tokens it gets.
 */
const pki = testPki();
const BIG = 32 * 1024 * 1024; // larger than any socket buffer on loopback: a reader that stops is felt
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy;
let port: number;
let broken: Server; // a target that breaks its answer after the head (a failure no real server shows on demand)

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  broken = createServer((_req, res) => {
    res.writeHead(200, { 'content-length': '1000' });
    res.write('0123456789');
    // Once the head and the first bytes are out (a destroy at once could discard them unsent).
    setTimeout(() => res.socket?.destroy(), 100);
  }).listen(0, '127.0.0.1');
  await once(broken, 'listening');
  const auth = {
    type: 'client_credentials',
    tokenUrl: tokenServer.tokenUrl,
    clientId: 'path-client',
    clientSecret: 's3cret-path',
  };
  proxy = await startProxy({
    limits: { responseIdleTimeoutSeconds: 1, maxReplayBufferBytes: 1000 },
    upstreams: [
      {
        name: 'partner',
        target: `${partner.url}/api`,
        pathPrefix: '/partner',
        hosts: ['api.partner.example'],
        ca: pki.caFile,
        maxConnections: 1,
        maxQueuedRequests: 1,
        auth,
      },
      {
        name: 'broken',
        target: `http://127.0.0.1:${(broken.address() as AddressInfo).port}`,
        pathPrefix: '/broken',
        ca: pki.caFile, // for the token endpoint
        auth,
      },
    ],
  });
  port = Number(new URL(proxy.url).port);
}, 30_000);

afterAll(async () => {
  await proxy.close();
  await partner.close();
  await tokenServer.stop();
  broken.close();
});

beforeEach(() => {
  partner.script = undefined;
  partner.seen.length = 0;
  partner.revoked.clear();
});

const get = (target: string, extra = '') =>
  rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: api.partner.example\r\n${extra}\r\n`);

describe('forward mode is confined to the target base path (finding 3)', () => {
  it('sends GET http://api.partner.example/admin to the target under its base path /api', async () => {
    const res = await get('http://api.partner.example/admin');
    expect(res.status).toBe(200);
    expect(partner.seen.map((s) => s.path)).toEqual(['/api/admin']);
  });

  it.each(['/../admin', '/x/..%2F..%2Fadmin', '/%2e%2e/admin', '/x/..\\..\\admin', '/..;/admin'])(
    'refuses the forward-mode path %s with 400 and sends nothing',
    async (path) => {
      const res = await get(`http://api.partner.example${path}`);
      expect(res.status).toBe(400);
      expect(JSON.parse(res.body)).toMatchObject({ error: 'bad_request' });
      expect(partner.seen).toEqual([]);
    },
  );

  it('confines a request inside a plain-HTTP CONNECT tunnel the same way', async () => {
    const socket = connect(port, '127.0.0.1');
    socket.write('CONNECT api.partner.example:80 HTTP/1.1\r\nHost: api.partner.example:80\r\n\r\n');
    const text = await readUntil(
      socket,
      (t) => /\r\n\r\n[\s\S]*\r\n\r\n[\s\S]*"ok":true/.test(t),
      () => socket.write('GET /admin HTTP/1.1\r\nHost: api.partner.example\r\n\r\n'),
    );
    socket.destroy();
    expect(text).toMatch(/^HTTP\/1\.1 200 Connection Established/);
    expect(partner.seen.map((s) => s.path)).toEqual(['/api/admin']);
  });
});

describe('slow readers, full queues and replay buffers are bounded (finding 4)', () => {
  it('cuts off a client that stops reading and frees the pooled connection for the next request', async () => {
    partner.script = (req) => (req.path === '/api/big' ? { status: 200, body: Buffer.alloc(BIG, 0x61) } : undefined);
    const stalled = connect(port, '127.0.0.1');
    stalled.on('error', () => undefined);
    const stalledClosed = once(stalled, 'close');
    stalled.write('GET /partner/big HTTP/1.1\r\nHost: p\r\n\r\n');
    stalled.pause(); // reads nothing from here on
    await eventually(() => partner.seen.length === 1, { timeoutMs: 10_000, what: 'the big request at the partner' });
    // maxConnections is 1: this request needs the connection the stalled answer holds.
    const next = await withTimeout(
      rawRequest(port, 'GET /partner/after HTTP/1.1\r\nHost: p\r\n\r\n', { timeoutMs: 30_000 }),
      30_000,
      'the answer to the next request',
    );
    expect(next.status).toBe(200);
    expect(proxy.logs.some((l) => l.includes('"event":"response_idle_timeout"'))).toBe(true);
    stalled.resume(); // reads what was in flight, then the close
    await withTimeout(stalledClosed, 10_000, 'the close of the stalled connection');
    expect(proxy.logs.some((l) => l.includes('"event":"response_idle_timeout"'))).toBe(true);
    expect(partner.seen.map((s) => s.path)).toEqual(['/api/big', '/api/after']);
  });

  it('answers 503 with Retry-After and Proxy-Status at once when the upstream queue is full', async () => {
    await get('/partner/warm'); // the token is in hand: requests below go straight to the queue
    partner.script = (req) => (req.path === '/api/slow' ? { status: 200, body: 'slow', delayMs: 1_500 } : undefined);
    const answers = await Promise.all(
      [1, 2, 3].map(() => rawRequest(port, 'GET /partner/slow HTTP/1.1\r\nHost: p\r\n\r\n', { timeoutMs: 20_000 })),
    );
    const statuses = answers.map((a) => a.status).sort();
    expect(statuses).toEqual([200, 200, 503]);
    const full = answers.find((a) => a.status === 503);
    expect(full?.headers['retry-after']).toBe('1');
    expect(full?.headers['proxy-status']).toBe('token-proxy; error=connection_limit_reached');
    expect(JSON.parse(full?.body ?? '{}')).toMatchObject({ error: 'overloaded', upstream: 'partner' });
    // Nothing was left holding a place: the next request is served.
    expect((await get('/partner/later')).status).toBe(200);
    expect(partner.seen.filter((s) => s.path === '/api/slow')).toHaveLength(2);
  });

  it('streams a body past the process-wide replay budget once, without a replay; one within it is replayed', async () => {
    const first = await get('/partner/warm');
    expect(first.status).toBe(200);
    partner.revoked.add(tokenServer.issued.at(-1) as string);
    const post = (path: string, bytes: number) =>
      rawRequest(port, `POST ${path} HTTP/1.1\r\nHost: p\r\nContent-Length: ${bytes}\r\n\r\n${'b'.repeat(bytes)}`, {
        timeoutMs: 20_000,
      });
    // 1,500 bytes is within the upstream's replay limit (64 KiB) but over the budget (1,000 bytes).
    const over = await post('/partner/over-budget', 1_500);
    expect(over.status).toBe(401);
    expect(partner.seen.filter((s) => s.path === '/api/over-budget').map((s) => s.bodyBytes)).toEqual([1_500]);
    await eventually(() => tokenServer.issued.length >= 2, { timeoutMs: 10_000, what: 'a second token' });
    partner.revoked.add(tokenServer.issued.at(-1) as string);
    const within = await post('/partner/within-budget', 500);
    expect(within.status).toBe(200);
    expect(partner.seen.filter((s) => s.path === '/api/within-budget').map((s) => [s.status, s.bodyBytes])).toEqual([
      [401, 500],
      [200, 500],
    ]);
  });
});

describe('the upgrade relay behaves like the main path (finding 6)', () => {
  const h2cOffer =
    'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';

  it('relays a large answer to an ignored h2c offer whole: it resumes after back-pressure', async () => {
    partner.script = (req) => (req.path === '/api/big' ? { status: 200, body: Buffer.alloc(BIG, 0x61) } : undefined);
    const socket = connect(port, '127.0.0.1');
    socket.write(`GET /partner/big HTTP/1.1\r\nHost: p\r\n${h2cOffer}\r\n`);
    let bytes = 0;
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      if (head.includes('\r\n\r\n')) bytes += chunk.length;
      else {
        head += chunk.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end !== -1) bytes += Buffer.byteLength(head.slice(end + 4), 'latin1');
      }
    });
    await withTimeout(once(socket, 'close'), 60_000, 'the end of the answer');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    expect(bytes).toBe(BIG);
  });

  it('cuts the connection when the target breaks its answer after the head, never appending a 502', async () => {
    const res = await rawRequest(port, `GET /broken/x HTTP/1.1\r\nHost: p\r\n${h2cOffer}\r\n`, { timeoutMs: 10_000 });
    expect(res.status).toBe(200);
    expect(res.closed).toBe(true);
    expect(res.raw).not.toContain('502');
    expect(res.body).toBe('0123456789');
  });

  it('logs and counts an upgrade request like any other (access line, requests_total)', async () => {
    const res = await rawRequest(port, `GET /partner/counted HTTP/1.1\r\nHost: p\r\n${h2cOffer}\r\n`, {
      timeoutMs: 10_000,
    });
    expect(res.status).toBe(200);
    await eventually(
      () => proxy.logs.some((l) => l.includes('"event":"request"') && l.includes('"upstream":"partner"')),
      {
        timeoutMs: 10_000,
        what: 'the access line',
      },
    );
    const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(/token_proxy_requests_total\{upstream="partner",code="200"\} [1-9]/);
  });
});

describe('nothing is left held (finding 4)', () => {
  it('gives back every queue place and replay byte: the held-now gauges read 0 once the requests above are done', async () => {
    const read = async () => {
      const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
      return [
        ...text.matchAll(/^token_proxy_(upstream_requests_in_hand\{upstream="[^"]+"\}|replay_buffer_bytes) (\d+)$/gm),
      ].map((m) => `${m[1]} ${m[2]}`);
    };
    const settled = await pollUntil(read, (lines) => lines.every((l) => l.endsWith(' 0')), 10_000);
    expect(settled.sort()).toEqual([
      'replay_buffer_bytes 0',
      'upstream_requests_in_hand{upstream="_egress"} 0',
      'upstream_requests_in_hand{upstream="broken"} 0',
      'upstream_requests_in_hand{upstream="partner"} 0',
    ]);
  });
});

/** Reads from `socket` until `done(text)`; `onHead` runs once the first answer head is in. */
function readUntil(socket: Socket, done: (text: string) => boolean, onHead: () => void): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve) => {
      let text = '';
      let sent = false;
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString('latin1');
        if (!sent && text.includes('\r\n\r\n')) {
          sent = true;
          onHead();
        }
        if (done(text)) resolve(text);
      });
    }),
    10_000,
    'the answers through the tunnel',
  );
}
