import type { Config } from './load.js';

/**
 * Settings that are valid but risky together; logged at start-up and by `check`, never fatal.
 * A refresh lock must outlive the token request made under it: otherwise a slow token endpoint
 * lets a second replica take the lock and rotate the refresh token while the first request is
 * still out, and a server with refresh-token reuse detection (RFC 9700 §4.14.2) then revokes
 * the whole chain.
 */
export function configWarnings(config: Config): string[] {
  const redis = config.tokenCache.redis;
  if (redis === undefined) return [];
  return config.upstreams.flatMap((u) => {
    const seconds = u.auth.requestTimeoutSeconds; // tenants share their upstream's timing
    return seconds * 1000 >= redis.lockTimeoutMs
      ? [`upstream ${u.name}: its token requests may take ${seconds} s (requestTimeoutSeconds), not less than tokenCache.redis.lockTimeoutMs (${redis.lockTimeoutMs} ms): a slow refresh can outlive its lock`]
      : [];
  });
}
