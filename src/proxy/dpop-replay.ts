import type { Dispatcher } from 'undici';
import type { DpopSigner } from '../oauth/dpop-signer.js';
import type { Token } from '../tokens/token.js';
import { asksForDpopNonce } from './bearer-challenge.js';
import { dpopNonceOf } from './dpop-request.js';
import type { ResponseRelay } from './response-relay.js';
import { UnauthorizedReplay, type ReplaySettings } from './unauthorized-replay.js';

export interface DpopReplaySettings extends ReplaySettings {
  /** The target's origin: whose nonces the answers carry. */
  readonly targetOrigin: string;
  /** Sends the request with `token` and a fresh proof, answering to `handler`. */
  sendWithProof(token: Token, handler: Dispatcher.DispatchHandler): void;
}

/**
 * The 401 rule of a DPoP upstream (RFC 9449 §9). Every answer's `DPoP-Nonce` is remembered for
 * the target's next proofs. A 401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a
 * nonce is decided before the token's 401 policy: the token is fine, only the proof lacked the
 * nonce, so the request is replayed once with a new proof carrying it and the SAME token (no
 * renewal). That replay is the request's one replay; any other 401 follows the usual rule.
 */
export class DpopReplay extends UnauthorizedReplay {
  readonly #d: DpopReplaySettings;
  readonly #signer: DpopSigner;
  #nonceReplay: 'none' | 'pending' | 'done' = 'none';

  constructor(relay: ResponseRelay, settings: DpopReplaySettings, token: Token, signer: DpopSigner) {
    super(relay, settings, token);
    this.#d = settings;
    this.#signer = signer;
  }

  protected override send(token: Token): void {
    this.#d.sendWithProof(token, this);
  }

  protected override get canReplay(): boolean {
    return this.#nonceReplay === 'none' && super.canReplay;
  }

  override onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true;
    const nonce = dpopNonceOf(rawHeaders);
    const fresh = nonce !== undefined && this.#signer.rememberNonce(this.#d.targetOrigin, nonce);
    if (statusCode === 401 && fresh && this.canReplay && asksForDpopNonce(rawHeaders)) {
      this.#nonceReplay = 'pending';
      return true;
    }
    return super.onHeaders(statusCode, rawHeaders, resume, statusText);
  }

  override onData(chunk: Buffer): boolean {
    return this.#nonceReplay === 'pending' || super.onData(chunk);
  }

  override onComplete(trailers: string[] | null): void {
    if (this.#nonceReplay !== 'pending') {
      super.onComplete(trailers);
      return;
    }
    this.#nonceReplay = 'done';
    if (this.relay.clientGone) {
      this.relay.clientLeft();
      return;
    }
    const { logger, tokens } = this.#d;
    logger.info(
      {
        event: 'dpop_nonce_retry',
        upstream: this.#d.upstream.name,
        tenant: tokens.tenant,
        token: this.token.fingerprint,
      },
      'target asked for a DPoP nonce: replaying once with it and the same token',
    );
    this.relay.attempt(this.token, true);
    this.send(this.token);
  }
}
