import type { TokenError } from '../errors.js';
import type { RefreshTrigger } from '../metrics.js';
import type { ProviderGrant } from './provider-grant.js';
import type { Token } from './token.js';

/** The token lifecycle's log lines: fingerprints and reasons, never a token, secret or assertion. */

export function logRefreshFailed(
  g: ProviderGrant,
  trigger: RefreshTrigger,
  error: TokenError,
  failures: number,
  retryInMs: number | undefined,
): void {
  g.logger.warn(
    {
      event: 'token_refresh_failed',
      upstream: g.upstream,
      tenant: g.tenant,
      trigger,
      reason: error.reason,
      status: error.status,
      description: error.description,
      detail: error.message,
      failures,
      retryInMs: retryInMs === undefined ? undefined : Math.round(retryInMs),
    },
    `token refresh failed: ${error.reason}`,
  );
}

export function logTokenObtained(
  g: ProviderGrant,
  trigger: RefreshTrigger,
  token: Token,
  previous: Token | undefined,
  from: string,
  ms: number,
): void {
  g.logger.info(
    {
      event: 'token_obtained',
      upstream: g.upstream,
      tenant: g.tenant,
      trigger,
      token: token.fingerprint,
      from,
      lifetimeSeconds: Math.round((token.expiresAt - token.obtainedAt) / 1000),
      durationMs: Math.round(ms),
      sameAsCached: previous?.header === token.header,
    },
    'token obtained',
  );
}
