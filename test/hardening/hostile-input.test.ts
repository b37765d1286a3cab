import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { Agent } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest, type RawResponse } from '../helpers/raw-http.js';
import { withTimeout } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * Hostile input (issue 7): bytes no HTTP library would send, written on raw sockets, one socket
 * per case. Each must be refused with a clean 4xx, reach nothing behind the proxy, and leave the
 * proxy serving the next good request.
 */
const pki = testPki();
const MAX_BODY = 4096;
let tokenServer: TokenServer;
let partner: PartnerApi;
let proxy: RunningProxy;
let port: number;
const client = new Agent({ connections: 20 });

const GUARDED_RULE = 'egress: loopback and link-local addresses need an explicit allow entry';

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  const auth = {
    type: 'client_credentials',
    tokenUrl: tokenServer.tokenUrl,
    clientId: 'hostile-client',
    clientSecret: 'hostile-secret',
  };
  proxy = await startProxy({
    upstreams: [
      // The target has a base path: the reverse prefix must never climb out of it.
      {
        name: 'partner',
        target: `${partner.url}/api`,
        pathPrefix: '/partner',
        hosts: ['api.partner.example'],
        ca: pki.caFile,
        auth,
      },
      // Bodies above 1 KiB stream to the target at once: the body limit must still hold.
      {
        name: 'streaming',
        target: partner.url,
        pathPrefix: '/stream',
        ca: pki.caFile,
        retryBodyLimitBytes: 1024,
        auth,
      },
    ],
    egress: { default: 'allow', allow: [], connectPorts: [443] },
    limits: {
      maxRequestHeaderBytes: 16_384,
      maxRequestBodyBytes: MAX_BODY,
      headersTimeoutSeconds: 1,
      requestTimeoutSeconds: 3,
    },
  });
  port = Number(new URL(proxy.url).port);
  // A token in hand, so the requests below never wait on the token endpoint.
  expect((await good()).status).toBe(200);
});

afterAll(async () => {
  await proxy.close();
  await partner.close();
  await tokenServer.stop();
  await client.close();
});

beforeEach(() => {
  partner.seen.length = 0;
});

async function good(path = '/partner/ok'): Promise<{ status: number }> {
  const res = await client.request({ origin: proxy.url, path, method: 'GET' });
  await res.body.dump();
  return { status: res.statusCode };
}

/** The case was refused with the status, reached nothing behind the proxy, and the proxy still serves. */
async function expectRefused(res: RawResponse, status: number | readonly number[]): Promise<void> {
  const allowed = typeof status === 'number' ? [status] : status;
  expect(allowed, `status line of ${JSON.stringify(res.raw.slice(0, 200))}`).toContain(res.status);
  expect(partner.seen, 'the partner received a refused request').toHaveLength(0);
  expect((await good()).status).toBe(200);
  expect(partner.seen).toHaveLength(1);
}

const req = (lines: string[], body = '') => `${lines.join('\r\n')}\r\n\r\n${body}`;

describe('malformed requests are refused with 400 and the proxy keeps serving', () => {
  const cases: [string, string][] = [
    ['a garbage request line', 'GARBAGE\r\n\r\n'],
    ['an unknown HTTP version', req(['GET /partner/x HTTP/9.9', 'Host: p'])],
    ['white space inside the request target', req(['GET /partner/a b HTTP/1.1', 'Host: p'])],
    ['a control character inside the request target', req(['GET /partner/a\u0001b HTTP/1.1', 'Host: p'])],
    ['an invalid header name (space)', req(['GET /partner/x HTTP/1.1', 'Host: p', 'Bad Header: x'])],
    ['an invalid header name (parenthesis)', req(['GET /partner/x HTTP/1.1', 'Host: p', 'X(y): z'])],
    ['white space between a header name and the colon', req(['GET /partner/x HTTP/1.1', 'Host: p', 'X-A : z'])],
    ['a bare CR inside a header value', req(['GET /partner/x HTTP/1.1', 'Host: p', 'X-A: a\rInjected: b'])],
    ['a bare LF inside a header value', req(['GET /partner/x HTTP/1.1', 'Host: p', 'X-A: a\nInjected: b'])],
    ['a NUL byte inside a header value', req(['GET /partner/x HTTP/1.1', 'Host: p', 'X-A: a\u0000b'])],
    ['an HTTP/1.1 request without Host', req(['GET /partner/x HTTP/1.1'])],
  ];
  it.each(cases)('refuses %s', async (_name, bytes) => {
    const res = await rawRequest(port, bytes);
    await expectRefused(res, 400);
    expect(res.closed).toBe(true); // a connection whose framing is in doubt is never reused
  });

  it('refuses a duplicate Host header (RFC 9112 §3.2) in reverse and forward mode', async () => {
    const reverse = await rawRequest(port, req(['GET /partner/x HTTP/1.1', 'Host: p', 'Host: evil.example']));
    expect(JSON.parse(reverse.body)).toMatchObject({ error: 'bad_request', message: 'more than one Host header' });
    await expectRefused(reverse, 400);
    partner.seen.length = 0;
    const forward = await rawRequest(
      port,
      req(['GET http://api.partner.example/x HTTP/1.1', 'Host: api.partner.example', 'host: evil.example']),
    );
    await expectRefused(forward, 400);
  });
});

