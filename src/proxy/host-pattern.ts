import { BlockList, isIP } from 'node:net';

/** `api.partner.example`, `*.partner.example`, either with an optional `:port`. */
export interface HostPattern {
  /** Lower-case host, without the `*.` of a wildcard. */
  readonly host: string;
  /** `*.suffix`: any name below the suffix (not the suffix itself, as in TLS wildcards). */
  readonly wildcard: boolean;
  readonly port: number | undefined;
}

const DNS_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function parsePort(text: string | undefined): number | undefined | null {
  if (text === undefined) return undefined;
  if (!/^\d{1,5}$/.test(text)) return null;
  const port = Number(text);
  return port >= 1 && port <= 65_535 ? port : null;
}

/** Splits `host:port` / `[v6]:port` / bare host; null when malformed. */
export function splitHostPort(authority: string): { host: string; port: number | undefined } | null {
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::(\d+))?$/.exec(authority);
  if (v6) {
    const port = parsePort(v6[2]);
    return isIP(v6[1] as string) === 6 && port !== null ? { host: (v6[1] as string).toLowerCase(), port } : null;
  }
  if (isIP(authority) === 6) return { host: authority.toLowerCase(), port: undefined };
  const colon = authority.lastIndexOf(':');
  const host = (colon === -1 ? authority : authority.slice(0, colon)).toLowerCase();
  const port = parsePort(colon === -1 ? undefined : authority.slice(colon + 1));
  if (port === null || host === '') return null;
  return { host, port };
}

export function isValidHostname(host: string): boolean {
  return isIP(host) !== 0 || DNS_NAME.test(host);
}

/** Parses an upstream `hosts` entry; returns an error message when malformed. */
export function parseHostPattern(text: string): HostPattern | string {
  const wildcard = text.startsWith('*.');
  const parts = splitHostPort(wildcard ? text.slice(2) : text);
  if (parts === null) return `"${text}" is not host, *.suffix, or either with :port`;
  if (!isValidHostname(parts.host)) return `"${text}" is not a valid host name`;
  if (wildcard && isIP(parts.host) !== 0) return `"${text}": a wildcard needs a DNS suffix, not an IP`;
  return { host: parts.host, wildcard, port: parts.port };
}

/** Does `host` (lower case) fall under the pattern's name part? Ports are checked by the caller. */
export function nameMatches(pattern: HostPattern, host: string): boolean {
  if (!pattern.wildcard) return host === pattern.host;
  return (
    host.length > pattern.host.length + 1 &&
    host.endsWith(pattern.host) &&
    host.charCodeAt(host.length - pattern.host.length - 1) === 46
  );
}

/**
 * An egress allow-list: host names and `*.suffix` (optional `:port`), IP addresses and CIDR
 * ranges. Built once; `allows` does no parsing.
 */
export class HostList {
  readonly #names: HostPattern[] = [];
  readonly #ips = new BlockList();
  /** IPs and ranges listed with a port (`10.0.0.1:8443`) keep it here. */
  readonly #ipPorts = new Map<string, number>();
  #hasIps = false;

  /** Returns the problems found, one per bad entry. */
  static parse(entries: readonly string[]): HostList | string[] {
    const list = new HostList();
    const problems: string[] = [];
    entries.forEach((entry, i) => {
      const problem = list.#add(entry);
      if (problem !== undefined) problems.push(`[${i}]: ${problem}`);
    });
    return problems.length > 0 ? problems : list;
  }

  #add(entry: string): string | undefined {
    const slash = entry.indexOf('/');
    if (slash !== -1) {
      const net = entry.slice(0, slash);
      const prefix = Number(entry.slice(slash + 1));
      const family = isIP(net);
      if (family === 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > (family === 4 ? 32 : 128))
        return `"${entry}" is not a valid CIDR range`;
      this.#ips.addSubnet(net, prefix, family === 4 ? 'ipv4' : 'ipv6');
      this.#hasIps = true;
      return undefined;
    }
    const parsed = parseHostPattern(entry);
    if (typeof parsed === 'string') return parsed;
    const family = isIP(parsed.host);
    if (family !== 0) {
      this.#ips.addAddress(parsed.host, family === 4 ? 'ipv4' : 'ipv6');
      if (parsed.port !== undefined) this.#ipPorts.set(parsed.host, parsed.port);
      this.#hasIps = true;
      return undefined;
    }
    this.#names.push(parsed);
    return undefined;
  }

  /** Whether a name entry (any port) covers this host name. */
  listsName(host: string): boolean {
    return this.#names.some((p) => nameMatches(p, host));
  }

  /** Whether an IP or CIDR entry (any port) covers this address. */
  listsAddress(address: string): boolean {
    const a = normaliseAddress(address);
    const family = isIP(a);
    return this.#hasIps && family !== 0 && this.#ips.check(a, family === 4 ? 'ipv4' : 'ipv6');
  }

  /**
   * Whether host:port is listed. An entry without a port allows any port; `portAllowed` then
   * decides (the CONNECT port list).
   */
  allows(host: string, port: number, portAllowed: (port: number) => boolean): boolean {
    const family = isIP(host);
    if (family !== 0) {
      if (!this.#hasIps || !this.#ips.check(host, family === 4 ? 'ipv4' : 'ipv6')) return false;
      const fixed = this.#ipPorts.get(host);
      return fixed === undefined ? portAllowed(port) : fixed === port;
    }
    for (const p of this.#names) {
      if (!nameMatches(p, host)) continue;
      if (p.port === undefined ? portAllowed(port) : p.port === port) return true;
    }
    return false;
  }
}

/** `::ffff:10.1.2.3` (an IPv4 client on a dual-stack socket) as plain IPv4. */
export function normaliseAddress(address: string): string {
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

/** IP addresses and CIDR ranges (client allow-lists). */
export function parseAddressList(entries: readonly string[]): BlockList | string[] {
  const list = new BlockList();
  const problems: string[] = [];
  entries.forEach((entry, i) => {
    const [net = '', bits] = entry.split('/');
    const family = isIP(net);
    const prefix = bits === undefined ? (family === 4 ? 32 : 128) : Number(bits);
    if (
      family === 0 ||
      !Number.isInteger(prefix) ||
      prefix < 0 ||
      prefix > (family === 4 ? 32 : 128) ||
      (bits !== undefined && !/^\d+$/.test(bits))
    ) {
      problems.push(`[${i}]: "${entry}" is not an IP address or CIDR range`);
      return;
    }
    list.addSubnet(net, prefix, family === 4 ? 'ipv4' : 'ipv6');
  });
  return problems.length > 0 ? problems : list;
}

export function addressAllowed(list: BlockList, address: string): boolean {
  const a = normaliseAddress(address);
  const family = isIP(a);
  return family !== 0 && list.check(a, family === 4 ? 'ipv4' : 'ipv6');
}
