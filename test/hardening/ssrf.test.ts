import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { connect, createServer as createTcpServer, type AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EgressPolicy } from '../../src/proxy/egress.js';
import { HostList } from '../../src/proxy/host-pattern.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest, type RawResponse } from '../helpers/raw-http.js';

/**
 * SSRF through forward mode (issue 7): with egress `default: allow` and an empty allow list, a
 * client still cannot make the proxy call loopback (its own admin port among them), "this host"
 * or link-local addresses (the cloud metadata service), by IP literal or by a name resolving to
 * one. Only an explicit allow entry opens them.
 */
const GUARDED_RULE = 'egress: loopback and link-local addresses need an explicit allow entry';
let proxy: RunningProxy | undefined;
let proxyPort: number;
let adminPort: number;
/** A service on loopback that must stay out of reach: records every request. */
let internal: { port: number; seen: IncomingHttpHeaders[]; close: () => void };

async function freePort(): Promise<number> {
  const s = createTcpServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as AddressInfo;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

async function start(egress: Record<string, unknown>) {
  proxy = await startProxy({
    admin: { listen: `127.0.0.1:${adminPort}` },
    upstreams: [
      {
        name: 'partner',
        target: 'https://127.0.0.1:1',
        hosts: ['api.partner.example'],
        auth: {
          type: 'client_credentials',
          tokenUrl: 'https://127.0.0.1:1/token',
          clientId: 'ssrf-client',
          clientSecret: 'ssrf-secret',
        },
      },
    ],
    egress: { default: 'allow', allow: [], ...egress },
  });
  proxyPort = Number(new URL(proxy.url).port);
  return proxy;
}

beforeAll(async () => {
  adminPort = await freePort();
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    seen.push(req.headers);
    res.end('internal service');
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  internal = { port: (server.address() as AddressInfo).port, seen, close: () => server.close() };
});

afterAll(() => internal.close());

beforeEach(() => {
  internal.seen.length = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

const get = (target: string, host: string) =>
  rawRequest(proxyPort, `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
const connectTo = (authority: string) =>
  rawRequest(proxyPort, `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`, { timeoutMs: 2_000 });

function expectDenied(res: RawResponse, rule: string | RegExp = GUARDED_RULE): void {
  expect(res.status, res.raw.slice(0, 300)).toBe(403);
  expect(res.headers['proxy-status']).toBe('token-proxy; error=destination_ip_prohibited');
  const body = JSON.parse(res.body) as { error: string; rule: string };
  expect(body.error).toBe('egress_denied');
  if (typeof rule === 'string') expect(body.rule).toBe(rule);
  else expect(body.rule).toMatch(rule);
  // Nothing of the admin listener ever shows through.
  expect(res.raw).not.toMatch(/token_proxy_|# HELP|"status":"ok"/);
}

/** Names in /etc/hosts (other than localhost) that point at loopback: real DNS names resolving there. */
function loopbackNamesInHosts(): string[] {
  let text = '';
  try {
    text = readFileSync('/etc/hosts', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim().split(/\s+/))
    .filter(([ip]) => ip !== undefined && /^127\./.test(ip))
    .flatMap(([, ...names]) => names)
    .filter((n) => n !== 'localhost' && /^[a-z0-9.-]+$/i.test(n) && !n.endsWith('.'))
    .slice(0, 3);
}

describe('with egress default allow and an empty allow list', () => {
  beforeEach(async () => {
    await start({ connectPorts: [443, 80] });
  });

  it('refuses absolute-form requests to 127.0.0.1 on any port, the admin port and the proxy port included', async () => {
    for (const p of [internal.port, adminPort, proxyPort, 80]) {
      expectDenied(await get(`http://127.0.0.1:${p}/metrics`, `127.0.0.1:${p}`));
    }
    expect(internal.seen).toHaveLength(0);
  });

  it('keeps the admin /metrics out of reach through the proxy', async () => {
    expectDenied(await get(`http://127.0.0.1:${adminPort}/metrics`, `127.0.0.1:${adminPort}`));
    expectDenied(await get(`http://localhost:${adminPort}/metrics`, `localhost:${adminPort}`));
    expectDenied(await connectTo(`127.0.0.1:${adminPort}`));
    // The admin listener itself is up: the refusals above are the proxy's doing.
    const direct = await rawRequest(adminPort, 'GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(direct.body).toContain('# HELP');
  });

  it.each([
    ['localhost', 'localhost'],
    ['LOCALHOST in upper case', 'LOCALHOST'],
    ['the cloud metadata address 169.254.169.254', '169.254.169.254'],
    ['another loopback address 127.255.255.254', '127.255.255.254'],
    ['"this host" 0.0.0.0', '0.0.0.0'],
    ['IPv6 loopback [::1]', '[::1]'],
    ['IPv6 unspecified [::]', '[::]'],
    ['IPv6 link-local [fe80::1]', '[fe80::1]'],
    ['IPv4-mapped loopback [::ffff:127.0.0.1]', '[::ffff:127.0.0.1]'],
    ['IPv4-mapped metadata address [::ffff:a9fe:a9fe]', '[::ffff:a9fe:a9fe]'],
  ])('refuses %s with 403 egress_denied naming the loopback/link-local rule', async (_name, host) => {
    expectDenied(await get(`http://${host}:${internal.port}/latest/meta-data/`, `${host}:${internal.port}`));
    expectDenied(await get(`http://${host}/latest/meta-data/`, host));
    expect(internal.seen).toHaveLength(0);
  });

  it.each([
    ['127.0.0.1 on the internal port', () => `127.0.0.1:${internal.port}`],
    ['127.0.0.1 on the admin port', () => `127.0.0.1:${adminPort}`],
    ['localhost:443', () => 'localhost:443'],
    ['169.254.169.254:80', () => '169.254.169.254:80'],
    ['[::1]:443', () => '[::1]:443'],
  ])('refuses CONNECT to %s with 403 naming the loopback/link-local rule', async (_name, authority) => {
    expectDenied(await connectTo(authority()));
    expect(internal.seen).toHaveLength(0);
  });

  // getaddrinfo (and the WHATWG URL parser) read these as IPv4 numbers: 127.0.0.1 and 169.254.169.254.
  it.each([
    ['127.1', '127.0.0.1'],
    ['127.0.1', '127.0.0.1'],
    ['2130706433', '127.0.0.1'],
    ['0x7f000001', '127.0.0.1'],
    ['0x7f.1', '127.0.0.1'],
    ['0177.0.0.1', '127.0.0.1'],
    ['2852039166', '169.254.169.254'],
    ['0xa9.0xfe.0xa9.0xfe', '169.254.169.254'],
  ])('refuses the numeric host name %s (= %s) in absolute-form and CONNECT', async (name, address) => {
    await proxy?.close();
    await start({ connectPorts: [443, internal.port] });
    const res = await get(`http://${name}:${internal.port}/x`, `${name}:${internal.port}`);
    expectDenied(res, /resolved address|loopback and link-local/);
    const tunnel = await connectTo(`${name}:${internal.port}`);
    expect(tunnel.status).toBe(403);
    expect(JSON.parse(tunnel.body)).toMatchObject({ error: 'egress_denied' });
    expect((JSON.parse(tunnel.body) as { message: string }).message).toContain(address);
    expect(internal.seen).toHaveLength(0);
  });

  it('refuses DNS names that resolve to loopback, checked on the resolved address', async () => {
    // localhost is refused by name already; names in /etc/hosts pointing at 127.x go through DNS.
    for (const name of loopbackNamesInHosts()) {
      const res = await get(`http://${name}:${internal.port}/x`, `${name}:${internal.port}`);
      expectDenied(res, 'egress: resolved address');
      expect((JSON.parse(res.body) as { message: string }).message, name).toMatch(
        new RegExp(`^${name.replace(/\./g, '\\.')} resolves to 127\\.`),
      );
    }
    expect(internal.seen).toHaveLength(0);
  });

  it('refuses a CONNECT tunnel to a name that resolves to loopback', async () => {
    await proxy?.close();
    await start({ connectPorts: [443, internal.port] });
    for (const name of ['127.1', ...loopbackNamesInHosts()]) {
      const res = await connectTo(`${name}:${internal.port}`);
      expect(res.status, name).toBe(403);
      const body = JSON.parse(res.body) as { error: string; rule?: string; message: string };
      expect(body.error).toBe('egress_denied');
      // Judged on the address: either the name was read as the IP it means, or its DNS answer was checked.
      expect(body.rule === GUARDED_RULE || /resolves to 127\./.test(body.message), `${name}: ${res.body}`).toBe(true);
    }
    expect(internal.seen).toHaveLength(0);
  });

  it('refuses guarded addresses even on ports listed in connectPorts', async () => {
    await proxy?.close();
    await start({ connectPorts: [443, adminPort, internal.port] });
    expectDenied(await connectTo(`127.0.0.1:${adminPort}`));
    expectDenied(await connectTo(`localhost:${internal.port}`));
  });
});

