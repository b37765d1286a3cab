import type { Logger } from 'pino';
import { TokenError } from '../errors.js';
import type { Grant } from '../oauth/grants.js';
import type { TokenResponse } from '../oauth/token-endpoint.js';
import { credentialAfterRefusal, firstCredential, type Credential } from './refresh-plan.js';
import type { SharedEntry } from './shared-store.js';
import type { Token } from './token.js';

/** What the chain needs of the key's provider. */
export interface ChainParty {
  readonly grant: Grant;
  readonly logger: Logger;
  readonly labels: { readonly upstream: string; readonly tenant: string | undefined };
  /** This replica's newest refresh token, and whether it got it renewing alone (see SharedView). */
  ownRefreshToken(): { readonly value: string | undefined; readonly fromRenewingAlone: boolean };
  /** The refresh token the cached access token came with. */
  cachedRefreshToken(): string | undefined;
  /** `refreshToken` was refused: forget it if it is this replica's own. */
  refused(refreshToken: string): void;
  /** A sibling's newer shared entry as a usable token (its access token still good), else undefined. */
  adoptNewer(entry: SharedEntry): Token | undefined;
  /** Whether a shared entry may be used at all (not stale, not from before this replica's own renewal). */
  admits(entry: SharedEntry): boolean;
}

/**
 * Renews following the refresh plan: the first credential, then after each `invalid_grant` the
 * next one, ending with the full grant. A sibling's newer entry found after a refusal is adopted as
 * it is when its access token is still good: refreshing again with its refresh token would revoke
 * the one the fleet now holds.
 */
export async function renewWithPlan(
  party: ChainParty,
  sharedRefreshToken: string | undefined,
  reread?: () => Promise<SharedEntry | undefined>,
): Promise<TokenResponse | Token> {
  const own = party.ownRefreshToken();
  let credential: Credential = firstCredential(party.grant.refresh !== undefined, {
    shared: sharedRefreshToken,
    own: own.value,
    cached: party.cachedRefreshToken(),
  });
  const refused = new Set<string>();
  for (;;) {
    const refresh = party.grant.refresh;
    if (credential.kind === 'grant' || refresh === undefined) return party.grant.obtain();
    const presented = credential.refreshToken;
    try {
      return await refreshKeeping(refresh, presented);
    } catch (err) {
      if (!isInvalidGrant(err)) throw err;
      refused.add(presented);
      party.refused(presented);
      const latest = await reread?.().catch(() => undefined);
      const newer = latest !== undefined && party.admits(latest) ? latest : undefined;
      if (newer?.refreshToken !== undefined && !refused.has(newer.refreshToken)) {
        const theirs = party.adoptNewer(newer);
        if (theirs !== undefined) return theirs;
      }
      const mine = party.ownRefreshToken();
      credential = credentialAfterRefusal({
        refused,
        shared: newer?.refreshToken,
        ownFromRenewingAlone: mine.fromRenewingAlone ? mine.value : undefined,
      });
      if (credential.kind === 'grant') {
        party.logger.warn(
          { event: 'refresh_token_rejected', ...party.labels, description: err.description },
          'refresh token rejected (expired or revoked): running the full grant',
        );
      }
    }
  }
}

/**
 * Renews with `used`. An answer without a refresh token leaves `used` valid (RFC 6749 §6: the
 * server MAY issue a new one): it stays with the token, in memory and in the shared entry.
 */
async function refreshKeeping(
  refresh: (refreshToken: string) => Promise<TokenResponse>,
  used: string,
): Promise<TokenResponse> {
  const res = await refresh(used);
  return res.refreshToken === undefined ? { ...res, refreshToken: used } : res;
}

/** The server refused the refresh token (RFC 6749 §5.2): expired, revoked, or already rotated. */
function isInvalidGrant(err: unknown): err is TokenError {
  return err instanceof TokenError && err.reason === 'invalid_grant';
}
