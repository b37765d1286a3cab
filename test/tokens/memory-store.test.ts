import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MemoryTokenStore } from '../../src/tokens/memory-store.js';
import type { SharedEntry, SharedLock } from '../../src/tokens/shared-store.js';
import { sharedTokenStoreContract } from './shared-store.contract.js';

sharedTokenStoreContract('MemoryTokenStore on real timers', (options) => new MemoryTokenStore(options));

describe('under vitest fake timers', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  sharedTokenStoreContract('MemoryTokenStore on fake timers', (options) => new MemoryTokenStore(options), {
    elapse: async (ms) => {
      await vi.advanceTimersByTimeAsync(ms);
    },
  });
});

const entry = (version: number): SharedEntry => ({
  version,
  accessToken: `access-${version}`,
  refreshToken: `refresh-${version}`,
  obtainedAt: 1_000,
  expiresAt: 3_601_000,
});

describe('MemoryTokenStore', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('judges lock and entry expiry by the injected clock', async () => {
    let now = 1_000_000;
    const store = new MemoryTokenStore({ lockTimeoutMs: 1_000, clock: { now: () => now } });
    const lock = (await store.tryLock('k')) as SharedLock;
    expect(await store.write('k', entry(1), 5_000, lock)).toBe(true);
    now += 999;
    expect(await store.tryLock('k')).toBeUndefined();
    now += 1;
    expect(await store.write('k', entry(2), 5_000, lock)).toBe(false); // its lock ended at 1,000 ms
    expect(await store.tryLock('k')).toBeDefined();
    expect(await store.read('k')).toStrictEqual(entry(1));
    now += 4_000;
    expect(await store.read('k')).toBeUndefined(); // written at 0 with a TTL of 5,000 ms
    await store.close();
  });

  it('wakes a waiter when an extended lock ends, not at the lock timeout it began under', async () => {
    const store = new MemoryTokenStore({ lockTimeoutMs: 1_000 });
    const lock = (await store.tryLock('k')) as SharedLock;
    let woken = false;
    const waiting = store.waitForChange('k', 0, 60_000).then(() => (woken = true));
    await vi.advanceTimersByTimeAsync(600);
    expect(await store.extend(lock)).toBe(true); // now ends at 1,600 ms
    await vi.advanceTimersByTimeAsync(500);
    expect(woken).toBe(false);
    await vi.advanceTimersByTimeAsync(500);
    expect(woken).toBe(true);
    await waiting;
    expect(vi.getTimerCount()).toBe(0); // neither the timeout nor the lock watch is left behind
    await store.close();
  });

  it('does not wake a waiter for a write that is not newer than the version it has seen', async () => {
    const store = new MemoryTokenStore({ lockTimeoutMs: 60_000 });
    const lock = (await store.tryLock('k')) as SharedLock;
    expect(await store.write('k', entry(3), 60_000, lock)).toBe(true);
    let woken = false;
    const waiting = store.waitForChange('k', 3, 10_000).then(() => (woken = true));
    expect(await store.write('k', entry(3), 60_000, lock)).toBe(true);
    expect(await store.write('k', entry(2), 60_000, lock)).toBe(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(woken).toBe(false);
    expect(await store.write('k', entry(4), 60_000, lock)).toBe(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(woken).toBe(true);
    await waiting;
    await store.close();
  });

  it('returns from waitForChange at once when the lock is free or a newer entry is already there', async () => {
    const store = new MemoryTokenStore({ lockTimeoutMs: 60_000 });
    await store.waitForChange('k', 0, 60_000); // no lock: nothing to wait for
    const lock = (await store.tryLock('k')) as SharedLock;
    expect(await store.write('k', entry(2), 60_000, lock)).toBe(true);
    await store.waitForChange('k', 1, 60_000);
    expect(vi.getTimerCount()).toBe(0);
    await store.close();
  });

  it('hands out copies: changing a read or written entry does not change the stored one', async () => {
    const store = new MemoryTokenStore({ lockTimeoutMs: 60_000 });
    const lock = (await store.tryLock('k')) as SharedLock;
    const written = { ...entry(1) };
    expect(await store.write('k', written, 60_000, lock)).toBe(true);
    written.accessToken = 'changed after the write';
    const read = (await store.read('k')) as { accessToken: string };
    read.accessToken = 'changed after the read';
    expect(await store.read('k')).toStrictEqual(entry(1));
    await store.close();
  });

  it('once closed, reports itself down and refuses commands, as a disconnected Redis client does', async () => {
    const store = new MemoryTokenStore({ lockTimeoutMs: 60_000 });
    expect(store.up).toBe(true);
    await store.close();
    expect(store.up).toBe(false);
    await expect(store.read('k')).rejects.toThrow('closed');
    await expect(store.tryLock('k')).rejects.toThrow('closed');
    await store.waitForChange('k', 0, 60_000); // returns at once
    await store.close(); // twice is fine
  });
});