describe('with an explicit allow entry', () => {
  it('reaches 127.0.0.1:<port> when exactly that is allowed, and still not the admin port', async () => {
    await start({ allow: [`127.0.0.1:${internal.port}`], connectPorts: [443] });
    const res = await get(`http://127.0.0.1:${internal.port}/ok`, `127.0.0.1:${internal.port}`);
    expect([res.status, res.body]).toEqual([200, 'internal service']);
    expect(internal.seen).toHaveLength(1);
    expectDenied(await get(`http://127.0.0.1:${adminPort}/metrics`, `127.0.0.1:${adminPort}`));
    expectDenied(await connectTo(`127.0.0.1:${adminPort}`));
  });

  it('opens a CONNECT tunnel to an allowed 127.0.0.1:<port>', async () => {
    await start({ allow: [`127.0.0.1:${internal.port}`], connectPorts: [443] });
    const socket = connect(proxyPort, '127.0.0.1');
    socket.write(`CONNECT 127.0.0.1:${internal.port} HTTP/1.1\r\nHost: 127.0.0.1:${internal.port}\r\n\r\n`);
    let text = '';
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (text.endsWith('\r\n\r\n') && text.startsWith('HTTP/1.1 200'))
        socket.write('GET /through HTTP/1.1\r\nHost: internal\r\nConnection: close\r\n\r\n');
    });
    await once(socket, 'close');
    expect(text).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK/);
    expect(text).toContain('internal service');
    expect(internal.seen).toHaveLength(1);
  });

  it('reaches localhost when the name is allowed (the name entry covers what it resolves to)', async () => {
    await start({ allow: ['localhost'], connectPorts: [443] });
    const res = await get(`http://localhost:${internal.port}/ok`, `localhost:${internal.port}`);
    expect([res.status, res.body]).toEqual([200, 'internal service']);
  });
});

