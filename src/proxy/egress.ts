import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import type { HostList } from './host-pattern.js';
import { canonicalIp } from './ip-literal.js';
import { SelfAddresses } from './self-addresses.js';

/**
 * Addresses an egress gateway must not reach on a client's say-so (SSRF): loopback (the proxy's
 * own listeners and admin port among them), "this host", and link-local, where cloud metadata
 * services live (169.254.169.254). Reachable through an allow entry that covers them.
 */
const GUARDED = new BlockList();
GUARDED.addSubnet('127.0.0.0', 8, 'ipv4');
GUARDED.addSubnet('0.0.0.0', 8, 'ipv4');
GUARDED.addSubnet('169.254.0.0', 16, 'ipv4');
GUARDED.addAddress('::1', 'ipv6');
GUARDED.addAddress('::', 'ipv6');
GUARDED.addSubnet('fe80::', 10, 'ipv6');

/**
 * Cloud metadata endpoints outside link-local: AWS IMDS over IPv6 (fd00:ec2::254, in a unique
 * local range a VPC may otherwise use) and Alibaba Cloud (100.100.100.200, in shared address
 * space, RFC 6598). Only an allow entry naming the address itself opens them, not a range.
 */
const METADATA = new BlockList();
METADATA.addAddress('fd00:ec2::254', 'ipv6');
METADATA.addAddress('100.100.100.200', 'ipv4');

/** BlockList matches IPv4-mapped IPv6 addresses against the IPv4 rules too. */
function inList(list: BlockList, address: string): boolean {
  const family = isIP(address);
  return family !== 0 && list.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export function isGuardedAddress(address: string): boolean {
  return inList(GUARDED, address);
}

const GUARDED_RULE = 'egress: loopback and link-local addresses need an explicit allow entry';
const METADATA_RULE = 'egress: cloud metadata addresses need an allow entry naming them';
const SELF_RULE = "egress: the proxy's own listeners need an allow entry naming the address";

export interface EgressDecision {
  readonly allowed: boolean;
  /** Which setting decided, for the refusal body and logs. */
  readonly rule: string;
}

export interface EgressSettings {
  readonly default: 'deny' | 'allow';
  /** Parsed with the configuration. */
  readonly allow: HostList;
  readonly connectPorts: readonly number[];
}

/**
 * What happens to traffic for hosts no upstream serves. Allowed traffic is forwarded or tunnelled
 * plainly, never with a token. CONNECT tunnels are further limited to `connectPorts` unless an
 * allow entry names the port itself.
 *
 * Hosts are canonical (request-target.ts): `[::ffff:127.0.0.1]` arrives as `127.0.0.1`, so the
 * allow list, its port pins and the guard judge one address whatever its spelling.
 */
export class EgressPolicy {
  readonly #allow: HostList;
  readonly #default: 'deny' | 'allow';
  readonly #connectPorts: ReadonlySet<number>;
  readonly #self: SelfAddresses;
  /** One lookup per destination port (the guard of the own listeners is per port). */
  readonly #lookups = new Map<number, LookupFunction>();

  /** `self`: the process's listeners, filled in after listen (app.ts). */
  constructor(settings: EgressSettings, self: SelfAddresses = new SelfAddresses()) {
    this.#allow = settings.allow;
    this.#default = settings.default;
    this.#connectPorts = new Set(settings.connectPorts);
    this.#self = self;
  }

  /**
   * The proxy's own listeners at the address and port they are bound to, and metadata endpoints
   * outside link-local: refused always, unless an allow entry names the address (a range, a
   * name or default allow is not enough). Undefined when neither applies.
   */
  #shielded(address: string, port: number): string | undefined {
    let rule: string | undefined;
    if (inList(METADATA, address)) rule = METADATA_RULE;
    // A loopback listener keeps the loopback rule's name; a range like 127.0.0.0/8 still does not open it.
    else if (this.#self.covers(address, port)) rule = isGuardedAddress(address) ? GUARDED_RULE : SELF_RULE;
    return rule !== undefined && !this.#allow.namesAddress(address, port) ? rule : undefined;
  }

  decide(host: string, port: number, kind: 'connect' | 'http'): EgressDecision {
    const shielded = this.#shielded(host, port);
    if (shielded !== undefined) return { allowed: false, rule: shielded };
    const portOk = kind === 'http' ? () => true : (p: number) => this.#connectPorts.has(p);
    if (this.#allow.allows(host, port, portOk)) return { allowed: true, rule: 'egress.allow' };
    if (isGuardedAddress(host) || host === 'localhost') return { allowed: false, rule: GUARDED_RULE };
    if (kind === 'connect' && this.#allow.allows(host, port, () => true))
      return { allowed: false, rule: 'egress.connectPorts' };
    if (this.#default === 'allow') {
      return portOk(port)
        ? { allowed: true, rule: 'egress.default: allow' }
        : { allowed: false, rule: 'egress.connectPorts' };
    }
    return { allowed: false, rule: 'egress.default: deny' };
  }

  /** Why a name's resolved address may not be reached at `port`; undefined when it may. */
  #refusal(address: string, port: number, nameListed: boolean): string | undefined {
    const shielded = this.#shielded(address, port);
    if (shielded !== undefined) return shielded;
    if (nameListed || !isGuardedAddress(address)) return undefined;
    return this.#allow.allows(address, port, () => true) ? undefined : GUARDED_RULE;
  }

  /**
   * A DNS lookup for egress connections to `port`: a name that resolves to a guarded address is
   * refused unless the name, or that address at that port, is explicitly allowed; one that
   * resolves to the proxy's own listener or a metadata endpoint is refused unless the address is
   * named. Checking the resolved address (not the name) is what stops a DNS name pointed at
   * 127.0.0.1, the pod's own address or the metadata service.
   */
  lookupFor(port: number): LookupFunction {
    let lookup = this.#lookups.get(port);
    if (lookup === undefined) {
      lookup = (hostname, options, callback) => this.#lookup(hostname, port, options, callback);
      this.#lookups.set(port, lookup);
    }
    return lookup;
  }

  #lookup(
    hostname: string,
    port: number,
    options: Parameters<LookupFunction>[1],
    callback: Parameters<LookupFunction>[2],
  ) {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) {
        callback(err, '', 0);
        return;
      }
      const nameListed = this.#allow.listsName(hostname.toLowerCase());
      for (const a of addresses) {
        const address = canonicalIp(a.address) ?? a.address;
        const rule = this.#refusal(address, port, nameListed);
        if (rule === undefined) continue;
        const denied = Object.assign(new Error(`${hostname} resolves to ${address}: ${rule}`), {
          code: 'ERR_EGRESS_DENIED',
        });
        callback(denied, '', 0);
        return;
      }
      if ((options as { all?: boolean }).all === true)
        (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, addresses);
      else callback(null, addresses[0]?.address ?? '', addresses[0]?.family ?? 4);
    });
  }
}
