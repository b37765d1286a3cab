import { createHash } from 'node:crypto';
import { decodeJwt } from 'jose';
import { TokenError } from '../errors.js';
import type { TokenResponse } from '../oauth/token-endpoint.js';

/** A cached access token and the moments that govern its use. All times are epoch milliseconds. */
export interface Token {
  readonly value: string;
  /** `Bearer <value>`, built once so the hot path does not concatenate per request. */
  readonly header: string;
  /** Short, non-reversible name for logs. */
  readonly fingerprint: string;
  readonly refreshToken: string | undefined;
  readonly obtainedAt: number;
  /** When the issuer says it expires. */
  readonly expiresAt: number;
  /** Last moment it is injected: expiry less the clock-skew margin. */
  readonly usableUntil: number;
  /** From here on a request that uses it also starts a background refresh. */
  readonly refreshAt: number;
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
export function tokenWithTimes(value: string, refreshToken: string | undefined, obtainedAt: number, expiresAt: number, policy: LifetimePolicy): Token {
  const lifetime = expiresAt - obtainedAt;
  const usableUntil = expiresAt - Math.min(policy.clockSkewMs, lifetime / 4);
  const lead = Math.min(policy.refreshBeforeExpiryMs, lifetime / 2);
  const jitter = policy.refreshJitter === undefined ? 0 : (lead / 10) * policy.refreshJitter();
  const refreshAt = Math.min(expiresAt - lead - jitter, usableUntil);
  // One copy of the token text: `value` is a slice of `header` (V8 shares the characters), so a
  // cache of 100,000 tenant tokens holds each token once, not twice.
  const header = `Bearer ${value}`;
  return { value: header.slice(7), header, fingerprint: fingerprint(value), refreshToken, obtainedAt, expiresAt, usableUntil, refreshAt };
}
