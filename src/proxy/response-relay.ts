import type { ServerResponse } from 'node:http';
import { errors as undiciErrors, type Dispatcher } from 'undici';
import { ProxyError } from '../errors.js';
import type { Token } from '../tokens/token.js';
import { downstreamResponseHeaders } from './headers.js';
import { CLIENT_LEFT, logAnswer, tokenUnavailable, type Answers, type RequestRecord } from './respond.js';
import type { Upstream } from './upstream.js';

/**
 * Relays one upstream answer to the client as it comes (undici's handler API, raw headers so
 * repeated fields survive), with back-pressure both ways: a client that reads slowly pauses the
 * upstream socket. One that stops reading for `idleTimeoutMs` is cut off and the upstream
 * connection freed: undici's own body timeout does not run while a response is paused, so
 * without this a client that never reads would hold a pooled connection for as long as it
 * keeps its socket open. Writes the access line once, however the exchange ends.
 */
export class ResponseRelay implements Dispatcher.DispatchHandler {
  readonly #rec: RequestRecord;
  readonly #res: ServerResponse;
  readonly #answers: Answers;
  readonly #idleTimeoutMs: number;
  #abort: ((err?: Error) => void) | undefined;
  #status = 0;
  #token: Token | undefined;
  #retried = false;
  #idle: NodeJS.Timeout | undefined;
  #logged = false;

  /** `closed` runs once, when the client's response closes, however the exchange ended. */
  constructor(rec: RequestRecord, res: ServerResponse, answers: Answers, idleTimeoutMs: number, closed: () => void) {
    this.#rec = rec;
    this.#res = res;
    this.#answers = answers;
    this.#idleTimeoutMs = idleTimeoutMs;
    // One plain listener ('close' comes once per response) rather than once()'s wrapper.
    res.on('close', () => {
      closed();
      clearTimeout(this.#idle);
      // The client went away before the answer was complete: free the upstream socket.
      if (!res.writableFinished) this.#abort?.(new Error('client closed the connection'));
    });
  }

  /** The token (and attempt) of the dispatch about to start, for the access line. */
  attempt(token: Token | undefined, retried: boolean): void {
    this.#token = token;
    this.#retried = retried;
  }

  get clientGone(): boolean {
    return this.#res.destroyed;
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#res.destroyed) abort(new Error('client closed the connection'));
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true; // 1xx: informational, nothing to relay
    this.#status = statusCode;
    this.#res.writeHead(statusCode, statusText, downstreamResponseHeaders(rawHeaders));
    this.#res.on('drain', () => {
      clearTimeout(this.#idle);
      resume();
    });
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.#res.write(chunk)) return true;
    // Paused until the client reads: it has idleTimeoutMs to do so.
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => this.#clientStalled(), this.#idleTimeoutMs);
    return false;
  }

  onComplete(): void {
    this.#res.end();
    this.#log(this.#status);
  }

  onError(err: Error): void {
    clearTimeout(this.#idle);
    const u = this.#rec.upstream;
    if (this.#res.headersSent) {
      // Mid-response failure: break the client connection so a cut answer never looks complete.
      u.logger.warn(
        { event: 'upstream_response_broken', upstream: u.name, err: err.message },
        'upstream response broken',
      );
      this.#res.destroy(err);
      this.#log(this.#status);
      return;
    }
    if (this.#res.destroyed) {
      this.#log(CLIENT_LEFT); // nothing to answer
      return;
    }
    const failure = upstreamFailure(u, err);
    u.logger.warn(
      { event: 'upstream_failed', upstream: u.name, error: failure.code, err: err.message },
      failure.message,
    );
    this.#log(this.#answers.error(this.#res, failure));
  }

  /** No token for the (re)play: 502 token_unavailable, or 499 when the client has left. */
  tokenFailed(err: unknown): void {
    this.#log(
      this.#res.destroyed ? CLIENT_LEFT : this.#answers.error(this.#res, tokenUnavailable(this.#rec.upstream, err)),
    );
  }

  /** The client left while the next attempt waited for its token. */
  clientLeft(): void {
    this.#log(CLIENT_LEFT);
  }

  #clientStalled(): void {
    const u = this.#rec.upstream;
    u.logger.warn(
      { event: 'response_idle_timeout', upstream: u.name, requestId: this.#rec.requestId },
      'client read none of the answer within limits.responseIdleTimeoutSeconds: connection closed',
    );
    this.#abort?.(new Error('client stopped reading the response'));
    this.#res.destroy();
  }

  #log(status: number): void {
    if (this.#logged) return;
    this.#logged = true;
    logAnswer(this.#rec, status, this.#token, this.#retried);
  }
}

function upstreamFailure(upstream: Upstream, err: Error): ProxyError {
  if (err instanceof undiciErrors.HeadersTimeoutError) {
    return new ProxyError(
      'upstream_timeout',
      `upstream ${upstream.name} sent no response headers within ${upstream.timeoutMs} ms`,
      { upstream: upstream.name },
      { cause: err },
    );
  }
  if (err instanceof ProxyError) return err;
  if (err instanceof undiciErrors.HeadersOverflowError || err instanceof undiciErrors.HTTPParserError) {
    // The target answered, but not with HTTP we can relay (RFC 9209 §2.3.17 http_protocol_error).
    const what =
      err instanceof undiciErrors.HeadersOverflowError
        ? 'response headers over the 16 KiB limit'
        : 'a malformed response';
    return new ProxyError(
      'upstream_bad_response',
      `upstream ${upstream.name} sent ${what}`,
      { upstream: upstream.name },
      { cause: err },
    );
  }
  if ((err as NodeJS.ErrnoException).code === 'ERR_EGRESS_DENIED')
    return new ProxyError('egress_denied', err.message, { rule: 'egress: resolved address' }, { cause: err });
  return new ProxyError(
    'upstream_unreachable',
    `upstream ${upstream.name} failed: ${err.message}`,
    { upstream: upstream.name },
    { cause: err },
  );
}
