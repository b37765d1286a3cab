import { describe, expect, it } from 'vitest';
import { EgressPolicy } from '../../src/proxy/egress.js';
import { ForwardRouter } from '../../src/proxy/forward-router.js';
import { AddressList, HostList, parseHostPattern, type HostPattern } from '../../src/proxy/host-pattern.js';
import { InboundGuard } from '../../src/proxy/inbound-guard.js';
import { parseAbsoluteForm, parseConnectAuthority } from '../../src/proxy/request-target.js';

const up = (name: string) => ({ name });
/** Entries parsed as the configuration parses them. */
const patterns = (entries: string[]) => entries.map((e) => parseHostPattern(e) as HostPattern);
function hostList(entries: string[]): HostList {
  const list = HostList.parse(entries);
  if (Array.isArray(list)) throw new Error(list.join('; '));
  return list;
}
function addressList(entries: string[]): AddressList {
  const list = AddressList.parse(entries);
  if (Array.isArray(list)) throw new Error(list.join('; '));
  return list;
}

describe('request targets', () => {
  it('parses absolute-form http URLs and refuses userinfo, other schemes and bad hosts', () => {
    expect(parseAbsoluteForm('http://API.Partner.example/v1/x?y=1')).toEqual({
      host: 'api.partner.example',
      port: 80,
      path: '/v1/x?y=1',
    });
    expect(parseAbsoluteForm('http://api.partner.example:8080')).toEqual({
      host: 'api.partner.example',
      port: 8080,
      path: '/',
    });
    expect(parseAbsoluteForm('http://api.partner.example?q')).toEqual({
      host: 'api.partner.example',
      port: 80,
      path: '/?q',
    });
    expect(parseAbsoluteForm('http://[::1]:9000/x')).toEqual({ host: '::1', port: 9000, path: '/x' });
    for (const bad of [
      'http://user:pw@api.partner.example/',
      'https://a.example/',
      'ftp://a/',
      'http:///x',
      'http://a b/',
      'http://a.example:99999/',
      'http://%61.example/',
      'http://::1/',
      'http://::1:8080/x',
    ]) {
      expect(parseAbsoluteForm(bad)).toBeNull();
    }
  });

  it('requires host:port on CONNECT', () => {
    expect(parseConnectAuthority('api.partner.example:443')).toEqual({ host: 'api.partner.example', port: 443 });
    expect(parseConnectAuthority('[2001:db8::1]:443')).toEqual({ host: '2001:db8::1', port: 443 });
    expect(parseConnectAuthority('api.partner.example')).toBeNull();
    expect(parseConnectAuthority('a.example:0')).toBeNull();
    expect(parseConnectAuthority('2001:db8::1:443')).toBeNull(); // which part is the port? brackets required
  });
});

describe('forward routing by host', () => {
  const router = new ForwardRouter([
    { hosts: patterns(['api.partner.example', '*.partner.example', 'alt.example:8443']), upstream: up('partner') },
    { hosts: patterns(['api.partner.example', 'other.example']), upstream: up('second') },
  ]);

  it('matches exact names on 80 and 443, wildcards below the suffix, and named ports only', () => {
    expect(router.route('api.partner.example', 443)?.name).toBe('partner'); // first upstream wins
    expect(router.route('api.partner.example', 80)?.name).toBe('partner');
    expect(router.route('api.partner.example', 8080)).toBeUndefined();
    expect(router.route('eu.api.partner.example', 443)?.name).toBe('partner');
    expect(router.route('partner.example', 443)).toBeUndefined();
    expect(router.route('evilpartner.example', 443)).toBeUndefined();
    expect(router.route('alt.example', 8443)?.name).toBe('partner');
    expect(router.route('alt.example', 443)).toBeUndefined();
    expect(router.route('other.example', 80)?.name).toBe('second');
  });

  it('rejects malformed host patterns with a message', () => {
    expect(parseHostPattern('*.')).toMatch(/not/);
    expect(parseHostPattern('a b.example')).toMatch(/not a valid host name/);
    expect(parseHostPattern('*.10.0.0.1')).toMatch(/wildcard needs a DNS suffix/);
    expect(HostList.parse(['10.0.0.0/33', 'ok.example', 'bad host'])).toEqual([
      '[0]: "10.0.0.0/33" is not a valid CIDR range',
      '[2]: "bad host" is not a valid host name',
    ]);
  });
});

describe('egress policy', () => {
  const policy = new EgressPolicy({
    default: 'deny',
    allow: hostList(['*.internal.example:443', 'status.partner.example', '10.20.0.0/16', '192.0.2.7:8443']),
    connectPorts: [443],
  });

  it('allows listed hosts, suffixes, ranges and ports, and names the deciding rule', () => {
    expect(policy.decide('db.internal.example', 443, 'connect')).toEqual({ allowed: true, rule: 'egress.allow' });
    expect(policy.decide('db.internal.example', 80, 'http')).toEqual({ allowed: false, rule: 'egress.default: deny' });
    expect(policy.decide('status.partner.example', 80, 'http').allowed).toBe(true);
    expect(policy.decide('status.partner.example', 22, 'connect')).toEqual({
      allowed: false,
      rule: 'egress.connectPorts',
    });
    expect(policy.decide('10.20.3.4', 443, 'connect').allowed).toBe(true);
    expect(policy.decide('10.21.3.4', 443, 'connect').allowed).toBe(false);
    expect(policy.decide('192.0.2.7', 8443, 'connect').allowed).toBe(true);
    expect(policy.decide('192.0.2.7', 443, 'connect').allowed).toBe(false);
  });

  it('with default allow still keeps CONNECT to connectPorts', () => {
    const open = new EgressPolicy({ default: 'allow', allow: hostList([]), connectPorts: [443] });
    expect(open.decide('anything.example', 443, 'connect')).toEqual({ allowed: true, rule: 'egress.default: allow' });
    expect(open.decide('anything.example', 25, 'connect')).toEqual({ allowed: false, rule: 'egress.connectPorts' });
    expect(open.decide('anything.example', 8080, 'http').allowed).toBe(true);
  });
});

describe('inbound guard', () => {
  const basic = (s: string) => `Basic ${Buffer.from(s).toString('base64')}`;
  it('checks client ranges, including IPv4 clients on dual-stack sockets', () => {
    const guard = new InboundGuard({ allowCidrs: addressList(['10.0.0.0/8', '::1']), proxyAuth: undefined });
    expect(guard.clientAllowed('10.9.8.7')).toBe(true);
    expect(guard.clientAllowed('::ffff:10.9.8.7')).toBe(true);
    expect(guard.clientAllowed('::1')).toBe(true);
    expect(guard.clientAllowed('127.0.0.1')).toBe(false);
    expect(guard.clientAllowed(undefined)).toBe(false);
  });

  it('authenticates Basic proxy credentials (RFC 7617) and nothing else', () => {
    const guard = new InboundGuard({
      allowCidrs: undefined,
      proxyAuth: { users: [{ name: 'app-a', password: 'p:w' }] },
    });
    expect(guard.authenticate(basic('app-a:p:w'))).toBe('app-a');
    expect(guard.authenticate(`basic ${Buffer.from('app-a:p:w').toString('base64')}`)).toBe('app-a');
    for (const bad of [
      undefined,
      basic('app-a:wrong'),
      basic('app-b:p:w'),
      basic('app-a'),
      'Bearer x',
      basic(':p:w'),
    ]) {
      expect(guard.authenticate(bad)).toBeUndefined();
    }
    expect(new InboundGuard({ allowCidrs: undefined, proxyAuth: undefined }).authenticate(undefined)).toBe('');
  });
});
