import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import { configWarnings } from '../../src/config/warnings.js';

const KEY = Buffer.alloc(32, 1).toString('base64');
const upstream = (name: string, requestTimeoutSeconds: number | undefined) => ({
  name,
  target: 'https://api.partner.example',
  pathPrefix: `/${name}`,
  auth: { type: 'client_credentials', tokenUrl: 'https://auth.partner.example/token', clientId: 'c', clientSecret: 's', ...(requestTimeoutSeconds === undefined ? {} : { requestTimeoutSeconds }) },
});

describe('config warnings', () => {
  it('warns when a token request may outlive the refresh lock, naming the upstream', () => {
    const config = buildConfig(
      {
        tokenCache: { redis: { url: 'redis://127.0.0.1:6379', encryptionKey: KEY, lockTimeoutMs: 3_000 } },
        upstreams: [
          upstream('fine', 2),
          upstream('slow', 3),
          upstream('slower', 4),
        ],
      },
      { env: {} },
    );
    expect(configWarnings(config)).toEqual([
      'upstream slow: its token requests may take 3 s (requestTimeoutSeconds), not less than tokenCache.redis.lockTimeoutMs (3000 ms): a slow refresh can outlive its lock',
      'upstream slower: its token requests may take 4 s (requestTimeoutSeconds), not less than tokenCache.redis.lockTimeoutMs (3000 ms): a slow refresh can outlive its lock',
    ]);
  });

  it('has nothing to say with the defaults, or without Redis', () => {
    const withRedis = buildConfig({ tokenCache: { redis: { url: 'redis://127.0.0.1:6379', encryptionKey: KEY } }, upstreams: [upstream('p', undefined)] }, { env: {} });
    expect(configWarnings(withRedis)).toEqual([]);
    expect(configWarnings(buildConfig({ upstreams: [upstream('p', 60)] }, { env: {} }))).toEqual([]);
  });
});
