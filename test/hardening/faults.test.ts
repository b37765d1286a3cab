/**
 * Issue 7, "Faults": each fault is made for real (sockets, child processes, signals) and the
 * proxy's answer is observed from the outside. Time is only spent to create a fault (a slow
 * server); everything else waits on events or on bounded polling of observable state.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Agent, request, type Dispatcher } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import type { Token } from '../../src/tokens/token.js';
import { MAX_TOKEN_LIFETIME_MS } from '../../src/tokens/token.js';
import { testPki } from '../helpers/certs.js';
import { nextToken, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startScriptedServer } from '../helpers/scripted-server.js';
import { FAST_BACKOFF, offsetClock, pollUntil, within } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const CLI = resolve('dist/cli.js');
const SECRET = 'faults-secret-5e0b91';
const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-faults-'));
/** The proxy's clock: real time plus an offset a test advances instead of sleeping. */
const clock = offsetClock();

let tokenServer: TokenServer;
let proxy: RunningProxy | undefined;
const client = new Agent({ connections: 128 });
const cleanups: (() => unknown)[] = []; // may return a promise: awaited

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface Target {
  readonly url: string;
  readonly server: Server;
  /** Bearer tokens presented, in arrival order ('' when none). */
  readonly tokens: string[];
  handler: Handler;
  hits: number;
  connections(): Promise<number>;
  close(): Promise<void>;
}

function bearer(req: IncomingMessage): string {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') === true ? h.slice(7) : '';
}

/** An echo answer: 200 with the path and the token seen. */
const echo: Handler = (req, res) => {
  const answer = () => {
    const body = JSON.stringify({ ok: true, path: req.url, token: bearer(req) });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  if (req.readableEnded) return answer();
  req.resume();
  req.once('end', answer);
};

/** A plain-HTTP target on loopback whose behaviour a test can swap, with a live connection count. */
async function startTarget(handler: Handler = echo): Promise<Target> {
  const sockets = new Set<Socket>();
  const t: Target = {
    url: '',
    server: createServer((req, res) => {
      t.hits += 1;
      t.tokens.push(bearer(req));
      t.handler(req, res);
    }),
    tokens: [],
    handler,
    hits: 0,
    connections: () =>
      new Promise<number>((ok, fail) => t.server.getConnections((err, n) => (err ? fail(err) : ok(n)))),
    close: () =>
      new Promise<void>((done) => {
        for (const s of sockets) s.destroy();
        t.server.close(() => done());
      }),
  };
  t.server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  t.server.listen(0, '127.0.0.1');
  await once(t.server, 'listening');
  Object.assign(t, { url: `http://127.0.0.1:${(t.server.address() as AddressInfo).port}` });
  cleanups.push(() => t.close());
  return t;
}

/**
 * The calls made while one request waited (tokenWaitTimeoutSeconds 1) follow FAST_BACKOFF: each
 * pause at least half of its step (20 ms doubling up to 200 ms, random() = 0.5 gives 3/4 of it),
 * so at most 10 calls fit into the second, and the pauses grow: no hot loop.
 */
function expectBackoff(times: readonly number[]): void {
  expect(times.length).toBeGreaterThanOrEqual(2); // a transient failure is retried ...
  expect(times.length).toBeLessThanOrEqual(10); // ... but at most 10 times in the 1 s wait
  times.slice(1).forEach((t, i) => {
    const step = Math.min(FAST_BACKOFF.maxMs, FAST_BACKOFF.baseMs * 2 ** i);
    expect(t - (times[i] as number)).toBeGreaterThanOrEqual(step * 0.75 - 2); // timers may fire a ms early
  });
}

function upstreamDoc(
  name: string,
  target: string,
  auth: Record<string, unknown> = {},
  extra: Record<string, unknown> = {},
) {
  return {
    name,
    target,
    pathPrefix: `/${name}`,
    ca: pki.caFile,
    tokenWaitTimeoutSeconds: 1,
    ...extra,
    auth: {
      type: 'client_credentials',
      tokenUrl: tokenServer.tokenUrl,
      clientId: `${name}-client`,
      clientSecret: SECRET,
      ...auth,
    },
  };
}

async function proxyWith(
  upstreams: Record<string, unknown>[],
  extra: Record<string, unknown> = {},
): Promise<RunningProxy> {
  proxy = await startProxy({ upstreams, ...extra }, { backoff: FAST_BACKOFF, clock });
  return proxy;
}

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
  json(): Record<string, unknown>;
}

async function call(
  base: string,
  path: string,
  init: { method?: string; body?: string | Buffer; dispatcher?: Dispatcher } = {},
): Promise<Answer> {
  const res = await (init.dispatcher ?? client).request({
    origin: base,
    path,
    method: init.method ?? 'GET',
    body: init.body ?? null,
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    json: () => JSON.parse(text) as Record<string, unknown>,
  };
}

const get = (path: string) => call((proxy as RunningProxy).url, path);

function logEvents(p: RunningProxy, event: string): Record<string, unknown>[] {
  return p.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['event'] === event);
}

