import type { JWTPayload } from 'jose';
import type { TokenMetrics } from '../metrics.js';
import type { Token } from './token.js';
import type { Span } from '../tracing/tracing.js';

/**
 * The request path's view of one key's tokens (an upstream, or one tenant of it). This is all
 * `proxy/` knows of tokens: behind it, a TokenProvider owns the token's life.
 */
export interface TokenReader {
  readonly upstream: string;
  readonly tenant: string | undefined;
  readonly metrics: TokenMetrics;
  /** Hot path: the token to inject now, or undefined when the request has to wait for one. A map lookup. */
  current(): Token | undefined;
  /**
   * A token for a request that found none ('miss'), or for the replay after a 401 ('unauthorized':
   * never the refused token): waits at most the upstream's token wait; rejects with a TokenError.
   * `wait`: the caller's `token wait` span (tracing on), parent of the token requests it starts.
   */
  obtain(trigger?: 'miss' | 'unauthorized', wait?: Span): Promise<Token>;
  /** Whether `token`, picked earlier (before a slow upload), may still be injected now. */
  usable(token: Token): boolean;
  /**
   * The target answered 401 to a request on `path` that carried `token`. 'replay': send it once
   * more with `obtain()`'s token (a renewal is under way or done); 'pass': the 401 goes to the
   * client as it came. `canReplay` false (a streamed body): the answer passes, but the token may
   * still be renewed for the requests that follow.
   */
  onUnauthorized(token: Token, path: string, canReplay: boolean): 'replay' | 'pass';
  /** The target answered anything but 401 to a request that carried `token`: evidence for the renewal policy. */
  onAccepted(token: Token, path: string): void;
}

/**
 * RFC 8693 token exchange: one token source per caller, chosen by the caller's validated token.
 * Undefined when that token has expired (no token exchanged for it is used past its `exp`).
 */
export interface CallerTokens {
  forCaller(subjectToken: string, claims: JWTPayload): TokenReader | undefined;
}
