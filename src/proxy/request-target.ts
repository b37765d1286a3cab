import { isValidHostname, splitHostPort } from './host-pattern.js';

export interface Authority {
  /** Lower case; IPv6 without brackets. */
  readonly host: string;
  readonly port: number;
}

export interface AbsoluteTarget extends Authority {
  /** Origin-form path and query, at least "/". */
  readonly path: string;
}

/** `host:port` of a CONNECT request (RFC 9110 §9.3.6: the port is required). */
export function parseConnectAuthority(target: string): Authority | null {
  const parts = splitHostPort(target);
  if (parts === null || parts.port === undefined || !isValidHostname(parts.host)) return null;
  return { host: parts.host, port: parts.port };
}

/**
 * RFC 9112 §3.2.2 absolute-form, as proxy clients send it for `http://` URLs. Only the http
 * scheme; userinfo is refused (RFC 9110 §4.2.4 deprecates it, and it hides the real host).
 */
export function parseAbsoluteForm(target: string): AbsoluteTarget | null {
  if (target.length < 8 || target.slice(0, 7).toLowerCase() !== 'http://') return null;
  const slash = target.indexOf('/', 7);
  const queryStart = target.indexOf('?', 7);
  const end = slash === -1 ? (queryStart === -1 ? target.length : queryStart) : queryStart === -1 ? slash : Math.min(slash, queryStart);
  const authority = target.slice(7, end);
  if (authority === '' || authority.includes('@')) return null;
  const parts = splitHostPort(authority);
  if (parts === null || !isValidHostname(parts.host)) return null;
  const rest = target.slice(end);
  const path = rest === '' ? '/' : rest.charCodeAt(0) === 63 ? `/${rest}` : rest;
  return { host: parts.host, port: parts.port ?? 80, path };
}

/** A host for a URL: IPv6 literals in brackets. */
export function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