describe('request targets that hide or fake the real host', () => {
  it.each([
    ['userinfo before the host', 'http://user:pw@api.partner.example/x'],
    ['an upstream host as userinfo in front of another host', `http://api.partner.example@127.0.0.1:${9}/x`],
    ['a percent-encoded IPv4 host', 'http://%31%32%37.0.0.1/x'],
    ['a percent-encoded dot in the host', 'http://api%2epartner.example/x'],
    ['an encoded NUL after the host', 'http://api.partner.example%00.evil.example/x'],
    ['an unclosed IPv6 literal', 'http://[::1/x'],
    ['an invalid IPv6 literal', 'http://[::g]/x'],
    ['an IPv6 literal with a zone id', 'http://[fe80::1%25eth0]/x'],
    ['a port out of range', 'http://api.partner.example:65536/x'],
    ['a non-http scheme', 'ftp://api.partner.example/x'],
  ])('refuses %s with 400', async (_name, target) => {
    const res = await rawRequest(port, req([`GET ${target} HTTP/1.1`, 'Host: api.partner.example']));
    await expectRefused(res, 400);
    expect(JSON.parse(res.body)).toMatchObject({ error: 'bad_request' });
  });

  it('refuses a valid IPv6 literal of an egress-guarded address with 403 naming the rule', async () => {
    for (const host of ['[::1]', '[0:0:0:0:0:0:0:1]', '[::ffff:127.0.0.1]', '[::ffff:7f00:1]', '[fe80::1]']) {
      const res = await rawRequest(
        port,
        req([`GET http://${host}:${port}/partner/x HTTP/1.1`, `Host: ${host}:${port}`]),
      );
      expect(res.status, host).toBe(403);
      expect(res.headers['proxy-status']).toBe('token-proxy; error=destination_ip_prohibited');
      expect(JSON.parse(res.body), host).toMatchObject({ error: 'egress_denied', rule: GUARDED_RULE });
    }
    await expectRefused(
      await rawRequest(port, req([`GET http://[::1]:${port}/ HTTP/1.1`, `Host: [::1]:${port}`])),
      403,
    );
  });
});

describe('reverse-mode paths that would climb out of the prefix', () => {
  it.each([
    '/partner/../admin',
    '/partner/%2e%2e/admin',
    '/partner/%2E%2e',
    '/partner/.%2E/x',
    '/partner/a/../../x',
    '/partner/./x',
    '/partner/..?q=1',
    '/partner/..%2fadmin',
    '/partner/%2e%2e%2Fadmin',
    '/partner/..\\admin',
    '/partner/..#',
    '/partner/%2e%2e#/admin',
    '/partner/..;/admin',
  ])('refuses %s with 400', async (path) => {
    const res = await rawRequest(port, req([`GET ${path} HTTP/1.1`, 'Host: p']));
    await expectRefused(res, 400);
    expect(JSON.parse(res.body)).toMatchObject({
      error: 'bad_request',
      message: 'path segments "." and ".." are not allowed',
    });
  });
});

