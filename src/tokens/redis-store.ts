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

// Fenced write: only the current lock owner may write, and the write announces itself. KEYS[3..]
// are the key's entries under older names (previous encryption keys, the released SHA-256 name):
// each is dropped unless it holds a newer version than the one written (a replica still on another
// key wrote it; it stays until its TTL).
const WRITE_IF_OWNER = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
for i = 3, #KEYS do
  local old = redis.call('GET', KEYS[i])
  if old and (tonumber(string.match(old, '^(%d+)%.')) or 0) <= tonumber(ARGV[6]) then redis.call('DEL', KEYS[i]) end
end
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
 * The name released versions gave an entry: the plain SHA-256 of the cache key, which anyone who
 * can guess the cache key can compute. Only read (on a miss under every HMAC name), so that an
 * entry written before the upgrade, perhaps the fleet's only copy of a rotating refresh token,
 * is still found; the next write drops it.
 */
function legacyName(key: string): string {
  return createHash('sha256').update(key).digest('base64url');
}

/**
 * The shared tier in Redis. Key names are an HMAC of the cache key under a key derived from the
 * encryption key (EntryCipher.name): they name no upstream, client or tenant, and without the
 * encryption key nobody can tell which cache key (and so which guessed secret) a name stands for.
 * Values are sealed with AES-256-GCM, the name they are stored under as AAD. Commands fail fast
 * when Redis is away (no offline queue, a short command timeout), so a replica never waits on a
 * dead Redis: the caller falls back to fetching on its own.
 *
 * Key rotation and upgrades: `read` looks under the primary key's name, then under each previous
 * key's name, then under the released SHA-256 name, and takes the first entry found. Locks,
 * writes, waits and notifications use the primary key's name only. A write drops the key's entries
 * under the older names in the same script, unless they hold a newer version; in Redis Cluster
 * those names hash to other slots, which one script cannot touch, so there they expire with
 * their TTL.
 */
