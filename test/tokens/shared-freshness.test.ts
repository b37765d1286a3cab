import { Redis } from 'ioredis';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bindTokenMetrics, createMetrics } from '../../src/metrics.js';
import type { TokenResponse } from '../../src/oauth/token-endpoint.js';
import { EntryCipher, cipherKey } from '../../src/tokens/entry-cipher.js';
import { TokenProvider } from '../../src/tokens/provider.js';
import { RedisTokenStore } from '../../src/tokens/redis-store.js';
import { TokenCache } from '../../src/tokens/token-cache.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { withTimeout } from '../helpers/time.js';

/**
 * AES-GCM proves who sealed a shared entry, not when: anyone who can write Redis can put an old
 * sealed entry back. A replica that has seen a newer version refuses it, so it neither adopts the
 * old (revoked) access token nor spends the old (rotated) refresh token. Real redis-server.
 */

const PREFIX = 'tp-fresh:';
const KEY = cipherKey(Buffer.alloc(32, 7).toString('base64'));
let redis: TestRedis;
let raw: Redis;
const stores: RedisTokenStore[] = [];
/** Resolves when each store's connection is ready (its onHealth report), not by polling. */
const ready: Promise<void>[] = [];

/** A token endpoint that rotates refresh tokens and records what was presented. */
const endpoint = {
  n: 0,
  calls: [] as string[],
  answer(presented: string | undefined): TokenResponse {
    endpoint.calls.push(presented === undefined ? 'grant' : `refresh:${presented}`);
    endpoint.n += 1;
    return { accessToken: `at-${endpoint.n}`, expiresIn: 300, scope: undefined, refreshToken: `rt-${endpoint.n}` };
  },
};

function replica(): TokenProvider {
  let up: () => void = () => undefined;
  ready.push(new Promise((resolve) => (up = resolve)));
  const store = new RedisTokenStore({
    connection: { url: redis.url },
    keyPrefix: PREFIX,
    lockTimeoutMs: 2_000,
    cipher: new EntryCipher(KEY),
    logger: pino({ level: 'silent' }),
    onHealth: (healthy) => healthy && up(),
  });
  stores.push(store);
  return new TokenProvider(
    {
      key: 'partner:freshness',
      cache: new TokenCache(10),
      shared: { store, lockTimeoutMs: 2_000, refreshTokenTtlMs: 3_600_000 },
    },
    {
      upstream: 'partner',
      grant: {
        obtain: () => Promise.resolve(endpoint.answer(undefined)),
        refresh: (rt) => Promise.resolve(endpoint.answer(rt)),
      },
      lifetime: { refreshBeforeExpiryMs: 60_000, clockSkewMs: 30_000, defaultLifetimeMs: 300_000 },
      waitTimeoutMs: 5_000,
      metrics: bindTokenMetrics(createMetrics(new Registry(), { defaultMetrics: false }), 'partner', undefined),
      logger: pino({ level: 'silent' }),
    },
  );
}

async function entryName(): Promise<string> {
  const names = await raw.keys(`${PREFIX}t:*`);
  expect(names).toHaveLength(1);
  return names[0] as string;
}

beforeAll(async () => {
  redis = await startRedis();
  raw = new Redis(redis.url);
});

afterAll(async () => {
  for (const store of stores) await store.close();
  raw.disconnect();
  await redis.stop();
});

describe('shared entry freshness (real redis-server)', () => {
  it('a replica refuses a replayed older entry: no adoption of its access token, no reuse of its refresh token', async () => {
    const a = replica();
    const b = replica();
    await withTimeout(Promise.all(ready), 5_000, 'the stores connecting to redis-server');
    expect(stores.every((store) => store.up)).toBe(true);
    const t1 = await a.obtain(); // full grant, written as version 1
    expect(t1.value).toBe('at-1');
    const name = await entryName();
    const sealedV1 = (await raw.get(name)) as string;

    expect(a.onUnauthorized(t1, '/x', true)).toBe('replay');
    const t2 = await a.obtain('unauthorized'); // refresh with rt-1, written as version 2
    expect(t2.value).toBe('at-2');
    expect((await b.obtain()).value).toBe('at-2'); // b adopts version 2

    await raw.set(name, sealedV1, 'PX', 60_000); // someone with write access puts version 1 back

    expect(b.onUnauthorized(t2, '/y', true)).toBe('replay');
    const t3 = await b.obtain('unauthorized');
    expect(t3.value).toBe('at-3');
    // b renewed with the refresh token of version 2, never the replayed rt-1.
    expect(endpoint.calls).toEqual(['grant', 'refresh:rt-1', 'refresh:rt-2']);
  });
});
