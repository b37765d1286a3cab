import { EventEmitter } from 'node:events';
import { TokenError } from '../errors.js';
import type { AssertionInfo } from '../oauth/assertion-file.js';
import type { RefreshTrigger, TokenMetrics } from '../metrics.js';
import { backoffDelayMs, DEFAULT_BACKOFF, type BackoffPolicy } from './backoff.js';
import { systemClock, type Clock } from './clock.js';
import { lastUsableMoment, mayInject, renewalDue } from './expiry.js';
import type { ProviderGrant } from './provider-grant.js';
import type { TokenReader } from './reader.js';
import { DEFAULT_RENEWAL_BACKOFF, RenewalPolicy } from './renewal-policy.js';
import type { Renewed, SharedSettings } from './shared-refresh.js';
import type { TokenCache } from './token-cache.js';
import { TokenFetch } from './token-fetch.js';
import type { Token } from './token.js';
import { logRefreshFailed, logTokenObtained } from './token-log.js';
import { delay, withDeadline } from './wait.js';
import type { Span } from '../tracing/tracing.js';
import { endTokenRequest, tokenRequestSpan } from '../tracing/token-span.js';
import { exemplarOf } from '../tracing/exemplar.js';

export type { ProviderGrant } from './provider-grant.js';

/**
 * valid: a token in hand may be injected (a refresh ahead may be under way); failing: none may, and
 * the last attempt failed; refreshing: none may, and a fetch is under way; expired: the token in
 * memory is past its last usable moment; none: no token yet.
 */
export type TokenState = 'valid' | 'refreshing' | 'expired' | 'failing' | 'none';

export interface TokenProviderStatus {
  readonly upstream: string;
  readonly tenant?: string;
  readonly state: TokenState;
  readonly expiresInSeconds?: number;
  /** The reason of the current failure (set from a failed attempt until the next success). */
  readonly lastError?: string;
  /** When the last token was stored (epoch ms, the injected clock), and how long its fetch took. */
  readonly lastRefreshAt?: number;
  readonly lastRefreshDurationMs?: number;
  /** The stable reason of the last failed attempt and when (kept after a later success). */
  readonly lastFailureReason?: string;
  readonly lastFailureAt?: number;
  /** With a platform-issued assertion file: its claims and expiry, never the assertion. */
  readonly assertion?: AssertionInfo;
}

/** What lives as long as the process: the key, the tiers, the clock. */
export interface ProviderOptions {
  readonly key: string;
  readonly cache: TokenCache;
  readonly clock?: Clock;
  /** Backoff after failed token requests (transient errors, Retry-After, permanent errors). */
  readonly backoff?: BackoffPolicy;
  /** The shared tier (Redis), when replicas share tokens. */
  readonly shared?: SharedSettings | undefined;
}

/**
 * The token of one cache key, for as long as the process runs: a reload hands it the new
 * configuration's grant (`setGrant`) and keeps the fetch under way, the newest refresh token and the
 * failure state, so a rotating refresh token is never spent twice (RFC 6749 §10.4).
 *
 * Reading (`current`) is a map lookup; everything that takes time (token requests, backoff, single
 * flight, the shared tier) happens behind `obtain` and background renewals. Emits `token` (Token)
 * after each successful fetch and `refreshError` (TokenError) after each failed one.
 */
export class TokenProvider extends EventEmitter implements TokenReader {
  readonly key: string;
  readonly #cache: TokenCache;
  readonly #clock: Clock;
  readonly #backoff: BackoffPolicy;
  readonly #fetcher: TokenFetch;
  #g: ProviderGrant;
  #policy: RenewalPolicy;
  #inflight: Promise<Token> | undefined;
  #failures = 0;
  #nextAttemptAt = 0;
  #lastError: TokenError | undefined;
  /** For status(): the last stored token's time and fetch duration, the last failure's time. */
  #lastRefresh: { at: number; durationMs: number } | undefined;
  #lastFailureAt: number | undefined;
  #lastFailureReason: string | undefined;
  /** The token a 401 made us drop; put back if no replacement can be had and it has not expired. */
  #dropped: Token | undefined;
  /** Let go by a bounded registry (see dispose): a fetch still under way no longer fills the cache. */
  #disposed = false;

