import type { Logger } from 'pino';
import type { TokenMetrics } from '../metrics.js';
import type { Grant } from '../oauth/grants.js';
import type { RenewalBackoff } from './renewal-policy.js';
import type { LifetimePolicy } from './token.js';
import type { TokenRequestLabels, Tracing } from '../tracing/tracing.js';

/** What a configuration says of a key: replaced on every reload (`setGrant`), while the provider lives on. */
export interface ProviderGrant {
  readonly upstream: string;
  /** Set when the key serves one tenant of the upstream. */
  readonly tenant?: string | undefined;
  /** Calls the token endpoint (full grant, or refresh); throws TokenError. */
  readonly grant: Grant;
  readonly lifetime: LifetimePolicy;
  readonly waitTimeoutMs: number;
  readonly renewalBackoff?: RenewalBackoff;
  readonly metrics: TokenMetrics;
  readonly logger: Logger;
  /**
   * RFC 8705 §3.1 `x5t#S256` of the client certificate the target is presented, undefined for
   * none: a token bound to any other certificate is refused (`certificate_mismatch`), never injected.
   */
  readonly presentedCertificate?: string | undefined;
  /** RFC 8693: the caller token's expiry (epoch ms); no token of this key is used past it. */
  readonly notAfter?: number | undefined;
  /** OpenTelemetry, when configured: each token request is a span with these labels. */
  readonly tracing?: { readonly tracer: Tracing; readonly labels: TokenRequestLabels } | undefined;
}
