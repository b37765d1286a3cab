import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { TokenError } from '../errors.js';
import type { RefreshTrigger, TokenMetrics } from '../metrics.js';
import type { Grant } from '../oauth/grants.js';
import type { TokenResponse } from '../oauth/token-endpoint.js';
import { backoffDelayMs, DEFAULT_BACKOFF, type BackoffPolicy } from './backoff.js';
import type { SharedEntry, SharedTokenStore } from './shared-store.js';
import { KeyState } from './key-state.js';
import type { TokenCache } from './token-cache.js';
import { tokenFromResponse, tokenWithTimes, type LifetimePolicy, type Token } from './token.js';

export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

export interface TokenSourceStatus {
  readonly upstream: string;
  readonly tenant?: string;
  readonly state: 'valid' | 'failing' | 'none';
  readonly expiresInSeconds?: number;
  readonly lastError?: string;
}

export interface TokenSourceOptions {
  readonly key: string;
  readonly upstream: string;
  /** Set when this source serves one tenant of the upstream. */
  readonly tenant?: string | undefined;
  /** Calls the token endpoint (full grant, or refresh); throws TokenError. */
  readonly grant: Grant;
  readonly cache: TokenCache;
  readonly lifetime: LifetimePolicy;
  readonly waitTimeoutMs: number;
  /**
   * Least time between two renewals caused by a 401 for the current token. A partner that
   * rejects every token would otherwise get one token request per client request (a hot loop).
   */
  readonly unauthorizedRenewalIntervalMs?: number;
  readonly metrics: TokenMetrics;
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly backoff?: BackoffPolicy;
  /** The shared tier (Redis), when replicas share tokens. */
  readonly shared?: SharedSettings | undefined;
  /** What this source shares with the other sources of its key, across reloads (a fresh one by default). */
  readonly state?: KeyState;
}

export interface SharedSettings {
  readonly store: SharedTokenStore;
  /** How long a replica waits for a sibling's refresh before taking over (the lock's own expiry). */
  readonly lockTimeoutMs: number;
  /** Redis TTL of entries with a refresh token whose own lifetime the server did not state. */
  readonly refreshTokenTtlMs: number;
}

/** A shared-store command failed: the replica carries on by itself. */
class SharedUnavailable extends Error {}

async function guarded<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    throw new SharedUnavailable((err as Error).message, { cause: err });
  }
}

/**
 * The tokens of one cache key. Reading (`current`) is a map lookup; everything that takes time
 * (calls, backoff, single-flight) happens behind `obtain` and background refreshes.
 *
 * Emits `token` (Token) after each successful fetch and `refreshError` (TokenError) after each
 * failed one; tests and the admin endpoint listen, the request path does not.
 */
export class TokenSource extends EventEmitter {
  readonly key: string;
  readonly upstream: string;
  readonly tenant: string | undefined;
  readonly metrics: TokenMetrics;
  readonly #o: TokenSourceOptions;
  readonly #clock: Clock;
  readonly #backoff: BackoffPolicy;
  /** In-flight fetch, refresh token, failures: per key, outliving this source (see KeyState). */
  readonly #s: KeyState;

  constructor(options: TokenSourceOptions) {
    super();
    this.#o = options;
    this.key = options.key;
    this.upstream = options.upstream;
    this.tenant = options.tenant;
    this.metrics = options.metrics;
    this.#clock = options.clock ?? systemClock;
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#s = options.state ?? new KeyState();
    this.#s.newest = this;
  }

