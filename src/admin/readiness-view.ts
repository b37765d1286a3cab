import type { TokenProviderStatus } from '../tokens/provider.js';

/**
 * A token source as /readyz has always shown it (upstream, tenant, state, expiry, current error,
 * assertion): probes and scripts read that shape. Refresh and failure history is the status page's.
 */
export function readinessView(s: TokenProviderStatus): TokenProviderStatus {
  return {
    upstream: s.upstream,
    ...(s.tenant === undefined ? {} : { tenant: s.tenant }),
    state: s.state,
    ...(s.expiresInSeconds === undefined ? {} : { expiresInSeconds: s.expiresInSeconds }),
    ...(s.lastError === undefined ? {} : { lastError: s.lastError }),
    ...(s.assertion === undefined ? {} : { assertion: s.assertion }),
  };
}
