import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { errors as undiciErrors, type Dispatcher } from 'undici';
import type { Logger } from 'pino';
import type { AccessLog } from '../logger.js';
import { ProxyError, TokenError, errorBody, errorHeaders, statusFor } from '../errors.js';
import type { RequestMetrics } from '../metrics.js';
import type { Token } from '../tokens/token.js';
import type { TokenReader } from '../tokens/reader.js';
import { downstreamResponseHeaders, upstreamRequestHeaders } from './headers.js';
import { readRequestBody, type RequestBody } from './request-body.js';

/**
 * Everything the request path needs about one upstream, built once at start-up. The egress
 * passthrough is an Upstream too, one without tokens: it never injects anything.
 */
export interface Upstream {
  readonly name: string;
  /** `https://host:port` of the target. */
  readonly origin: string;
  /** Path of the target URL without a trailing slash ('' for the root). */
  readonly basePath: string;
  readonly dispatcher: Dispatcher;
  /** The token source, or one per tenant; undefined for the egress passthrough (no tokens ever). */
  readonly tokens: TokenReader | TenantTokens | undefined;
  readonly metrics: RequestMetrics;
  readonly retryBodyLimitBytes: number;
  readonly timeoutMs: number;
  readonly logger: Logger;
  /** One info line per request, or undefined when off (issue: access logs cost throughput; measured in BENCHMARKS.md). */
  readonly accessLog: AccessLog | undefined;
}

/** Token sources by tenant, and where a request's tenant name comes from. */
export interface TenantTokens {
  readonly from:
    | { readonly kind: 'proxyAuthUser' }
    | { readonly kind: 'header'; readonly name: string }
    | { readonly kind: 'jwtClaim'; readonly claim: string };
  readonly byTenant: ReadonlyMap<string, TokenReader>;
}

/** Sends a proxy-generated error as JSON (the stable `error` code plus details). */
export function sendError(res: ServerResponse, err: ProxyError, extra: Record<string, string> = {}): number {
  const status = statusFor(err);
  if (res.headersSent) {
    res.destroy(err);
    return status;
  }
  const body = errorBody(err);
  res.writeHead(status, { ...errorHeaders(err, body), ...extra });
  res.end(body);
  return status;
}

