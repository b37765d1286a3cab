import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import type { Logger } from 'pino';
import { ProxyError } from '../errors.js';
import type { DpopSigner } from '../oauth/dpop-signer.js';
import type { Token } from '../tokens/token.js';
import type { TokenReader } from '../tokens/reader.js';
import type { Admitted } from './admit.js';
import type { ProxyContext } from './context.js';
import { addProof } from './dpop-request.js';
import { DpopReplay, type DpopReplaySettings } from './dpop-replay.js';
import { upstreamRequestHeaders, type ForwardedInfo } from './headers.js';
import { readRequestBody, type RequestBody } from './request-body.js';
import { CLIENT_LEFT, logAnswer, tokenUnavailable, type RequestRecord } from './respond.js';
import { ResponseRelay } from './response-relay.js';
import { GuardedRelay } from './guarded-relay.js';
import type { GuardedRequest } from './partner-guard.js';
import { UnauthorizedReplay, type ReplaySettings } from './unauthorized-replay.js';
import type { Target, Upstream } from './upstream.js';
import { obtainTraced } from './token-wait.js';
import { TracedAttempt } from '../tracing/attempt-handler.js';
import type { Span, Tracing } from '../tracing/tracing.js';

/** Seconds a client is told to wait when an upstream's queue is full (RFC 9110 §10.2.3). */
const QUEUE_FULL_RETRY_AFTER = '1';

/**
 * Forwards one admitted request: its token (cached, or awaited), its body (held for a replay
 * when small enough and the budget allows), then dispatch through undici with the answer relayed
 * as it comes; a token-bearing request goes through the 401 replay handler.
 *
 * Returns a promise only when it has to wait (for a token or a request body): the usual request,
 * with a cached token and no body, is on its way when this returns, at no promise or tick.
 */
export function forward(
  ctx: ProxyContext,
  req: IncomingMessage,
  res: ServerResponse,
  admitted: Admitted,
  span?: Span,
): Promise<void> | undefined {
  const f = new Forwarding(ctx, req, res, admitted, span);
  const tokens = admitted.tokens;
  const token = tokens?.current();
  if (tokens !== undefined && token === undefined) return f.onceObtained();
  return f.sendWith(token);
}

/**
 * One forwarded request: what the access line records (RequestRecord), what the replay handler
 * needs (ReplaySettings), and the steps from token to dispatch. One object per request, so the
 * hot path allocates little beyond the two handlers.
 */
class Forwarding implements RequestRecord, ReplaySettings, DpopReplaySettings {
  readonly req: IncomingMessage;
  readonly upstream: Upstream;
  readonly tenant: string | undefined;
  readonly started: number;
  readonly requestId: string;
  /** The request's SERVER span; undefined when tracing is off. */
  readonly span: Span | undefined;
  readonly #ctx: ProxyContext;
  readonly #res: ServerResponse;
  readonly #target: Target;
  readonly #tokens: TokenReader | undefined;
  #body: RequestBody | undefined;
  /** Attempts sent to the target so far (a replay is the second), for the attempt spans. */
  #attempts = 0;

  constructor(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, admitted: Admitted, span?: Span) {
    this.req = req;
    this.upstream = admitted.upstream;
    this.tenant = admitted.tokens?.tenant;
    this.started = performance.now();
    this.requestId = requestIdOf(req);
    this.#ctx = ctx;
    this.#res = res;
    this.#target = admitted.target;
    this.#tokens = admitted.tokens;
    this.span = span;
    if (span !== undefined) span.setAttribute('token_proxy.upstream', admitted.upstream.name);
  }

  // ReplaySettings
  get tokens(): TokenReader {
    return this.#tokens as TokenReader; // read only by the replay handler, made only with tokens
  }

  get path(): string {
    return this.#target.path;
  }

  get targetOrigin(): string {
    return this.#target.origin;
  }

  get replayable(): boolean {
    return this.#body?.kind !== 'streamed';
  }

  get logger(): Logger {
    return this.upstream.logger;
  }

