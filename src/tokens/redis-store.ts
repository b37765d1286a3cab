import { createHash, randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { EntryCipher } from './entry-cipher.js';
import { connectRedis, type RedisClient, type RedisConnection } from './redis-connection.js';
import type { SharedEntry, SharedLock, SharedTokenStore } from './shared-store.js';

export interface RedisStoreOptions {
  readonly connection: RedisConnection;
  readonly keyPrefix: string;
  readonly lockTimeoutMs: number;
  readonly cipher: EntryCipher;
  readonly logger: Logger;
  /** Called with true/false whenever the connection comes up or goes away. */
  readonly onHealth?: (up: boolean) => void;
  /** Called for every failed command, with the operation name (a metrics label). */
  readonly onError?: (operation: string) => void;
}

/** A command may take this long before the replica stops waiting and works on its own. */
const COMMAND_TIMEOUT_MS = 500;
/** Waiters also poll, in case a notification is lost (pub/sub is fire-and-forget). */
const POLL_MS = 100;

// Fenced write: only the current lock owner may write, and the write announces itself.
const WRITE_IF_OWNER = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1`;

// Extend only what we own: the holder's lease, renewed while it works (compare-and-pexpire).
const EXTEND_IF_OWNER = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;

// Release only what we own (the classic compare-and-delete).
const UNLOCK_IF_OWNER = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

/**
 * The shared tier in Redis. Keys are hashes of the cache key (no upstream, client or tenant name
 * in clear); values are sealed with AES-256-GCM. Commands fail fast when Redis is away (no
 * offline queue, a short command timeout), so a replica never waits on a dead Redis: the caller
 * falls back to fetching on its own.
 */
export class RedisTokenStore implements SharedTokenStore {
  readonly #o: RedisStoreOptions;
  readonly #redis: RedisClient;
  readonly #subscriber: RedisClient;
  readonly #channel: string;
  readonly #waiters = new Map<string, Set<() => void>>();
  #up = false;

  constructor(options: RedisStoreOptions) {
    this.#o = options;
    const common = {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: COMMAND_TIMEOUT_MS,
      connectTimeout: 1_000,
      // Keep trying to come back, at most every 2 s, for as long as the process runs.
      retryStrategy: (attempt: number) => Math.min(100 * 2 ** attempt, 2_000),
    };
    this.#redis = connectRedis(options.connection, common);
    this.#subscriber = connectRedis(options.connection, { ...common, commandTimeout: undefined });
    this.#channel = `${options.keyPrefix}updates`;
    this.#redis.on('ready', () => this.#health(true));
    this.#redis.on('close', () => this.#health(false));
    this.#redis.on('error', () => undefined); // reported through #health and command failures
    this.#subscriber.on('error', () => undefined);
    this.#subscriber.on('ready', () => {
      this.#subscriber.subscribe(this.#channel).catch(() => undefined);
    });
    this.#subscriber.on('message', (_channel: string, message: string) => {
      const hashed = message.slice(0, message.indexOf(' '));
      this.#wake(hashed);
    });
  }

  get up(): boolean {
    return this.#up;
  }

  #health(up: boolean): void {
    if (up === this.#up) return;
    this.#up = up;
    this.#o.logger[up ? 'info' : 'warn'](
      { event: up ? 'shared_cache_up' : 'shared_cache_down' },
      up ? 'shared token cache connected' : 'shared token cache unavailable: working from memory',
    );
    this.#o.onHealth?.(up);
  }

  #hash(key: string): string {
    return createHash('sha256').update(key).digest('base64url');
  }

  // The braces are a Redis Cluster hash tag: an entry and its lock hash to one slot, as the
  // two-key scripts and MGET below require there (CROSSSLOT otherwise); elsewhere they are inert.
  #entryKey(hashed: string): string {
    return `${this.#o.keyPrefix}t:{${hashed}}`;
  }

  #lockKey(hashed: string): string {
    return `${this.#o.keyPrefix}l:{${hashed}}`;
  }

  async #run<T>(operation: string, command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (err) {
      this.#o.onError?.(operation);
      throw err;
    }
  }

  async read(key: string): Promise<SharedEntry | undefined> {
    const hashed = this.#hash(key);
    const value = await this.#run('read', () => this.#redis.get(this.#entryKey(hashed)));
    if (value === null) return undefined;
    try {
      return this.#o.cipher.open(value, hashed);
    } catch (err) {
      // Unreadable (another key, tampering): treat as absent; the next write replaces it.
      this.#o.onError?.('decrypt');
      this.#o.logger.warn(
        { event: 'shared_cache_unreadable', err: (err as Error).message },
        'shared token entry could not be opened',
      );
      return undefined;
    }
  }

  async tryLock(key: string): Promise<SharedLock | undefined> {
    const hashed = this.#hash(key);
    const owner = randomUUID();
    const ok = await this.#run('lock', () =>
      this.#redis.set(this.#lockKey(hashed), owner, 'PX', this.#o.lockTimeoutMs, 'NX'),
    );
    return ok === 'OK' ? { key, owner } : undefined;
  }

  async write(key: string, entry: SharedEntry, ttlMs: number, lock: SharedLock): Promise<boolean> {
    const hashed = this.#hash(key);
    const sealed = this.#o.cipher.seal(entry, hashed);
    const written = await this.#run('write', () =>
      this.#redis.eval(
        WRITE_IF_OWNER,
        2,
        this.#entryKey(hashed),
        this.#lockKey(hashed),
        lock.owner,
        sealed,
        Math.max(1, Math.ceil(ttlMs)),
        this.#channel,
        `${hashed} ${entry.version}`,
      ),
    );
    return written === 1;
  }

  async extend(lock: SharedLock): Promise<boolean> {
    const hashed = this.#hash(lock.key);
    return (
      (await this.#run('lock', () =>
        this.#redis.eval(EXTEND_IF_OWNER, 1, this.#lockKey(hashed), lock.owner, this.#o.lockTimeoutMs),
      )) === 1
    );
  }

  async unlock(lock: SharedLock): Promise<void> {
    const hashed = this.#hash(lock.key);
    await this.#run('unlock', () => this.#redis.eval(UNLOCK_IF_OWNER, 1, this.#lockKey(hashed), lock.owner));
  }

  waitForChange(key: string, seenVersion: number, timeoutMs: number): Promise<void> {
    const hashed = this.#hash(key);
    return new Promise((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        clearInterval(poll);
        this.#waiters.get(hashed)?.delete(finish);
        resolve();
      };
      const timer = setTimeout(finish, timeoutMs);
      // Polling covers a lost notification and a lock whose owner died (it expires by itself).
      const poll = setInterval(() => {
        this.#redis
          .mget(this.#entryKey(hashed), this.#lockKey(hashed))
          .then(([value, lock]) => {
            if (lock === null || (value !== null && value !== undefined && EntryCipher.versionOf(value) > seenVersion))
              finish();
          })
          .catch(finish); // Redis went away: stop waiting, the caller works on its own
      }, POLL_MS);
      let set = this.#waiters.get(hashed);
      if (set === undefined) this.#waiters.set(hashed, (set = new Set()));
      set.add(finish);
    });
  }

  #wake(hashed: string): void {
    const set = this.#waiters.get(hashed);
    if (set === undefined) return;
    this.#waiters.delete(hashed);
    for (const wake of set) wake();
  }

  async close(): Promise<void> {
    for (const set of this.#waiters.values()) for (const wake of set) wake();
    this.#redis.disconnect();
    this.#subscriber.disconnect();
  }
}
