import { isIP } from 'node:net';
import { isValidHostname, splitHostPort } from './host-pattern.js';
import { canonicalIp } from './ip-literal.js';

/** A last label that is all digits or hex makes the WHATWG host parser read the name as IPv4. */
const NUMERIC_LABEL = /(?:^|\.)(?:0x[0-9a-f]*|\d+)\.?$/i;

/**
 * The host as clients and undici will see it. Numeric shorthands (`127.1`, `2130706433`,
 * `0x7f000001`, `0177.0.0.1`) are IPv4 addresses in disguise (WHATWG URL host parsing, inet_aton):
 * they are turned into the address they mean, so egress rules judge the address, not the disguise.
 * IPv6 literals take their one canonical spelling, IPv4-mapped ones their IPv4 address
 * (ip-literal.ts): routing, the allow list and its port pins, and the guard see one address.
 * Names pay for one isIP and one regex test; only IPv6 literals are parsed further.
 */
export function canonicalHost(host: string): string | null {
  const family = isIP(host);
  if (family === 6) return canonicalIp(host) ?? null;
  if (family === 4 || !NUMERIC_LABEL.test(host)) return host;
  try {
    const parsed = new URL(`http://${host}/`).hostname;
    return isIP(parsed) === 4 ? parsed : null;
  } catch {
    return null;
  }
}

export interface Authority {
  /** Lower case; an IP address in its canonical form (ip-literal.ts), IPv6 without brackets. */
  readonly host: string;
  readonly port: number;
}

export interface AbsoluteTarget extends Authority {
  /** Origin-form path and query, at least "/". */
  readonly path: string;
}

/**
 * An IPv6 literal in an authority must be in brackets (RFC 3986 §3.2.2): `::1:8080` could be the
 * address ::1:8080 or ::1 port 8080, and guessing would send the request somewhere unintended.
 */
function unbracketedIpv6(authority: string): boolean {
  return authority.charCodeAt(0) !== 91 /* [ */ && authority.indexOf(':') !== authority.lastIndexOf(':');
}

/** `host:port` of a CONNECT request (RFC 9110 §9.3.6: the port is required). */
export function parseConnectAuthority(target: string): Authority | null {
  if (unbracketedIpv6(target)) return null;
  const parts = splitHostPort(target);
  if (parts === null || parts.port === undefined || !isValidHostname(parts.host)) return null;
  const host = canonicalHost(parts.host);
  return host === null ? null : { host, port: parts.port };
}

/**
 * RFC 9112 §3.2.2 absolute-form, as proxy clients send it for `http://` URLs. Only the http
 * scheme; userinfo is refused (RFC 9110 §4.2.4 deprecates it, and it hides the real host).
 */
export function parseAbsoluteForm(target: string): AbsoluteTarget | null {
  // No fragment in a request target (RFC 9112 §3.2).
  if (target.length < 8 || target.slice(0, 7).toLowerCase() !== 'http://' || target.includes('#')) return null;
  const slash = target.indexOf('/', 7);
  const queryStart = target.indexOf('?', 7);
  const end =
    slash === -1
      ? queryStart === -1
        ? target.length
        : queryStart
      : queryStart === -1
        ? slash
        : Math.min(slash, queryStart);
  const authority = target.slice(7, end);
  if (authority === '' || authority.includes('@') || unbracketedIpv6(authority)) return null;
  const parts = splitHostPort(authority);
  if (parts === null || !isValidHostname(parts.host)) return null;
  const host = canonicalHost(parts.host);
  if (host === null) return null;
  const rest = target.slice(end);
  const path = rest === '' ? '/' : rest.charCodeAt(0) === 63 ? `/${rest}` : rest;
  return { host, port: parts.port ?? 80, path };
}

/** A host for a URL: IPv6 literals in brackets. */
export function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
