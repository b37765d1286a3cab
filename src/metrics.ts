import { Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';
import { collectWellNamedDefaultMetrics } from './metrics-defaults.js';
import {
  counterSeries,
  exemplarSeries,
  histogramSeries,
  type CounterSeries,
  type HistogramSeries,
} from './metric-series.js';

const REFRESH_DURATION_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const REQUEST_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * Every metric name lives here. Labels are bounded: upstream names come from the config,
 * codes are HTTP status codes, triggers and outcomes are fixed vocabularies. No path, token
 * or client value is ever a label.
 */
export function createMetrics(
  registry: Registry,
  options: { defaultMetrics?: boolean; tenantLabel?: boolean; exemplars?: boolean } = {},
) {
  // Trace ids as exemplars on the request and refresh histograms: only with tracing on.
  const enableExemplars = options.exemplars === true;
  // Node.js process metrics, without prom-client's `_total`-suffixed gauges (see metrics-defaults.ts).
  if (options.defaultMetrics !== false) collectWellNamedDefaultMetrics(registry);
  const registers = [registry];
  // prom-client refuses a histogram with exemplars whose registry, when the histogram is made,
  // writes the Prometheus format; the registry can hold it all the same (the admin listener
  // writes OpenMetrics when asked, src/admin/openmetrics.ts). Registered through this shim.
  const histogramRegisters = enableExemplars
    ? [
        {
          contentType: Registry.OPENMETRICS_CONTENT_TYPE,
          registerMetric: (metric: Metric) => registry.registerMetric(metric),
        } as unknown as Registry,
      ]
    : registers;
  const sharedCacheUp = new Gauge({
    name: 'token_proxy_shared_cache_up',
    help: '1 while the shared token cache (Redis) answers, 0 while replicas work on their own.',
    registers,
  });
  // A label-less gauge would export 0 from the start: without Redis the series must not exist at
  // all, or "shared cache down" would fire on every proxy that does not use Redis.
  sharedCacheUp.remove();
  // What the proxy holds right now, read when scraped (nothing on the request path): the app sets
  // `sampleHeld` once it has its listener.
  const held: { sample: ((inHand: Gauge<'upstream'>, replayBytes: Gauge) => void) | undefined } = { sample: undefined };
  const inHand: Gauge<'upstream'> = new Gauge({
    name: 'token_proxy_upstream_requests_in_hand',
    help: 'Requests an upstream holds now: on its connections or waiting for one (at most maxConnections + maxQueuedRequests; past it, 503).',
    labelNames: ['upstream'] as const,
    registers,
    collect: () => held.sample?.(inHand, replayBytes),
  });
  const replayBytes: Gauge = new Gauge({
    name: 'token_proxy_replay_buffer_bytes',
    help: 'Bytes of request bodies held for a 401 replay, process-wide (at most limits.maxReplayBufferBytes; past it, bodies stream once).',
    registers,
  });
  // Partner protection (issue 21): the breaker's state is read when scraped, like the gauges above.
  const circuits: { sample: ((gauge: Gauge<'upstream'>) => void) | undefined } = { sample: undefined };
  const circuitState: Gauge<'upstream'> = new Gauge({
    name: 'token_proxy_upstream_circuit_state',
    help: 'Circuit breaker of an upstream with circuitBreaker set: 0 closed, 1 half-open (one probe decides), 2 open (503 circuit_open).',
    labelNames: ['upstream'] as const,
    registers,
    collect: () => circuits.sample?.(circuitState),
  });
  // Token metrics carry a `tenant` label only when tenants are configured (bounded by the config).
  const token = (options.tenantLabel === true ? ['upstream', 'tenant'] : ['upstream']) as ['upstream'];
  return {
    tenantLabel: options.tenantLabel === true,
    exemplars: enableExemplars,
    /** Sets how the circuit state gauge is read at scrape time. */
    sampleCircuits(sample: (gauge: Gauge<'upstream'>) => void): void {
      circuits.sample = sample;
    },
    upstreamRejected: new Counter({
      name: 'token_proxy_upstream_rejected_total',
      help: 'Requests answered 503 to spare an upstream, by reason (queue_full, rate_limited, queue_timeout, circuit_open, retry_after).',
      labelNames: ['upstream', 'reason'] as const,
      registers,
    }),
    upstreamRetries: new Counter({
      name: 'token_proxy_upstream_retries_total',
      help: 'Extra attempts after a connection failure before any response (upstreams[].retry.connectionFailures).',
      labelNames: ['upstream'] as const,
      registers,
    }),
    /** Sets how the held-now gauges are read at scrape time. */
    sampleHeld(sample: (inHand: Gauge<'upstream'>, replayBytes: Gauge) => void): void {
      held.sample = sample;
    },
    cacheHits: new Counter({
      name: 'token_proxy_token_cache_hits_total',
      help: 'Requests that found a valid token in the cache, by tier (memory, or redis after a miss in memory).',
      labelNames: [...token, 'tier'] as ['upstream', 'tier'],
      registers,
    }),
    cacheMisses: new Counter({
      name: 'token_proxy_token_cache_misses_total',
      help: 'Requests that found no valid token and had to wait for one.',
      labelNames: token,
      registers,
    }),
    refreshDuration: new Histogram({
      name: 'token_proxy_token_refresh_duration_seconds',
      help: 'Duration of token endpoint calls.',
      labelNames: [...token, 'outcome'] as ['upstream', 'outcome'],
      buckets: REFRESH_DURATION_BUCKETS,
      registers: histogramRegisters,
      enableExemplars,
    }),
    refreshes: new Counter({
      name: 'token_proxy_token_refreshes_total',
      help: 'Token endpoint calls by what triggered them (miss, ahead, unauthorized) and outcome.',
      labelNames: [...token, 'trigger', 'outcome'] as ['upstream', 'trigger', 'outcome'],
      registers,
    }),
    refreshFailures: new Counter({
      name: 'token_proxy_token_refresh_failures_total',
      help: 'Failed token endpoint calls by mapped reason.',
      labelNames: [...token, 'reason'] as ['upstream', 'reason'],
      registers,
    }),
    tokenExpiry: new Gauge({
      name: 'token_proxy_token_expiry_timestamp_seconds',
      help: 'Unix time at which the cached token expires.',
      labelNames: token,
      registers,
    }),
    sharedCacheUp,
    sharedCacheErrors: new Counter({
      name: 'token_proxy_shared_cache_errors_total',
      help: 'Failed shared token cache operations, by operation.',
      labelNames: ['operation'] as const,
      registers,
    }),
    inboundAuth: new Counter({
      name: 'token_proxy_inbound_auth_total',
      help: 'Caller JWT validations in gateway mode, by result (valid, expired, bad_signature, bad_claims, bad_type, missing, jwks_error).',
      labelNames: ['result'] as const,
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
      buckets: REQUEST_DURATION_BUCKETS,
      registers: histogramRegisters,
      enableExemplars,
    }),
    refusals: new Counter({
      name: 'token_proxy_refusals_total',
      help: 'Requests and connections the proxy refused itself (4xx, and 503 when an upstream queue is full), by reason: the error code of the answer.',
      labelNames: ['reason'] as const,
      registers,
    }),
    configReloads: new Counter({
      name: 'token_proxy_config_reloads_total',
      help: 'Configuration reloads (SIGHUP or a changed file), by outcome: success, rejected (the running configuration stays), failed.',
      labelNames: ['outcome'] as const,
      registers,
    }),
    configLastReloadSuccessful: new Gauge({
      name: 'token_proxy_config_last_reload_successful',
      help: '1 when the last configuration reload took effect (or none was tried since start), 0 while the newest file is rejected and an older configuration serves.',
      registers,
    }),
    configLastReloadSuccess: new Gauge({
      name: 'token_proxy_config_last_reload_success_timestamp_seconds',
      help: 'Unix time of the last configuration load that took effect (the start-up load, then each successful reload).',
      registers,
    }),
    unauthorizedRetries: new Counter({
      name: 'token_proxy_unauthorized_retries_total',
      help: 'Requests replayed with a fresh token after a 401, by outcome (recovered, still_unauthorized).',
      labelNames: [...token, 'outcome'] as ['upstream', 'outcome'],
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/** Request metrics, bound once per upstream (and status code) so the hot path does no label hashing. */
export function bindRequestMetrics(metrics: Metrics, upstream: string) {
  const byCode = new Map<number, CounterSeries>();
  return {
    requestDuration: metrics.exemplars
      ? exemplarSeries(metrics.requestDuration, { upstream }, REQUEST_DURATION_BUCKETS)
      : histogramSeries(metrics.requestDuration, { upstream }, REQUEST_DURATION_BUCKETS),
    response(code: number): void {
      let series = byCode.get(code);
      if (series === undefined) {
        series = counterSeries(metrics.requests, { upstream, code: String(code) });
        byCode.set(code, series);
      }
      series.inc();
    },
  };
}

/** Token metrics of one token source: an upstream, or one tenant of it. */
export function bindTokenMetrics(metrics: Metrics, upstream: string, tenant: string | undefined) {
  // With the tenant label on, every token series names its tenant; "" would read as "no label".
  const labels: Record<string, string> = metrics.tenantLabel ? { upstream, tenant: tenant ?? '-' } : { upstream };
  const base = Object.values(labels);
  return {
    // Counted on every request: a bound series (see metric-series.ts).
    cacheHit: counterSeries(metrics.cacheHits, { ...labels, tier: 'memory' }),
    sharedCacheHit: metrics.cacheHits.labels(...base, 'redis'),
    cacheMiss: metrics.cacheMisses.labels(...base),
    refreshOk: refreshSeries(metrics, labels, 'success'),
    refreshError: refreshSeries(metrics, labels, 'error'),
    refreshes: (trigger: RefreshTrigger, outcome: 'success' | 'error') =>
      metrics.refreshes.labels(...base, trigger, outcome).inc(),
    refreshFailure: (reason: string) => metrics.refreshFailures.labels(...base, reason).inc(),
    tokenExpiry: metrics.tokenExpiry.labels(...base),
    unauthorizedRetry: (outcome: 'recovered' | 'still_unauthorized') =>
      metrics.unauthorizedRetries.labels(...base, outcome).inc(),
  };
}

/** A refresh-duration series; with exemplars on, a trace id given is kept as the bucket's exemplar. */
function refreshSeries(
  metrics: Metrics,
  labels: Record<string, string>,
  outcome: 'success' | 'error',
): HistogramSeries {
  const bound = metrics.refreshDuration.labels(...Object.values(labels), outcome);
  if (!metrics.exemplars) return { observe: (value) => bound.observe(value) };
  return exemplarSeries(metrics.refreshDuration, { ...labels, outcome }, REFRESH_DURATION_BUCKETS);
}

export type RequestMetrics = ReturnType<typeof bindRequestMetrics>;
export type TokenMetrics = ReturnType<typeof bindTokenMetrics>;
export type RefreshTrigger = 'miss' | 'ahead' | 'unauthorized';
