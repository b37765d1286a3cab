import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import { configWarnings } from '../../src/config/warnings.js';

const KEY = Buffer.alloc(32, 1).toString('base64');
const upstream = (name: string, requestTimeoutSeconds: number | undefined) => ({
  name,
  target: 'https://api.partner.example',
  pathPrefix: `/${name}`,
  auth: {
    type: 'client_credentials',
    tokenUrl: 'https://auth.partner.example/token',
    clientId: 'c',
    clientSecret: 's',
    ...(requestTimeoutSeconds === undefined ? {} : { requestTimeoutSeconds }),
  },
});

describe('config warnings', () => {
  it("warns when a refresh under the lock may outlast the siblings' wait for it, naming the upstream", () => {
    // Siblings wait 6 s (twice the lock timeout); a refresh may make 3 token requests plus 1.5 s of Redis commands.
    const config = buildConfig(
      {
        tokenCache: { redis: { url: 'redis://127.0.0.1:6379', encryptionKey: KEY, lockTimeoutMs: 3_000 } },
        upstreams: [upstream('fine', 1.4), upstream('slow', 1.5), upstream('slower', 4)],
      },
      { env: {} },
    );
    expect(configWarnings(config)).toEqual([
      'upstream slow: a refresh under the shared lock may take 6 s (3 token requests of requestTimeoutSeconds 1.5, and Redis commands), not less than the 6 s its siblings wait for it (twice tokenCache.redis.lockTimeoutMs): they would then fetch on their own',
      'upstream slower: a refresh under the shared lock may take 13.5 s (3 token requests of requestTimeoutSeconds 4, and Redis commands), not less than the 6 s its siblings wait for it (twice tokenCache.redis.lockTimeoutMs): they would then fetch on their own',
    ]);
  });

  it('warns when limits.maxConcurrentRequests is above maxConnections: the excess would wait in the pool', () => {
    const config = buildConfig(
      {
        upstreams: [
          { ...upstream('within', undefined), limits: { maxConcurrentRequests: 128 } },
          { ...upstream('over', undefined), maxConnections: 8, limits: { maxConcurrentRequests: 64 } },
        ],
      },
      { env: {} },
    );
    expect(configWarnings(config)).toEqual([
      'upstream over: limits.maxConcurrentRequests 64 is above maxConnections 8: at most 8 are in flight, the rest wait for a connection; raise maxConnections',
    ]);
  });

  it('has nothing to say with the defaults, or without Redis', () => {
    const withRedis = buildConfig(
      {
        tokenCache: { redis: { url: 'redis://127.0.0.1:6379', encryptionKey: KEY } },
        upstreams: [upstream('p', undefined)],
      },
      { env: {} },
    );
    expect(configWarnings(withRedis)).toEqual([]);
    expect(configWarnings(buildConfig({ upstreams: [upstream('p', 60)] }, { env: {} }))).toEqual([]);
  });
});
