/**
 * Which credential a renewal presents to the token endpoint. Pure: the caller gathers what it
 * holds, runs the step, and asks again after a refusal.
 *
 * A rotating refresh token (RFC 6749 §10.4, OAuth 2.0 Security BCP §4.14) may be presented once:
 * the newest one is the only valid one, and presenting a spent one can revoke the whole grant. So
 * the order is: the refresh token the fleet holds (the shared entry's, read under the lock), else
 * this replica's newest, else the one the cached token came with; after `invalid_grant` (expired,
 * revoked, or rotated by a sibling meanwhile), a newer one that appeared in the shared entry, or
 * else the one this replica obtained on its own while the shared tier was away; last, the full grant
 * (client credentials again, the password, or the login API's login).
 */

export type Credential =
  | { readonly kind: 'refresh_token'; readonly refreshToken: string; readonly from: RefreshTokenOrigin }
  | { readonly kind: 'grant' };

export type RefreshTokenOrigin = 'shared' | 'own' | 'cached';

export interface HeldRefreshTokens {
  /** The shared entry's refresh token, when the entry is not older than this replica's own renewal. */
  readonly shared?: string | undefined;
  /** This replica's newest refresh token (kept when a 401 or an eviction drops the access token). */
  readonly own?: string | undefined;
  /** The refresh token the cached access token came with. */
  readonly cached?: string | undefined;
}

const GRANT: Credential = { kind: 'grant' };

export function firstCredential(canRefresh: boolean, held: HeldRefreshTokens): Credential {
  if (!canRefresh) return GRANT;
  if (held.shared !== undefined) return { kind: 'refresh_token', refreshToken: held.shared, from: 'shared' };
  if (held.own !== undefined) return { kind: 'refresh_token', refreshToken: held.own, from: 'own' };
  if (held.cached !== undefined) return { kind: 'refresh_token', refreshToken: held.cached, from: 'cached' };
  return GRANT;
}

export interface AfterRefusal {
  /** Every refresh token refused so far in this renewal. */
  readonly refused: ReadonlySet<string>;
  /** The shared entry's refresh token as read again after the refusal (a sibling may have rotated it). */
  readonly shared?: string | undefined;
  /**
   * This replica's own refresh token, only when it renewed alone after the shared entry it knows
   * (any other one it holds came from an entry since rotated: presenting it would be a reuse).
   */
  readonly ownFromRenewingAlone?: string | undefined;
}

/**
 * At most one other refresh token is tried after the first refusal, then the full grant: a renewal
 * makes at most three token requests, which bounds how long it holds the shared lock (see
 * config/warnings.ts).
 */
export function credentialAfterRefusal(after: AfterRefusal): Credential {
  const { refused, shared, ownFromRenewingAlone: own } = after;
  if (refused.size >= 2) return GRANT;
  if (shared !== undefined && !refused.has(shared))
    return { kind: 'refresh_token', refreshToken: shared, from: 'shared' };
  if (own !== undefined && !refused.has(own)) return { kind: 'refresh_token', refreshToken: own, from: 'own' };
  return GRANT;
}