describe('EgressPolicy on its own', () => {
  const policy = (entries: string[] = []) => {
    const allow = HostList.parse(entries);
    if (Array.isArray(allow)) throw new Error(allow.join('; '));
    return new EgressPolicy({ default: 'allow', allow, connectPorts: [443] });
  };
  const lookup = (p: EgressPolicy, name: string, all = false) =>
    new Promise<{ err: NodeJS.ErrnoException | null; address: unknown }>((resolve) => {
      p.lookupFor(443)(name, all ? { all: true } : {}, (err, address) => resolve({ err, address }));
    });

  it('decide() refuses loopback, "this host" and link-local addresses unless allowed', () => {
    const p = policy();
    for (const host of [
      '127.0.0.1',
      '127.8.9.10',
      '0.0.0.0',
      '169.254.169.254',
      '::1',
      '::',
      'fe80::abcd',
      '::ffff:127.0.0.1',
      'localhost',
    ]) {
      for (const kind of ['http', 'connect'] as const)
        expect(p.decide(host, 443, kind), `${host} ${kind}`).toEqual({ allowed: false, rule: GUARDED_RULE });
    }
    expect(p.decide('10.1.2.3', 443, 'connect')).toEqual({ allowed: true, rule: 'egress.default: allow' });
    expect(policy(['127.0.0.1:8080']).decide('127.0.0.1', 8080, 'http')).toEqual({
      allowed: true,
      rule: 'egress.allow',
    });
    expect(policy(['127.0.0.1:8080']).decide('127.0.0.1', 9464, 'http')).toEqual({
      allowed: false,
      rule: GUARDED_RULE,
    });
    expect(policy(['::1']).decide('::1', 443, 'connect')).toEqual({ allowed: true, rule: 'egress.allow' });
    expect(policy(['169.254.0.0/16']).decide('169.254.169.254', 80, 'http')).toEqual({
      allowed: true,
      rule: 'egress.allow',
    });
  });

  it('lookup refuses a name that resolves to 127.0.0.1 with ERR_EGRESS_DENIED', async () => {
    for (const all of [false, true]) {
      const { err, address } = await lookup(policy(), 'localhost', all);
      expect(err?.code).toBe('ERR_EGRESS_DENIED');
      expect(err?.message).toMatch(/^localhost resolves to 127\.0\.0\.1: egress: loopback and link-local/);
      expect(address).toBe('');
    }
    expect((await lookup(policy(), '127.1')).err?.code).toBe('ERR_EGRESS_DENIED');
    expect((await lookup(policy(['10.0.0.0/8']), 'localhost')).err?.code).toBe('ERR_EGRESS_DENIED');
  });

  it('lookup resolves the name when it, or the address it resolves to, is allowed', async () => {
    // localhost may also resolve to ::1 where /etc/hosts says so: either loopback answer will do.
    const loopback: unknown = expect.stringMatching(/^(127\.0\.0\.1|::1)$/);
    expect(await lookup(policy(['localhost']), 'localhost')).toEqual({ err: null, address: loopback });
    expect(await lookup(policy(['LOCALHOST']), 'LocalHost')).toEqual({ err: null, address: loopback });
    const all = await lookup(policy(['localhost']), 'localhost', true);
    expect(all.err).toBeNull();
    expect(all.address).toContainEqual({ address: '127.0.0.1', family: 4 });
    expect(await lookup(policy(['127.0.0.0/8', '::1']), 'localhost')).toEqual({ err: null, address: loopback });
  });
});
