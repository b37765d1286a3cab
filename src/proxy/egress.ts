import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import { HostList, normaliseAddress } from './host-pattern.js';

/**
 * Addresses an egress gateway must not reach on a client's say-so (SSRF): loopback (the proxy's
 * own listeners and admin port among them), "this host", and link-local, where cloud metadata
 * services live (169.254.169.254). Reachable only through an explicit allow entry.
 */
const GUARDED = new BlockList();
GUARDED.addSubnet('127.0.0.0', 8, 'ipv4');
GUARDED.addSubnet('0.0.0.0', 8, 'ipv4');
GUARDED.addSubnet('169.254.0.0', 16, 'ipv4');
GUARDED.addAddress('::1', 'ipv6');
GUARDED.addAddress('::', 'ipv6');
GUARDED.addSubnet('fe80::', 10, 'ipv6');

export function isGuardedAddress(address: string): boolean {
  const a = normaliseAddress(address);
  const family = isIP(a);
  return family !== 0 && GUARDED.check(a, family === 4 ? 'ipv4' : 'ipv6');
}

const GUARDED_RULE = 'egress: loopback and link-local addresses need an explicit allow entry';

export interface EgressDecision {
  readonly allowed: boolean;
  /** Which setting decided, for the refusal body and logs. */
  readonly rule: string;
}

export interface EgressSettings {
  readonly default: 'deny' | 'allow';
  readonly allow: readonly string[];
  readonly connectPorts: readonly number[];
}

/**
 * What happens to traffic for hosts no upstream serves. Allowed traffic is forwarded or tunnelled
 * plainly, never with a token. CONNECT tunnels are further limited to `connectPorts` unless an
 * allow entry names the port itself.
 */
export class EgressPolicy {
  readonly #allow: HostList;
  readonly #default: 'deny' | 'allow';
  readonly #connectPorts: ReadonlySet<number>;

  constructor(settings: EgressSettings) {
    const list = HostList.parse(settings.allow);
    if (Array.isArray(list)) throw new Error(list.join('; ')); // validated with the config
    this.#allow = list;
    this.#default = settings.default;
    this.#connectPorts = new Set(settings.connectPorts);
  }

  decide(host: string, port: number, kind: 'connect' | 'http'): EgressDecision {
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

  /**
   * A DNS lookup for egress connections: a name that resolves to a guarded address is refused
   * unless the name, or that address, is explicitly allowed. Checking the resolved address (not
   * the name) is what stops a DNS name pointed at 127.0.0.1 or the metadata service.
   */
  readonly lookup: LookupFunction = (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
      if (err) {
        callback(err, '', 0);
        return;
      }
      const explicit = this.#allow.listsName(hostname.toLowerCase());
      const blocked = explicit
        ? undefined
        : addresses.find((a) => isGuardedAddress(a.address) && !this.#allow.listsAddress(a.address));
      if (blocked !== undefined) {
        const denied = Object.assign(new Error(`${hostname} resolves to ${blocked.address}: ${GUARDED_RULE}`), {
          code: 'ERR_EGRESS_DENIED',
        });
        callback(denied, '', 0);
        return;
      }
      if ((options as { all?: boolean }).all === true)
        (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, addresses);
      else callback(null, addresses[0]?.address ?? '', addresses[0]?.family ?? 4);
    });
  };
}
