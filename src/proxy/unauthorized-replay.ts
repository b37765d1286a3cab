import type { Dispatcher } from 'undici';
import type { Logger } from 'pino';
import type { Token } from '../tokens/token.js';
import type { TokenReader } from '../tokens/reader.js';
import { tokenNotAtFault } from './bearer-challenge.js';
import type { ResponseRelay } from './response-relay.js';

export interface ReplaySettings {
  readonly tokens: TokenReader;
  readonly upstream: { readonly name: string };
  /** The request path, for the per-path renewal backoff. */
  readonly path: string;
  /** The body can be sent twice (none, or held in the replay buffer). */
  readonly replayable: boolean;
  readonly logger: Logger;
  /** A token for the replay: `tokens.obtain`, traced as the request's token wait when tracing is on. */
  obtain(trigger: 'unauthorized'): Promise<Token>;
  /** Sends the request with `token` (again), answering to `handler`. */
  send(token: Token, handler: Dispatcher.DispatchHandler): void;
}

/**
 * The 401 rule, as an undici handler wrapped around the relay (the shape of undici's own
 * RetryHandler): a 401 for which the token is at fault (RFC 6750 §3.1) is swallowed, the token
 * renewed and the request replayed once with the new one; any other answer, 403 included, and
 * the second attempt's answer whatever it is, pass to the relay as they came. The provider's
 * renewal policy decides whether a 401 is worth a renewal (one renewal per token, and none for a
 * path where renewing has proven futile).
 */
export class UnauthorizedReplay implements Dispatcher.DispatchHandler {
  protected readonly relay: ResponseRelay;
  readonly #s: ReplaySettings;
  #token: Token;
  #attempt = 1;
  /** This attempt's answer is a 401 that will be replayed: drain it, relay nothing. */
  #swallowing = false;

  constructor(relay: ResponseRelay, settings: ReplaySettings, token: Token) {
    this.relay = relay;
    this.#s = settings;
    this.#token = token;
  }

  start(): void {
    this.relay.attempt(this.#token, false);
    this.send(this.#token);
  }

  /** The token of the attempt under way. */
  protected get token(): Token {
    return this.#token;
  }

  /** Whether this attempt's answer may still be swallowed for a replay. */
  protected get canReplay(): boolean {
    return this.#attempt === 1 && this.#s.replayable;
  }

  /** Dispatches (again) with `token`, answering to this handler. */
  protected send(token: Token): void {
    this.#s.send(token, this);
  }

  onConnect(abort: (err?: Error) => void): void {
    this.relay.onConnect(abort);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true;
    const { tokens, path } = this.#s;
    if (statusCode === 401 && !tokenNotAtFault(rawHeaders)) {
      if (tokens.onUnauthorized(this.#token, path, this.canReplay) === 'replay') {
        this.#swallowing = true;
        return true;
      }
    } else {
      tokens.onAccepted(this.#token, path);
    }
    if (this.#attempt === 2) this.#outcome(statusCode);
    return this.relay.onHeaders(statusCode, rawHeaders, resume, statusText);
  }

  onData(chunk: Buffer): boolean {
    return this.#swallowing || this.relay.onData(chunk);
  }

  onComplete(trailers: string[] | null): void {
    if (this.#swallowing) this.#replay();
    else this.relay.onComplete();
    void trailers;
  }

  onError(err: Error): void {
    this.relay.onError(err);
  }

  #outcome(statusCode: number): void {
    const { tokens, logger } = this.#s;
    const upstream = this.#s.upstream.name;
    const outcome = statusCode === 401 ? 'still_unauthorized' : 'recovered';
    tokens.metrics.unauthorizedRetry(outcome);
    logger.info(
      {
        event: 'unauthorized_retry_outcome',
        upstream,
        tenant: tokens.tenant,
        outcome,
        status: statusCode,
        token: this.#token.fingerprint,
      },
      `replay after 401: ${outcome}`,
    );
  }

  #replay(): void {
    const { tokens, logger } = this.#s;
    const upstream = this.#s.upstream.name;
    this.relay.attempt(this.#token, true);
    logger.info(
      { event: 'unauthorized_retry', upstream, tenant: tokens.tenant, token: this.#token.fingerprint },
      'target answered 401: renewing the token and replaying once',
    );
    this.#s.obtain('unauthorized').then(
      (fresh) => {
        if (this.relay.clientGone) {
          this.relay.clientLeft();
          return;
        }
        this.#token = fresh;
        this.#attempt = 2;
        this.#swallowing = false;
        this.relay.attempt(fresh, true);
        this.send(fresh);
      },
      (err: unknown) => {
        tokens.metrics.unauthorizedRetry('still_unauthorized');
        this.relay.tokenFailed(err);
      },
    );
  }
}