  /** A token for this request, waited for in a `token wait` span when tracing is on. */
  obtain(trigger: 'miss' | 'unauthorized'): Promise<Token> {
    const tokens = this.tokens;
    const span = this.span;
    return span === undefined
      ? tokens.obtain(trigger)
      : obtainTraced(this.#ctx.tracing as Tracing, span, tokens, trigger);
  }

  async onceObtained(): Promise<void> {
    let token: Token;
    try {
      token = await this.obtain('miss');
    } catch (err) {
      this.req.resume();
      this.#answerFailure(undefined, tokenUnavailable(this.upstream, err));
      return;
    }
    // The client left while its token came: its 'close' is past, so no relay made now would hear
    // it and give the upstream's place back. Off the fast path (a cached token never waits here).
    if (this.#res.closed) {
      this.req.resume();
      logAnswer(this, CLIENT_LEFT, token, false);
      return;
    }
    await this.sendWith(token);
  }

  /** Reads the body as the upstream's replay rule says (nothing to wait for without one), then sends. */
  sendWith(token: Token | undefined): Promise<void> | undefined {
    let read: RequestBody | Promise<RequestBody>;
    try {
      read = readRequestBody(
        this.req,
        this.upstream.retryBodyLimitBytes,
        this.#ctx.routing.maxRequestBodyBytes,
        this.#ctx.replayBudget,
      );
    } catch (err) {
      this.#refuseBody(token, err);
      return undefined;
    }
    if (read instanceof Promise) {
      return read.then(
        (body) => this.#sendWithUsableToken(body, token),
        (err: unknown) => this.#refuseBody(token, err),
      );
    }
    this.#dispatch(read, token);
    return undefined;
  }

  /**
   * After a body was read into the replay buffer: a slow client may have taken long enough for
   * the token picked at the start to pass its use-by moment, which is never sent; the current one is.
   */
  #sendWithUsableToken(body: RequestBody, token: Token | undefined): Promise<void> | undefined {
    const tokens = this.#tokens;
    if (tokens === undefined || token === undefined || tokens.usable(token)) {
      this.#dispatch(body, token);
      return undefined;
    }
    return this.obtain('miss').then(
      (current) => this.#dispatch(body, current),
      (err: unknown) => {
        this.#release(body);
        this.#answerFailure(undefined, tokenUnavailable(this.upstream, err));
      },
    );
  }

