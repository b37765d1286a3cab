import type { Config } from './load.js';

/**
 * Token requests one refresh may make under the shared lock (see refresh-plan.ts): a refresh, one
 * more with another refresh token after invalid_grant, then the full grant.
 */
const TOKEN_CALLS_PER_REFRESH = 3;
/** Redis commands under the lock (read, read again after invalid_grant, write), each cut off at 500 ms. */
const REDIS_SECONDS_PER_REFRESH = 1.5;

/**
 * Settings that are valid but risky together; logged at start-up and by `check`, never fatal.
 * The replica holding the shared refresh lock renews it while it works (a lease), but its
 * siblings wait for its result for at most twice the lock timeout, then fetch on their own: if
 * the holder's refresh can take longer than that, two replicas may spend the same rotating
 * refresh token, and a server with reuse detection (RFC 9700 §4.14.2) then revokes the chain.
 */
export function configWarnings(config: Config): string[] {
  return [...deprecations(config), ...lockWarnings(config), ...concurrencyWarnings(config)];
}

/** Requests let through beyond the pool's connections wait in undici's queue, out of the gate's sight. */
function concurrencyWarnings(config: Config): string[] {
  return config.upstreams.flatMap((u) => {
    const concurrent = u.limits?.maxConcurrentRequests;
    return concurrent !== undefined && concurrent > u.maxConnections
      ? [
          `upstream ${u.name}: limits.maxConcurrentRequests ${concurrent} is above maxConnections ${u.maxConnections}: at most ${u.maxConnections} are in flight, the rest wait for a connection; raise maxConnections`,
        ]
      : [];
  });
}

function deprecations(config: Config): string[] {
  return config.upstreams
    .filter((u) => u.unauthorizedRenewalIntervalSeconds !== undefined)
    .map(
      (u) =>
        `upstream ${u.name}: unauthorizedRenewalIntervalSeconds is ignored: a 401 now always renews and replays once, and renewals whose replay is refused again back off (unauthorizedBackoff)`,
    );
}

function lockWarnings(config: Config): string[] {
  const redis = config.tokenCache.redis;
  if (redis === undefined) return [];
  const patienceSeconds = (2 * redis.lockTimeoutMs) / 1000;
  return config.upstreams.flatMap((u) => {
    const seconds = u.auth.requestTimeoutSeconds; // tenants share their upstream's timing
    const worst = TOKEN_CALLS_PER_REFRESH * seconds + REDIS_SECONDS_PER_REFRESH;
    return worst >= patienceSeconds
      ? [
          `upstream ${u.name}: a refresh under the shared lock may take ${worst} s (${TOKEN_CALLS_PER_REFRESH} token requests of requestTimeoutSeconds ${seconds}, and Redis commands), not less than the ${patienceSeconds} s its siblings wait for it (twice tokenCache.redis.lockTimeoutMs): they would then fetch on their own`,
        ]
      : [];
  });
}
