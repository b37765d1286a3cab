import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EgressPolicy } from '../../src/proxy/egress.js';
import { ForwardRouter } from '../../src/proxy/forward-router.js';
import { HostList, parseHostPattern, type HostPattern } from '../../src/proxy/host-pattern.js';
import { canonicalIp } from '../../src/proxy/ip-literal.js';
import { parseAbsoluteForm, parseConnectAuthority } from '../../src/proxy/request-target.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest, type RawResponse } from '../helpers/raw-http.js';

/**
 * Issue 19, finding 1: one address, many spellings. An allow entry pinned to a port
 * (`127.0.0.1:PORT`) must not open other ports to `[::ffff:127.0.0.1]` (Node's BlockList matches
 * the mapped form against the IPv4 rule, but the pin used to be looked up under the literal text).
 * Every IP literal is canonicalised once, at parse, and judged as that one address.
 */

/** 127.0.0.1 as clients can write it in an authority. */
const SPELLINGS = [
  '127.0.0.1',
  '[::ffff:127.0.0.1]',
  '[0:0:0:0:0:ffff:7f00:1]',
  '[::ffff:7f00:1]',
  '[0000:0000:0000:0000:0000:FFFF:7F00:0001]',
  '[::FFFF:127.0.0.1]',
];

interface Recorder {
  readonly port: number;
  readonly seen: string[];
  readonly server: Server;
}

