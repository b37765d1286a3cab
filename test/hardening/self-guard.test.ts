import { once } from 'node:events';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import { EgressPolicy } from '../../src/proxy/egress.js';
import { HostList } from '../../src/proxy/host-pattern.js';
import { SelfAddresses } from '../../src/proxy/self-addresses.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { rawRequest, type RawResponse } from '../helpers/raw-http.js';

/**
 * Issue 19, finding 2: the egress guard covers the proxy's own listeners wherever they are bound
 * (with `admin.listen: 0.0.0.0`, the pod's own address on the admin port) and the cloud metadata
 * endpoints outside link-local. Finding 7: a reload cannot leave a non-loopback listener
 * unguarded. Only loopback traffic flows in these tests: every non-loopback destination is one
 * the proxy must refuse before connecting, and its 403 names the rule that refused it.
 */
const SELF_RULE = "egress: the proxy's own listeners need an allow entry naming the address";
const GUARDED_RULE = 'egress: loopback and link-local addresses need an explicit allow entry';
const METADATA_RULE = 'egress: cloud metadata addresses need an allow entry naming them';

let proxy: RunningProxy | undefined;

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

async function freePort(): Promise<number> {
  const s = createTcpServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as AddressInfo;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

/** This machine's own addresses that are neither loopback nor link-local, as an authority host. */
function nonLoopbackAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flatMap((infos) => infos ?? [])
    .filter((i) => !i.internal && !i.address.startsWith('fe80:'))
    .map((i) => (i.family === 'IPv6' ? `[${i.address}]` : i.address));
}

const UPSTREAM = {
  name: 'partner',
  target: 'https://127.0.0.1:1',
  hosts: ['api.partner.example'],
  auth: {
    type: 'client_credentials',
    tokenUrl: 'https://127.0.0.1:1/token',
    clientId: 'self-client',
    clientSecret: 'self-secret',
  },
};

function portOf(p: RunningProxy): number {
  return Number(new URL(p.url).port);
}

const get = (proxyPort: number, authority: string, path = '/metrics') =>
  rawRequest(proxyPort, `GET http://${authority}${path} HTTP/1.1\r\nHost: ${authority}\r\nConnection: close\r\n\r\n`);
const connectTo = (proxyPort: number, authority: string) =>
  rawRequest(proxyPort, `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`, { timeoutMs: 2_000 });