function tokenUnavailable(upstream: Upstream, err: unknown): ProxyError {
  const reason = err instanceof TokenError ? err.reason : 'bad_response';
  const details: Record<string, string> = { upstream: upstream.name, reason };
  if (err instanceof TokenError && err.description !== undefined) details['description'] = err.description;
  return new ProxyError('token_unavailable', `no token for upstream ${upstream.name}: ${reason}`, details, {
    cause: err,
  });
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

/** Where one request goes: the origin (scheme, host, port) and the path with query. */
export interface Target {
  readonly origin: string;
  readonly path: string;
  /** The scheme the client used towards the proxy, for X-Forwarded-Proto. */
  readonly clientProto: 'http' | 'https';
  /** Client headers never forwarded (names the proxy sets from validated claims), lower case. */
  readonly stripHeaders?: ReadonlySet<string>;
  /** Headers the proxy adds (validated caller claims). */
  readonly addHeaders?: readonly (readonly [string, string])[];
}

/**
 * Forwards one request: token (cached, or awaited), dispatch through undici's handler API (the
 * fastest of its interfaces, with raw headers so repeated fields survive), stream the answer
 * back. A 401 on a replayable request renews the token and replays once; any other answer,
 * 403 included, goes to the client exactly as received.
 *
 * Returns a promise only when it has to wait (for a token or a request body): the usual request,
 * with a cached token and no body, is on its way when this returns, at no promise or tick.
 */
export function forward(
  req: IncomingMessage,
  res: ServerResponse,
  upstream: Upstream,
  target: Target,
  tokens: TokenReader | undefined,
  maxRequestBodyBytes: number,
): Promise<void> | undefined {
  const ctx: RequestContext = {
    req,
    res,
    upstream,
    target,
    tokens,
    started: performance.now(),
    requestId: requestIdOf(req),
  };
  const token = tokens?.current();
  if (tokens !== undefined && token === undefined) return forwardOnceObtained(ctx, tokens, maxRequestBodyBytes);
  return sendWith(ctx, token, maxRequestBodyBytes);
}

async function forwardOnceObtained(
  ctx: RequestContext,
  tokens: TokenReader,
  maxRequestBodyBytes: number,
): Promise<void> {
  let token: Token;
  try {
    token = await tokens.obtain();
  } catch (err) {
    ctx.req.resume();
    answerTokenFailure(ctx, err);
    return;
  }
  await sendWith(ctx, token, maxRequestBodyBytes);
}

/** Reads the body as the upstream's replay rule says (nothing to wait for without one), then sends. */
function sendWith(
  ctx: RequestContext,
  token: Token | undefined,
  maxRequestBodyBytes: number,
): Promise<void> | undefined {
  let read: RequestBody | Promise<RequestBody>;
  try {
    read = readRequestBody(ctx.req, ctx.upstream.retryBodyLimitBytes, maxRequestBodyBytes);
  } catch (err) {
    refuseBody(ctx, token, err);
    return undefined;
  }
  if (read instanceof Promise) {
    return read.then(
      (body) => sendWithUsableToken(ctx, body, token),
      (err: unknown) => refuseBody(ctx, token, err),
    );
  }
  new Exchange(ctx, read).send(token, 1);
  return undefined;
}

/**
 * After a body was read into the replay buffer: a slow client may have taken long enough for the
 * token picked at the start to pass its use-by moment, which is never sent; the current one is.
 */
function sendWithUsableToken(
  ctx: RequestContext,
  body: RequestBody,
  token: Token | undefined,
): Promise<void> | undefined {
  const tokens = ctx.tokens;
  if (tokens === undefined || token === undefined || tokens.usable(token)) {
    new Exchange(ctx, body).send(token, 1);
    return undefined;
  }
  return tokens.obtain().then(
    (current) => new Exchange(ctx, body).send(current, 1),
    (err: unknown) => answerTokenFailure(ctx, err),
  );
}

/** No token could be had for the request: 502 token_unavailable, or 499 when its client has left. */
function answerTokenFailure(ctx: RequestContext, err: unknown): void {
  finish(
    ctx,
    ctx.res.destroyed ? CLIENT_LEFT : sendError(ctx.res, tokenUnavailable(ctx.upstream, err)),
    undefined,
    false,
  );
}

function refuseBody(ctx: RequestContext, token: Token | undefined, err: unknown): void {
  if (ctx.res.destroyed) {
    finish(ctx, CLIENT_LEFT, token, false); // the body was cut off by the client leaving
    return;
  }
  finish(
    ctx,
    sendError(ctx.res, err instanceof ProxyError ? err : new ProxyError('bad_request', 'unreadable request body')),
    token,
    false,
  );
}

/** One client request, as the access log and metrics see it. */
interface RequestContext {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly upstream: Upstream;
  readonly target: Target;
  readonly tokens: TokenReader | undefined;
  readonly started: number;
  /** The client's X-Request-Id when sane, else a fresh one; forwarded upstream and logged. */
  readonly requestId: string;
}

const SANE_REQUEST_ID = /^[\w.:@/+=-]{1,128}$/;

function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && SANE_REQUEST_ID.test(given) ? given : randomUUID();
}

/**
 * The status counted and logged for a request whose connection closed before its answer began
 * (the client left, or shutdown cut it off after the drain): nginx's 499 ("client closed
 * request"), so that such requests are still seen, and told from answers.
 */
const CLIENT_LEFT = 499;

