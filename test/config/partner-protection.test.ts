import { describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { buildConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { createMetrics } from '../../src/metrics.js';
import { partnerGuardFor } from '../../src/partner-protection.js';

const upstream = (extra: Record<string, unknown>) => ({
  name: 'p',
  target: 'https://api.partner.example',
  pathPrefix: '/p',
  auth: {
    type: 'client_credentials',
    tokenUrl: 'https://auth.partner.example/token',
    clientId: 'c',
    clientSecret: 's',
  },
  ...extra,
});

function guardOf(extra: Record<string, unknown>) {
  const config = buildConfig({ upstreams: [upstream(extra)] }, { env: {} });
  const u = config.upstreams[0];
  if (u === undefined) throw new Error('no upstream');
  const deps = {
    metrics: createMetrics(new Registry(), { defaultMetrics: false }),
    clock: { now: () => 0 },
    logger: createLogger('silent'),
  };
  return partnerGuardFor(u, deps);
}

function problems(extra: Record<string, unknown>): string[] {
  try {
    buildConfig({ upstreams: [upstream(extra)] }, { env: {} });
    return [];
  } catch (err) {
    return err instanceof ConfigError ? [...err.problems] : [String(err)];
  }
}

describe('partner protection settings', () => {
  it('builds no guard for an upstream that configures none of it: its requests pay one check', () => {
    expect(guardOf({})).toBeUndefined();
    expect(guardOf({ retry: { connectionFailures: 0 }, respectRetryAfter: false })).toBeUndefined();
  });

  it('defaults limits to the upstream maxConnections, maxQueuedRequests (the old key, kept) and timeoutSeconds', () => {
    const gate = guardOf({ maxConnections: 9, maxQueuedRequests: 7, timeoutSeconds: 4, limits: {} })?.gate;
    expect(gate?.settings).toMatchObject({ maxConcurrent: 9, maxQueued: 7, queueTimeoutMs: 4_000, bucket: undefined });
    const set = guardOf({
      maxQueuedRequests: 7,
      limits: { maxConcurrentRequests: 3, maxQueuedRequests: 2, queueTimeoutSeconds: 1 },
    });
    expect(set?.gate.settings).toMatchObject({ maxConcurrent: 3, maxQueued: 2, queueTimeoutMs: 1_000 });
    expect(guardOf({ circuitBreaker: {} })?.breaker?.state).toBe('closed');
  });

  it('refuses a burst without a rate, and more than 10 connection retries, naming the path', () => {
    expect(problems({ limits: { burst: 5 } })).toEqual([
      'upstreams[0].limits.burst: burst needs requestsPerSecond (the rate it refills at)',
    ]);
    expect(problems({ retry: { connectionFailures: 11 } })).toHaveLength(1);
    expect(problems({ retry: { connectionFailures: 11 } })[0]).toMatch(/^upstreams\[0\]\.retry\.connectionFailures: /);
  });
});
