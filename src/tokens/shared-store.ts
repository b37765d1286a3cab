/**
 * The shared tier behind each replica's memory cache (Redis in production). It holds the newest
 * access and refresh token per cache key and coordinates refreshes across the fleet with a lock,
 * so one replica calls the token endpoint and the others pick up its result.
 */
export interface SharedEntry {
  /** Increases with every write; lets waiters see that something new arrived. */
  readonly version: number;
  readonly accessToken: string;
  readonly refreshToken: string | undefined;
  readonly obtainedAt: number;
  readonly expiresAt: number;
}

export interface SharedLock {
  readonly key: string;
  /** Unique per acquisition: only the owner can write under it or release it. */
  readonly owner: string;
}

export interface SharedTokenStore {
  /** The newest entry of `key`; undefined when there is none, or none this replica can open. */
  read(key: string): Promise<SharedEntry | undefined>;
  /** SET NX PX: undefined when someone else holds the lock. */
  tryLock(key: string): Promise<SharedLock | undefined>;
  /**
   * Writes only while `lock` is still held (fencing): a former owner whose lock expired cannot
   * overwrite what the new owner wrote. Resolves false when the write was refused.
   */
  write(key: string, entry: SharedEntry, ttlMs: number, lock: SharedLock): Promise<boolean>;
  /**
   * Renews the lock's expiry while its owner still holds it (a lease): a refresh that outlasts
   * the lock timeout keeps it, while a crashed owner's lock still expires on time. Resolves false
   * when the lock is no longer this owner's.
   */
  extend(lock: SharedLock): Promise<boolean>;
  /** Releases the lock while `lock.owner` still holds it; does nothing otherwise. */
  unlock(lock: SharedLock): Promise<void>;
  /**
   * Resolves when an entry newer than `seenVersion` is written, when the lock disappears (its
   * owner finished or died), or after `timeoutMs`; whichever comes first.
   */
  waitForChange(key: string, seenVersion: number, timeoutMs: number): Promise<void>;
  /** Whether the store answered its last command; false means replicas work on their own. */
  readonly up: boolean;
  close(): Promise<void>;
}