/** Counts the answer and writes the access-log line (never a header value, only a token fingerprint). */
function finish(ctx: RequestContext, status: number, token: Token | undefined, retried: boolean): void {
  const u = ctx.upstream;
  const seconds = (performance.now() - ctx.started) / 1000;
  u.metrics.response(status);
  u.metrics.requestDuration.observe(seconds);
  u.accessLog?.({
    requestId: ctx.requestId,
    method: ctx.req.method,
    upstream: u.name,
    tenant: ctx.tokens?.tenant,
    status,
    durationMs: Math.round(seconds * 10_000) / 10,
    retried,
    token: token?.fingerprint,
  });
}

/**
 * A Bearer challenge whose error says the token itself is fine (RFC 6750 §3.1): `insufficient_scope`
 * (the token lacks a scope; a new one from the same grant would too) or `invalid_request` (the
 * request is malformed). Dropping a good token for these would also cost every other request of
 * the upstream or tenant a wait for its next one: the 401 goes to the client as it came.
 */
const NOT_THE_TOKEN: ReadonlySet<string> = new Set(['insufficient_scope', 'invalid_request']);

/**
 * The parts of a WWW-Authenticate value (RFC 9110 §11.6.1): an auth-param `name=value` (the value
 * a token or a whole quoted string, so nothing inside quotes is read as a parameter) or a bare
 * token, which starts a challenge (its scheme).
 */
