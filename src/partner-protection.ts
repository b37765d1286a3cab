import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { dispatchingThrough } from './proxy/connection-retry.js';
import type { UpstreamConfig } from './config/load.js';
import type { Metrics } from './metrics.js';
import { AdmissionGate } from './proxy/admission-gate.js';
import { CircuitBreaker } from './proxy/circuit-breaker.js';
import { PartnerGuard, REJECTION_REASONS } from './proxy/partner-guard.js';
import { TokenBucket } from './proxy/token-bucket.js';
import type { Clock } from './tokens/clock.js';

/**
 * The partner guard of one upstream, from its `limits`, `circuitBreaker`, `retry` and
 * `respectRetryAfter`; undefined when none is set, so such an upstream's requests pay one check.
 * Without `limits` a guard still bounds what it holds as before: maxConnections in flight and
 * maxQueuedRequests waiting (now in the proxy's own queue rather than undici's).
 */
export function partnerGuardFor(
  u: UpstreamConfig,
  deps: { readonly metrics: Metrics; readonly clock: Clock; readonly logger: Logger },
): PartnerGuard | undefined {
  const { metrics, clock, logger } = deps;
  // Every reason exported at 0 for every upstream (a full queue can happen without a guard too).
  for (const reason of REJECTION_REASONS) metrics.upstreamRejected.labels(u.name, reason).inc(0);
  metrics.upstreamRetries.labels(u.name).inc(0);
  const retries = u.retry?.connectionFailures ?? 0;
  if (u.limits === undefined && u.circuitBreaker === undefined && retries === 0 && !u.respectRetryAfter)
    return undefined;
  const limits = u.limits ?? {};
  const rate = limits.requestsPerSecond;
  const gate = new AdmissionGate({
    maxConcurrent: limits.maxConcurrentRequests ?? u.maxConnections,
    maxQueued: limits.maxQueuedRequests ?? u.maxQueuedRequests,
    queueTimeoutMs: (limits.queueTimeoutSeconds ?? u.timeoutSeconds) * 1000,
    bucket: rate === undefined ? undefined : new TokenBucket(rate, limits.burst ?? Math.max(1, Math.ceil(rate)), clock),
  });
  const cb = u.circuitBreaker;
  const breaker =
    cb === undefined
      ? undefined
      : new CircuitBreaker(cb.consecutiveFailures, cb.openSeconds * 1000, clock, (event) => {
          const line = { event, upstream: u.name };
          if (event === 'circuit_opened')
            logger.warn(
              { ...line, openSeconds: cb.openSeconds },
              `circuit opened after ${cb.consecutiveFailures} consecutive failures: requests answered 503 for ${cb.openSeconds} s`,
            );
          else
            logger.info(line, event === 'circuit_closed' ? 'circuit closed' : 'circuit half-open: one probe decides');
        });
  return new PartnerGuard({
    upstream: u.name,
    gate,
    breaker,
    retries,
    respectRetryAfter: u.respectRetryAfter,
    clock,
    logger,
    rejected: metrics.upstreamRejected,
    retried: metrics.upstreamRetries,
  });
}

/** What the upstream dispatches on: its pool, or with retries the pool behind the guard's retry handler. */
export function guardedDispatcher(guard: PartnerGuard | undefined, pool: Dispatcher): Dispatcher {
  if (guard === undefined || !guard.retries) return pool;
  return dispatchingThrough(pool, (opts, handler) => guard.retrying(opts, handler, pool));
}

/**
 * The guards of the running configuration by upstream name, kept across reloads: an upstream
 * whose protection settings did not change keeps its guard (its breaker, queue, the partner's
 * Retry-After, its requests in flight); one whose settings changed starts afresh.
 */
export class PartnerGuards {
  readonly #byName = new Map<string, { readonly key: string; readonly guard: PartnerGuard | undefined }>();

  provide(
    u: UpstreamConfig,
    deps: { readonly metrics: Metrics; readonly clock: Clock; readonly logger: Logger },
  ): PartnerGuard | undefined {
    const key = JSON.stringify([
      u.limits,
      u.circuitBreaker,
      u.retry,
      u.respectRetryAfter,
      u.maxConnections,
      u.maxQueuedRequests,
      u.timeoutSeconds,
    ]);
    const kept = this.#byName.get(u.name);
    if (kept?.key === key) return kept.guard;
    const guard = partnerGuardFor(u, deps);
    this.#byName.set(u.name, { key, guard });
    return guard;
  }
}
