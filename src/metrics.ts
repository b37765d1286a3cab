import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from 'prom-client';

/**
 * Every metric name lives here. Labels are bounded: upstream names come from the config,
 * codes are HTTP status codes, triggers and outcomes are fixed vocabularies. No path, token
 * or client value is ever a label.
 */
export function createMetrics(registry: Registry, options: { defaultMetrics?: boolean } = {}) {
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    cacheHits: new Counter({
      name: 'token_proxy_token_cache_hits_total',
      help: 'Requests that found a valid token in the cache.',
      labelNames: ['upstream'] as const,
      registers,
    }),
    cacheMisses: new Counter({
      name: 'token_proxy_token_cache_misses_total',
      help: 'Requests that found no valid token and had to wait for one.',
      labelNames: ['upstream'] as const,
      registers,
    }),
    refreshDuration: new Histogram({
      name: 'token_proxy_token_refresh_duration_seconds',
      help: 'Duration of token endpoint calls.',
      labelNames: ['upstream', 'outcome'] as const,
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    refreshes: new Counter({
      name: 'token_proxy_token_refreshes_total',
      help: 'Token endpoint calls by what triggered them (miss, ahead, unauthorized) and outcome.',
      labelNames: ['upstream', 'trigger', 'outcome'] as const,
      registers,
    }),
    refreshFailures: new Counter({
      name: 'token_proxy_token_refresh_failures_total',
      help: 'Failed token endpoint calls by mapped reason.',
      labelNames: ['upstream', 'reason'] as const,
      registers,
    }),
    tokenExpiry: new Gauge({
      name: 'token_proxy_token_expiry_timestamp_seconds',
      help: 'Unix time at which the cached token expires.',
      labelNames: ['upstream'] as const,
      registers,
    }),
    requests: new Counter({
      name: 'token_proxy_requests_total',
      help: 'Requests answered, by upstream and HTTP status code.',
      labelNames: ['upstream', 'code'] as const,
      registers,
    }),
    requestDuration: new Histogram({
      name: 'token_proxy_request_duration_seconds',
      help: 'Time from request received to response headers sent.',
      labelNames: ['upstream'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    unauthorizedRetries: new Counter({
      name: 'token_proxy_unauthorized_retries_total',
      help: 'Requests replayed with a fresh token after a 401, by outcome (recovered, still_unauthorized).',
      labelNames: ['upstream', 'outcome'] as const,
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/** Children bound once per upstream so the hot path does no label hashing for them. */
export function bindUpstreamMetrics(metrics: Metrics, upstream: string) {
  const byCode = new Map<number, Counter.Internal>();
  return {
    cacheHit: metrics.cacheHits.labels(upstream),
    cacheMiss: metrics.cacheMisses.labels(upstream),
    refreshOk: metrics.refreshDuration.labels(upstream, 'success'),
    refreshError: metrics.refreshDuration.labels(upstream, 'error'),
    refreshes: (trigger: RefreshTrigger, outcome: 'success' | 'error') => metrics.refreshes.labels(upstream, trigger, outcome).inc(),
    refreshFailure: (reason: string) => metrics.refreshFailures.labels(upstream, reason).inc(),
    tokenExpiry: metrics.tokenExpiry.labels(upstream),
    requestDuration: metrics.requestDuration.labels(upstream),
    response(code: number): void {
      let child = byCode.get(code);
      if (child === undefined) {
        child = metrics.requests.labels(upstream, String(code));
        byCode.set(code, child);
      }
      child.inc();
    },
    unauthorizedRetry: (outcome: 'recovered' | 'still_unauthorized') => metrics.unauthorizedRetries.labels(upstream, outcome).inc(),
  };
}

export type UpstreamMetrics = ReturnType<typeof bindUpstreamMetrics>;
export type RefreshTrigger = 'miss' | 'ahead' | 'unauthorized';
