import type { TokenError } from '../errors.js';
import type { Token } from './token.js';
import type { TokenSource } from './token-source.js';

/**
 * What the token sources of one cache key share. A configuration reload builds new sources, and
 * an unchanged upstream's new source has the same key as the old one (the key is made of
 * everything that shapes the token): the fetch under way, the newest refresh token and the
 * failure state must carry over. Otherwise a new source would refresh with a rotating refresh
 * token the old one is still using, spending it twice (RFC 6749 §10.4: reuse can revoke the
 * whole grant), or start with none after a 401 had dropped the cached access token.
 */
export class KeyState {
  /** The key's token source of the configuration in force (the latest made); a fetch's attempts are its. */
  newest: TokenSource | undefined = undefined;
  /** The fetch under way for this key (single flight, across generations). */
  inflight: Promise<Token> | undefined = undefined;
  /**
   * The newest refresh token. Kept apart from the cached access token: a 401 or an eviction drops
   * the access token, but a rotated refresh token is the only valid one left (the partner revoked
   * its predecessor), so it must survive.
   */
  refreshToken: string | undefined = undefined;
  failures = 0;
  nextAttemptAt = 0;
  lastError: TokenError | undefined = undefined;
  /** The value last dropped after a 401: a shared entry still holding it must not be adopted. */
  rejected: string | undefined = undefined;
  /** The version of the shared entry this replica last adopted or wrote (0: none yet). */
  sharedVersion = 0;
  /**
   * This replica renewed the token while the shared tier was away (or refused its write), after
   * the entry of `sharedVersion`: that entry's refresh token is spent and its access token older
   * than this replica's, so neither is taken from it.
   */
  renewedAlone = false;
  lastUnauthorizedRenewal = Number.NEGATIVE_INFINITY;
}

/** One KeyState per cache key in use, kept by the app across reloads. */
export class KeyStates {
  readonly #byKey = new Map<string, KeyState>();

  of(key: string): KeyState {
    let state = this.#byKey.get(key);
    if (state === undefined) {
      state = new KeyState();
      this.#byKey.set(key, state);
    }
    return state;
  }

  /** After a reload: forgets the keys no source uses any more (a source still finishing keeps its own reference). */
  keepOnly(keys: Iterable<string>): void {
    const keep = new Set(keys);
    for (const key of this.#byKey.keys()) if (!keep.has(key)) this.#byKey.delete(key);
  }
}
