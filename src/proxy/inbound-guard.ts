import { createHash, timingSafeEqual } from 'node:crypto';
import type { ProxyUser } from '../config/load.js';
import type { AddressList } from './host-pattern.js';

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Who may use the proxy: client address ranges, and Basic Proxy-Authorization for forward mode. */
export class InboundGuard {
  readonly #cidrs: AddressList | undefined;
  /** user name → sha256 of "name:password"; digests have equal length, so comparison is constant-time. */
  readonly #users: Map<string, Buffer> | undefined;

  constructor(settings: {
    /** Parsed with the configuration. */
    allowCidrs: AddressList | undefined;
    proxyAuth: { users: readonly ProxyUser[] } | undefined;
  }) {
    this.#cidrs = settings.allowCidrs;
    if (settings.proxyAuth !== undefined) {
      this.#users = new Map(settings.proxyAuth.users.map((u) => [u.name, digest(`${u.name}:${u.password}`)]));
    }
  }

  clientAllowed(address: string | undefined): boolean {
    return this.#cidrs === undefined || (address !== undefined && this.#cidrs.allows(address));
  }

  get requiresProxyAuth(): boolean {
    return this.#users !== undefined;
  }

  /**
   * RFC 9110 §11.7.1 / RFC 7617: the authenticated user name, or undefined when the header is
   * missing or wrong. The comparison of secrets takes the same time whether or not they match.
   */
  authenticate(header: string | undefined): string | undefined {
    if (this.#users === undefined) return '';
    if (header === undefined || header.slice(0, 6).toLowerCase() !== 'basic ') return undefined;
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon === -1) return undefined;
    const name = decoded.slice(0, colon);
    const expected = this.#users.get(name) ?? digest('\u0000no such user');
    const ok = timingSafeEqual(digest(decoded), expected) && this.#users.has(name);
    return ok ? name : undefined;
  }
}