const CHALLENGE_PART = /([\w!#$%&'*+.^`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)|([\w!#$%&'*+.^`|~-]+)/g;

/** The `error` parameter of the Bearer challenge in a WWW-Authenticate value (RFC 6750 §3), unquoted. */
function bearerError(value: string): string | undefined {
  let inBearer = false;
  for (const part of value.matchAll(CHALLENGE_PART)) {
    const [, name, quotedOrToken, scheme] = part;
    if (scheme !== undefined) inBearer = scheme.toLowerCase() === 'bearer';
    else if (inBearer && name?.toLowerCase() === 'error')
      return quotedOrToken?.replace(/^"|"$/g, '').replace(/\\(.)/g, '$1');
  }
  return undefined;
}

function tokenNotAtFault(rawHeaders: readonly Buffer[]): boolean {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as Buffer;
    if (name.length !== 16 || name.toString('latin1').toLowerCase() !== 'www-authenticate') continue;
    const error = bearerError((rawHeaders[i + 1] as Buffer).toString('latin1'));
    if (error !== undefined && NOT_THE_TOKEN.has(error)) return true;
  }
  return false;
}

/** One client request and its (at most two) upstream attempts; implements undici's handler API. */
class Exchange implements Dispatcher.DispatchHandler {
  readonly #ctx: RequestContext;
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #upstream: Upstream;
  readonly #target: Target;
  readonly #tokens: TokenReader | undefined;
  readonly #body: RequestBody;
  #token: Token | undefined;
  #attempt = 1;
  #status = 0;
  /** This attempt's answer is a 401 that will be replayed: swallow it. */
  #replaying = false;
  #abort: ((err?: Error) => void) | undefined;

  constructor(ctx: RequestContext, body: RequestBody) {
    this.#ctx = ctx;
    this.#req = ctx.req;
    this.#res = ctx.res;
    this.#upstream = ctx.upstream;
    this.#target = ctx.target;
    this.#tokens = ctx.tokens;
    this.#body = body;
    const res = ctx.res;
    res.on('close', () => {
      // The client went away before the answer was complete: free the upstream socket.
      if (!res.writableFinished) this.#abort?.(new Error('client closed the connection'));
    });
  }

  send(token: Token | undefined, attempt: number): void {
    this.#token = token;
    this.#attempt = attempt;
    this.#replaying = false;
    const b = this.#body;
    const u = this.#upstream;
    u.dispatcher.dispatch(
      {
        origin: this.#target.origin,
        path: this.#target.path,
        method: this.#req.method ?? 'GET',
        headers: upstreamRequestHeaders(
          this.#req.rawHeaders,
          {
            clientAddress: this.#req.socket.remoteAddress ?? '',
            proto: this.#target.clientProto,
            requestId: this.#ctx.requestId,
            strip: this.#target.stripHeaders,
            add: this.#target.addHeaders,
          },
          token?.header,
        ),
        body: b.kind === 'none' ? null : b.kind === 'buffered' ? b.data : b.stream,
        headersTimeout: u.timeoutMs,
      },
      this,
    );
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#res.destroyed) abort(new Error('client closed the connection'));
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true; // 1xx: informational, nothing to relay
    this.#status = statusCode;
    const tokens = this.#tokens;
    const token = this.#token;
    if (tokens !== undefined && token !== undefined) {
      if (statusCode === 401 && !tokenNotAtFault(rawHeaders)) {
        // The provider's renewal policy decides: one renewal shared by every 401 for this token
        // and one replay, or (a renewal for it already proven futile) the 401 as it came.
        const canReplay = this.#attempt === 1 && this.#body.kind !== 'streamed';
        if (tokens.onUnauthorized(token, this.#target.path, canReplay) === 'replay') {
          this.#replaying = true; // drain this answer, then replay with a fresh token
          return true;
        }
      } else {
        tokens.onAccepted(token, this.#target.path);
      }
    }
    if (this.#attempt === 2 && tokens !== undefined) {
      const outcome = statusCode === 401 ? 'still_unauthorized' : 'recovered';
      tokens.metrics.unauthorizedRetry(outcome);
      this.#upstream.logger.info(
        {
          event: 'unauthorized_retry_outcome',
          upstream: this.#upstream.name,
          tenant: tokens.tenant,
          outcome,
          status: statusCode,
          token: this.#token?.fingerprint,
        },
        `replay after 401: ${outcome}`,
      );
    }
    this.#res.writeHead(statusCode, statusText, downstreamResponseHeaders(rawHeaders));
    this.#res.on('drain', resume);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.#replaying) return true;
    return this.#res.write(chunk);
  }

  onComplete(): void {
    if (this.#replaying) {
      this.#replay();
      return;
    }
    this.#res.end();
    finish(this.#ctx, this.#status, this.#token, this.#attempt === 2);
  }

  onError(err: Error): void {
    const u = this.#upstream;
    if (this.#res.headersSent) {
      // Mid-response failure: break the client connection so a cut answer never looks complete.
      u.logger.warn(
        { event: 'upstream_response_broken', upstream: u.name, err: err.message },
        'upstream response broken',
      );
      this.#res.destroy(err);
      finish(this.#ctx, this.#status, this.#token, this.#attempt === 2);
      return;
    }
    if (this.#res.destroyed) {
      finish(this.#ctx, CLIENT_LEFT, this.#token, this.#attempt === 2); // nothing to answer
      return;
    }
    const failure = upstreamFailure(u, err);
    u.logger.warn(
      { event: 'upstream_failed', upstream: u.name, error: failure.code, err: err.message },
      failure.message,
    );
    finish(this.#ctx, sendError(this.#res, failure), this.#token, this.#attempt === 2);
  }

  #replay(): void {
    const u = this.#upstream;
    const tokens = this.#tokens as TokenReader; // only token-bearing exchanges replay
    const used = this.#token as Token;
    u.logger.info(
      { event: 'unauthorized_retry', upstream: u.name, tenant: tokens.tenant, token: used.fingerprint },
      'target answered 401: renewing the token and replaying once',
    );
    tokens.obtain('unauthorized').then(
      (fresh) => {
        if (this.#res.destroyed) {
          finish(this.#ctx, CLIENT_LEFT, used, true);
          return;
        }
        this.send(fresh, 2);
      },
      (err: unknown) => {
        tokens.metrics.unauthorizedRetry('still_unauthorized');
        finish(this.#ctx, sendError(this.#res, tokenUnavailable(u, err)), used, true);
      },
    );
  }
}
