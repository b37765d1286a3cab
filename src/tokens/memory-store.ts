import { randomUUID } from 'node:crypto';
import type { SharedEntry, SharedLock, SharedTokenStore } from './shared-store.js';

export interface MemoryStoreOptions {
  /** How long a lock lives unless its owner extends it (RedisStoreOptions.lockTimeoutMs). */
  readonly lockTimeoutMs: number;
  /**
   * Milliseconds since the epoch, against which lock and entry expiry are judged; `Date.now()` by
   * default. Waits run on the global setTimeout, so a clock given here must move with the timers,
   * as vitest's fake timers move both.
   */
  readonly clock?: { now(): number };
}

interface Expiring<T> {
  readonly value: T;
  /** Gone from this moment on (the clock's milliseconds). */
  until: number;
}

interface Waiter {
  readonly seenVersion: number;
  /** The lock holder when the wait began: its lock ending (released, expired) wakes the waiter. */
  readonly owner: string;
  readonly wake: () => void;
}

/**
 * The shared tier in process memory, with the Redis store's semantics: a lock with an owner and an
 * expiry, writes fenced by the lock, a lease renewed by `extend`, unlock by the owner only,
 * waiters woken by a newer version, by the lock's end or by their timeout, entries with a TTL.
 * Meant for tests of the token provider: it does no I/O, and its only time sources are the clock
 * and setTimeout/clearTimeout, which vitest's fake timers control. Replicas are simulated by
 * sharing one instance, as replicas share one Redis.
 *
 * Expired locks and entries are dropped when next looked at, as Redis does on access.
 */
export class MemoryTokenStore implements SharedTokenStore {
  readonly #lockTimeoutMs: number;
  readonly #clock: { now(): number };
  readonly #entries = new Map<string, Expiring<SharedEntry>>();
  readonly #locks = new Map<string, Expiring<string>>();
  readonly #waiters = new Map<string, Set<Waiter>>();
  #closed = false;

  constructor(options: MemoryStoreOptions) {
    this.#lockTimeoutMs = options.lockTimeoutMs;
    this.#clock = options.clock ?? { now: () => Date.now() };
  }

  /** True until closed (there is no connection to lose). */
  get up(): boolean {
    return !this.#closed;
  }

  #live<T>(map: Map<string, Expiring<T>>, key: string): Expiring<T> | undefined {
    const item = map.get(key);
    if (item === undefined || this.#clock.now() < item.until) return item;
    map.delete(key);
    return undefined;
  }

  /** Commands on a closed store fail, as they do on a disconnected Redis client. */
  #ensureOpen(): void {
    if (this.#closed) throw new Error('the memory token store is closed');
  }

  async read(key: string): Promise<SharedEntry | undefined> {
    this.#ensureOpen();
    const stored = this.#live(this.#entries, key);
    return stored === undefined ? undefined : { ...stored.value };
  }

  async tryLock(key: string): Promise<SharedLock | undefined> {
    this.#ensureOpen();
    if (this.#live(this.#locks, key) !== undefined) return undefined;
    const owner = randomUUID();
    this.#locks.set(key, { value: owner, until: this.#clock.now() + this.#lockTimeoutMs });
    return { key, owner };
  }

  async write(key: string, entry: SharedEntry, ttlMs: number, lock: SharedLock): Promise<boolean> {
    this.#ensureOpen();
    if (this.#live(this.#locks, key)?.value !== lock.owner) return false;
    this.#entries.set(key, { value: { ...entry }, until: this.#clock.now() + Math.max(1, Math.ceil(ttlMs)) });
    this.#wake(key, (w) => entry.version > w.seenVersion);
    return true;
  }

  async extend(lock: SharedLock): Promise<boolean> {
    this.#ensureOpen();
    const held = this.#live(this.#locks, lock.key);
    if (held?.value !== lock.owner) return false;
    held.until = this.#clock.now() + this.#lockTimeoutMs;
    return true;
  }

  async unlock(lock: SharedLock): Promise<void> {
    this.#ensureOpen();
    if (this.#live(this.#locks, lock.key)?.value !== lock.owner) return;
    this.#locks.delete(lock.key);
    this.#wake(lock.key, (w) => w.owner === lock.owner);
  }

  waitForChange(key: string, seenVersion: number, timeoutMs: number): Promise<void> {
    const held = this.#live(this.#locks, key);
    if (this.#closed || held === undefined || (this.#live(this.#entries, key)?.value.version ?? 0) > seenVersion)
      return Promise.resolve();
    return new Promise((resolve) => {
      let lockTimer: ReturnType<typeof setTimeout> | undefined;
      const waiter: Waiter = {
        seenVersion,
        owner: held.value,
        wake: () => {
          clearTimeout(timeout);
          clearTimeout(lockTimer);
          const set = this.#waiters.get(key);
          set?.delete(waiter);
          if (set?.size === 0) this.#waiters.delete(key);
          resolve();
        },
      };
      const timeout = setTimeout(waiter.wake, timeoutMs);
      // A lock that is not released ends at its expiry, unless extended meanwhile: look again then.
      const watchLock = () => {
        const now = this.#live(this.#locks, key);
        if (now?.value !== waiter.owner) return waiter.wake();
        lockTimer = setTimeout(watchLock, Math.max(1, now.until - this.#clock.now()));
      };
      let set = this.#waiters.get(key);
      if (set === undefined) this.#waiters.set(key, (set = new Set()));
      set.add(waiter);
      watchLock();
    });
  }

  #wake(key: string, which: (w: Waiter) => boolean): void {
    const set = this.#waiters.get(key);
    if (set === undefined) return;
    for (const w of [...set]) if (which(w)) w.wake();
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const set of [...this.#waiters.values()]) for (const w of [...set]) w.wake();
    this.#waiters.clear();
  }
}