  constructor(options: ProviderOptions, grant: ProviderGrant) {
    super();
    this.key = options.key;
    this.#cache = options.cache;
    this.#clock = options.clock ?? systemClock;
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#fetcher = new TokenFetch(options.key, this.#clock, options.shared);
    this.#g = grant;
    this.#policy = new RenewalPolicy(grant.renewalBackoff ?? DEFAULT_RENEWAL_BACKOFF);
  }

  get upstream(): string {
    return this.#g.upstream;
  }

  get tenant(): string | undefined {
    return this.#g.tenant;
  }

  get metrics(): TokenMetrics {
    return this.#g.metrics;
  }

  /** A reload: the new configuration's grant (its connections, metrics, settings) from now on. */
  setGrant(grant: ProviderGrant): void {
    if (JSON.stringify(grant.renewalBackoff) !== JSON.stringify(this.#g.renewalBackoff)) {
      this.#policy = new RenewalPolicy(grant.renewalBackoff ?? DEFAULT_RENEWAL_BACKOFF);
    }
    // Another certificate towards the target (RFC 8705 §3): a cached token may be bound to the
    // previous one, so the next request fetches anew and the new token's binding is checked.
    if (grant.presentedCertificate !== this.#g.presentedCertificate) {
      this.#cache.delete(this.key);
      this.#dropped = undefined;
    }
    // A reload may have fixed what made the last fetch fail without changing the key: a CA
    // bundle, a client certificate, a proxy route to the token endpoint. The next request tries
    // at once instead of waiting out (or, for a permanent failure, being refused for) a backoff
    // earned under the old configuration; the failure count, and so the next backoff, stays.
    this.#nextAttemptAt = 0;
    this.#g = grant;
  }

  current(): Token | undefined {
    const token = this.#cache.get(this.key);
    if (token === undefined) return undefined;
    const now = this.#clock.now();
    // The first comparison keeps the usual case to one field read; mayInject decides the rest.
    if (now >= token.usableUntil && !mayInject(token, now, this.#lastError !== undefined)) return undefined;
    this.#g.metrics.cacheHit.inc();
    if (renewalDue(token, now) && this.#inflight === undefined && now >= this.#nextAttemptAt) {
      this.#refresh('ahead', now + this.#g.waitTimeoutMs).catch(() => {
        /* logged and counted in #refresh; the cached token keeps serving */
      });
    }
    return token;
  }

  usable(token: Token): boolean {
    return mayInject(token, this.#clock.now(), this.#lastError !== undefined);
  }

  obtain(trigger: RefreshTrigger = 'miss', wait?: Span): Promise<Token> {
    const cached = this.current();
    // After a 401, never the token the partner just refused (put back when its renewal failed).
    if (cached !== undefined && !(trigger === 'unauthorized' && cached === this.#dropped)) {
      wait?.setAttribute('token_proxy.token.fetch', 'cached');
      return Promise.resolve(cached);
    }
    if (trigger === 'miss') this.#g.metrics.cacheMiss.inc();
    const now = this.#clock.now();
    const deadline = now + this.#g.waitTimeoutMs;
    const lastError = this.#lastError;
    if (this.#inflight === undefined && lastError !== undefined && now < this.#nextAttemptAt) {
      // Backing off after a failure: a permanent error, or a wait longer than the request may
      // spend, answers at once instead of queueing requests or calling the endpoint again.
      if (lastError.permanent || this.#nextAttemptAt > deadline) {
        wait?.setAttribute('token_proxy.token.fetch', 'backing_off');
        return Promise.reject(lastError);
      }
    }
    // Single flight: the request that starts the fetch parents its token request spans; the
    // others wait on it (their wait spans say so).
    wait?.setAttribute('token_proxy.token.fetch', this.#inflight === undefined ? 'started' : 'joined');
    const pending = this.#inflight ?? this.#refresh(trigger, deadline, wait);
    const bounded = withDeadline(pending, this.#g.waitTimeoutMs, () => this.#lastError);
    if (trigger === 'unauthorized') return bounded;
    // Nothing better could be had in time: the cached token serves until its last usable moment.
    return bounded.catch((err: unknown) => {
      const fallback = this.#cache.get(this.key);
      if (fallback !== undefined && this.#clock.now() < lastUsableMoment(fallback)) return fallback;
      throw err;
    });
  }

  onUnauthorized(token: Token, path: string, canReplay: boolean): 'replay' | 'pass' {
    const cached = this.#cache.get(this.key);
    const decision = this.#policy.onUnauthorized(this.#clock.now(), path, token.header, {
      isCurrent: cached === undefined || cached.header === token.header,
      renewing: this.#inflight !== undefined,
    });
    if (decision === 'pass') return 'pass';
    if (decision === 'renew') {
      if (cached !== undefined) this.#cache.delete(this.key);
      this.#dropped = token;
      if (!canReplay) this.obtain('unauthorized').catch(() => undefined); // for the requests that follow
    }
    return canReplay ? 'replay' : 'pass';
  }

  onAccepted(token: Token, path: string): void {
    this.#policy.onAccepted(path, token.header);
  }

  /**
   * Let go by the registry (a per-caller provider evicted from its bounded set): its token leaves
   * the memory tier, and a fetch still under way serves only the requests waiting on it.
   */
  dispose(): void {
    this.#disposed = true;
    this.#cache.delete(this.key);
    this.removeAllListeners();
  }

  /** The state of this key for /readyz and the status page: no token values, no metrics counted. */
  status(): TokenProviderStatus {
    const token = this.#cache.get(this.key);
    const now = this.#clock.now();
    const valid = token !== undefined && mayInject(token, now, this.#lastError !== undefined);
    const g = this.#g;
    const state: TokenState = valid
      ? 'valid'
      : this.#lastError !== undefined
        ? 'failing'
        : this.#inflight !== undefined
          ? 'refreshing'
          : token !== undefined
            ? 'expired'
            : 'none';
    const refresh = this.#lastRefresh;
    return {
      upstream: g.upstream,
      ...(g.tenant === undefined ? {} : { tenant: g.tenant }),
      state,
      ...(valid ? { expiresInSeconds: Math.round((token.expiresAt - now) / 1000) } : {}),
      ...(this.#lastError === undefined ? {} : { lastError: this.#lastError.reason }),
      ...(refresh === undefined ? {} : { lastRefreshAt: refresh.at, lastRefreshDurationMs: refresh.durationMs }),
      ...(this.#lastFailureAt === undefined
        ? {}
        : { lastFailureReason: this.#lastFailureReason, lastFailureAt: this.#lastFailureAt }),
      ...(g.grant.assertion === undefined ? {} : { assertion: g.grant.assertion() }),
    };
  }

  /** One fetch in flight per key; retries transient failures with backoff until `deadline`. */
  #refresh(trigger: RefreshTrigger, deadline: number, wait?: Span): Promise<Token> {
    const run: Promise<Token> = this.#fetchWithRetry(trigger, deadline, wait).finally(() => {
      if (this.#inflight === run) this.#inflight = undefined;
    });
    this.#inflight = run;
    return run;
  }

  async #fetchWithRetry(trigger: RefreshTrigger, deadline: number, parent: Span | undefined): Promise<Token> {
    for (;;) {
      const wait = this.#nextAttemptAt - this.#clock.now();
      if (wait > 0) await delay(wait);
      try {
        return await this.#fetchOnce(trigger, parent);
      } catch (err) {
        const error =
          err instanceof TokenError
            ? err
            : new TokenError('bad_response', 'token response could not be used', { cause: err });
        this.#failures += 1;
        this.#lastError = error;
        this.#lastFailureReason = error.reason; // the stable reason only: a message may quote the server
        this.#lastFailureAt = this.#clock.now();
        const backoff = backoffDelayMs(this.#backoff, this.#failures, error.retryAfterSeconds, error.permanent);
        this.#nextAttemptAt = this.#clock.now() + backoff;
        this.#restoreDropped();
        this.emit('refreshError', error);
        const giveUp = error.permanent || this.#nextAttemptAt >= deadline;
        logRefreshFailed(this.#g, trigger, error, this.#failures, giveUp ? undefined : backoff);
        if (giveUp) throw error;
      }
    }
  }

  /**
   * No replacement for a token a 401 made us drop: it serves again until its last usable moment
   * (the partner's next answer tells whether it was really revoked), rather than every request
   * failing for want of a token.
   */
  #restoreDropped(): void {
    const dropped = this.#dropped;
    if (dropped === undefined || this.#disposed || this.#cache.get(this.key) !== undefined) return;
    if (this.#clock.now() < lastUsableMoment(dropped)) this.#cache.set(this.key, dropped);
    else this.#dropped = undefined;
  }

  async #fetchOnce(trigger: RefreshTrigger, parent: Span | undefined): Promise<Token> {
    const g = this.#g;
    const m = g.metrics;
    const traced = g.tracing;
    const span =
      traced === undefined
        ? undefined
        : tokenRequestSpan(traced.tracer, parent, g.upstream, g.tenant, traced.labels, trigger);
    const exemplar = span === undefined ? undefined : exemplarOf(span);
    const started = performance.now();
    const startedAt = this.#clock.now();
    const previous = this.#cache.get(this.key);
    let outcome: Renewed;
    try {
      outcome = await this.#fetcher.fetch(g, previous ?? this.#dropped, span);
    } catch (err) {
      const reason = err instanceof TokenError ? err.reason : 'bad_response';
      m.refreshError.observe((performance.now() - started) / 1000, exemplar);
      m.refreshes(trigger, 'error');
      m.refreshFailure(reason);
      if (span !== undefined) endTokenRequest(span, 'error', reason);
      throw err;
    }
    let token = outcome.token;
    if (outcome.fromShared) {
      m.sharedCacheHit.inc();
      if (span !== undefined) endTokenRequest(span, 'shared');
      return this.#store(token, trigger, previous, 'shared', performance.now() - started, startedAt);
    }
    m.refreshOk.observe((performance.now() - started) / 1000, exemplar);
    if (span !== undefined) endTokenRequest(span, 'success');
    m.refreshes(trigger, 'success');
    if (previous !== undefined && previous.header === token.header) {
      // Some servers hand back their own cached token until it expires. Asking again at once
      // would loop: wait until half of the remaining usable time has passed.
      const now = this.#clock.now();
      token = token.refreshNotBefore(now + (token.usableUntil - now) / 2);
    }
    return this.#store(token, trigger, previous, 'token endpoint', performance.now() - started, startedAt);
  }

  /** Puts a new token in the memory tier, resets the failure state, and tells logs, metrics and listeners. */
  #store(
    token: Token,
    trigger: RefreshTrigger,
    previous: Token | undefined,
    from: string,
    ms: number,
    startedAt: number,
  ): Token {
    const at = this.#clock.now();
    this.#lastRefresh = { at, durationMs: at - startedAt };
    this.#failures = 0;
    this.#lastError = undefined;
    this.#nextAttemptAt = 0;
    this.#dropped = undefined;
    if (!this.#disposed) this.#cache.set(this.key, token);
    this.#g.metrics.tokenExpiry.set(token.expiresAt / 1000);
    logTokenObtained(this.#g, trigger, token, previous, from, ms);
    this.emit('token', token);
    return token;
  }
}