function expectRefused(res: RawResponse, rule: string, what: string): void {
  expect(res.status, `${what}: ${res.raw.slice(0, 300)}`).toBe(403);
  expect(res.headers['proxy-status']).toBe('token-proxy; error=destination_ip_prohibited');
  expect(JSON.parse(res.body), what).toMatchObject({ error: 'egress_denied', rule });
  expect(res.raw).not.toMatch(/token_proxy_|# HELP/); // nothing of the admin listener shows through
}

describe('a proxy whose admin listener is bound to 0.0.0.0', () => {
  it("refuses the admin port at each of the machine's non-loopback addresses, in absolute-form and CONNECT, under default allow", async () => {
    const adminPort = await freePort();
    proxy = await startProxy({
      admin: { listen: `0.0.0.0:${adminPort}` },
      upstreams: [UPSTREAM],
      egress: { default: 'allow', connectPorts: [443, adminPort] },
    });
    const own = nonLoopbackAddresses();
    expect(own.length).toBeGreaterThan(0);
    for (const address of own) {
      expectRefused(await get(portOf(proxy), `${address}:${adminPort}`), SELF_RULE, address);
      expectRefused(await connectTo(portOf(proxy), `${address}:${adminPort}`), SELF_RULE, `CONNECT ${address}`);
    }
    // The admin listener answers there: the refusals above are the proxy's doing.
    const direct = await rawRequest(adminPort, 'GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(direct.body).toContain('# HELP');
  });

  it('refuses them even when an allow range covers the address: only an entry naming the address opens it', async () => {
    const adminPort = await freePort();
    proxy = await startProxy({
      admin: { listen: `0.0.0.0:${adminPort}` },
      upstreams: [UPSTREAM],
      egress: { default: 'deny', allow: ['0.0.0.0/0', '::/0'], connectPorts: [443, adminPort] },
    });
    for (const address of nonLoopbackAddresses()) {
      expectRefused(await get(portOf(proxy), `${address}:${adminPort}`), SELF_RULE, address);
      expectRefused(await connectTo(portOf(proxy), `${address}:${adminPort}`), SELF_RULE, `CONNECT ${address}`);
    }
  });

  it('keeps the loopback admin port and the proxy port out of reach of an allow range covering loopback', async () => {
    const adminPort = await freePort();
    proxy = await startProxy({
      listen: '0.0.0.0:0',
      admin: { listen: `0.0.0.0:${adminPort}` },
      inbound: { allowCidrs: ['127.0.0.0/8'] },
      upstreams: [UPSTREAM],
      egress: { default: 'deny', allow: ['127.0.0.0/8'], connectPorts: [443] },
    });
    const proxyPort = portOf(proxy);
    for (const spelling of ['127.0.0.1', '127.0.0.2', '[::ffff:127.0.0.1]']) {
      expectRefused(await get(proxyPort, `${spelling}:${adminPort}`), GUARDED_RULE, spelling);
      expectRefused(await get(proxyPort, `${spelling}:${proxyPort}`, '/x'), GUARDED_RULE, spelling);
    }
  });
});

describe('cloud metadata endpoints outside link-local', () => {
  it.each([
    ['Alibaba Cloud 100.100.100.200', '100.100.100.200'],
    ['AWS IMDS over IPv6 [fd00:ec2::254]', '[fd00:ec2::254]'],
    ['[fd00:ec2:0:0:0:0:0:254], another spelling of it', '[fd00:ec2:0:0:0:0:0:254]'],
    ['[::ffff:6464:64c8], 100.100.100.200 IPv4-mapped', '[::ffff:6464:64c8]'],
  ])('refuses %s under default allow and under an allow range covering it', async (_name, host) => {
    for (const egress of [
      { default: 'allow', connectPorts: [443, 80] },
      { default: 'deny', allow: ['100.64.0.0/10', 'fd00::/8'], connectPorts: [443, 80] },
    ]) {
      proxy = await startProxy({ upstreams: [UPSTREAM], egress });
      expectRefused(await get(portOf(proxy), host, '/latest/meta-data/'), METADATA_RULE, host);
      expectRefused(await get(portOf(proxy), `${host}:8080`, '/'), METADATA_RULE, host);
      expectRefused(await connectTo(portOf(proxy), `${host}:443`), METADATA_RULE, `CONNECT ${host}`);
      await proxy.close();
      proxy = undefined;
    }
  });
});

describe('a reload while the proxy listener is bound to a non-loopback address', () => {
  /** The proxy bound to 0.0.0.0, open to 10.0.0.0/8 only: a loopback client is refused. */
  async function startGuarded(): Promise<RunningProxy> {
    return startProxy({
      listen: '0.0.0.0:0',
      inbound: { allowCidrs: ['10.0.0.0/8'] },
      upstreams: [UPSTREAM],
      egress: { default: 'deny' },
    });
  }
  const reloadDoc = (inbound: Record<string, unknown>, upstreams: Record<string, unknown>[] = [UPSTREAM]) =>
    buildConfig(
      { listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, logLevel: 'debug', upstreams, inbound },
      { env: {} },
    );
  const probe = (p: RunningProxy) =>
    rawRequest(
      portOf(p),
      'GET http://api.partner.example/x HTTP/1.1\r\nHost: api.partner.example\r\nConnection: close\r\n\r\n',
    );

  it('rejects a new config that drops allowCidrs, judged on the address bound (0.0.0.0), not the new listen text', async () => {
    proxy = await startGuarded();
    expect((await probe(proxy)).status).toBe(403); // loopback is outside 10.0.0.0/8
    // The new file says 127.0.0.1 (a restart-only change) and drops allowCidrs: valid on its own.
    const next = reloadDoc({});
    await expect(proxy.app.reload(next)).rejects.toThrow(
      /inbound: listen 0\.0\.0\.0:\d+ is reachable from other machines: set inbound\.allowCidrs or inbound\.proxyAuth/,
    );
    expect(proxy.app.config.inbound.allowCidrs?.entries).toEqual(['10.0.0.0/8']); // the old config stays
    const still = await probe(proxy);
    expect([still.status, (JSON.parse(still.body) as { error: string }).error]).toEqual([403, 'client_not_allowed']);
    expect(proxy.logs.some((l) => l.includes('"event":"config_reloaded"'))).toBe(false);
    const rejected = proxy.logs.filter((l) => l.includes('"event":"config_reload_rejected"'));
    expect(rejected).toHaveLength(1);
    expect(rejected[0]).toMatch(/"level":50.*inbound: listen 0\.0\.0\.0:\d+ is reachable from other machines/);
  });

  it('rejects proxyAuth alone when an upstream serves reverse mode, and accepts proxyAuth or allowAnyone otherwise', async () => {
    proxy = await startGuarded();
    const users = { users: [{ name: 'app', password: 'pw' }] };
    const reverse = { ...UPSTREAM, pathPrefix: '/partner' };
    await expect(proxy.app.reload(reloadDoc({ proxyAuth: users }, [reverse]))).rejects.toThrow(
      /inbound\.proxyAuth guards forward mode only/,
    );
    expect(proxy.app.config.inbound.proxyAuth).toBeUndefined();
    expect(await proxy.app.reload(reloadDoc({ proxyAuth: users }))).toEqual([
      'listen changed: takes effect after a restart',
    ]);
    expect(proxy.app.config.inbound.proxyAuth?.users.map((u) => u.name)).toEqual(['app']);
    expect((await probe(proxy)).status).toBe(407); // now the proxy credentials guard it
    await proxy.app.reload(reloadDoc({ allowAnyone: true }));
    expect(proxy.app.config.inbound.allowAnyone).toBe(true);
  });
});

describe('SelfAddresses and EgressPolicy on their own', () => {
  const eth0 = (address: string, family: 'IPv4' | 'IPv6') =>
    ({ address, family, internal: false, netmask: '', mac: '', cidr: null }) as NetworkInterfaceInfo;
  function selfAt(): SelfAddresses {
    const self = new SelfAddresses();
    self.add({ address: '0.0.0.0', port: 9464 }, { eth0: [eth0('10.1.2.3', 'IPv4'), eth0('FD00:0::2', 'IPv6')] });
    self.add({ address: '127.0.0.1', port: 8080 }, {});
    return self;
  }
  function policy(entries: string[], self = selfAt(), egressDefault: 'allow' | 'deny' = 'allow'): EgressPolicy {
    const allow = HostList.parse(entries);
    if (Array.isArray(allow)) throw new Error(allow.join('; '));
    return new EgressPolicy({ default: egressDefault, allow, connectPorts: [443] }, self);
  }
  const lookup = (p: EgressPolicy, port: number, name: string) =>
    new Promise<{ code: string | undefined; message: string | undefined }>((resolve) => {
      p.lookupFor(port)(name, { all: true }, (err) => resolve({ code: err?.code, message: err?.message }));
    });

  it('lists every interface address of a listener on 0.0.0.0 (and all of 127.0.0.0/8), on its own port only', () => {
    const self = selfAt();
    const covered = (
      [
        ['10.1.2.3', 9464],
        ['fd00::2', 9464],
        ['127.0.0.5', 9464],
        ['::1', 9464],
        ['0.0.0.0', 9464],
        ['127.0.0.1', 8080],
      ] as const
    ).map(([a, p]) => self.covers(a, p));
    expect(covered).toEqual([true, true, true, true, true, true]);
    const notCovered = (
      [
        ['10.1.2.3', 8080],
        ['10.1.2.4', 9464],
        ['127.0.0.5', 8080],
        ['fd00::2', 443],
      ] as const
    ).map(([a, p]) => self.covers(a, p));
    expect(notCovered).toEqual([false, false, false, false]);
  });

  it('decide() refuses the own listeners under default allow and any range; an entry naming the address (and port) opens it', () => {
    expect(policy([]).decide('10.1.2.3', 9464, 'http')).toEqual({ allowed: false, rule: SELF_RULE });
    expect(policy([]).decide('fd00::2', 9464, 'http')).toEqual({ allowed: false, rule: SELF_RULE });
    expect(policy([]).decide('10.1.2.3', 8080, 'http')).toEqual({ allowed: true, rule: 'egress.default: allow' });
    expect(policy(['10.0.0.0/8'], undefined, 'deny').decide('10.1.2.3', 9464, 'http')).toEqual({
      allowed: false,
      rule: SELF_RULE,
    });
    expect(policy(['10.1.2.3:80']).decide('10.1.2.3', 9464, 'http')).toEqual({ allowed: false, rule: SELF_RULE });
    expect(policy(['10.1.2.3:9464']).decide('10.1.2.3', 9464, 'connect')).toEqual({
      allowed: true,
      rule: 'egress.allow',
    });
    expect(policy(['10.1.2.3']).decide('10.1.2.3', 9464, 'http')).toEqual({ allowed: true, rule: 'egress.allow' });
    expect(policy(['127.0.0.0/8']).decide('127.0.0.1', 8080, 'http')).toEqual({ allowed: false, rule: GUARDED_RULE });
  });

  it('decide() refuses the metadata endpoints outside link-local unless an entry names the address', () => {
    for (const host of ['100.100.100.200', 'fd00:ec2::254'])
      expect(policy(['100.64.0.0/10', 'fd00::/8']).decide(host, 80, 'http'), host).toEqual({
        allowed: false,
        rule: METADATA_RULE,
      });
    const named = policy(['100.100.100.200:80', '[fd00:ec2::254]']);
    expect(named.decide('100.100.100.200', 80, 'http')).toEqual({ allowed: true, rule: 'egress.allow' });
    expect(named.decide('100.100.100.200', 8080, 'http')).toEqual({ allowed: false, rule: METADATA_RULE });
    expect(named.decide('fd00:ec2::254', 8080, 'http')).toEqual({ allowed: true, rule: 'egress.allow' });
  });

  it("lookupFor(port) judges a name's resolved address at that port: a port pin or the own listener's port counts", async () => {
    // localhost may resolve to ::1 too: both loopback addresses are listed alike.
    const pinned = policy(['127.0.0.1:18080', '[::1]:18080'], new SelfAddresses());
    expect(await lookup(pinned, 18080, 'localhost')).toEqual({ code: undefined, message: undefined });
    const other = await lookup(pinned, 9464, 'localhost');
    expect(other.code).toBe('ERR_EGRESS_DENIED');
    expect(other.message).toMatch(/^localhost resolves to (127\.0\.0\.1|::1): egress: loopback and link-local/);
    const range = policy(['127.0.0.0/8', '::1']);
    expect(await lookup(range, 8081, 'localhost')).toEqual({ code: undefined, message: undefined });
    const own = await lookup(range, 9464, 'localhost');
    expect(own.code).toBe('ERR_EGRESS_DENIED');
    expect(own.message).toMatch(/^localhost resolves to (127\.0\.0\.1|::1): egress: loopback and link-local/);
  });
});
