import type { Dispatcher } from 'undici';
import type { Logger } from 'pino';
import type { TenantSource } from '../config/tenant-source.js';
import type { DpopSigner } from '../oauth/dpop-signer.js';
import type { AccessLog } from '../logger.js';
import type { RequestMetrics } from '../metrics.js';
import type { CallerTokens, TokenReader } from '../tokens/reader.js';
import type { UpstreamQueue } from './upstream-queue.js';
import type { PartnerGuard } from './partner-guard.js';

/**
 * Everything the request path needs about one upstream, built once per configuration. The egress
 * passthrough is an Upstream too, one without tokens: it never injects anything.
 */
export interface Upstream {
  readonly name: string;
  /** `https://host:port` of the target. */
  readonly origin: string;
  /** Path of the target URL without a trailing slash ('' for the root). */
  readonly basePath: string;
  readonly dispatcher: Dispatcher;
  /**
   * The token source, or one per tenant, or one per caller (token exchange, gateway mode);
   * undefined for the egress passthrough (no tokens ever).
   */
  readonly tokens: TokenReader | TenantTokens | CallerTokens | undefined;
  readonly metrics: RequestMetrics;
  readonly retryBodyLimitBytes: number;
  readonly timeoutMs: number;
  /** Requests dispatched and not yet answered: bounded, so a stalled target cannot pile them up. */
  readonly queue: UpstreamQueue;
  readonly logger: Logger;
  /** One info line per request, or undefined when off (access logs cost throughput; see BENCHMARKS.md). */
  readonly accessLog: AccessLog | undefined;
  /**
   * RFC 9449: signs a proof for every request of a DPoP upstream; undefined for the others, whose
   * requests check this once and pay nothing more.
   */
  readonly dpop: DpopSigner | undefined;
  /**
   * Partner protection (limits, circuit breaker, retries, Retry-After), or undefined when none
   * is configured: then `queue` alone bounds the requests in hand, as before.
   */
  readonly guard: PartnerGuard | undefined;
}

/** Token sources by tenant, and where a request's tenant name comes from. */
export interface TenantTokens {
  readonly from: TenantSource;
  readonly byTenant: ReadonlyMap<string, TokenReader>;
}

/** Where one request goes: the origin (scheme, host, port) and the path with query. */
export interface Target {
  readonly origin: string;
  readonly path: string;
  /** The scheme the client used towards the proxy, for X-Forwarded-Proto. */
  readonly clientProto: 'http' | 'https';
  /** Client headers never forwarded (names the proxy sets from validated claims), lower case. */
  readonly stripHeaders?: ReadonlySet<string>;
  /** Headers the proxy adds (validated caller claims). */
  readonly addHeaders?: readonly (readonly [string, string])[];
}