  /**
   * Hot path: the cached token if it may still be injected, else undefined. A token inside its
   * refresh window is returned and a background refresh starts, so no request waits for it.
   */
  current(): Token | undefined {
    const token = this.#o.cache.get(this.key);
    if (token === undefined) return undefined;
    const now = this.#clock.now();
    if (now >= token.usableUntil) return undefined; // never inject an expired token
    this.#o.metrics.cacheHit.inc();
    if (now >= token.refreshAt && this.#s.inflight === undefined && now >= this.#s.nextAttemptAt) {
      this.#refresh('ahead', token.usableUntil).catch(() => {
        /* logged and counted in #refresh; the cached token keeps serving */
      });
    }
    return token;
  }

  /** Whether `token` may still be injected now (before its use-by moment). */
  usable(token: Token): boolean {
    return this.#clock.now() < token.usableUntil;
  }

  /** The state of this source for /readyz: no token values, no metrics counted. */
  status(): TokenSourceStatus {
    const token = this.#o.cache.get(this.key);
    const now = this.#clock.now();
    const valid = token !== undefined && now < token.usableUntil;
    return {
      upstream: this.upstream,
      ...(this.tenant === undefined ? {} : { tenant: this.tenant }),
      state: valid ? 'valid' : this.#s.lastError !== undefined ? 'failing' : 'none',
      ...(valid ? { expiresInSeconds: Math.round((token.expiresAt - now) / 1000) } : {}),
      ...(this.#s.lastError === undefined ? {} : { lastError: this.#s.lastError.reason }),
    };
  }

  /**
   * A token for a request that found none (or whose token was just rejected): the cached one if
   * another request already renewed it, else a fetch. Waits at most waitTimeoutMs; throws TokenError.
   */
  obtain(trigger: RefreshTrigger = 'miss'): Promise<Token> {
    const cached = this.current();
    if (cached !== undefined) return Promise.resolve(cached);
    if (trigger === 'miss') this.#o.metrics.cacheMiss.inc();
    const now = this.#clock.now();
    const deadline = now + this.#o.waitTimeoutMs;
    if (this.#s.inflight === undefined && this.#s.lastError !== undefined && now < this.#s.nextAttemptAt) {
      // Backing off after a failure: a permanent error, or a wait longer than the request may
      // spend, answers at once instead of queueing requests or calling the endpoint again.
      if (this.#s.lastError.permanent || this.#s.nextAttemptAt > deadline) return Promise.reject(this.#s.lastError);
    }
    const pending = this.#s.inflight ?? this.#refresh(trigger, deadline);
    return withDeadline(pending, this.#o.waitTimeoutMs, () => this.#s.lastError);
  }

  /**
   * The target rejected `used` with a 401. Drop it only if it is still the cached one: of many
   * simultaneous 401s for one token, only the first causes a refresh.
   */
  invalidate(used: Token): void {
    const cached = this.#o.cache.get(this.key);
    if (cached !== undefined && cached.header === used.header) {
      this.#o.cache.delete(this.key);
      this.#s.lastUnauthorizedRenewal = this.#clock.now();
    }
    this.#s.rejected = used.value;
  }

  /**
   * Whether a 401 for `used` may be answered with a renewal and a replay: yes when a newer token
   * is already cached or a renewal is underway (nothing more is asked of the token endpoint); else
   * only if the last 401-triggered renewal is at least unauthorizedRenewalIntervalMs old.
   */
  mayRenewAfterUnauthorized(used: Token): boolean {
    const cached = this.#o.cache.get(this.key);
    if (cached !== undefined && cached.header !== used.header) return true;
    if (this.#s.inflight !== undefined) return true;
    return this.#clock.now() - this.#s.lastUnauthorizedRenewal >= (this.#o.unauthorizedRenewalIntervalMs ?? 5_000);
  }

  /** After a 401: drop the rejected token and get the next one (shared by all who saw the 401). */
  renewAfterUnauthorized(used: Token): Promise<Token> {
    this.invalidate(used);
    return this.obtain('unauthorized');
  }

  /** One fetch in flight per key; retries transient failures with backoff until `deadline`. */
  #refresh(trigger: RefreshTrigger, deadline: number): Promise<Token> {
    const run: Promise<Token> = this.#fetchWithRetry(trigger, deadline).finally(() => {
      if (this.#s.inflight === run) this.#s.inflight = undefined;
    });
    this.#s.inflight = run;
    return run;
  }

  async #fetchWithRetry(trigger: RefreshTrigger, deadline: number): Promise<Token> {
    for (;;) {
      const wait = this.#s.nextAttemptAt - this.#clock.now();
      if (wait > 0) await delay(wait);
      try {
        // After a reload, the attempts are the newest source's: its grant and connections are
        // the configuration in force (the old generation closes its own once drained).
        return await (this.#s.newest ?? this).#fetchOnce(trigger);
      } catch (err) {
        const error =
          err instanceof TokenError
            ? err
            : new TokenError('bad_response', 'token response could not be used', { cause: err });
        this.#s.failures += 1;
        this.#s.lastError = error;
        const backoff = backoffDelayMs(this.#backoff, this.#s.failures, error.retryAfterSeconds, error.permanent);
        this.#s.nextAttemptAt = this.#clock.now() + backoff;
        this.emit('refreshError', error);
        const giveUp = error.permanent || this.#s.nextAttemptAt >= deadline;
        this.#o.logger.warn(
          {
            event: 'token_refresh_failed',
            upstream: this.upstream,
            tenant: this.tenant,
            trigger,
            reason: error.reason,
            status: error.status,
            description: error.description,
            detail: error.message,
            failures: this.#s.failures,
            retryInMs: giveUp ? undefined : Math.round(backoff),
          },
          `token refresh failed: ${error.reason}`,
        );
        if (giveUp) throw error;
      }
    }
  }

  /**
   * Renews with the refresh token when there is one. A rejected one (invalid_grant) may mean that a
   * sibling rotated it while this request was out (its refresh lock expired meanwhile): the shared
   * entry is read once more, and a newer entry there is adopted as it is; refreshing again with
   * its refresh token would revoke the one the fleet now holds. Then this replica's own refresh
   * token, if it holds a different one. Otherwise: the full grant.
   */
  async #callGrant(
    refreshToken: string | undefined,
    reread?: () => Promise<SharedEntry | undefined>,
  ): Promise<TokenResponse | Token> {
    const grant = this.#o.grant;
    const refresh = grant.refresh;
    if (refreshToken === undefined || refresh === undefined) return grant.obtain();
    try {
      return await refreshKeeping(refresh, refreshToken);
    } catch (err) {
      if (!isInvalidGrant(err)) throw err;
      if (this.#s.refreshToken === refreshToken) this.#s.refreshToken = undefined;
      const latest = await reread?.().catch(() => undefined);
      if (latest?.refreshToken !== undefined && latest.refreshToken !== refreshToken && !this.#predatesOurs(latest)) {
        const theirs = this.#adopt(latest);
        if (theirs !== undefined) return theirs;
        return refreshKeeping(refresh, latest.refreshToken); // rotated, but its access token is spent
      }
      // The shared entry's refresh token was spent, but this replica holds a newer one (from a
      // renewal while the shared tier was away): it may still be good. Any other one it holds
      // came from an earlier entry, since rotated, and presenting it would be a reuse.
      const mine = this.#s.renewedAlone ? this.#s.refreshToken : undefined;
      if (mine !== undefined && mine !== refreshToken) {
        try {
          return await refreshKeeping(refresh, mine);
        } catch (again) {
          if (!isInvalidGrant(again)) throw again;
          this.#s.refreshToken = undefined;
        }
      }
      this.#o.logger.warn(
        { event: 'refresh_token_rejected', upstream: this.upstream, tenant: this.tenant, description: err.description },
        'refresh token rejected (expired or revoked): running the full grant',
      );
      return grant.obtain();
    }
  }

  /** One grant call (or a sibling's newer entry); a new refresh token replaces ours at once (rotation). */
  async #grantToken(
    sharedRefreshToken: string | undefined,
    reread?: () => Promise<SharedEntry | undefined>,
  ): Promise<{ token: Token; fromShared: boolean }> {
    // The key's newest refresh token (KeyState, kept across reloads), else the one the cached
    // token carries: use it rather than logging in again.
    const response = await this.#callGrant(
      sharedRefreshToken ?? this.#s.refreshToken ?? this.#o.cache.get(this.key)?.refreshToken,
      reread,
    );
    if ('header' in response) {
      this.#s.refreshToken = response.refreshToken;
      return { token: response, fromShared: true };
    }
    // Rotation: the new refresh token replaces the old one at once, even if this answer turns
    // out unusable below, because the partner has already revoked the old one.
    if (response.refreshToken !== undefined) this.#s.refreshToken = response.refreshToken;
    return { token: tokenFromResponse(response, this.#clock.now(), this.#o.lifetime), fromShared: false };
  }

  /**
   * With a shared tier: adopt a sibling's token when one is there; otherwise take the lock and
   * be the one replica that calls the token endpoint, or wait for the replica that holds it.
   */
  async #viaShared(
    shared: SharedSettings,
    rejected: string | undefined,
  ): Promise<{ token: Token; fromShared: boolean }> {
    const { store, lockTimeoutMs } = shared;
    // A sibling's token, still usable, not the one being replaced, and not older than our own.
    const adoptable = (e: SharedEntry | undefined): Token | undefined =>
      e === undefined || e.accessToken === rejected || this.#predatesOurs(e) ? undefined : this.#adopt(e);
    const giveUpAt = this.#clock.now() + 2 * lockTimeoutMs;
    for (;;) {
      let entry = await guarded(store.read(this.key));
      let theirs = adoptable(entry);
      if (theirs !== undefined) return { token: theirs, fromShared: true };
      const lock = await guarded(store.tryLock(this.key));
      if (lock !== undefined) {
        // A lease: renewed while this replica works, so a slow token endpoint (or the retries of
        // #callGrant) never lets a sibling take the lock and spend the same refresh token.
        const lease = setInterval(() => store.extend(lock).catch(() => false), lockTimeoutMs / 3);
        lease.unref();
        try {
          entry = await guarded(store.read(this.key)); // a sibling may have finished just before
          theirs = adoptable(entry);
          if (theirs !== undefined) return { token: theirs, fromShared: true };
          // An entry from before our own renewal holds a spent refresh token: ours goes first.
          const got = await this.#grantToken(
            entry === undefined || this.#predatesOurs(entry) ? undefined : entry.refreshToken,
            () => store.read(this.key),
          );
          if (got.fromShared) return got; // a sibling's newer entry, already in the store
          const token = got.token;
          const ttl = Math.max(
            token.expiresAt - this.#clock.now(),
            token.refreshToken === undefined ? 0 : shared.refreshTokenTtlMs,
          );
          const next: SharedEntry = {
            version: (entry?.version ?? 0) + 1,
            accessToken: token.value,
            refreshToken: this.#s.refreshToken,
            obtainedAt: token.obtainedAt,
            expiresAt: token.expiresAt,
          };
          const written = await store.write(this.key, next, ttl, lock).catch(() => false);
          if (written) {
            this.#s.sharedVersion = next.version;
            this.#s.renewedAlone = false;
          } else {
            // The entry read under the lock is now older than our token, and its refresh token
            // spent: neither is to be taken from it later.
            this.#s.sharedVersion = Math.max(this.#s.sharedVersion, entry?.version ?? 0);
            this.#s.renewedAlone = true;
            this.#o.logger.warn(
              { event: 'shared_cache_write_refused', upstream: this.upstream, tenant: this.tenant },
              'shared token entry not written (lock lost or store away)',
            );
          }
          return { token, fromShared: false };
        } finally {
          clearInterval(lease);
          store.unlock(lock).catch(() => undefined);
        }
      }
      if (this.#clock.now() > giveUpAt) {
        // The lock holder neither finished nor let its lock expire: stop waiting and fetch alone.
        throw new SharedUnavailable('timed out waiting for the replica holding the refresh lock');
      }
      await store.waitForChange(this.key, entry?.version ?? 0, lockTimeoutMs);
    }
  }

  /**
   * A shared entry as a Token of this replica (its own jittered refresh moment); undefined if not
   * usable now, or not usable at all (then the replica holding the lock replaces it).
   */
  #adopt(entry: SharedEntry): Token | undefined {
    let token: Token;
    try {
      token = tokenWithTimes(
        entry.accessToken,
        entry.refreshToken,
        entry.obtainedAt,
        entry.expiresAt,
        this.#o.lifetime,
      );
    } catch (err) {
      if (err instanceof TokenError) return undefined;
      throw err;
    }
    if (this.#clock.now() >= token.usableUntil) return undefined;
    this.#s.sharedVersion = entry.version;
    this.#s.renewedAlone = false;
    return token;
  }

  /** Whether `entry` was the shared state before this replica renewed on its own (see KeyState.renewedAlone). */
  #predatesOurs(entry: SharedEntry): boolean {
    return this.#s.renewedAlone && entry.version <= this.#s.sharedVersion;
  }

  async #fetchOnce(trigger: RefreshTrigger): Promise<Token> {
    const m = this.#o.metrics;
    const started = performance.now();
    const previous = this.#o.cache.get(this.key);
    const shared = this.#o.shared;
    let outcome: { token: Token; fromShared: boolean } | undefined;
    try {
      if (shared !== undefined && shared.store.up) {
        outcome = await this.#viaShared(shared, previous?.value ?? this.#s.rejected).catch((err: unknown) => {
          if (!(err instanceof SharedUnavailable)) throw err;
          this.#o.logger.warn(
            { event: 'shared_cache_bypassed', upstream: this.upstream, tenant: this.tenant, err: err.message },
            'shared token cache unavailable: fetching alone',
          );
          return undefined;
        });
      }
      if (outcome === undefined) {
        outcome = await this.#grantToken(undefined);
        // With a shared tier configured, this renewal is one the shared entry does not know of.
        if (shared !== undefined && !outcome.fromShared) this.#s.renewedAlone = true;
      }
    } catch (err) {
      m.refreshError.observe((performance.now() - started) / 1000);
      m.refreshes(trigger, 'error');
      m.refreshFailure(err instanceof TokenError ? err.reason : 'bad_response');
      throw err;
    }
    let token = outcome.token;
    if (outcome.fromShared) {
      m.sharedCacheHit.inc();
      if (token.refreshToken !== undefined) this.#s.refreshToken = token.refreshToken;
      return this.#store(token, trigger, previous, 'shared', performance.now() - started);
    }
    m.refreshOk.observe((performance.now() - started) / 1000);
    m.refreshes(trigger, 'success');
    if (previous !== undefined && previous.header === token.header) {
      // Some servers hand back their own cached token until it expires. Asking again at once
      // would loop: wait until half of the remaining usable time has passed.
      const now = this.#clock.now();
      token = token.refreshNotBefore(now + (token.usableUntil - now) / 2);
    }
    return this.#store(token, trigger, previous, 'token endpoint', performance.now() - started);
  }

  /** Puts a new token in the memory tier, resets the failure state, and tells logs, metrics and listeners. */
  #store(
    token: Token,
    trigger: RefreshTrigger,
    previous: Token | undefined,
    from: 'shared' | 'token endpoint',
    ms: number,
  ): Token {
    const m = this.#o.metrics;
    this.#s.failures = 0;
    this.#s.lastError = undefined;
    this.#s.nextAttemptAt = 0;
    this.#o.cache.set(this.key, token);
    m.tokenExpiry.set(token.expiresAt / 1000);
    this.#o.logger.info(
      {
        event: 'token_obtained',
        upstream: this.upstream,
        tenant: this.tenant,
        trigger,
        token: token.fingerprint,
        from,
        lifetimeSeconds: Math.round((token.expiresAt - token.obtainedAt) / 1000),
        durationMs: Math.round(ms),
        sameAsCached: previous?.header === token.header,
      },
      'token obtained',
    );
    this.emit('token', token);
    return token;
  }
}

/**
 * Renews with `used`. An answer without a refresh token leaves `used` valid (RFC 6749 §6: the
 * server MAY issue a new one): it stays with the token, in memory and in the shared entry.
 */
async function refreshKeeping(
  refresh: (refreshToken: string) => Promise<TokenResponse>,
  used: string,
): Promise<TokenResponse> {
  const res = await refresh(used);
  return res.refreshToken === undefined ? { ...res, refreshToken: used } : res;
}

/** The server refused the refresh token (RFC 6749 §5.2): expired, revoked, or already rotated. */
function isInvalidGrant(err: unknown): err is TokenError {
  return err instanceof TokenError && err.reason === 'invalid_grant';
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Bounds a wait for a token; on time-out, the last failure (if any) says why. */
function withDeadline(pending: Promise<Token>, ms: number, lastError: () => TokenError | undefined): Promise<Token> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(lastError() ?? new TokenError('timeout', `no token within ${ms} ms`));
    }, ms);
    pending.then(
      (token) => {
        clearTimeout(timer);
        resolve(token);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
