import type { Clock } from './clock.js';
import type { SharedEntry, SharedTokenStore } from './shared-store.js';
import type { SharedView } from './shared-view.js';
import type { Token } from './token.js';

export interface SharedSettings {
  readonly store: SharedTokenStore;
  /** How long a replica waits for a sibling's refresh before taking over (the lock's own expiry). */
  readonly lockTimeoutMs: number;
  /** Redis TTL of entries with a refresh token whose own lifetime the server did not state. */
  readonly refreshTokenTtlMs: number;
}

/** A shared-store command failed, or the lock holder never finished: the replica carries on by itself. */
export class SharedUnavailable extends Error {}

async function guarded<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    throw new SharedUnavailable((err as Error).message, { cause: err });
  }
}

export interface Renewed {
  readonly token: Token;
  /** Taken from a sibling's entry (no token endpoint call of this replica's). */
  readonly fromShared: boolean;
}

/** What the protocol needs of the key's provider. */
export interface SharedRefreshParty {
  readonly key: string;
  readonly view: SharedView;
  readonly clock: Clock;
  /** A shared entry as this replica's token; undefined when not usable now. */
  adopt(entry: SharedEntry): Token | undefined;
  /**
   * Calls the token endpoint, presenting `sharedRefreshToken` first when given; `reread` reads the
   * entry again after a refusal (a sibling may have rotated the refresh token meanwhile).
   */
  renew(sharedRefreshToken: string | undefined, reread: () => Promise<SharedEntry | undefined>): Promise<Renewed>;
  /** The refresh token to keep in the entry written after a renewal. */
  newestRefreshToken(): string | undefined;
  /** The entry could not be written (lock lost, store away). */
  writeRefused(): void;
  /** Tracing on: a span for the time this replica holds the refresh lock, ended when it lets go. */
  lockTaken?(): { end(): void };
}

/**
 * One renewal across the fleet: adopt a sibling's token when there is a usable one; otherwise take
 * the lock and be the one replica that calls the token endpoint, or wait for the replica that
 * holds it. `rejected` is the access token being replaced: an entry still holding it is not
 * adopted.
 */
export async function renewThroughShared(
  party: SharedRefreshParty,
  settings: SharedSettings,
  rejected: string | undefined,
): Promise<Renewed> {
  const { store, lockTimeoutMs } = settings;
  const { key, view, clock } = party;
  const read = async (): Promise<SharedEntry | undefined> => {
    const entry = await guarded(store.read(key));
    view.saw(entry);
    return entry;
  };
  const adoptable = (e: SharedEntry | undefined): Token | undefined =>
    e === undefined || e.accessToken === rejected || !view.admits(e) ? undefined : party.adopt(e);
  const giveUpAt = clock.now() + 2 * lockTimeoutMs;
  for (;;) {
    let entry = await read();
    let theirs = adoptable(entry);
    if (theirs !== undefined) return { token: theirs, fromShared: true };
    const lock = await guarded(store.tryLock(key));
    if (lock !== undefined) {
      const held = party.lockTaken?.();
      // A lease: renewed while this replica works, so a slow token endpoint (or the fallbacks of
      // the refresh plan) never lets a sibling take the lock and spend the same refresh token.
      const lease = setInterval(() => void store.extend(lock).catch(() => false), lockTimeoutMs / 3);
      lease.unref?.();
      try {
        entry = await read(); // a sibling may have finished just before
        theirs = adoptable(entry);
        if (theirs !== undefined) return { token: theirs, fromShared: true };
        const usable = entry !== undefined && view.admits(entry) ? entry : undefined;
        const got = await party.renew(usable?.refreshToken, read);
        if (got.fromShared) return got; // a sibling's newer entry, already in the store
        const token = got.token;
        const refreshToken = party.newestRefreshToken();
        const ttl = Math.max(
          token.expiresAt - clock.now(),
          refreshToken === undefined ? 0 : settings.refreshTokenTtlMs,
        );
        const next: SharedEntry = {
          version: view.nextVersion(entry),
          accessToken: token.value,
          refreshToken,
          obtainedAt: token.obtainedAt,
          expiresAt: token.expiresAt,
        };
        if (await store.write(key, next, ttl, lock).catch(() => false)) {
          view.holds(next.version);
        } else {
          // The entry read under the lock is now older than our token, and its refresh token
          // spent: neither is to be taken from it later.
          view.renewedWithout(entry);
          party.writeRefused();
        }
        return { token, fromShared: false };
      } finally {
        clearInterval(lease);
        store.unlock(lock).catch(() => undefined);
        held?.end();
      }
    }
    if (clock.now() > giveUpAt) {
      // The lock holder neither finished nor let its lock expire: stop waiting and fetch alone.
      throw new SharedUnavailable('timed out waiting for the replica holding the refresh lock');
    }
    await store.waitForChange(key, Math.max(entry?.version ?? 0, view.seen), lockTimeoutMs);
  }
}
