import { TokenError } from '../errors.js';
import { boundCertificates, certificateMismatch } from './certificate-binding.js';
import type { Clock } from './clock.js';
import type { ProviderGrant } from './provider-grant.js';
import { renewWithPlan } from './refresh-chain.js';
import {
  renewThroughShared,
  SharedUnavailable,
  type Renewed,
  type SharedRefreshParty,
  type SharedSettings,
} from './shared-refresh.js';
import type { SharedEntry } from './shared-store.js';
import { SharedView } from './shared-view.js';
import { tokenFromResponse, tokenWithTimes, type Token } from './token.js';
import type { Span } from '../tracing/tracing.js';

/**
 * One token request of a key, and the refresh-token state it needs between requests: the newest
 * refresh token and what the replica knows of the shared entry. Retries, backoff, metrics and the
 * memory tier are the provider's.
 */
export class TokenFetch {
  readonly #key: string;
  readonly #clock: Clock;
  readonly #shared: SharedSettings | undefined;
  readonly #view = new SharedView();
  /**
   * The newest refresh token, kept apart from the cached access token: a 401 or an eviction drops
   * the access token, but a rotated refresh token is the only valid one left (the partner revoked
   * its predecessor).
   */
  #refreshToken: string | undefined;
  /** A token bound to another certificate was refused, and said so in the log (once, until a token is usable). */
  #mismatchLogged = false;

  constructor(key: string, clock: Clock, shared: SharedSettings | undefined) {
    this.#key = key;
    this.#clock = clock;
    this.#shared = shared;
  }

  /**
   * A new token, through the shared tier when it is up (a sibling's, or one this replica fetched
   * under the lock), else alone. `previous`: the token being replaced (not adopted again from the
   * shared entry; its refresh token the last one to try).
   */
  async fetch(g: ProviderGrant, previous: Token | undefined, span?: Span): Promise<Renewed> {
    const shared = this.#shared;
    let outcome: Renewed | undefined;
    if (shared !== undefined && shared.store.up) {
      outcome = await renewThroughShared(this.#sharedParty(g, previous, span), shared, previous?.value).catch(
        (err: unknown) => {
          if (!(err instanceof SharedUnavailable)) throw err;
          g.logger.warn(
            { event: 'shared_cache_bypassed', upstream: g.upstream, tenant: g.tenant, err: err.message },
            'shared token cache unavailable: fetching alone',
          );
          return undefined;
        },
      );
    }
    if (outcome === undefined) {
      outcome = await this.#renew(g, previous, undefined);
      // With a shared tier configured, this renewal is one the shared entry does not know of.
      if (shared !== undefined && !outcome.fromShared) this.#view.renewedWithout();
    }
    if (outcome.fromShared && outcome.token.refreshToken !== undefined) this.#refreshToken = outcome.token.refreshToken;
    return outcome;
  }

  /**
   * A caller's exchanged token (RFC 8693) ends with the caller's own token: capped before it is
   * used or written to the shared tier (whose entry then expires with the caller's token too).
   */
  #capped(g: ProviderGrant, token: Token): Token | undefined {
    if (g.notAfter === undefined) return token;
    const capped = token.cappedAt(g.notAfter);
    return capped === undefined || this.#clock.now() >= capped.usableUntil ? undefined : capped;
  }

  /** One renewal by the refresh plan; a new refresh token replaces ours at once (rotation). */
  async #renew(
    g: ProviderGrant,
    previous: Token | undefined,
    sharedRefreshToken: string | undefined,
    reread?: () => Promise<SharedEntry | undefined>,
  ): Promise<Renewed> {
    const response = await renewWithPlan(
      {
        grant: g.grant,
        logger: g.logger,
        labels: { upstream: g.upstream, tenant: g.tenant },
        ownRefreshToken: () => ({ value: this.#refreshToken, fromRenewingAlone: this.#view.renewedAlone }),
        cachedRefreshToken: () => previous?.refreshToken,
        refused: (rt) => {
          if (this.#refreshToken === rt) this.#refreshToken = undefined;
        },
        adoptNewer: (entry) => this.#adopt(g, entry),
        admits: (entry) => this.#view.admits(entry),
      },
      sharedRefreshToken,
      reread,
    );
    if ('header' in response) {
      this.#refreshToken = response.refreshToken;
      return { token: response, fromShared: true };
    }
    // Rotation: the new refresh token replaces the old one at once, even if this answer turns
    // out unusable below, because the partner has already revoked the old one.
    if (response.refreshToken !== undefined) this.#refreshToken = response.refreshToken;
    const mismatch = certificateMismatch(
      boundCertificates(response.accessToken, response.certificateThumbprint),
      g.presentedCertificate,
    );
    if (mismatch !== undefined) throw this.#refused(g, mismatch);
    const token = this.#capped(g, tokenFromResponse(response, this.#clock.now(), g.lifetime));
    if (token === undefined)
      throw new TokenError('invalid_grant', "the caller's token has expired: no token exchanged for it is used");
    this.#mismatchLogged = false;
    return { token, fromShared: false };
  }

  /**
   * A token bound to another certificate than the target's is never cached or sent: each fetch
   * fails (the provider logs and backs off as for any permanent failure), and the first one also
   * says at error level which certificates differ, since only a configuration change fixes it.
   */
  #refused(g: ProviderGrant, mismatch: TokenError): TokenError {
    if (!this.#mismatchLogged) {
      this.#mismatchLogged = true;
      g.logger.error(
        { event: 'token_certificate_mismatch', upstream: g.upstream, tenant: g.tenant, detail: mismatch.message },
        'certificate-bound token not sent: the target is presented another certificate',
      );
    }
    return mismatch;
  }

  #sharedParty(g: ProviderGrant, previous: Token | undefined, span: Span | undefined): SharedRefreshParty {
    const tracer = g.tracing?.tracer;
    return {
      ...(tracer === undefined || span === undefined
        ? {}
        : { lockTaken: () => tracer.internal('token cache lock', span, { 'token_proxy.upstream': g.upstream }) }),
      key: this.#key,
      view: this.#view,
      clock: this.#clock,
      adopt: (entry) => this.#adopt(g, entry),
      renew: (rt, reread) => this.#renew(g, previous, rt, reread),
      newestRefreshToken: () => this.#refreshToken,
      writeRefused: () =>
        g.logger.warn(
          { event: 'shared_cache_write_refused', upstream: g.upstream, tenant: g.tenant },
          'shared token entry not written (lock lost or store away)',
        ),
    };
  }

  /** A shared entry as a Token of this replica (its own jittered refresh moment); undefined if not usable now. */
  #adopt(g: ProviderGrant, entry: SharedEntry): Token | undefined {
    let token: Token;
    try {
      token = tokenWithTimes(entry.accessToken, entry.refreshToken, entry.obtainedAt, entry.expiresAt, g.lifetime);
    } catch (err) {
      if (err instanceof TokenError) return undefined; // not usable at all: the lock holder replaces it
      throw err;
    }
    const capped = this.#capped(g, token);
    if (capped === undefined || this.#clock.now() >= capped.usableUntil) return undefined;
    // A sibling configured with another target certificate: its token is not for this replica's target.
    if (certificateMismatch(boundCertificates(entry.accessToken, undefined), g.presentedCertificate) !== undefined)
      return undefined;
    this.#view.holds(entry.version);
    return capped;
  }
}
