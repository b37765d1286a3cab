import { createHash, createHmac, hkdfSync, randomBytes, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EntryCipher, cipherKey } from '../../src/tokens/entry-cipher.js';
import { RedisTokenStore } from '../../src/tokens/redis-store.js';
import type { SharedEntry, SharedLock } from '../../src/tokens/shared-store.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { eventually, within, withTimeout } from '../helpers/time.js';

const logger = pino({ level: 'silent' });
const PREFIX = 'tp-test:';
/**
 * Locks that outlive every step of a test (and every wait for a wake-up, WAKE_MS), so only an
 * explicit unlock releases them.
 */
const LONG_LOCK_MS = 60_000;
/** Where expiry is what is being tested. */
const SHORT_LOCK_MS = 300;
/**
 * A wait that nothing in a test lets run out: a waiter that resolves at all was woken by what the
 * test did (a write, a notification, an unlock, an expired lock), not by its own timeout.
 */
const NEVER_MS = 60_000;
/** How long a test waits for such a wake-up before it fails: far shorter than NEVER_MS. */
const WAKE_MS = 10_000;
/**
 * With Redis down a command must fail at once: the client refuses it (no offline queue) rather
 * than queue it until the next reconnect attempt or time it out.
 */
const REFUSED_AT_ONCE = /enableOfflineQueue options is false/;

const key = 'partner:tenant-a:client-xyz';

function entry(version: number, overrides: Partial<SharedEntry> = {}): SharedEntry {
  const now = Date.now();
  return {
    version,
    accessToken: `access-SECRET-v${version}-${randomBytes(12).toString('hex')}`,
    refreshToken: `refresh-SECRET-v${version}-${randomBytes(12).toString('hex')}`,
    obtainedAt: now,
    expiresAt: now + 3_600_000,
    ...overrides,
  };
}

interface Replica {
  readonly store: RedisTokenStore;
  /** Every onError operation, in order. */
  readonly errors: string[];
  /** Every onHealth report, in order. */
  readonly health: boolean[];
  /** Resolves once `store.up` is `up` (at once, or on the onHealth report); rejects after timeoutMs. */
  until(up: boolean, timeoutMs?: number): Promise<void>;
}

const replicas: Replica[] = [];

function replica(lockTimeoutMs: number, cipher: EntryCipher): Replica {
  const errors: string[] = [];
  const health: boolean[] = [];
  const listeners = new Set<(up: boolean) => void>();
  const store = new RedisTokenStore({
    connection: { url: redis.url },
    keyPrefix: PREFIX,
    lockTimeoutMs,
    cipher,
    logger,
    onHealth: (up) => {
      health.push(up);
      for (const listener of listeners) listener(up);
    },
    onError: (operation) => errors.push(operation),
  });
  const until = (up: boolean, timeoutMs = 5_000) =>
    new Promise<void>((resolve, reject) => {
      if (store.up === up) return resolve();
      const listener = (now: boolean) => {
        if (now !== up) return;
        clearTimeout(timer);
        listeners.delete(listener);
        resolve();
      };
      const timer = setTimeout(() => {
        listeners.delete(listener);
        reject(new Error(`store did not report up=${up} within ${timeoutMs} ms`));
      }, timeoutMs);
      listeners.add(listener);
    });
  const r = { store, errors, health, until };
  replicas.push(r);
  return r;
}

/**
 * The Redis key name of a cache key, computed here independently of the store: HMAC-SHA256 (RFC
 * 2104) of the cache key under a key derived from the encryption key with HKDF-SHA256 (RFC 5869,
 * no salt, this info label). Whoever lacks the encryption key cannot compute it.
 */
function hmacName(encryptionKey: Buffer, cacheKey: string): string {
  const nameKey = Buffer.from(hkdfSync('sha256', encryptionKey, Buffer.alloc(0), 'token-proxy redis key names v1', 32));
  return createHmac('sha256', nameKey).update(cacheKey).digest('base64url');
}

/** The name released versions used: the plain SHA-256 of the cache key, which anyone can compute. */
function legacyName(cacheKey: string): string {
  return createHash('sha256').update(cacheKey).digest('base64url');
}

const b64 = (k: Buffer) => k.toString('base64');

/** Every key in Redis, by SCAN (KEYS would do on a test server; SCAN is what an observer would use). */
async function scanAll(match = '*'): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await raw.scan(cursor, 'MATCH', match, 'COUNT', 1000);
    found.push(...keys);
    cursor = next;
  } while (cursor !== '0');
  return found.sort();
}

