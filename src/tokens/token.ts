import { createHash } from 'node:crypto';
import { decodeJwt } from 'jose';
import { TokenError } from '../errors.js';
import type { TokenResponse } from '../oauth/token-endpoint.js';
import { flatString } from './flat-string.js';

/**
 * What may follow `Bearer `: visible ASCII (an access token is 1*VSCHAR, RFC 6749 §A.12) without
 * the space, which would split the credentials (RFC 6750 §2.1 allows one word, the narrower
 * b64token). Anything else cannot be sent as a valid header value.
 */
const HEADER_SAFE = /^[\x21-\x7e]+$/;
const SCHEME = 'Bearer ';

/**
 * A whole number as an int32 when it fits, which V8 keeps inside the field as a small integer
 * (a Smi) instead of pointing to a heap number: arithmetic on times yields a heap number even when
 * the result is whole. Every value given here fits (see Token), so the fields keep that form.
 */
function int32(n: number): number {
  return n <= 0x3fffffff && n >= -0x40000000 && Number.isInteger(n) ? n | 0 : n;
}

/** Epoch milliseconds on a whole second: a token's expiry is kept as the seconds after it (see Token). */
const ORIGIN_MS = Math.floor(performance.timeOrigin / 1000) * 1000;

/**
 * A cached access token and the moments that govern its use. All times are epoch milliseconds.
 *
 * Shaped for a cache of 100,000 tenant tokens (issue 8: they add at most 100 MB; see
 * BENCHMARKS.md): the token text is held once, inside a flat `Bearer <token>` string (a string
 * built by concatenation would keep a second, flattened copy once written to a socket); the expiry
 * is a whole second, counted in seconds from about when the process started (30-bit integers last
 * 34 years), and the other moments whole milliseconds back from it (at most a day,
 * MAX_TOKEN_LIFETIME_MS), so that all four stay small integers inside the object instead of a heap
 * number of 16 bytes each.
 */
export class Token {
  /** `Bearer <value>`, built once so the hot path does not concatenate per request. */
  readonly header: string;
  readonly refreshToken: string | undefined;
  readonly #expiresSeconds: number;
  readonly #lifetimeMs: number;
  readonly #skewMs: number;
  readonly #leadMs: number;
  #fingerprint: string | undefined;

  /** Made by tokenWithTimes; `expiresAt` in epoch ms on a whole second, the rest in ms before it. */
  constructor(
    header: string,
    refreshToken: string | undefined,
    expiresAt: number,
    lifetimeMs: number,
    skewMs: number,
    leadMs: number,
  ) {
    this.header = header;
    this.refreshToken = refreshToken;
    this.#expiresSeconds = int32((expiresAt - ORIGIN_MS) / 1000);
    this.#lifetimeMs = int32(lifetimeMs);
    this.#skewMs = int32(skewMs);
    this.#leadMs = int32(leadMs);
    this.#fingerprint = undefined;
  }

  /** When the issuer says it expires. */
  get expiresAt(): number {
    return ORIGIN_MS + this.#expiresSeconds * 1000;
  }

  get value(): string {
    return this.header.slice(SCHEME.length);
  }

  /** Short, non-reversible name for logs; made on first use (the access log asks on every request). */
  get fingerprint(): string {
    this.#fingerprint ??= fingerprint(this.value);
    return this.#fingerprint;
  }

  get obtainedAt(): number {
    return this.expiresAt - this.#lifetimeMs;
  }

  /** Last moment it is injected: expiry less the clock-skew margin. */
  get usableUntil(): number {
    return this.expiresAt - this.#skewMs;
  }

  /** From here on a request that uses it also starts a background refresh. */
  get refreshAt(): number {
    return this.expiresAt - this.#leadMs;
  }

  /**
   * The same token, never used at or after `at` (epoch ms): RFC 8693, the expiry of the caller
   * token it was exchanged for. When that comes first, renewing cannot take the token further (a
   * new exchange of the same caller token ends there too): it is used up to `at`, without the
   * clock-skew margin (the token itself lives on past it) and without a refresh ahead. Undefined
   * when `at` leaves nothing of it.
   */
  cappedAt(at: number): Token | undefined {
    const end = Math.floor(at / 1000) * 1000;
    if (end >= this.usableUntil) return this;
    const lifetimeMs = end - this.obtainedAt;
    return lifetimeMs <= 0 ? undefined : new Token(this.header, this.refreshToken, end, lifetimeMs, 0, 0);
  }

