import { randomBytes, randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { SharedEntry, SharedLock, SharedTokenStore } from '../../src/tokens/shared-store.js';

/**
 * What every SharedTokenStore must do, written once and run against each implementation (the
 * Redis store on a real redis-server, the in-memory one with real and with fake timers).
 *
 * Time passes only through `elapse`, so the same tests run on a real clock (a sleep) and under
 * vitest's fake timers (`vi.advanceTimersByTimeAsync`). Every timing check is a lower bound ("not
 * before its timeout") or a race against a window far longer than the event needs ("woken long
 * before its timeout"): nothing asserts how fast a real store answers.
 *
 * A store may wake a waiter for a write that is not newer than the version it saw (the Redis store
 * does: its notification reaches every waiter on the key, even one that arrives late, after the
 * wait began). So no test writes before it starts waiting, and none asserts the opposite.
 */
export interface ContractStoreOptions {
  /** How long a lock lives unless its owner extends it (RedisStoreOptions.lockTimeoutMs). */
  readonly lockTimeoutMs: number;
}

export type MakeStore = (options: ContractStoreOptions) => Promise<SharedTokenStore> | SharedTokenStore;

export interface ContractClock {
  /** Lets `ms` pass on the clock the store reads: a real sleep, or advancing fake timers. */
  elapse(ms: number): Promise<void>;
}

const realClock: ContractClock = {
  elapse: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};

/** A lock that outlives every test: only unlock (or close) ends it. */
const HELD_MS = 30_000;
/** A lock or an entry whose expiry is what is being tested. */
const SHORT_MS = 500;
/** A step past SHORT_MS: enough for a real Redis to have expired the key. */
const PAST_SHORT_MS = SHORT_MS + 200;
/** A waiter's timeout when it must be woken by something else. */
const WAIT_MS = 20_000;
/** Woken within this window means woken by the event, not by the timeout (WAIT_MS). */
const WINDOW_MS = WAIT_MS / 4;

function entry(version: number, overrides: Partial<SharedEntry> = {}): SharedEntry {
  const now = Date.now();
  return {
    version,
    accessToken: `access-v${version}-${randomBytes(8).toString('hex')}`,
    refreshToken: `refresh-v${version}-${randomBytes(8).toString('hex')}`,
    obtainedAt: now,
    expiresAt: now + 3_600_000,
    ...overrides,
  };
}

/**
 * Registers the contract tests for a SharedTokenStore. `makeStore` is called once per test with
 * the lock timeout that test needs (the suite closes the store afterwards); each test uses its own
 * cache keys, so stores may share one backend. `clock` defaults to real time.
 */
export function sharedTokenStoreContract(name: string, makeStore: MakeStore, clock: ContractClock = realClock): void {
  describe(`${name}: the SharedTokenStore contract`, () => {
    let opened: SharedTokenStore[] = [];
    let key: string;

    const open = async (lockTimeoutMs: number): Promise<SharedTokenStore> => {
      const store = await makeStore({ lockTimeoutMs });
      opened.push(store);
      key = `contract:${randomUUID()}`;
      return store;
    };

    /** Takes the lock, failing the test when it is not free. */
    const lock = async (store: SharedTokenStore, k = key): Promise<SharedLock> => {
      const held = await store.tryLock(k);
      expect(held, `the lock on ${k} is free`).toBeDefined();
      return held as SharedLock;
    };

    /** Writes `e` under a fresh lock, then releases it. */
    const put = async (store: SharedTokenStore, e: SharedEntry, ttlMs = 60_000): Promise<void> => {
      const held = await lock(store);
      expect(await store.write(key, e, ttlMs, held)).toBe(true);
      await store.unlock(held);
    };

    /** 'woken' when `waiting` settles within WINDOW_MS of store time, else 'still waiting'. */
    const settlesWithinWindow = (waiting: Promise<void>): Promise<'woken' | 'still waiting'> =>
      Promise.race([
        waiting.then(() => 'woken' as const),
        clock.elapse(WINDOW_MS).then(() => 'still waiting' as const),
      ]);

    afterEach(async () => {
      for (const store of opened) await store.close();
      opened = [];
    });

    it('is up once made, and reads a key that was never written as undefined', async () => {
      const store = await open(HELD_MS);
      expect(store.up).toBe(true);
      expect(await store.read(key)).toBeUndefined();
    });

    it('reads back an entry written under a held lock with every field, a missing refresh token included', async () => {
      const store = await open(HELD_MS);
      const held = await lock(store);
      const written = entry(1);
      expect(await store.write(key, written, 60_000, held)).toBe(true);
      expect(await store.read(key)).toStrictEqual(written);

      const bare = entry(2, { refreshToken: undefined });
      expect(await store.write(key, bare, 60_000, held)).toBe(true);
      const read = await store.read(key);
      expect(read).toStrictEqual(bare);
      expect(read?.refreshToken).toBeUndefined();
      // Another cache key is untouched.
      expect(await store.read(`${key}-other`)).toBeUndefined();
    });

    it('gives a lock to one owner at a time, until that owner unlocks it', async () => {
      const store = await open(HELD_MS);
      const first = await lock(store);
      expect(first.key).toBe(key);
      expect(await store.tryLock(key)).toBeUndefined();
      expect(await store.tryLock(key)).toBeUndefined();
      // Another cache key has its own lock.
      expect(await store.tryLock(`${key}-other`)).toBeDefined();

      await store.unlock(first);
      const second = await lock(store);
      expect(second.owner).not.toBe(first.owner);
      expect(await store.tryLock(key)).toBeUndefined();
    });

    it('lets a lock expire after its timeout, and another owner takes it', async () => {
      const store = await open(SHORT_MS);
      const first = await lock(store);
      await clock.elapse(SHORT_MS / 3);
      expect(await store.tryLock(key)).toBeUndefined(); // not before its timeout
      await clock.elapse(PAST_SHORT_MS);
      const second = await store.tryLock(key);
      expect(second).toBeDefined();
      expect(second?.owner).not.toBe(first.owner);
    });

    it('refuses the write of a former owner whose lock expired, and keeps the entry as it was', async () => {
      const store = await open(SHORT_MS);
      const before = entry(1);
      await put(store, before);

      const stale = await lock(store);
      await clock.elapse(PAST_SHORT_MS);
      // Expired, nobody else holds it yet: still refused.
      expect(await store.write(key, entry(2), 60_000, stale)).toBe(false);
      expect(await store.read(key)).toStrictEqual(before);

      const current = await lock(store);
      const newer = entry(3);
      expect(await store.write(key, newer, 60_000, current)).toBe(true);
      expect(await store.write(key, entry(4), 60_000, stale)).toBe(false);
      expect(await store.read(key)).toStrictEqual(newer);
      // Its late unlock does not release the new owner's lock, nor can it extend it.
      expect(await store.extend(stale)).toBe(false);
      await store.unlock(stale);
      expect(await store.tryLock(key)).toBeUndefined();
      expect(await store.write(key, entry(5), 60_000, current)).toBe(true);
    });

    it('keeps a lock past its timeout while its owner extends it', async () => {
      const lockMs = 1_500;
      const store = await open(lockMs);
      const held = await lock(store);
      await clock.elapse(lockMs * 0.6);
      expect(await store.extend(held)).toBe(true);
      await clock.elapse(lockMs * 0.6); // past the first timeout, within the extended one
      expect(await store.tryLock(key)).toBeUndefined();
      expect(await store.write(key, entry(1), 60_000, held)).toBe(true);
      // Without further extension it expires as usual.
      await clock.elapse(lockMs + 150);
      expect(await store.extend(held)).toBe(false);
      expect(await store.tryLock(key)).toBeDefined();
    });

    it('ignores extend, unlock and write by an owner that does not hold the lock', async () => {
      const store = await open(HELD_MS);
      const held = await lock(store);
      const forged: SharedLock = { key, owner: randomUUID() };
      expect(await store.extend(forged)).toBe(false);
      await store.unlock(forged);
      expect(await store.tryLock(key)).toBeUndefined();
      expect(await store.write(key, entry(1), 60_000, forged)).toBe(false);
      expect(await store.read(key)).toBeUndefined();

      // Nobody holds it: a forged owner still cannot write or extend.
      await store.unlock(held);
      expect(await store.extend(forged)).toBe(false);
      expect(await store.write(key, entry(1), 60_000, forged)).toBe(false);
      expect(await store.read(key)).toBeUndefined();
    });

    it('wakes a waiter when a version newer than the one it saw is written', async () => {
      const store = await open(HELD_MS);
      const held = await lock(store);
      const events: string[] = [];
      const waiting = store.waitForChange(key, 0, WAIT_MS).then(() => void events.push('woken'));
      await clock.elapse(SHORT_MS); // long enough for a real store to have looked (and found nothing new)
      events.push('writing version 1');
      expect(await store.write(key, entry(1), 60_000, held)).toBe(true);
      expect(await settlesWithinWindow(waiting)).toBe('woken');
      expect(events).toEqual(['writing version 1', 'woken']);
    });

    it('wakes a waiter when the lock is released', async () => {
      const store = await open(HELD_MS);
      const held = await lock(store);
      const events: string[] = [];
      const waiting = store.waitForChange(key, 0, WAIT_MS).then(() => void events.push('woken'));
      await clock.elapse(SHORT_MS);
      events.push('unlocking');
      await store.unlock(held);
      expect(await settlesWithinWindow(waiting)).toBe('woken');
      expect(events).toEqual(['unlocking', 'woken']);
    });

    it('wakes a waiter when the lock expires because its owner stopped renewing it', async () => {
      const store = await open(SHORT_MS);
      await lock(store);
      const events: string[] = [];
      const waiting = store.waitForChange(key, 0, WAIT_MS).then(() => void events.push('woken'));
      await clock.elapse(SHORT_MS / 3);
      events.push('lock still held');
      expect(await settlesWithinWindow(waiting)).toBe('woken');
      expect(events).toEqual(['lock still held', 'woken']);
    });

    it('wakes a waiter at its timeout when nothing changes, and not before', async () => {
      const store = await open(HELD_MS);
      const held = await lock(store);
      let wakes = 0;
      const waiting = store.waitForChange(key, 0, SHORT_MS).then(() => void wakes++);
      await clock.elapse(SHORT_MS / 2);
      expect(wakes).toBe(0);
      await clock.elapse(SHORT_MS);
      await waiting;
      expect(wakes).toBe(1);
      // Nothing changed underneath: no entry, same lock holder.
      expect(await store.read(key)).toBeUndefined();
      expect(await store.tryLock(key)).toBeUndefined();
      expect(await store.extend(held)).toBe(true);
    });

    it('forgets an entry once its TTL has passed', async () => {
      const store = await open(HELD_MS);
      const held = await lock(store);
      const written = entry(1);
      expect(await store.write(key, written, SHORT_MS, held)).toBe(true);
      await clock.elapse(SHORT_MS / 3);
      expect(await store.read(key)).toStrictEqual(written);
      await clock.elapse(PAST_SHORT_MS);
      expect(await store.read(key)).toBeUndefined();
    });

    it('wakes its waiters when closed', async () => {
      const store = await open(HELD_MS);
      await lock(store);
      const waiting = store.waitForChange(key, 0, WAIT_MS);
      await store.close();
      expect(await settlesWithinWindow(waiting)).toBe('woken');
    });
  });
}