let redis: TestRedis;
let raw: Redis;
/** The encryption key of replicas a and b. */
let primaryKey: Buffer;
let cipher: EntryCipher;
let a: Replica;
let b: Replica;

beforeAll(async () => {
  redis = await startRedis();
  raw = new Redis(redis.url, { maxRetriesPerRequest: 3 });
  raw.on('error', () => undefined);
  primaryKey = randomBytes(32);
  cipher = new EntryCipher(cipherKey(b64(primaryKey)));
  a = replica(LONG_LOCK_MS, cipher);
  b = replica(LONG_LOCK_MS, cipher);
  await Promise.all([a.until(true), b.until(true)]);
});

afterAll(async () => {
  for (const r of replicas) await r.store.close();
  raw?.disconnect();
  await redis?.stop();
});

beforeEach(async () => {
  await raw.flushall();
  for (const r of replicas) r.errors.length = 0;
});

describe('RedisTokenStore (two replicas on one real redis-server)', () => {
  it('reads a missing key as undefined; an entry written under a held lock reads the same from the other replica', async () => {
    expect(await a.store.read(key)).toBeUndefined();
    expect(await b.store.read(key)).toBeUndefined();

    const lock = await a.store.tryLock(key);
    expect(lock).toBeDefined();
    const written = entry(1);
    expect(await a.store.write(key, written, 60_000, lock as SharedLock)).toBe(true);
    expect(await b.store.read(key)).toStrictEqual(written);
    expect(await a.store.read(key)).toStrictEqual(written);

    // Without a refresh token too (client credentials).
    const bare = entry(2, { refreshToken: undefined });
    expect(await a.store.write(key, bare, 60_000, lock as SharedLock)).toBe(true);
    expect(await b.store.read(key)).toStrictEqual(bare);
    // Keys are separate: another cache key still reads as missing.
    expect(await b.store.read(`${key}-other`)).toBeUndefined();
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('tryLock is exclusive across replicas and within one; after unlock the other can take it', async () => {
    const lockA = await a.store.tryLock(key);
    expect(lockA).toMatchObject({ key });
    expect(await b.store.tryLock(key)).toBeUndefined();
    expect(await a.store.tryLock(key)).toBeUndefined();
    // Another cache key is not affected.
    expect(await b.store.tryLock(`${key}-other`)).toBeDefined();

    await a.store.unlock(lockA as SharedLock);
    const lockB = await b.store.tryLock(key);
    expect(lockB).toMatchObject({ key });
    expect(lockB?.owner).not.toBe(lockA?.owner);
    expect(await a.store.tryLock(key)).toBeUndefined();

    // A burst from both replicas at once: exactly one wins.
    await b.store.unlock(lockB as SharedLock);
    const burst = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).store.tryLock(key)));
    expect(burst.filter((l) => l !== undefined)).toHaveLength(1);
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('fences a former owner: after its lock expired and another took over, its late write is refused', async () => {
    const slow = replica(SHORT_LOCK_MS, cipher);
    await slow.until(true);

    const started = performance.now();
    const staleLock = await slow.store.tryLock(key);
    expect(staleLock).toBeDefined();
    // B waits; nothing is written, so it returns because the lock vanished (expired), not at its timeout.
    await withTimeout(b.store.waitForChange(key, 0, NEVER_MS), WAKE_MS, 'the expired lock');
    expect(performance.now() - started).toBeGreaterThanOrEqual(SHORT_LOCK_MS - 10);
    expect(await raw.keys('*')).toEqual([]); // the lock is gone

    const lockB = await b.store.tryLock(key);
    expect(lockB).toBeDefined();
    const newer = entry(2);
    expect(await b.store.write(key, newer, 60_000, lockB as SharedLock)).toBe(true);

    const late = entry(1);
    expect(await slow.store.write(key, late, 60_000, staleLock as SharedLock)).toBe(false);
    expect(await a.store.read(key)).toStrictEqual(newer);
    expect(await slow.store.read(key)).toStrictEqual(newer);

    // Nor does its stale unlock release B's lock.
    await slow.store.unlock(staleLock as SharedLock);
    expect(await a.store.tryLock(key)).toBeUndefined();
    expect([...a.errors, ...b.errors, ...slow.errors]).toEqual([]);
  });

  it('does not let a non-owner unlock or write under a lock it does not hold', async () => {
    const lockA = await a.store.tryLock(key);
    expect(lockA).toBeDefined();
    const forged: SharedLock = { key, owner: randomUUID() };
    expect(forged.owner).not.toBe(lockA?.owner);

    await b.store.unlock(forged);
    expect(await b.store.tryLock(key)).toBeUndefined();
    expect(await b.store.write(key, entry(5), 60_000, forged)).toBe(false);
    expect(await b.store.read(key)).toBeUndefined();

    // The owner can release it.
    await a.store.unlock(lockA as SharedLock);
    expect(await b.store.tryLock(key)).toBeDefined();
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('waitForChange resolves when the other replica writes a newer version, and not before', async () => {
    // B holds the lock and has written nothing yet (so no notification is on its way to A).
    const lockB = (await b.store.tryLock(key)) as SharedLock;
    const waiting = a.store.waitForChange(key, 0, NEVER_MS);
    expect(await within(waiting, 250)).toBe('pending'); // two polls at least: A keeps waiting
    expect(await b.store.write(key, entry(1), 60_000, lockB)).toBe(true);
    await withTimeout(waiting, WAKE_MS, 'the newer version');
  });

  it('waitForChange is woken by the notification alone (polling cannot see this change)', async () => {
    // B writes version 2 and at once version 1 again while keeping its lock: a poller only ever
    // sees version 1 under a held lock, so only the published notification can wake A. B's lock
    // outlives every wait here, and A's timeout is never reached.
    const lockB = (await b.store.tryLock(key)) as SharedLock;
    // The notification of B's first write reaches A before A starts the wait under test: it wakes
    // this first waiter, for whom polling sees nothing new either.
    const first = a.store.waitForChange(key, 1, NEVER_MS);
    expect(await b.store.write(key, entry(1), 60_000, lockB)).toBe(true);
    await withTimeout(first, WAKE_MS, 'the first notification');

    const waiting = a.store.waitForChange(key, 1, NEVER_MS);
    expect(await within(waiting, 250)).toBe('pending'); // two polls at least: nothing new for them
    const written = await Promise.all([
      b.store.write(key, entry(2), 60_000, lockB),
      b.store.write(key, entry(1), 60_000, lockB),
    ]);
    expect(written).toEqual([true, true]);
    await withTimeout(waiting, WAKE_MS, 'the notification');
  });

  it('waitForChange resolves at its timeout when nothing happens', async () => {
    const lockB = await b.store.tryLock(key);
    expect(lockB).toBeDefined();
    const started = performance.now();
    await withTimeout(a.store.waitForChange(key, 0, 250), WAKE_MS, 'the timeout');
    expect(performance.now() - started).toBeGreaterThanOrEqual(240);
    // Nothing changed underneath: the lock is still B's.
    expect(await a.store.tryLock(key)).toBeUndefined();
    expect(a.errors).toEqual([]);
  });

  it('waitForChange resolves when the lock is released', async () => {
    const lockB = (await b.store.tryLock(key)) as SharedLock;
    const waiting = a.store.waitForChange(key, 0, NEVER_MS);
    expect(await within(waiting, 250)).toBe('pending'); // the lock is held: A keeps waiting
    await b.store.unlock(lockB);
    // Detected by a poll (an unlock publishes nothing): neither the timeout nor the lock's expiry
    // can come first.
    await withTimeout(waiting, WAKE_MS, 'the unlock');
    expect(await a.store.tryLock(key)).toBeDefined();
  });

  it('keeps names and tokens out of Redis: hashed key names, sealed values, TTL = entry lifetime', async () => {
    const names = ['partner', 'tenant-a', 'client-xyz'];
    const written = entry(3);
    const secrets = [written.accessToken, written.refreshToken as string];
    const forbidden = [
      ...names,
      ...secrets,
      ...secrets.flatMap((s) => [Buffer.from(s).toString('base64'), Buffer.from(s).toString('base64url')]),
    ];
    const leaks = (text: string) => forbidden.filter((f) => text.includes(f));
    expect(leaks(`x${key}y`)).toEqual(names); // the check can fail

    // Also watch what goes over pub/sub.
    const sub = new Redis(redis.url);
    sub.on('error', () => undefined);
    const messages: string[] = [];
    const published = new Promise<void>((resolve) => {
      sub.on('pmessage', (_pattern: string, channel: string, message: string) => {
        messages.push(channel, message);
        resolve();
      });
    });
    try {
      await sub.psubscribe('*');
      const ttlMs = 90_000;
      const lock = (await a.store.tryLock(key)) as SharedLock;
      expect(await a.store.write(key, written, ttlMs, lock)).toBe(true);

      const keys = await raw.keys('*');
      expect(keys).toHaveLength(2); // the entry and the (still held) lock
      const values = await Promise.all(keys.map(async (k) => [k, (await raw.get(k)) ?? ''] as const));
      for (const [k, value] of values) {
        expect(k.startsWith(PREFIX)).toBe(true);
        expect(leaks(k)).toEqual([]);
        expect(value).not.toBe('');
        expect(leaks(value)).toEqual([]);
      }
      const entryKey = values.find(([, value]) => value !== lock.owner)?.[0] as string;
      const lockKey = values.find(([, value]) => value === lock.owner)?.[0] as string;
      expect(entryKey).toBeDefined();
      expect(lockKey).toBeDefined();

      const pttl = await raw.pttl(entryKey);
      expect(pttl).toBeGreaterThan(ttlMs - 1_000);
      expect(pttl).toBeLessThanOrEqual(ttlMs);
      const lockPttl = await raw.pttl(lockKey);
      expect(lockPttl).toBeGreaterThan(0);
      expect(lockPttl).toBeLessThanOrEqual(LONG_LOCK_MS);

      await withTimeout(published, 2_000, 'the update notification');
      for (const m of messages) expect(leaks(m)).toEqual([]);
    } finally {
      sub.disconnect();
    }
  });

  it('reads an entry sealed with another encryption key as undefined and reports decrypt', async () => {
    const foreign = replica(LONG_LOCK_MS, new EntryCipher(cipherKey(randomBytes(32).toString('base64'))));
    await foreign.until(true);
    const written = entry(4);
    const lock = (await foreign.store.tryLock(key)) as SharedLock;
    expect(await foreign.store.write(key, written, 60_000, lock)).toBe(true);
    expect(await foreign.store.read(key)).toStrictEqual(written); // it is there, and readable with its key

    // Another key names its entries elsewhere: A does not even find it.
    await expect(a.store.read(key)).resolves.toBeUndefined();
    expect(a.errors).toEqual([]);
    // Put where A looks, it cannot be opened: treated as absent, reported as decrypt.
    const [foreignEntry] = await scanAll(`${PREFIX}t:*`);
    await raw.set(`${PREFIX}t:{${hmacName(primaryKey, key)}}`, (await raw.get(foreignEntry as string)) as string);
    await expect(a.store.read(key)).resolves.toBeUndefined();
    expect(a.errors).toEqual(['decrypt']);
  });

  it('names keys by an HMAC of the cache key under a key derived from the encryption key, not by its SHA-256', async () => {
    const lock = (await a.store.tryLock(key)) as SharedLock;
    expect(await a.store.write(key, entry(1), 60_000, lock)).toBe(true);

    const name = hmacName(primaryKey, key);
    expect(await scanAll()).toEqual([`${PREFIX}l:{${name}}`, `${PREFIX}t:{${name}}`]);
    // An observer who knows (or guesses) the cache key cannot test it against the names: neither
    // its SHA-256, nor an HMAC under the encryption key itself or under any other key, matches.
    expect(name).not.toBe(legacyName(key));
    expect(name).not.toBe(createHmac('sha256', primaryKey).update(key).digest('base64url'));
    expect(name).not.toBe(hmacName(randomBytes(32), key));
    // And the name is not the same for every cache key.
    expect(hmacName(primaryKey, `${key}-other`)).not.toBe(name);
  });

  it('reads an entry written before a key rotation: primary K2 with previous [K1] finds what K1 wrote, and its write replaces it', async () => {
    const k2 = randomBytes(32);
    const rotated = replica(LONG_LOCK_MS, new EntryCipher(cipherKey(b64(k2)), [cipherKey(b64(primaryKey))]));
    await rotated.until(true);
    const before = entry(1);
    const lockA = (await a.store.tryLock(key)) as SharedLock;
    expect(await a.store.write(key, before, 60_000, lockA)).toBe(true);
    await a.store.unlock(lockA);

    expect(await rotated.store.read(key)).toStrictEqual(before);

    // The rotated replica locks and writes under its primary key's name, and drops the K1 entry.
    const lock = (await rotated.store.tryLock(key)) as SharedLock;
    expect(await scanAll(`${PREFIX}l:*`)).toEqual([`${PREFIX}l:{${hmacName(k2, key)}}`]);
    const after = entry(2);
    expect(await rotated.store.write(key, after, 60_000, lock)).toBe(true);
    expect(await scanAll(`${PREFIX}t:*`)).toEqual([`${PREFIX}t:{${hmacName(k2, key)}}`]);
    expect(await rotated.store.read(key)).toStrictEqual(after);
    expect(rotated.errors).toEqual([]);
  });

  it('prefers the entry under the primary key name to one under a previous key name', async () => {
    const k2 = randomBytes(32);
    const rotated = replica(LONG_LOCK_MS, new EntryCipher(cipherKey(b64(k2)), [cipherKey(b64(primaryKey))]));
    const onlyK2 = replica(LONG_LOCK_MS, new EntryCipher(cipherKey(b64(k2))));
    await Promise.all([rotated.until(true), onlyK2.until(true)]);
    const old = entry(1);
    const lockA = (await a.store.tryLock(key)) as SharedLock;
    expect(await a.store.write(key, old, 60_000, lockA)).toBe(true);
    await a.store.unlock(lockA);
    const current = entry(2);
    const lockK2 = (await onlyK2.store.tryLock(key)) as SharedLock;
    expect(await onlyK2.store.write(key, current, 60_000, lockK2)).toBe(true);

    expect(await rotated.store.read(key)).toStrictEqual(current);
  });

  it('reads a legacy entry (named by the SHA-256 of the cache key, sealed as released) and replaces it on the next write', async () => {
    const legacy = legacyName(key);
    const released = entry(5);
    await raw.set(`${PREFIX}t:{${legacy}}`, cipher.seal(released, legacy), 'PX', 60_000);

    expect(await a.store.read(key)).toStrictEqual(released);
    expect(a.errors).toEqual([]);

    const lock = (await a.store.tryLock(key)) as SharedLock;
    const next = entry(6);
    expect(await a.store.write(key, next, 60_000, lock)).toBe(true);
    expect(await scanAll(`${PREFIX}t:*`)).toEqual([`${PREFIX}t:{${hmacName(primaryKey, key)}}`]);
    expect(await b.store.read(key)).toStrictEqual(next);
  });

  it('leaves a newer entry under an old name in place when writing an older version', async () => {
    const legacy = legacyName(key);
    const newer = entry(9);
    await raw.set(`${PREFIX}t:{${legacy}}`, cipher.seal(newer, legacy), 'PX', 60_000);
    const lock = (await a.store.tryLock(key)) as SharedLock;
    expect(await a.store.write(key, entry(3), 60_000, lock)).toBe(true);
    expect(await scanAll(`${PREFIX}t:*`)).toEqual(
      [`${PREFIX}t:{${hmacName(primaryKey, key)}}`, `${PREFIX}t:{${legacy}}`].sort(),
    );
  });

  // Last: it takes Redis away and brings it back empty.
  it('survives an outage: down via onHealth, fast failures reported by operation, and back up on the same store', async () => {
    const channel = `${PREFIX}updates`;
    const subscribers = async () => Number(((await raw.pubsub('NUMSUB', channel)) as [string, number])[1]);
    const subscribedBefore = await subscribers();
    expect(subscribedBefore).toBe(replicas.length);
    const lockBefore = (await a.store.tryLock(key)) as SharedLock;
    const stores = { a: a.store, b: b.store };

    await redis.kill();
    await Promise.all([a.until(false, 3_000), b.until(false, 3_000)]);
    expect(a.store.up).toBe(false);
    expect(a.health.at(-1)).toBe(false);

    await expect(a.store.read(key)).rejects.toThrow(REFUSED_AT_ONCE);
    await expect(b.store.tryLock(key)).rejects.toThrow(REFUSED_AT_ONCE);
    await expect(a.store.write(key, entry(9), 60_000, lockBefore)).rejects.toThrow(REFUSED_AT_ONCE);
    // A waiter does not hang on a dead Redis either: its first poll fails, and it stops waiting.
    await withTimeout(a.store.waitForChange(key, 0, NEVER_MS), WAKE_MS, 'the failed poll');

    expect(a.errors).toEqual(['read', 'write']);
    expect(b.errors).toEqual(['lock']);

    await redis.start();
    await Promise.all([a.until(true, 5_000), b.until(true, 5_000)]);
    expect(a.store).toBe(stores.a);
    expect(b.store).toBe(stores.b);
    expect(a.health.slice(-3)).toEqual([true, false, true]);

    // Redis came back empty; sharing works again.
    expect(await a.store.read(key)).toBeUndefined();
    const lockAfter = await b.store.tryLock(key);
    expect(lockAfter).toBeDefined();
    const written = entry(1);
    expect(await b.store.write(key, written, 60_000, lockAfter as SharedLock)).toBe(true);
    expect(await a.store.read(key)).toStrictEqual(written);
    // And so do notifications: every replica subscribed again.
    await eventually(async () => (await subscribers()) === subscribedBefore, {
      timeoutMs: 5_000,
      what: 'resubscription',
    });
  });
});