async function recorder(answer: string): Promise<Recorder> {
  const seen: string[] = [];
  const server = createServer((req, res) => {
    seen.push(req.url ?? '');
    res.end(answer);
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, seen, server };
}

/** The service an allow entry pins, and one on another port standing in for the admin listener. */
let allowed: Recorder;
let other: Recorder;
let proxy: RunningProxy | undefined;
let proxyPort: number;

beforeAll(async () => {
  allowed = await recorder('allowed service');
  other = await recorder('other port: must stay out of reach');
});

afterAll(() => {
  allowed.server.close();
  other.server.close();
});

beforeEach(() => {
  allowed.seen.length = 0;
  other.seen.length = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

async function start(egressDefault: 'deny' | 'allow', allow: string[]): Promise<void> {
  proxy = await startProxy({
    upstreams: [
      {
        name: 'partner',
        target: 'https://127.0.0.1:1',
        hosts: ['api.partner.example'],
        auth: {
          type: 'client_credentials',
          tokenUrl: 'https://127.0.0.1:1/token',
          clientId: 'ip-client',
          clientSecret: 'ip-secret',
        },
      },
    ],
    egress: { default: egressDefault, allow, connectPorts: [443] },
  });
  proxyPort = Number(new URL(proxy.url).port);
}

const get = (authority: string, path = '/x') =>
  rawRequest(proxyPort, `GET http://${authority}${path} HTTP/1.1\r\nHost: ${authority}\r\nConnection: close\r\n\r\n`);

/** A CONNECT, then (when established) one GET through the tunnel; returns everything read. */
function tunnel(authority: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(proxyPort, '127.0.0.1');
    let text = '';
    let sent = false;
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (!sent && text.startsWith('HTTP/1.1 200') && text.includes('\r\n\r\n')) {
        sent = true;
        socket.write('GET /through HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(text));
    socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  });
}

function expectEgressDenied(res: RawResponse, spelling: string): void {
  expect(res.status, `${spelling}: ${res.raw.slice(0, 200)}`).toBe(403);
  expect((JSON.parse(res.body) as { error: string }).error).toBe('egress_denied');
}

describe.each(['deny', 'allow'] as const)('an allow entry pinned to 127.0.0.1:<port> under egress.default %s', (d) => {
  it('lets every spelling of 127.0.0.1 reach the pinned port, in absolute-form', async () => {
    await start(d, [`127.0.0.1:${allowed.port}`]);
    for (const spelling of SPELLINGS) {
      const res = await get(`${spelling}:${allowed.port}`, `/via/${spelling}`);
      expect([res.status, res.body], spelling).toEqual([200, 'allowed service']);
    }
    expect(allowed.seen).toEqual(SPELLINGS.map((s) => `/via/${s}`));
  });

  it('refuses every spelling of 127.0.0.1 on another port in absolute-form, and nothing reaches it', async () => {
    await start(d, [`127.0.0.1:${allowed.port}`]);
    for (const spelling of SPELLINGS) expectEgressDenied(await get(`${spelling}:${other.port}`), spelling);
    expect(other.seen).toEqual([]);
  });

  it('tunnels CONNECT for every spelling to the pinned port, and refuses every spelling on another port', async () => {
    await start(d, [`127.0.0.1:${allowed.port}`]);
    for (const spelling of SPELLINGS) {
      const through = await tunnel(`${spelling}:${allowed.port}`);
      expect(through, spelling).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK/);
      expect(through).toContain('allowed service');
      const refused = await tunnel(`${spelling}:${other.port}`);
      expect(refused, spelling).toMatch(/^HTTP\/1\.1 403 /);
      expect(refused).toContain('"error":"egress_denied"');
    }
    expect(allowed.seen).toEqual(SPELLINGS.map(() => '/through'));
    expect(other.seen).toEqual([]);
  });

  it('judges an allow entry written in the mapped form as 127.0.0.1 at its port only', async () => {
    await start(d, [`[0:0:0:0:0:ffff:7f00:1]:${allowed.port}`]);
    for (const spelling of SPELLINGS) {
      expect((await get(`${spelling}:${allowed.port}`)).status, spelling).toBe(200);
      expectEgressDenied(await get(`${spelling}:${other.port}`), spelling);
    }
    expect(allowed.seen).toHaveLength(SPELLINGS.length);
    expect(other.seen).toEqual([]);
  });
});

describe('canonical IP literals', () => {
  it.each([
    ['127.0.0.1', '127.0.0.1'],
    ['::ffff:127.0.0.1', '127.0.0.1'],
    ['0:0:0:0:0:ffff:7f00:1', '127.0.0.1'],
    ['::FFFF:7F00:1', '127.0.0.1'],
    ['::ffff:a9fe:a9fe', '169.254.169.254'],
    ['fd00:0::1', 'fd00::1'],
    ['FD00:0000:0000:0000:0000:0000:0000:0001', 'fd00::1'],
    ['fd00:ec2:0:0:0:0:0:254', 'fd00:ec2::254'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['::', '::'],
    ['1:0:0:1:0:0:0:1', '1:0:0:1::1'],
    ['::127.0.0.1', '::7f00:1'],
  ])('canonicalIp(%s) is %s', (text, canonical) => {
    expect(canonicalIp(text)).toBe(canonical);
  });

  it('returns undefined for anything that is not an IP literal', () => {
    for (const text of ['api.example', '127.1', '', 'fe80::1%eth0', '[::1]', '1::2::3']) {
      expect(canonicalIp(text), text).toBeUndefined();
    }
  });

  it('parses request targets and CONNECT authorities into the canonical address', () => {
    expect(parseAbsoluteForm('http://[::ffff:127.0.0.1]:9464/metrics')).toEqual({
      host: '127.0.0.1',
      port: 9464,
      path: '/metrics',
    });
    expect(parseAbsoluteForm('http://[FD00:0::1]/')).toEqual({ host: 'fd00::1', port: 80, path: '/' });
    expect(parseConnectAuthority('[0:0:0:0:0:ffff:7f00:1]:443')).toEqual({ host: '127.0.0.1', port: 443 });
    expect(parseConnectAuthority('[fd00:ec2:0::254]:80')).toEqual({ host: 'fd00:ec2::254', port: 80 });
  });

  it('judges every spelling of an IPv6 address in the allow list and its port pin as one address', () => {
    const allow = HostList.parse(['[FD00:0:0::1]:8443', '[2001:db8:0::7]']);
    if (Array.isArray(allow)) throw new Error(allow.join());
    const policy = new EgressPolicy({ default: 'deny', allow, connectPorts: [443] });
    for (const spelling of ['[fd00::1]', '[fd00:0::1]', '[FD00:0000:0000:0000:0000:0000:0000:0001]']) {
      const target = parseConnectAuthority(`${spelling}:8443`);
      expect(target?.host).toBe('fd00::1');
      expect(policy.decide(target?.host ?? '', 8443, 'connect')).toEqual({ allowed: true, rule: 'egress.allow' });
      expect(policy.decide(target?.host ?? '', 9464, 'http')).toEqual({
        allowed: false,
        rule: 'egress.default: deny',
      });
    }
    const host = parseAbsoluteForm('http://[2001:DB8::0:7]:8080/')?.host ?? '';
    expect(policy.decide(host, 8080, 'http')).toEqual({ allowed: true, rule: 'egress.allow' });
  });

  it('routes every spelling of an upstream IP host to that upstream', () => {
    const hosts = ['[::ffff:10.0.0.5]:8443', '[fd00:0::9]'].map((h) => parseHostPattern(h) as HostPattern);
    expect(hosts.map((h) => [h.host, h.port])).toEqual([
      ['10.0.0.5', 8443],
      ['fd00::9', undefined],
    ]);
    const router = new ForwardRouter([{ hosts, upstream: 'ip-upstream' }]);
    for (const target of ['[::ffff:a00:5]:8443', '10.0.0.5:8443', '[0:0:0:0:0:ffff:10.0.0.5]:8443']) {
      const a = parseConnectAuthority(target);
      expect(router.route(a?.host ?? '', a?.port ?? 0), target).toBe('ip-upstream');
    }
    const v6 = parseConnectAuthority('[FD00::0:9]:443');
    expect(router.route(v6?.host ?? '', 443)).toBe('ip-upstream');
    expect(router.route('10.0.0.5', 443)).toBeUndefined();
  });
});