describe('oversized requests', () => {
  it('answers 431 to headers larger than limits.maxRequestHeaderBytes', async () => {
    const res = await rawRequest(port, req(['GET /partner/x HTTP/1.1', 'Host: p', `X-Big: ${'a'.repeat(20_000)}`]));
    await expectRefused(res, 431);
    expect(JSON.parse(res.body)).toMatchObject({ error: 'headers_too_large', message: 'request headers too large' });
  });

  it('answers 431 to many small headers adding up to more than the limit', async () => {
    const many = Array.from({ length: 400 }, (_, i) => `X-H${i}: ${'v'.repeat(40)}`);
    await expectRefused(await rawRequest(port, req(['GET /partner/x HTTP/1.1', 'Host: p', ...many])), 431);
  });

  it('answers 413 with connection: close to a Content-Length above limits.maxRequestBodyBytes', async () => {
    const body = 'x'.repeat(MAX_BODY + 1);
    const res = await rawRequest(
      port,
      req(['POST /partner/upload HTTP/1.1', 'Host: p', `Content-Length: ${body.length}`], body),
    );
    expect(res.headers['connection']).toBe('close');
    expect(JSON.parse(res.body)).toMatchObject({ error: 'body_too_large' });
    expect(res.closed).toBe(true);
    await expectRefused(res, 413);
  });

  it('answers 413 to a chunked body that grows past the limit', async () => {
    const chunk = 'y'.repeat(1000);
    const chunks = Array.from({ length: 6 }, () => `${chunk.length.toString(16)}\r\n${chunk}\r\n`).join('');
    const res = await rawRequest(
      port,
      req(['POST /partner/upload HTTP/1.1', 'Host: p', 'Transfer-Encoding: chunked'], `${chunks}0\r\n\r\n`),
    );
    expect(JSON.parse(res.body)).toMatchObject({ error: 'body_too_large' });
    await expectRefused(res, 413);
  });

  it('answers 413 to a chunked body past the limit even when bodies of its size stream to the target', async () => {
    const chunk = 'z'.repeat(1000);
    const chunks = Array.from({ length: 6 }, () => `${chunk.length.toString(16)}\r\n${chunk}\r\n`).join('');
    const res = await rawRequest(
      port,
      req(['POST /stream/upload HTTP/1.1', 'Host: p', 'Transfer-Encoding: chunked'], `${chunks}0\r\n\r\n`),
    );
    expect(res.status).toBe(413);
    expect(partner.seen.filter((s) => s.path === '/upload')).toHaveLength(0);
    await expectRefused(res, 413);
  });
});

describe('request smuggling patterns', () => {
  const smuggled = 'GET /partner/smuggled HTTP/1.1\r\nHost: p\r\n\r\n';
  it.each([
    [
      'both Content-Length and Transfer-Encoding',
      req(
        ['POST /partner/x HTTP/1.1', 'Host: p', 'Content-Length: 5', 'Transfer-Encoding: chunked'],
        `0\r\n\r\n${smuggled}`,
      ),
    ],
    [
      'Transfer-Encoding before Content-Length',
      req(
        ['POST /partner/x HTTP/1.1', 'Host: p', 'Transfer-Encoding: chunked', 'Content-Length: 46'],
        `0\r\n\r\n${smuggled}`,
      ),
    ],
    [
      'two different Content-Length values',
      req(['POST /partner/x HTTP/1.1', 'Host: p', 'Content-Length: 3', 'Content-Length: 48'], `abc${smuggled}`),
    ],
    [
      'obs-fold: a header line starting with a space',
      req(
        ['POST /partner/x HTTP/1.1', 'Host: p', 'Transfer-Encoding: identity', ' chunked', 'Content-Length: 3'],
        'abc',
      ),
    ],
    [
      'obs-fold: a header line starting with a tab',
      req(['GET /partner/x HTTP/1.1', 'Host: p', 'X-A: a', '\tcontinued']),
    ],
    [
      'Transfer-Encoding: chunked, identity',
      req(['POST /partner/x HTTP/1.1', 'Host: p', 'Transfer-Encoding: chunked, identity'], `0\r\n\r\n${smuggled}`),
    ],
    [
      'Transfer-Encoding given twice',
      req(
        ['POST /partner/x HTTP/1.1', 'Host: p', 'Transfer-Encoding: chunked', 'Transfer-Encoding: identity'],
        `0\r\n\r\n${smuggled}`,
      ),
    ],
    [
      'a Transfer-Encoding whose final coding is not chunked',
      req(['POST /partner/x HTTP/1.1', 'Host: p', 'Transfer-Encoding: xchunked'], `0\r\n\r\n${smuggled}`),
    ],
  ])('refuses %s with 400 and forwards nothing', async (_name, bytes) => {
    const res = await rawRequest(port, bytes);
    await expectRefused(res, 400);
    expect(res.raw).not.toContain('smuggled');
  });

  it('re-frames a body sent with Transfer-Encoding: identity, chunked (chunked last): the target sees exactly that body', async () => {
    const res = await rawRequest(
      port,
      req(
        ['POST /partner/echo HTTP/1.1', 'Host: p', 'Transfer-Encoding: identity, chunked', 'Connection: close'],
        '5\r\nhello\r\n0\r\n\r\n',
      ),
    );
    if (res.status === 400) {
      await expectRefused(res, 400); // refusing is as safe as re-framing
      return;
    }
    expect(res.status).toBe(200);
    expect(partner.seen).toHaveLength(1);
    expect(partner.seen[0]).toMatchObject({ path: '/api/echo', bodyBytes: 5 });
    expect(String(partner.seen[0]?.headers['transfer-encoding'] ?? '')).not.toMatch(/identity/);
  });
});