  /** The same token, refreshed no earlier than `at`. */
  refreshNotBefore(at: number): Token {
    const leadMs = Math.min(this.#leadMs, Math.floor(this.expiresAt - at));
    return new Token(this.header, this.refreshToken, this.expiresAt, this.#lifetimeMs, this.#skewMs, leadMs);
  }
}

export interface LifetimePolicy {
  readonly refreshBeforeExpiryMs: number;
  readonly clockSkewMs: number;
  readonly defaultLifetimeMs: number;
  /**
   * With a shared cache, replicas start their refresh a little apart (up to a tenth of the lead
   * earlier, at random) so they do not all reach for the lock at the same moment.
   */
  readonly refreshJitter?: () => number;
}

/** No token is trusted for longer than a day, whatever a misconfigured server says. */
export const MAX_TOKEN_LIFETIME_MS = 24 * 3600 * 1000;

export function fingerprint(token: string): string {
  return createHash('sha256').update(token).digest('base64url').slice(0, 12);
}

/** The JWT `exp` claim in ms, when the token is a JWT that has one (RFC 7519 §4.1.4). */
function jwtExpiry(token: string): number | undefined {
  if (token.split('.').length !== 3) return undefined;
  try {
    const { exp } = decodeJwt(token);
    return typeof exp === 'number' ? exp * 1000 : undefined;
  } catch {
    return undefined; // opaque token that merely looks like a JWT
  }
}

/**
 * Turns a token response into a cache entry. Expiry is the earliest of `expires_in` and the JWT
 * `exp`; without either, the configured default. The skew margin is capped at a quarter of the
 * lifetime and the refresh lead at half of it, so a short token (say 10 s) is still used for most
 * of its life and is not refreshed on every request.
 */
export function tokenFromResponse(res: TokenResponse, now: number, policy: LifetimePolicy): Token {
  const candidates: number[] = [];
  if (res.expiresIn !== undefined) {
    if (res.expiresIn <= 0) throw new TokenError('bad_response', `token response has expires_in ${res.expiresIn}`);
    candidates.push(now + res.expiresIn * 1000);
  }
  if (res.expiresAt !== undefined) {
    if (res.expiresAt <= now) throw new TokenError('bad_response', 'token response says the token has already expired');
    candidates.push(res.expiresAt);
  }
  const exp = jwtExpiry(res.accessToken);
  if (exp !== undefined) candidates.push(exp);
  let expiresAt = candidates.length > 0 ? Math.min(...candidates) : now + policy.defaultLifetimeMs;
  expiresAt = Math.min(expiresAt, now + MAX_TOKEN_LIFETIME_MS);
  if (expiresAt <= now) throw new TokenError('bad_response', 'token response holds a token that has already expired');
  return tokenWithTimes(res.accessToken, res.refreshToken, now, expiresAt, policy);
}

/** The moments of use of a token that lives from `obtainedAt` to `expiresAt` (also for entries read from the shared cache). */
export function tokenWithTimes(
  value: string,
  refreshToken: string | undefined,
  obtainedAt: number,
  expiresAt: number,
  policy: LifetimePolicy,
): Token {
  if (!HEADER_SAFE.test(value)) {
    throw new TokenError(
      'bad_response',
      'access_token holds characters a Bearer header cannot carry (visible ASCII without spaces: RFC 6749 §A.12, RFC 6750 §2.1)',
    );
  }
  // Expiry on the whole second, rounded down (the token is given up to a second early; see Token).
  expiresAt = Math.floor(expiresAt / 1000) * 1000;
  const lifetime = expiresAt - obtainedAt;
  if (lifetime <= 0)
    throw new TokenError('bad_response', 'token response holds a token that expires within the second');
  const skew = Math.min(policy.clockSkewMs, lifetime / 4);
  const lead = Math.min(policy.refreshBeforeExpiryMs, lifetime / 2);
  const jitter = policy.refreshJitter === undefined ? 0 : (lead / 10) * policy.refreshJitter();
  // Rounded up: the token stops being used, and its refresh starts, a fraction of a millisecond early rather than late.
  const skewMs = Math.ceil(skew);
  const leadMs = Math.max(Math.ceil(lead + jitter), skewMs);
  const header = flatString(`${SCHEME}${value}`);
  return new Token(header, refreshToken, expiresAt, Math.floor(lifetime), skewMs, leadMs);
}