/** `tokenUrl` of a scripted token endpoint answering with `body` (a JSON document) and status 200. */
function tokenJson(body: Record<string, unknown>): Handler {
  return (req, res) => {
    req.resume();
    const text = JSON.stringify({ token_type: 'Bearer', ...body });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
}

/* A token-proxy CLI process (`node dist/cli.js serve`), for signals and RSS. ---------------- */

interface CliProxy {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly url: string;
  readonly file: string;
  /** Parsed stdout JSON lines (pino). */
  readonly lines: Record<string, unknown>[];
  stderr(): string;
  /** Resolves with the first log line from index `from` on that matches; rejects after `ms`. */
  waitForLog(
    match: (line: Record<string, unknown>) => boolean,
    from: number,
    ms?: number,
  ): Promise<Record<string, unknown>>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

function writeConfig(file: string, doc: Record<string, unknown>): void {
  // JSON is YAML: the CLI reads it like any config file.
  writeFileSync(
    file,
    JSON.stringify({ listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, logLevel: 'info', ...doc }, null, 2),
  );
}

async function startCli(name: string, doc: Record<string, unknown>): Promise<CliProxy> {
  const file = join(dir, `${name}.yaml`);
  writeConfig(file, doc);
  const child = spawn(process.execPath, [CLI, 'serve', '--config', file], {
    env: { PATH: process.env['PATH'] ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  let stderr = '';
  let partial = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    const parts = partial.split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) {
      if (line.trim() === '') continue;
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ raw: line });
      }
    }
    for (const w of waiters) w();
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
    for (const w of waiters) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((done) => {
    child.once('exit', (code, signal) => {
      done({ code, signal, at: Date.now() });
      for (const w of waiters) w();
    });
  });
  const waitForLog: CliProxy['waitForLog'] = (match, from, ms = 8_000) =>
    new Promise((ok, fail) => {
      const check = () => {
        const found = lines.slice(from).find(match);
        if (found !== undefined) {
          waiters.delete(check);
          clearTimeout(timer);
          ok(found);
        } else if (child.exitCode !== null || child.signalCode !== null) {
          waiters.delete(check);
          clearTimeout(timer);
          fail(
            new Error(
              `token-proxy exited (${child.exitCode ?? child.signalCode}) before the expected log line:\n${stderr}`,
            ),
          );
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        fail(
          new Error(
            `no matching log line within ${ms} ms; stderr:\n${stderr}\nstdout:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`,
          ),
        );
      }, ms);
      waiters.add(check);
      check();
    });
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const listening = await waitForLog((l) => l['event'] === 'listening', 0);
  return {
    child,
    pid: child.pid as number,
    url: `http://${String(listening['proxy'])}`,
    file,
    lines,
    stderr: () => stderr,
    waitForLog,
    exited,
  };
}

function statusField(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** Connects a fresh TCP socket: 'connected' or the error code (ECONNREFUSED). */
function tryConnect(url: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((done) => {
    const s = connect(Number(port), hostname);
    s.once('connect', () => {
      s.destroy();
      done('connected');
    });
    s.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
  });
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
});

afterAll(async () => {
  await tokenServer.stop();
  await client.close();
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  clock.offsetMs = 0;
  tokenServer.lifetimeSeconds = 300;
  tokenServer.requests.length = 0;
  tokenServer.issued.length = 0;
  tokenServer.respondWith(undefined);
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
  for (const c of cleanups.splice(0).reverse()) await c();
});

/* ------------------------------------------------------------------------------------------ */
/* token endpoint                                                                              */
/* ------------------------------------------------------------------------------------------ */

describe('faults: the token endpoint', () => {
  it('waits for a slow token endpoint (answers after 1.5 s) when tokenWaitTimeoutSeconds allows it (3 s)', async () => {
    const target = await startTarget();
    let answeredAt = 0;
    const slow = await startScriptedServer((req, res) => {
      req.resume();
      setTimeout(() => {
        answeredAt = Date.now();
        tokenJson({ access_token: 'slow-token-1', expires_in: 300 })(req, res);
      }, 1_500);
    });
    cleanups.push(() => slow.close());
    await proxyWith([upstreamDoc('t', target.url, { tokenUrl: `${slow.url}/token` }, { tokenWaitTimeoutSeconds: 3 })]);
    const started = Date.now();
    const res = await get('/t/x');
    const took = Date.now() - started;
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ token: 'slow-token-1' });
    expect(took).toBeGreaterThanOrEqual(1_450); // it really waited for the slow answer ...
    // ... and was served by it (the wait limit would have answered 502), after it was sent.
    expect(answeredAt).toBeGreaterThan(0);
    expect(answeredAt).toBeLessThanOrEqual(started + took);
    expect(slow.hits).toBe(1); // one call: no retry stacked on top of a slow one
  });

  it('honours Retry-After: 1 on a 503 and then serves: the retry comes >= 1 s after the 503 (measured)', async () => {
    const target = await startTarget();
    const hitTimes: number[] = [];
    const flaky = await startScriptedServer((req, res) => {
      hitTimes.push(Date.now());
      if (hitTimes.length === 1) {
        req.resume();
        res.writeHead(503, { 'retry-after': '1', 'content-type': 'application/json' });
        res.end('{"error":"temporarily_unavailable"}');
        return;
      }
      tokenJson({ access_token: 'after-503', expires_in: 300 })(req, res);
    });
    cleanups.push(() => flaky.close());
    // The backoff alone would retry after ~15 ms: only Retry-After can make the gap a second.
    await proxyWith([upstreamDoc('t', target.url, { tokenUrl: `${flaky.url}/token` }, { tokenWaitTimeoutSeconds: 3 })]);
    const started = Date.now();
    const res = await get('/t/x');
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ token: 'after-503' });
    expect(hitTimes).toHaveLength(2);
    const gap = (hitTimes[1] as number) - (hitTimes[0] as number);
    expect(gap).toBeGreaterThanOrEqual(990);
    expect(Date.now() - started).toBeGreaterThanOrEqual(990);
    const failed = logEvents(proxy as RunningProxy, 'token_refresh_failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ reason: 'server_error', status: 503, retryInMs: 1_000 });
  });

  it('answers bad_response for a complete 200 whose JSON body is truncated ({"access_token":"abc), with bounded retries', async () => {
    const target = await startTarget();
    const times: number[] = [];
    const truncated = await startScriptedServer((req, res) => {
      times.push(Date.now());
      req.resume();
      const body = '{"access_token":"abc';
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    cleanups.push(() => truncated.close());
    await proxyWith([upstreamDoc('t', target.url, { tokenUrl: `${truncated.url}/token` })]);
    const res = await get('/t/x');
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ error: 'token_unavailable', upstream: 't', reason: 'bad_response' });
    expect(target.hits).toBe(0);
    expectBackoff(times);
  });

  it('answers 502 (reason network) for a 200 whose body is cut short of its content-length by a closed socket', async () => {
    const target = await startTarget();
    const times: number[] = [];
    const cut = await startScriptedServer((req, res) => {
      times.push(Date.now());
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 });
      res.write('{"access_token":"abc', () => res.socket?.destroy());
    });
    cleanups.push(() => cut.close());
    await proxyWith([upstreamDoc('t', target.url, { tokenUrl: `${cut.url}/token` })]);
    const res = await get('/t/x');
    expect(res.status).toBe(502);
    // The body never arrived whole: a transport failure, never a token made of the fragment.
    expect(res.json()).toMatchObject({ error: 'token_unavailable', reason: 'network' });
    expect(target.hits).toBe(0);
    expectBackoff(times);
  });

  for (const expiresIn of [0, -60]) {
    it(`refuses a token with expires_in ${expiresIn} (502 bad_response), never injects it, and retries with backoff only`, async () => {
      const target = await startTarget();
      const times: number[] = [];
      tokenServer.respondWith((res) => {
        times.push(Date.now());
        (res.body as Record<string, unknown>)['expires_in'] = expiresIn;
      });
      await proxyWith([upstreamDoc('t', target.url)]);
      const res = await get('/t/x');
      expect(res.status).toBe(502);
      expect(res.json()).toMatchObject({ error: 'token_unavailable', reason: 'bad_response' });
      expect(target.hits).toBe(0);
      expectBackoff(times);
      expect(tokenServer.requests).toHaveLength(times.length);
      expect((proxy as RunningProxy).app.tokens.get('t')?.status()).toMatchObject({
        state: 'failing',
        lastError: 'bad_response',
      });
    });
  }

  it('caps an absurd expires_in (10^12 s) at 24 h', async () => {
    const target = await startTarget();
    const huge = await startScriptedServer(tokenJson({ access_token: 'opaque-forever', expires_in: 1e12 }));
    cleanups.push(() => huge.close());
    await proxyWith([upstreamDoc('t', target.url, { tokenUrl: `${huge.url}/token` })]);
    const source = (proxy as RunningProxy).app.tokens.get('t');
    const obtained = new Promise<Token>((ok) => source?.once('token', ok));
    const before = clock.now();
    expect((await get('/t/x')).status).toBe(200);
    const token = await obtained;
    const after = clock.now();
    expect(token.value).toBe('opaque-forever');
    expect(token.expiresAt).toBeLessThanOrEqual(after + 24 * 3600 * 1000);
    // The expiry is kept on the whole second, rounded down (src/tokens/token.ts).
    expect(token.expiresAt).toBeGreaterThan(before + MAX_TOKEN_LIFETIME_MS - 1_000);
    expect(token.expiresAt % 1_000).toBe(0);
    expect(token.refreshAt).toBeLessThan(token.expiresAt);
    expect(source?.status()).toMatchObject({ state: 'valid' });
    expect([86_399, 86_400]).toContain(source?.status().expiresInSeconds);
  });

  /**
   * The partner rejects every token (as if each were revoked at once). 60 requests, one per
   * simulated second. Each request may cause at most one renewal (the replay after its 401).
   */
  async function unauthorizedForever() {
    const target = await startTarget((req, res) => {
      req.resume();
      res.writeHead(401, {
        'www-authenticate': 'Bearer error="invalid_token", error_description="revoked"',
        'content-type': 'application/json',
      });
      res.end('{"error":"invalid_token"}');
    });
    await proxyWith([upstreamDoc('t', target.url)]);
    const statuses: number[] = [];
    const callsAfter: number[] = [];
    for (let i = 0; i < 60; i++) {
      const res = await get(`/t/r${i}`);
      statuses.push(res.status);
      callsAfter.push(tokenServer.requests.length);
      clock.offsetMs += 1_000;
    }
    return { target, statuses, callsAfter, tokenCalls: tokenServer.requests.length };
  }

  it('a partner that rejects every token with 401: each request makes at most one renewal (<= 61 token calls for 60 requests)', async ({
    annotate,
  }) => {
    const { target, statuses, callsAfter, tokenCalls } = await unauthorizedForever();
    // The partner's own 401 reaches the client, after at most one replay per request.
    expect(statuses).toEqual(Array(60).fill(401));
    expect(target.hits).toBeLessThanOrEqual(120);
    const perRequest = callsAfter.map((n, i) => n - (i === 0 ? 0 : (callsAfter[i - 1] as number)));
    expect(perRequest[0]).toBeLessThanOrEqual(2); // the first fetch, plus the renewal after its 401
    expect(Math.max(...perRequest.slice(1))).toBeLessThanOrEqual(1);
    expect(tokenCalls).toBeLessThanOrEqual(61);
    // For the report: the actual number (61 before 401 renewals were limited at all).
    await annotate(
      `401 forever: ${tokenCalls} token calls for 60 requests over a simulated minute; target saw ${target.hits} attempts`,
    );
  });

  it('no hot loop: a partner that rejects every token causes a trickle of 401-triggered renewals (unauthorizedBackoff from 5 s)', async () => {
    const { statuses, tokenCalls } = await unauthorizedForever();
    expect(statuses.every((s) => s === 401 || s === 502)).toBe(true);
    // 60 simulated seconds: renewals at 0, 5, 15 and 35 s (pauses doubling from 5 s), plus the first fetch.
    // (Found by this test: every request used to renew, 61 token calls a minute for as long as
    // the partner refused.)
    expect(tokenCalls).toBe(5);
  });
});

