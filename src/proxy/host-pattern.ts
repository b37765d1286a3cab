import { BlockList, isIP } from 'node:net';
import { canonicalIp } from './ip-literal.js';

/** `api.partner.example`, `*.partner.example`, either with an optional `:port`. */
export interface HostPattern {
  /** Lower-case host, without the `*.` of a wildcard; an IP address in its canonical form (ip-literal.ts). */
  readonly host: string;
  /** `*.suffix`: any name below the suffix (not the suffix itself, as in TLS wildcards). */
  readonly wildcard: boolean;
  readonly port: number | undefined;
  /** The entry as written in the configuration, for summaries. */
  readonly text: string;
}

const DNS_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function parsePort(text: string | undefined): number | undefined | null {
  if (text === undefined) return undefined;
  if (!/^\d{1,5}$/.test(text)) return null;
  const port = Number(text);
  return port >= 1 && port <= 65_535 ? port : null;
}

/** Splits `host:port` / `[v6]:port` / bare host; null when malformed. The host is not canonicalised. */
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

/** Parses an upstream `hosts` or `egress.allow` entry; returns an error message when malformed. */
export function parseHostPattern(text: string): HostPattern | string {
  const wildcard = text.startsWith('*.');
  const parts = splitHostPort(wildcard ? text.slice(2) : text);
  if (parts === null) return `"${text}" is not host, *.suffix, or either with :port`;
  if (!isValidHostname(parts.host)) return `"${text}" is not a valid host name`;
  if (wildcard && isIP(parts.host) !== 0) return `"${text}": a wildcard needs a DNS suffix, not an IP`;
  // Requests are compared in the canonical spelling (request-target.ts): so is the entry.
  return { host: canonicalIp(parts.host) ?? parts.host, wildcard, port: parts.port, text };
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

function blockListFamily(family: number): 'ipv4' | 'ipv6' {
  return family === 4 ? 'ipv4' : 'ipv6';
}

/** An IP entry without a port: any port (the caller's port rule then decides). */
const ANY_PORT = 'any';

/**
 * An egress allow-list: host names and `*.suffix` (optional `:port`), IP addresses (optional
 * `:port`) and CIDR ranges. Built once, with the configuration; the lookups do no parsing. Hosts
 * passed in are canonical (request-target.ts, ip-literal.ts), as the entries are stored.
 */
export class HostList {
  /** The entries as written, for summaries. */
  readonly entries: readonly string[];
  readonly #names: HostPattern[] = [];
  readonly #ranges = new BlockList();
  #hasRanges = false;
  /** Canonical address → the ports its entries name, or any port. */
  readonly #addresses = new Map<string, Set<number> | typeof ANY_PORT>();

  private constructor(entries: readonly string[]) {
    this.entries = [...entries];
  }

  /** Returns the problems found, one per bad entry. */
  static parse(entries: readonly string[]): HostList | string[] {
    const list = new HostList(entries);
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
      this.#ranges.addSubnet(net, prefix, blockListFamily(family));
      this.#hasRanges = true;
      return undefined;
    }
    const parsed = parseHostPattern(entry);
    if (typeof parsed === 'string') return parsed;
    if (isIP(parsed.host) === 0) {
      this.#names.push(parsed);
      return undefined;
    }
    const ports = this.#addresses.get(parsed.host);
    if (parsed.port === undefined) this.#addresses.set(parsed.host, ANY_PORT);
    else if (ports === undefined) this.#addresses.set(parsed.host, new Set([parsed.port]));
    else if (ports !== ANY_PORT) ports.add(parsed.port);
    return undefined;
  }

  /** Whether a name entry (any port) covers this host name. */
  listsName(host: string): boolean {
    return this.#names.some((p) => nameMatches(p, host));
  }

  /**
   * Whether an IP entry names this canonical address at this port (or at any port). Only such an
   * entry opens what even a range must not open on its own (egress.ts: the proxy's own
   * listeners, metadata endpoints outside link-local).
   */
  namesAddress(address: string, port: number): boolean {
    const ports = this.#addresses.get(address);
    return ports !== undefined && (ports === ANY_PORT || ports.has(port));
  }

  /**
   * Whether host:port is listed. An entry without a port allows any port; `portAllowed` then
   * decides (the CONNECT port list).
   */
  allows(host: string, port: number, portAllowed: (port: number) => boolean): boolean {
    const family = isIP(host);
    if (family !== 0) {
      const ports = this.#addresses.get(host);
      if (ports !== undefined && ports !== ANY_PORT && ports.has(port)) return true;
      const anyPort = ports === ANY_PORT || (this.#hasRanges && this.#ranges.check(host, blockListFamily(family)));
      return anyPort && portAllowed(port);
    }
    for (const p of this.#names) {
      if (!nameMatches(p, host)) continue;
      if (p.port === undefined ? portAllowed(port) : p.port === port) return true;
    }
    return false;
  }
}

/**
 * Client addresses and CIDR ranges (inbound.allowCidrs). Built once, with the configuration.
 */
export class AddressList {
  /** The entries as written, for summaries. */
  readonly entries: readonly string[];
  readonly #list = new BlockList();

  private constructor(entries: readonly string[]) {
    this.entries = [...entries];
  }

  /** Returns the problems found, one per bad entry. */
  static parse(entries: readonly string[]): AddressList | string[] {
    const list = new AddressList(entries);
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
      list.#list.addSubnet(net, prefix, blockListFamily(family));
    });
    return problems.length > 0 ? problems : list;
  }

  /**
   * A socket's remote address. BlockList compares addresses, not text: an IPv4 client on a
   * dual-stack socket (`::ffff:10.1.2.3`) matches the IPv4 entries, any IPv6 spelling matches.
   */
  allows(address: string): boolean {
    const family = isIP(address);
    return family !== 0 && this.#list.check(address, blockListFamily(family));
  }
}
