import type { TokenProviderStatus } from '../tokens/provider.js';
import type { UpstreamTokens } from './status.js';

/** What the status page needs of a token source. */
export interface StatusOfTokens {
  readonly upstream: string;
  status(): TokenProviderStatus;
}

/**
 * The upstreams of a configuration with their token sources' states, in the config's order. An
 * upstream with no source of its own exchanges each caller's token (RFC 8693): `per_caller`.
 */
export function upstreamTokens(
  upstreams: readonly { readonly name: string; readonly tenants?: unknown }[],
  sources: Iterable<StatusOfTokens>,
): UpstreamTokens[] {
  const all = [...sources];
  return upstreams.map((u) => {
    const tokens = all.filter((s) => s.upstream === u.name).map((s) => s.status());
    return {
      name: u.name,
      tokenSource: u.tenants !== undefined ? 'tenants' : tokens.length === 0 ? 'per_caller' : 'upstream',
      tokens,
    };
  });
}