/* ------------------------------------------------------------------------------------------ */
/* target                                                                                      */
/* ------------------------------------------------------------------------------------------ */

describe('faults: the target', () => {
  for (const framing of ['content-length', 'chunked'] as const) {
    it(`a connection reset mid-response (${framing}) reaches the client as an error, never as a complete response`, async () => {
      const target = await startTarget((req, res) => {
        req.resume();
        if (req.url !== '/cut') return echo(req, res);
        res.writeHead(200, framing === 'content-length' ? { 'content-length': 1000 } : {});
        res.write('0123456789', () => res.socket?.destroy());
      });
      await proxyWith([upstreamDoc('t', target.url)]);
      const res = await client.request({ origin: (proxy as RunningProxy).url, path: '/t/cut', method: 'GET' });
      expect(res.statusCode).toBe(200); // the headers were relayed before the cut
      const outcome = await res.body.arrayBuffer().then(
        (b) => `complete:${b.byteLength}`,
        (err: Error) => `error:${err.name}`,
      );
      expect(outcome).toMatch(/^error:/);
      expect(logEvents(proxy as RunningProxy, 'upstream_response_broken')).toHaveLength(1);
      expect((await get('/t/next')).status).toBe(200);
    });
  }

  it('answers 504 upstream_timeout when the headers come after 2 s with timeoutSeconds 0.5, frees the target socket, and serves on', async () => {
    let targetSawClose = false;
    let slowSocketClosed: Promise<unknown> | undefined;
    const target = await startTarget((req, res) => {
      req.resume();
      if (req.url !== '/slow') return echo(req, res);
      slowSocketClosed = once(req.socket, 'close');
      const timer = setTimeout(() => echo(req, res), 2_000);
      res.once('close', () => {
        clearTimeout(timer);
        targetSawClose = !res.writableFinished;
      });
    });
    await proxyWith([upstreamDoc('t', target.url, {}, { timeoutSeconds: 0.5 })]);
    await (proxy as RunningProxy).app.tokens.get('t')?.obtain();
    const started = Date.now();
    const res = await get('/t/slow');
    const took = Date.now() - started;
    expect(res.status).toBe(504);
    expect(res.json()).toMatchObject({ error: 'upstream_timeout', upstream: 't' });
    expect(res.headers['proxy-status']).toBe('token-proxy; error=connection_timeout');
    expect(took).toBeGreaterThanOrEqual(450);
    // The timed-out exchange's socket is closed at once, not left to answer into a pool slot later:
    // it closed before the target's answer (due 2 s after the request) was finished.
    expect(await within(slowSocketClosed, 5_000)).toBe('settled');
    expect(targetSawClose).toBe(true);
    expect(
      await pollUntil(
        () => target.connections(),
        (n) => n <= 1,
        2_000,
      ),
    ).toBeLessThanOrEqual(1);
    expect((await get('/t/fast')).status).toBe(200);
  });

  it('answers a clean 502 to 60 KB of response headers from the target, stays up, and serves the next request', async () => {
    const target = await startTarget((req, res) => {
      req.resume();
      if (req.url !== '/huge') return echo(req, res);
      for (let i = 0; i < 60; i++) res.setHeader(`x-big-${i}`, 'h'.repeat(1_000));
      res.writeHead(200, { 'content-length': 2 });
      res.end('ok');
    });
    await proxyWith([upstreamDoc('t', target.url)]);
    const res = await get('/t/huge');
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.json()).toMatchObject({
      error: 'upstream_bad_response',
      upstream: 't',
      message: 'upstream t sent response headers over the 16 KiB limit',
    });
    expect(res.headers['proxy-status']).toBe('token-proxy; error=http_protocol_error');
    expect(Object.keys(res.headers).some((h) => h.startsWith('x-big-'))).toBe(false);
    const next = await Promise.all(Array.from({ length: 5 }, (_, i) => get(`/t/after/${i}`)));
    expect(next.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
  });

  it('answers 502 upstream_bad_response to a response that is not HTTP, stays up, and serves the next request', async () => {
    const target = await startTarget((req, res) => {
      req.resume();
      if (req.url !== '/garbled') return echo(req, res);
      res.socket?.end('HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\nhello');
    });
    await proxyWith([upstreamDoc('t', target.url)]);
    const res = await get('/t/garbled');
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({
      error: 'upstream_bad_response',
      upstream: 't',
      message: 'upstream t sent a malformed response',
    });
    expect(res.headers['proxy-status']).toBe('token-proxy; error=http_protocol_error');
    expect((await get('/t/after')).status).toBe(200);
  });

  /*
   * undici's Pool opens a fresh (idle, reusable) connection right after an aborted request's socket
   * is destroyed (pool.stats then says connected 1, free 1, running 0). So "no leak" is checked as:
   * each aborted exchange's own target socket closes, and after many aborts the target holds at
   * most that one idle connection, not one per abort.
   */
  it('clients leaving after the headers of a slow streaming response (10 times): each target socket closes, none pile up, 20 more requests succeed', async () => {
    const streams: { closed: Promise<unknown>; res: ServerResponse }[] = [];
    const target = await startTarget((req, res) => {
      req.resume();
      if (req.url !== '/stream') return echo(req, res);
      streams.push({ closed: once(req.socket, 'close'), res });
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write('first chunk;');
      const timer = setInterval(() => res.write('more;'), 50);
      res.once('close', () => clearInterval(timer));
    });
    await proxyWith([upstreamDoc('t', target.url)]);
    await (proxy as RunningProxy).app.tokens.get('t')?.obtain(); // no target connection before the test
    expect(await target.connections()).toBe(0);
    const own = new Agent();
    cleanups.push(() => own.close());
    for (let i = 0; i < 10; i++) {
      const res = await own.request({ origin: (proxy as RunningProxy).url, path: '/t/stream', method: 'GET' });
      expect(res.statusCode).toBe(200);
      const first = (await res.body[Symbol.asyncIterator]().next()) as IteratorYieldResult<Buffer>;
      expect(first.value.toString()).toContain('first chunk;');
      res.body.destroy(); // the client goes away mid-response
      const stream = streams[i];
      expect(await within(stream?.closed, 2_000)).toBe('settled'); // the proxy closed its upstream socket
      expect(stream?.res.writableFinished).toBe(false);
    }
    expect(streams).toHaveLength(10);
    expect(
      await pollUntil(
        () => target.connections(),
        (n) => n <= 1,
        2_000,
      ),
    ).toBeLessThanOrEqual(1);
    const more = await Promise.all(Array.from({ length: 20 }, (_, i) => get(`/t/more/${i}`)));
    expect(more.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(logEvents(proxy as RunningProxy, 'upstream_response_broken')).toHaveLength(10);
  });

  it('a slow upload that outlasts its token: once the body is read for replay, it goes out with a usable token, not the expired one picked at the start', async () => {
    const target = await startTarget();
    await proxyWith([upstreamDoc('t', target.url)]);
    const p = proxy as RunningProxy;
    const first = (await p.app.tokens.get('t')?.obtain())?.value;
    const { port } = new URL(p.url);
    const socket = connect(Number(port), '127.0.0.1');
    cleanups.push(() => void socket.destroy());
    await once(socket, 'connect');
    socket.write(`POST /t/upload HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 10\r\n\r\nhalf-`);
    // The request has its token once the cache was asked (the counter moves as it is).
    const hits = async () =>
      (await (await request(`${p.adminUrl}/metrics`)).body.text()).includes(
        'token_proxy_token_cache_hits_total{upstream="t",tier="memory"} 1',
      );
    expect(await pollUntil(hits, (seen) => seen, 2_000)).toBe(true);
    // 280 s pass while the client types: past the token's use-by moment (300 s less 30 s of skew
    // margin), not past the expiry of the token server's next token (made on real time).
    clock.offsetMs = 280_000;
    socket.write('sent!');
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    await pollUntil(
      () => answer,
      (text) => text.includes('"ok":true'),
      5_000,
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(target.tokens).toHaveLength(1);
    expect(target.tokens[0]).not.toBe(first); // a new token, fetched for this request
    expect(tokenServer.requests).toHaveLength(2);
  });

  it('a client leaving while uploading a streamed body: the target sees the request aborted, its socket closes, and 20 more requests succeed', async () => {
    let firstBytes!: () => void;
    const bodyArrived = new Promise<void>((ok) => (firstBytes = ok));
    let received = 0;
    let ended!: (completed: boolean) => void;
    const uploadEnded = new Promise<boolean>((ok) => (ended = ok));
    let socketClosed: Promise<unknown> | undefined;
    const target = await startTarget((req, res) => {
      if (req.url !== '/upload') return echo(req, res);
      socketClosed = new Promise((closed) => req.socket.once('close', closed)); // once() would reject on the socket's parse error
      req.on('data', (c: Buffer) => {
        received += c.length;
        firstBytes();
      });
      req.once('end', () => {
        ended(true);
        res.end('whole');
      });
      req.once('close', () => ended(req.complete));
    });
    await proxyWith([upstreamDoc('t', target.url, {}, { retryBodyLimitBytes: 1_024 })]);
    await (proxy as RunningProxy).app.tokens.get('t')?.obtain();
    const { port } = new URL((proxy as RunningProxy).url);
    const socket = connect(Number(port), '127.0.0.1');
    await once(socket, 'connect');
    socket.on('error', () => undefined);
    socket.write(
      `POST /t/upload HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n`,
    );
    socket.write(Buffer.alloc(64 * 1024, 7));
    await bodyArrived; // the upload is streaming through to the target
    socket.destroy(); // the client goes away with 1 MB announced and 64 KiB sent
    expect(await within(uploadEnded, 2_000)).toBe('settled');
    expect(await uploadEnded).toBe(false); // the target saw an incomplete request, not a cut body passed off as whole
    expect(received).toBeLessThanOrEqual(64 * 1024);
    expect(await within(socketClosed, 2_000)).toBe('settled');
    expect(
      await pollUntil(
        () => target.connections(),
        (n) => n <= 1,
        2_000,
      ),
    ).toBeLessThanOrEqual(1);
    // Counted and logged as 499 (client closed request), like nginx, not left out.
    const left = () => logEvents(proxy as RunningProxy, 'request').filter((l) => l['status'] === 499);
    expect(
      await pollUntil(
        () => left().length,
        (n) => n === 1,
        2_000,
      ),
    ).toBe(1);
    const metrics = await (await request(`${(proxy as RunningProxy).adminUrl}/metrics`)).body.text();
    expect(metrics).toContain('token_proxy_requests_total{upstream="t",code="499"} 1');
    const more = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        call((proxy as RunningProxy).url, `/t/more/${i}`, { method: 'POST', body: `b${i}` }),
      ),
    );
    expect(more.map((r) => r.status)).toEqual(Array(20).fill(200));
  });

  it('streams 200 MiB to a client through a CLI proxy process whose RSS grows by less than 100 MB', async ({
    annotate,
  }) => {
    const TOTAL = 200 * 1024 * 1024;
    const piece = Buffer.alloc(64 * 1024, 0x5a);
    let sent = 0;
    const target = await startTarget((req, res) => {
      req.resume();
      if (req.url !== '/big') return echo(req, res);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': TOTAL });
      const pump = () => {
        while (sent < TOTAL) {
          sent += piece.length;
          if (!res.write(piece)) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
    });
    const cli = await startCli('stream', { upstreams: [upstreamDoc('t', target.url)] });
    expect((await call(cli.url, '/t/warm')).status).toBe(200); // token and pools in place
    const rssBefore = statusField(cli.pid, 'VmRSS');
    let rssMax = rssBefore;
    const sampler = setInterval(() => {
      rssMax = Math.max(rssMax, statusField(cli.pid, 'VmRSS'));
    }, 100);
    const started = Date.now();
    const res = await client.request({ origin: cli.url, path: '/t/big', method: 'GET' });
    let received = 0;
    let sentAtFirstByte = -1;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      if (received === 0) sentAtFirstByte = sent;
      received += chunk.length;
    }
    clearInterval(sampler);
    const seconds = (Date.now() - started) / 1000;
    const peak = statusField(cli.pid, 'VmHWM'); // the kernel's high-water mark: catches spikes between samples
    expect(res.statusCode).toBe(200);
    expect(received).toBe(TOTAL);
    expect(sentAtFirstByte).toBeGreaterThan(0);
    expect(sentAtFirstByte).toBeLessThan(TOTAL / 4); // streamed: the client had bytes long before the target was done
    await annotate(
      `200 MiB in ${seconds.toFixed(2)} s (${(TOTAL / 1048576 / seconds).toFixed(0)} MiB/s); proxy RSS before ${(rssBefore / 1048576).toFixed(1)} MiB, sampled max ${(rssMax / 1048576).toFixed(1)} MiB, VmHWM ${(peak / 1048576).toFixed(1)} MiB`,
    );
    expect(peak - rssBefore).toBeLessThan(100 * 1000 * 1000);
  });
});

/* ------------------------------------------------------------------------------------------ */
/* restart and shutdown                                                                        */
/* ------------------------------------------------------------------------------------------ */

describe('faults: SIGTERM under load', () => {
  it('finishes all 50 in-flight requests with 200, refuses new connections, and exits 0 within shutdownTimeoutSeconds', async ({
    annotate,
  }) => {
    const LOAD = 50;
    let arrivedAll!: () => void;
    const allArrived = new Promise<void>((ok) => (arrivedAll = ok));
    let slowArrivals = 0;
    const target = await startTarget((req, res) => {
      req.resume();
      if (!req.url?.startsWith('/slow/')) return echo(req, res);
      slowArrivals += 1;
      if (slowArrivals === LOAD) arrivedAll();
      setTimeout(() => echo(req, res), 500);
    });
    const cli = await startCli('sigterm', { shutdownTimeoutSeconds: 5, upstreams: [upstreamDoc('t', target.url)] });
    expect((await call(cli.url, '/t/warm')).status).toBe(200);
    const load = new Agent({ connections: LOAD + 10 });
    cleanups.push(() => load.close());
    const inFlight = Array.from({ length: LOAD }, (_, i) =>
      call(cli.url, `/t/slow/${i}`, { dispatcher: load }).then(
        (r) => ({ status: r.status, path: r.status === 200 ? String(r.json()['path']) : r.text }),
        (err: Error) => ({ status: 0, path: err.message }),
      ),
    );
    await allArrived; // every request was accepted and is at the target when the signal comes
    const signalled = Date.now();
    cli.child.kill('SIGTERM');
    await pollUntil(
      () => cli.stderr(),
      (s) => s.includes('SIGTERM received'),
      3_000,
    );
    expect(cli.stderr()).toContain('SIGTERM received, draining');
    // The listener is closed right after that line: a new connection is refused.
    expect(
      await pollUntil(
        () => tryConnect(cli.url),
        (r) => r === 'ECONNREFUSED',
        1_000,
      ),
    ).toBe('ECONNREFUSED');
    const results = await Promise.all(inFlight);
    expect(results.map((r) => r.status)).toEqual(Array(LOAD).fill(200));
    expect(new Set(results.map((r) => r.path))).toEqual(new Set(Array.from({ length: LOAD }, (_, i) => `/slow/${i}`)));
    const exit = await exitWithin(cli, 5_000 + 1_000);
    expect(exit.code).toBe(0);
    await annotate(`SIGTERM with ${LOAD} in flight: exit 0 after ${exit.at - signalled} ms`);
    // Drained, not cut off at shutdownTimeoutSeconds (5 s): that would have been logged.
    expect(cli.lines.some((l) => l['event'] === 'shutdown_timeout')).toBe(false);
  });
});

async function exitWithin(cli: CliProxy, ms: number) {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error(`token-proxy did not exit within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([cli.exited, limit]);
  } finally {
    clearTimeout(timer);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* config reload                                                                               */
/* ------------------------------------------------------------------------------------------ */

function basicFor(clientId: string, secret: string): string {
  const enc = (s: string) => encodeURIComponent(s).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(clientId)}:${enc(secret)}`).toString('base64')}`;
}

describe('faults: config reload', () => {
  it('SIGHUP: rejects a bad config with its problems logged, applies a good one without restart, keeps unchanged tokens, renews changed credentials', async () => {
    const alpha = await startTarget();
    const beta = await startTarget();
    const one = { upstreams: [upstreamDoc('alpha', alpha.url)] };
    const cli = await startCli('reload', one);
    const pid = cli.pid;
    expect((await call(cli.url, '/alpha/1')).status).toBe(200);
    expect(tokenServer.requests).toHaveLength(1);
    const alphaToken = alpha.tokens[0] as string;
    expect(alphaToken).not.toBe('');

    // 1. Not YAML at all.
    let from = cli.lines.length;
    writeFileSync(cli.file, 'upstreams: [ {\n');
    cli.child.kill('SIGHUP');
    const notYaml = await cli.waitForLog((l) => l['event'] === 'config_reload_rejected', from);
    expect(notYaml['level']).toBe(50);
    expect(Array.isArray(notYaml['problems'])).toBe(true);
    expect((notYaml['problems'] as string[]).length).toBeGreaterThan(0);
    expect((notYaml['problems'] as string[])[0]).toContain(cli.file);
    expect((await call(cli.url, '/alpha/2')).status).toBe(200); // the old config keeps serving

    // 2. YAML, but not a valid config: every problem, with its path.
    from = cli.lines.length;
    writeConfig(cli.file, {
      upstreams: [{ ...upstreamDoc('alpha', alpha.url), name: 'bad name', timeoutSeconds: -1 }],
    });
    cli.child.kill('SIGHUP');
    const invalid = await cli.waitForLog((l) => l['event'] === 'config_reload_rejected', from);
    const problems = invalid['problems'] as string[];
    expect(problems.some((p) => p.startsWith('upstreams[0].name:'))).toBe(true);
    expect(problems.some((p) => p.startsWith('upstreams[0].timeoutSeconds:'))).toBe(true);
    expect(JSON.stringify(invalid)).not.toContain(SECRET);
    expect(cli.lines.slice(from).some((l) => l['event'] === 'config_reloaded')).toBe(false);
    const still = await call(cli.url, '/alpha/3');
    expect(still.status).toBe(200);
    expect(still.json()).toMatchObject({ token: alphaToken });
    expect((await call(cli.url, '/beta/1')).status).toBe(404); // nothing of the rejected config applied

    // 3. A good change: a second upstream, live without a restart; alpha keeps its token.
    from = cli.lines.length;
    writeConfig(cli.file, { upstreams: [upstreamDoc('alpha', alpha.url), upstreamDoc('beta', beta.url)] });
    cli.child.kill('SIGHUP');
    const reloaded = await cli.waitForLog((l) => l['event'] === 'config_reloaded', from);
    expect(reloaded['upstreams']).toEqual(['alpha', 'beta']);
    expect(reloaded['warnings']).toEqual([]);
    const viaBeta = await call(cli.url, '/beta/1');
    expect(viaBeta.status).toBe(200);
    expect(beta.hits).toBe(1);
    const viaAlpha = await call(cli.url, '/alpha/4');
    expect(viaAlpha.json()).toMatchObject({ token: alphaToken });
    expect(tokenServer.requests).toHaveLength(2); // alpha: none after the reload; beta: its first
    expect(tokenServer.requests[1]?.authorization).toBe(basicFor('beta-client', SECRET));

    // 4. Changed credentials: a new token for alpha, fetched with the new secret.
    from = cli.lines.length;
    const NEW_SECRET = `${SECRET}-rotated`;
    writeConfig(cli.file, {
      upstreams: [upstreamDoc('alpha', alpha.url, { clientSecret: NEW_SECRET }), upstreamDoc('beta', beta.url)],
    });
    cli.child.kill('SIGHUP');
    await cli.waitForLog((l) => l['event'] === 'config_reloaded', from);
    const rotated = await call(cli.url, '/alpha/5');
    expect(rotated.status).toBe(200);
    expect(tokenServer.requests).toHaveLength(3);
    expect(tokenServer.requests[2]?.authorization).toBe(basicFor('alpha-client', NEW_SECRET));
    expect(rotated.json()['token']).not.toBe(alphaToken);
    expect(rotated.json()['token']).toBe(tokenServer.issued[2]);
    expect((await call(cli.url, '/beta/2')).json()).toMatchObject({ token: beta.tokens[0] }); // beta unchanged: kept

    expect(cli.child.pid).toBe(pid);
    expect(cli.child.exitCode).toBeNull(); // never restarted
    expect(cli.lines.map((l) => JSON.stringify(l)).join('\n') + cli.stderr()).not.toContain(SECRET);
  });

  /** A config document for app.reload(): the same listeners as startProxy uses. */
  function configOf(upstreams: Record<string, unknown>[]) {
    return buildConfig(
      { listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, logLevel: 'debug', upstreams },
      { env: {} },
    );
  }

  it('app.reload() while a refresh ahead retries a failing token endpoint: its next attempt is made with the new configuration, and succeeds', async () => {
    const alpha = await startTarget();
    const p = await proxyWith([upstreamDoc('alpha', alpha.url)]);
    expect((await get('/alpha/1')).status).toBe(200);
    let failing = true;
    let attempts = 0;
    tokenServer.respondWith((res) => {
      attempts += 1;
      if (!failing) return;
      res.statusCode = 503;
      res.body = { error: 'temporarily_unavailable' };
    });
    clock.offsetMs = 200_000; // inside the refresh window (the last 150 s), still usable (up to 270 s)
    expect((await get('/alpha/2')).json()).toMatchObject({ token: alpha.tokens[0] }); // served; a refresh starts behind it
    expect(
      await pollUntil(
        () => attempts,
        (n) => n >= 2,
        2_000,
      ),
    ).toBeGreaterThanOrEqual(2); // and is retrying
    // The old generation closes its token endpoint connections once its requests are done.
    expect(await p.app.reload(configOf([upstreamDoc('alpha', alpha.url)]))).toEqual([]);
    const renewed = nextToken(p, 'alpha');
    failing = false;
    const token = await renewed;
    expect(token.value).not.toBe(alpha.tokens[0]);
    expect((await get('/alpha/3')).json()).toMatchObject({ token: token.value });
  });

  it('app.reload(): an unchanged upstream keeps its token (also across non-auth changes); a changed secret gets a new one', async () => {
    const alpha = await startTarget();
    const p = await proxyWith([upstreamDoc('alpha', alpha.url)]);
    expect((await get('/alpha/1')).status).toBe(200);
    const first = alpha.tokens[0] as string;
    const before = p.app.tokens.get('alpha');

    expect(await p.app.reload(configOf([upstreamDoc('alpha', alpha.url)]))).toEqual([]);
    expect(p.app.tokens.get('alpha')).toBe(before); // the key's provider outlives the reload ...
    expect((await get('/alpha/2')).json()).toMatchObject({ token: first }); // ... with the same token
    await p.app.reload(configOf([upstreamDoc('alpha', alpha.url, {}, { timeoutSeconds: 7, retryBodyLimitBytes: 10 })]));
    expect((await get('/alpha/3')).json()).toMatchObject({ token: first });
    expect(tokenServer.requests).toHaveLength(1);

    await p.app.reload(configOf([upstreamDoc('alpha', alpha.url, { clientSecret: 'another-secret' })]));
    const renewed = await get('/alpha/4');
    expect(renewed.status).toBe(200);
    expect(tokenServer.requests).toHaveLength(2);
    expect(tokenServer.requests[1]?.authorization).toBe(basicFor('alpha-client', 'another-secret'));
    expect(renewed.json()['token']).not.toBe(first);
    // And back: the first credentials' token is still cached (same shape, same key), not fetched again.
    await p.app.reload(configOf([upstreamDoc('alpha', alpha.url)]));
    expect((await get('/alpha/5')).json()).toMatchObject({ token: first });
    expect(tokenServer.requests).toHaveLength(2);
  });

  it('app.reload() 5 times under a steady stream of requests (GET and POST, two upstreams): every request answers 200', async ({
    annotate,
  }) => {
    const alpha = await startTarget((req, res) => setTimeout(() => echo(req, res), 5));
    const beta = await startTarget();
    const p = await proxyWith([upstreamDoc('alpha', alpha.url), upstreamDoc('beta', beta.url)]);
    expect((await get('/alpha/warm')).status).toBe(200);
    expect((await get('/beta/warm')).status).toBe(200);
    const configs = [
      [upstreamDoc('alpha', alpha.url, {}, { timeoutSeconds: 9 }), upstreamDoc('beta', beta.url)],
      [upstreamDoc('alpha', alpha.url), upstreamDoc('beta', beta.url), upstreamDoc('gamma', beta.url)],
      [upstreamDoc('alpha', alpha.url, { clientSecret: 'rotated-secret-1' }), upstreamDoc('beta', beta.url)],
      [
        upstreamDoc('alpha', alpha.url, { clientSecret: 'rotated-secret-1' }),
        upstreamDoc('beta', beta.url, {}, { retryBodyLimitBytes: 0 }),
      ],
      [upstreamDoc('alpha', alpha.url), upstreamDoc('beta', beta.url)],
    ];
    let done = 0;
    const doneBy = { alpha: 0, beta: 0 };
    let stop = false;
    const failures: string[] = [];
    const waiters: { at: { alpha: number; beta: number }; resolve: () => void }[] = [];
    const worker = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const upstream = (w + i) % 2 === 0 ? ('alpha' as const) : ('beta' as const);
        const post = i % 3 === 0;
        const r = await call(
          p.url,
          `/${upstream}/w${w}/${i}`,
          post ? { method: 'POST', body: Buffer.alloc(2_048 + i, 1) } : {},
        ).catch((err: Error) => ({ status: 0, text: err.message }));
        if (r.status !== 200) failures.push(`${upstream} ${post ? 'POST' : 'GET'} -> ${r.status} ${r.text}`);
        done += 1;
        doneBy[upstream] += 1;
        for (const x of waiters.splice(0))
          if (doneBy.alpha >= x.at.alpha && doneBy.beta >= x.at.beta) x.resolve();
          else waiters.push(x);
      }
    };
    /**
     * Resolves once `n` more requests of each upstream have completed: traffic really flows
     * between reloads, and a token fetched after a credential change is in hand before the next
     * reload (a request still waiting for one across a reload is the test below).
     */
    const more = (n: number) =>
      new Promise<void>((ok) => waiters.push({ at: { alpha: doneBy.alpha + n, beta: doneBy.beta + n }, resolve: ok }));
    const workers = Array.from({ length: 8 }, (_, w) => worker(w));
    for (const next of configs) {
      await more(10);
      await p.app.reload(configOf(next));
    }
    await more(10);
    stop = true;
    await Promise.all(workers);
    expect(failures).toEqual([]);
    expect(done).toBeGreaterThanOrEqual(120);
    expect(logEvents(p, 'config_reloaded')).toHaveLength(5);
    await annotate(`${done} requests across 5 reloads, ${failures.length} failed`);
  });

  it('a request waiting for its token while the config is reloaded still gets a 200 (the old pools close only after it)', async () => {
    const target = await startTarget();
    let release!: () => void;
    const released = new Promise<void>((ok) => (release = ok));
    let asked!: () => void;
    const tokenAsked = new Promise<void>((ok) => (asked = ok));
    const slowTokens = await startScriptedServer((req, res) => {
      asked();
      void released.then(() => tokenJson({ access_token: 'held-token', expires_in: 300 })(req, res));
    });
    cleanups.push(() => slowTokens.close());
    const doc = upstreamDoc('t', target.url, { tokenUrl: `${slowTokens.url}/token` }, { tokenWaitTimeoutSeconds: 5 });
    const p = await proxyWith([doc]);
    const pending = get('/t/during-reload');
    await tokenAsked; // the request has been routed and waits for its token
    // 't' itself is unchanged. reload() resolves once the old generation's dispatchers have
    // closed, which waits for the token call in flight: so release it before awaiting.
    const reloading = p.app.reload(configOf([doc, upstreamDoc('other', target.url)]));
    release();
    await reloading;
    const res = await pending;
    expect({ status: res.status, body: res.status === 200 ? 'ok' : res.text }).toEqual({ status: 200, body: 'ok' });
    expect(target.tokens).toContain('held-token');
  });

  it('a request still uploading its (replayable) body when the config is reloaded still gets a 200', async () => {
    const target = await startTarget();
    const p = await proxyWith([upstreamDoc('t', target.url)]);
    expect((await get('/t/warm')).status).toBe(200);
    /** Every routed request reads the token cache once, before it reads its body. */
    const hits = async () => {
      const metric = await p.app.registry.getSingleMetric('token_proxy_token_cache_hits_total')?.get();
      return metric?.values.reduce((sum, v) => sum + v.value, 0) ?? 0;
    };
    const before = await hits();
    const { port } = new URL(p.url);
    const socket = connect(Number(port), '127.0.0.1');
    await once(socket, 'connect');
    let reply = '';
    socket.on('data', (c: Buffer) => (reply += c.toString('latin1')));
    socket.on('error', () => undefined);
    socket.write(
      `POST /t/upload HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n01234`,
    );
    // Routed with the old config, token in hand, waiting for the rest of its body.
    expect(await pollUntil(hits, (n) => n > before, 3_000)).toBe(before + 1);
    // reload() may wait for this request before closing the old pools: send the rest meanwhile.
    const reloading = p.app.reload(configOf([upstreamDoc('t', target.url), upstreamDoc('other', target.url)]));
    socket.write('56789');
    await once(socket, 'close');
    await reloading;
    expect(reply.split('\r\n')[0], reply).toBe('HTTP/1.1 200 OK');
    expect(reply).toContain('"path":"/upload"');
    expect(target.hits).toBe(2);
  });

  it('a client that sends Expect: 100-continue (curl does, for uploads over 1 MiB) gets its request forwarded', async () => {
    let bodyAtTarget = '';
    const target = await startTarget((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        bodyAtTarget = body;
        res.end('got it');
      });
    });
    const p = await proxyWith([upstreamDoc('t', target.url)]);
    await p.app.tokens.get('t')?.obtain();
    const { port } = new URL(p.url);
    const socket = connect(Number(port), '127.0.0.1');
    await once(socket, 'connect');
    let reply = '';
    socket.on('data', (c: Buffer) => (reply += c.toString('latin1')));
    socket.on('error', () => undefined);
    socket.write(
      `PUT /t/file HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`,
    );
    expect(
      await pollUntil(
        () => reply,
        (r) => r.includes('100 Continue'),
        3_000,
      ),
    ).toContain('HTTP/1.1 100 Continue');
    socket.write('0123456789');
    await once(socket, 'close');
    const final = reply.slice(reply.indexOf('\r\n\r\n') + 4);
    // Found by this test: the Expect field was forwarded and undici refuses any request carrying
    // one: 502 {"error":"upstream_unreachable",...,"message":"upstream t failed: expect header not supported"}.
    expect(final.split('\r\n')[0], final).toBe('HTTP/1.1 200 OK');
    expect(bodyAtTarget).toBe('0123456789');
  });
});