export class RedisTokenStore implements SharedTokenStore {
  readonly #o: RedisStoreOptions;
  readonly #redis: RedisClient;
  readonly #subscriber: RedisClient;
  readonly #channel: string;
  /** Redis Cluster: a script may only touch keys of one slot. */
  readonly #cluster: boolean;
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
    this.#cluster = options.connection.cluster !== undefined;
    this.#redis.on('ready', () => this.#health(true));
    this.#redis.on('close', () => this.#health(false));
    this.#redis.on('error', () => undefined); // reported through #health and command failures
    this.#subscriber.on('error', () => undefined);
    this.#subscriber.on('ready', () => {
      this.#subscriber.subscribe(this.#channel).catch(() => undefined);
    });
    this.#subscriber.on('message', (_channel: string, message: string) => {
      this.#wake(message.slice(0, message.indexOf(' ')));
    });
  }

  get up(): boolean {
    return this.#up;
  }

  #health(up: boolean): void {
    if (up === this.#up) return;
    this.#up = up;
    // The key id tells replicas that do not share (another encryptionKey names its entries apart).
    this.#o.logger[up ? 'info' : 'warn'](
      { event: up ? 'shared_cache_up' : 'shared_cache_down', keyId: this.#o.cipher.keyId },
      up ? 'shared token cache connected' : 'shared token cache unavailable: working from memory',
    );
    this.#o.onHealth?.(up);
  }

  /** The name of a cache key under the primary encryption key. */
  #name(key: string): string {
    return this.#o.cipher.name(key);
  }

  /** Where older releases or previous encryption keys may have left the key's entry, most recent first. */
  #olderNames(key: string): string[] {
    return [...this.#o.cipher.previousNames(key), legacyName(key)];
  }

  // The braces are a Redis Cluster hash tag: an entry and its lock hash to one slot, as the
  // two-key scripts and MGET below require there (CROSSSLOT otherwise); elsewhere they are inert.
  #entryKey(name: string): string {
    return `${this.#o.keyPrefix}t:{${name}}`;
  }

  #lockKey(name: string): string {
    return `${this.#o.keyPrefix}l:{${name}}`;
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
    let name = this.#name(key);
    let value = await this.#run('read', () => this.#redis.get(this.#entryKey(name)));
    if (value === null) {
      // One more round trip, on a miss only. Separate GETs: in Redis Cluster the names hash to
      // different slots, which one MGET cannot span.
      const older = this.#olderNames(key);
      const values = await this.#run('read', () => Promise.all(older.map((n) => this.#redis.get(this.#entryKey(n)))));
      const found = values.findIndex((v) => v !== null);
      if (found < 0) return undefined;
      name = older[found] as string;
      value = values[found] as string;
    }
    try {
      // The AAD is the name the entry is stored under: a value moved to another name does not open.
      return this.#o.cipher.open(value, name);
    } catch (err) {
      // Unreadable (sealed by a key no longer configured, moved from another name, tampered with):
      // treat as absent; the next write replaces it.
      this.#o.onError?.('decrypt');
      this.#o.logger.warn(
        { event: 'shared_cache_unreadable', err: (err as Error).message },
        'shared token entry could not be opened',
      );
      return undefined;
    }
  }

  async tryLock(key: string): Promise<SharedLock | undefined> {
    const name = this.#name(key);
    const owner = randomUUID();
    const ok = await this.#run('lock', () =>
      this.#redis.set(this.#lockKey(name), owner, 'PX', this.#o.lockTimeoutMs, 'NX'),
    );
    return ok === 'OK' ? { key, owner } : undefined;
  }

  async write(key: string, entry: SharedEntry, ttlMs: number, lock: SharedLock): Promise<boolean> {
    const name = this.#name(key);
    const sealed = this.#o.cipher.seal(entry, name);
    const older = this.#cluster ? [] : this.#olderNames(key).map((n) => this.#entryKey(n));
    const written = await this.#run('write', () =>
      this.#redis.eval(
        WRITE_IF_OWNER,
        2 + older.length,
        this.#entryKey(name),
        this.#lockKey(name),
        ...older,
        lock.owner,
        sealed,
        Math.max(1, Math.ceil(ttlMs)),
        this.#channel,
        `${name} ${entry.version}`,
        entry.version,
      ),
    );
    return written === 1;
  }

  async extend(lock: SharedLock): Promise<boolean> {
    const name = this.#name(lock.key);
    return (
      (await this.#run('lock', () =>
        this.#redis.eval(EXTEND_IF_OWNER, 1, this.#lockKey(name), lock.owner, this.#o.lockTimeoutMs),
      )) === 1
    );
  }

  async unlock(lock: SharedLock): Promise<void> {
    const name = this.#name(lock.key);
    await this.#run('unlock', () => this.#redis.eval(UNLOCK_IF_OWNER, 1, this.#lockKey(name), lock.owner));
  }

  waitForChange(key: string, seenVersion: number, timeoutMs: number): Promise<void> {
    const name = this.#name(key);
    return new Promise((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        clearInterval(poll);
        this.#waiters.get(name)?.delete(finish);
        resolve();
      };
      const timer = setTimeout(finish, timeoutMs);
      // Polling covers a lost notification and a lock whose owner died (it expires by itself).
      const poll = setInterval(() => {
        this.#redis
          .mget(this.#entryKey(name), this.#lockKey(name))
          .then(([value, lock]) => {
            if (lock === null || (value !== null && value !== undefined && EntryCipher.versionOf(value) > seenVersion))
              finish();
          })
          .catch(finish); // Redis went away: stop waiting, the caller works on its own
      }, POLL_MS);
      let set = this.#waiters.get(name);
      if (set === undefined) this.#waiters.set(name, (set = new Set()));
      set.add(finish);
    });
  }

  #wake(name: string): void {
    const set = this.#waiters.get(name);
    if (set === undefined) return;
    this.#waiters.delete(name);
    for (const wake of set) wake();
  }

  async close(): Promise<void> {
    for (const set of this.#waiters.values()) for (const wake of set) wake();
    this.#redis.disconnect();
    this.#subscriber.disconnect();
  }
}
