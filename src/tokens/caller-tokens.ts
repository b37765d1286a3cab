import { createHash } from 'node:crypto';
import type { JWTPayload } from 'jose';
import type { Clock } from './clock.js';
import { flatString } from './flat-string.js';
import type { ProviderGrant } from './provider-grant.js';
import type { TokenProviders } from './provider-registry.js';
import type { CallerTokens, TokenReader } from './reader.js';

export interface CallerTokenOptions {
  /** The cache key of the upstream's settings (cacheKey): each caller's key extends it. */
  readonly base: string;
  readonly providers: TokenProviders;
  readonly clock: Clock;
  /** The grant of one caller: its token as the subject, its expiry (epoch ms) as the end of use. */
  readonly grant: (subjectToken: string, notAfter: number) => ProviderGrant;
}

/**
 * The token sources of an upstream with token exchange (RFC 8693), one per caller token. The
 * caller's token is a bearer credential: it is never a key, a label, a log field or a Redis name.
 * Its SHA-256 is, in the cache key (memory tier and shared tier alike); a JWT carries a signature
 * no one can guess, so the hash names it without revealing it, and every replica computes the
 * same one. The token itself stays only inside its provider's grant, to exchange it again.
 */
export class CallerTokenSources implements CallerTokens {
  readonly #o: CallerTokenOptions;

  constructor(options: CallerTokenOptions) {
    this.#o = options;
  }

  forCaller(subjectToken: string, claims: JWTPayload): TokenReader | undefined {
    const { base, providers, clock, grant } = this.#o;
    // The validator requires a numeric exp; past it, nothing exchanged for the token is used.
    const notAfter = typeof claims.exp === 'number' ? claims.exp * 1000 : 0;
    if (clock.now() >= notAfter) return undefined;
    const key = flatString(`${base}.${createHash('sha256').update(subjectToken).digest('base64url')}`);
    return providers.forCaller(base, key, this, () => grant(subjectToken, notAfter));
  }
}
