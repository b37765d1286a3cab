import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { afterAll, beforeAll } from 'vitest';
import { EntryCipher, cipherKey } from '../../src/tokens/entry-cipher.js';
import { RedisTokenStore } from '../../src/tokens/redis-store.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { sharedTokenStoreContract } from './shared-store.contract.js';

// The contract on a real redis-server; the Redis-specific behaviour is in redis-store.test.ts.
let redis: TestRedis;
const cipher = new EntryCipher(cipherKey(randomBytes(32).toString('base64')));

beforeAll(async () => {
  redis = await startRedis();
});

afterAll(async () => {
  await redis?.stop();
});

sharedTokenStoreContract('RedisTokenStore', async ({ lockTimeoutMs }) => {
  let connected: () => void = () => undefined;
  const up = new Promise<void>((resolve) => (connected = resolve));
  const store = new RedisTokenStore({
    connection: { url: redis.url },
    keyPrefix: 'tp-contract:',
    lockTimeoutMs,
    cipher,
    logger: pino({ level: 'silent' }),
    onHealth: (isUp) => isUp && connected(),
  });
  if (!store.up) await up;
  return store;
});