  #refuseBody(token: Token | undefined, err: unknown): void {
    const refusal = err instanceof ProxyError ? err : new ProxyError('bad_request', 'unreadable request body');
    this.#answerFailure(token, refusal);
  }

  /** An answer of the proxy's own for a request that reached no upstream; 499 when its client has left. */
  #answerFailure(token: Token | undefined, err: ProxyError): void {
    logAnswer(
      this,
      this.#res.destroyed ? CLIENT_LEFT : this.#ctx.answers.error(this.#res, err, this.req),
      token,
      false,
    );
  }

  #release(body: RequestBody): void {
    if (body.kind === 'buffered') this.#ctx.replayBudget.release(body.data.length);
  }

  #dispatch(body: RequestBody, token: Token | undefined): void {
    const upstream = this.upstream;
    // The one check an upstream without partner protection pays (issue 21).
    const guard = upstream.guard;
    if (guard !== undefined) {
      guard.admit(this.#guarded(body, token));
      return;
    }
    if (!upstream.queue.enter()) {
      this.#release(body);
      if (body.kind === 'streamed') body.stream.resume();
      this.#answerFailure(
        token,
        new ProxyError(
          'overloaded',
          `upstream ${upstream.name} has ${upstream.queue.limit} requests in hand already (maxConnections + maxQueuedRequests)`,
          { upstream: upstream.name },
          { headers: { 'retry-after': QUEUE_FULL_RETRY_AFTER } },
        ),
      );
      return;
    }
    this.#body = body;
    this.#start(
      new ResponseRelay(this, this.#res, this.#ctx.answers, this.#ctx.limits.responseIdleTimeoutSeconds * 1000, () => {
        upstream.queue.release();
        this.#release(body);
      }),
      token,
    );
  }

  /** What the partner guard calls back when it lets the request through, refuses it, or its client leaves. */
  #guarded(body: RequestBody, token: Token | undefined): GuardedRequest {
    const refused = (err: ProxyError | undefined): void => {
      this.#release(body);
      if (body.kind === 'streamed') body.stream.resume();
      if (err === undefined) logAnswer(this, CLIENT_LEFT, token, false);
      else this.#answerFailure(token, err);
    };
    return {
      res: this.#res,
      proceed: (ticket) => {
        if (this.#res.closed) {
          // The client left before its turn (waiting for its token or body): its 'close' has come
          // and gone, so no relay would ever hear it and give the slot back.
          ticket.done();
          refused(undefined);
          return;
        }
        this.#body = body;
        const relay = new GuardedRelay(
          this,
          this.#res,
          this.#ctx.answers,
          this.#ctx.limits.responseIdleTimeoutSeconds * 1000,
          () => {
            ticket.done();
            this.#release(body);
          },
          ticket,
        );
        // A wait in the queue may have outlasted the token picked before it: send the current one.
        const tokens = this.#tokens;
        if (tokens === undefined || token === undefined || tokens.usable(token)) this.#start(relay, token);
        else
          this.obtain('miss').then(
            (current) => this.#start(relay, current),
            (err: unknown) => relay.tokenFailed(err),
          );
      },
      refuse: refused,
      left: () => refused(undefined),
    };
  }

  #start(relay: ResponseRelay, token: Token | undefined): void {
    const upstream = this.upstream;
    if (this.#tokens === undefined || token === undefined) {
      relay.attempt(undefined, false);
      this.send(undefined, relay);
      return;
    }
    // The one check a bearer upstream pays for DPoP: the rest of its path is as it was.
    const dpop = upstream.dpop;
    if (dpop === undefined) new UnauthorizedReplay(relay, this, token).start();
    else new DpopReplay(relay, this, token, dpop).start();
  }

  /** Sends the request with `token` (again, for a replay), answering to `handler`. */
  send(token: Token | undefined, handler: Dispatcher.DispatchHandler): void {
    const attempt = this.span === undefined ? undefined : this.#attempt();
    this.#dispatchWith(
      upstreamRequestHeaders(this.req.rawHeaders, this.#forwarded(attempt), token?.header),
      this.#traced(attempt, handler),
    );
  }

  /**
   * Sends the request of a DPoP upstream with `token` as `DPoP <token>` and a fresh proof of this
   * very request (RFC 9449 §7.1), each attempt its own (a new `jti`, the latest nonce).
   */
  sendWithProof(token: Token, handler: Dispatcher.DispatchHandler): void {
    const dpop = this.upstream.dpop as DpopSigner; // made only for DPoP upstreams (#dispatch)
    const target = this.#target;
    const bound = dpop.binding(token);
    const attempt = this.span === undefined ? undefined : this.#attempt();
    const headers = upstreamRequestHeaders(this.req.rawHeaders, this.#forwarded(attempt), bound.authorization);
    addProof(headers, dpop, this.req.method ?? 'GET', target.origin, target.path, bound.ath);
    this.#dispatchWith(headers, this.#traced(attempt, handler));
  }

  /** The handler that ends an attempt span with its answer, when the attempt has its own span. */
  #traced(attempt: Span | undefined, handler: Dispatcher.DispatchHandler): Dispatcher.DispatchHandler {
    return attempt === undefined || attempt === this.span ? handler : new TracedAttempt(attempt, handler);
  }

  /**
   * The CLIENT span of the next attempt to the target (tracing on). An unsampled request (most of
   * them at a low sampleRatio) records nothing: its attempts get no span of their own, and the
   * partner is sent the request's own (unsampled) trace context, which costs no span, no
   * attributes and no wrapped handler.
   */
  #attempt(): Span {
    const span = this.span as Span;
    if (!span.isRecording()) return span;
    const target = this.#target;
    const resend = this.#attempts++;
    return (this.#ctx.tracing as Tracing).attempt(span, this.req.method ?? 'GET', target.origin, target.path, resend);
  }

  #forwarded(attempt: Span | undefined): ForwardedInfo {
    const target = this.#target;
    return {
      clientAddress: this.req.socket.remoteAddress ?? '',
      proto: target.clientProto,
      requestId: this.requestId,
      strip: target.stripHeaders,
      add: target.addHeaders,
      trace: attempt === undefined ? undefined : (this.#ctx.tracing as Tracing).propagation(attempt),
    };
  }

  #dispatchWith(headers: string[], handler: Dispatcher.DispatchHandler): void {
    const target = this.#target;
    const body = this.#body as RequestBody;
    this.upstream.dispatcher.dispatch(
      {
        origin: target.origin,
        path: target.path,
        method: this.req.method ?? 'GET',
        headers,
        body: body.kind === 'none' ? null : body.kind === 'buffered' ? body.data : body.stream,
        headersTimeout: this.upstream.timeoutMs,
      },
      handler,
    );
  }
}

const SANE_REQUEST_ID = /^[\w.:@/+=-]{1,128}$/;

function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && SANE_REQUEST_ID.test(given) ? given : randomUUID();
}