/** A raw client: sends `head` at once, then `dribble` one byte every 200 ms, until the proxy closes the socket. */
function slowClient(head: string, dribble: string) {
  const socket: Socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  let sent = 0;
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString('latin1')));
  if (head !== '') socket.write(head);
  const timer = setInterval(() => {
    if (socket.destroyed || !socket.writable || sent === dribble.length) return;
    socket.write(dribble.charAt(sent++));
  }, 200);
  return {
    connected: once(socket, 'connect'),
    /** When the proxy closed the socket, what it answered, and how many bytes of `dribble` had gone out. */
    closed: new Promise<{ at: number; answer: string; sent: number }>((resolve) => {
      socket.on('close', () => {
        clearInterval(timer);
        resolve({ at: performance.now(), answer, sent });
      });
    }),
  };
}

describe('slow clients (slowloris)', () => {
  it('cuts off 20 clients that send headers one byte every 200 ms, and serves others meanwhile', async () => {
    const text = `GET /partner/slow HTTP/1.1\r\nHost: p\r\nX-Slow: ${'s'.repeat(200)}\r\n\r\n`;
    const started = performance.now();
    const slow = Array.from({ length: 20 }, () => slowClient('', text));
    // Its headers come at once and its body slowly: only the request timeout (3 s) can cut it off.
    const slowBody = slowClient(
      'POST /partner/slow-body HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n',
      'b'.repeat(100),
    );
    await Promise.all([...slow, slowBody].map((c) => c.connected));
    // Another client is served while the slow ones hold their connections.
    for (let i = 0; i < 12; i++) expect((await good(`/partner/fast${i}`)).status).toBe(200);
    const servedAt = performance.now();
    const closed = await withTimeout(Promise.all(slow.map((c) => c.closed)), 10_000, 'the cut-off of the slow clients');
    const bodyCut = await withTimeout(slowBody.closed, 10_000, 'the cut-off of the slow body');
    for (const c of closed) {
      // headersTimeoutSeconds: 1, checked every second: not before 1 s ...
      expect(c.at - started).toBeGreaterThan(900);
      // ... after the other client was served, and before the request timeout cut anything off.
      expect(c.at).toBeGreaterThan(servedAt);
      expect(c.at).toBeLessThan(bodyCut.at);
      expect(c.sent).toBeLessThan(text.length); // mid-headers
      expect(c.answer).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n[\s\S]*"error":"request_timeout"/);
    }
    expect(partner.seen.filter((s) => s.path === '/api/slow')).toHaveLength(0);
    expect((await good()).status).toBe(200);
  });

  it('cuts off a client that sends its body too slowly (limits.requestTimeoutSeconds)', async () => {
    const started = performance.now();
    const slowBody = slowClient(
      'POST /partner/slow-body HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n',
      'b'.repeat(100),
    );
    const { at, answer, sent } = await withTimeout(slowBody.closed, 10_000, 'the cut-off');
    expect(at - started).toBeGreaterThan(2_500); // requestTimeoutSeconds: 3, checked every second
    expect(sent).toBeLessThan(100); // mid-body
    expect(answer).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(partner.seen).toHaveLength(0);
    expect((await good()).status).toBe(200);
  });
});

describe('after all of the above', () => {
  it('never hit its last line of defence (no internal_error in the logs)', () => {
    expect(proxy.logs.filter((l) => l.includes('"event":"internal_error"'))).toEqual([]);
  });
});
