import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ProxyError, TokenError, errorBody, errorHeaders, errorResponseBytes, statusFor } from '../errors.js';
import type { ProxyErrorCode } from '../errors.js';
import type { Token } from '../tokens/token.js';
import type { Span, Tracing } from '../tracing/tracing.js';
import { exemplarOf } from '../tracing/exemplar.js';
import type { Upstream } from './upstream.js';

/**
 * The one place answers are made: proxy-made errors (JSON with a stable `error` code and
 * RFC 9209 Proxy-Status, on a ServerResponse or a raw socket), the access line of every
 * forwarded request, the 499 rule, and the logging and counting of refusals. The request,
 * upgrade, tunnel and client-error paths all answer through here, so none answers differently.
 */

/**
 * The status counted and logged for a request whose connection closed before its answer began
 * (the client left, or shutdown cut it off after the drain): nginx's 499 ("client closed
 * request"), so that such requests are still seen, and told from answers.
 */
export const CLIENT_LEFT = 499;

/**
 * How long a socket that was answered and is to be closed waits for the client to close its
 * side before it is destroyed. Destroying at once can turn unread client bytes into a RST that
 * loses the answer on the way; waiting for the client alone lets a client that never closes hold
 * the connection (a half-open socket) for ever.
 */
export const LINGER_MS = 2_000;

/**
 * Errors that are the proxy refusing a client (4xx, and 503 when an upstream's queue is full),
 * as opposed to failing it (502, 504): each is logged at info and counted by `reason` (the code).
 */
const REFUSALS: ReadonlySet<ProxyErrorCode> = new Set<ProxyErrorCode>([
  'client_not_allowed',
  'proxy_auth_required',
  'too_many_auth_failures',
  'egress_denied',
  'interception_not_configured',
  'unknown_tenant',
  'no_route',
  'bad_request',
  'method_not_allowed',
  'body_too_large',
  'headers_too_large',
  'request_timeout',
  'caller_unauthorized',
  'overloaded',
]);

export const REFUSAL_REASONS: readonly ProxyErrorCode[] = [...REFUSALS];

export interface RefusalCounter {
  inc(reason: ProxyErrorCode): void;
}

/** Answers bound to a listener's logger and refusal counter. */
export class Answers {
  readonly #logger: Logger;
  readonly #refusals: RefusalCounter;
  readonly #tracing: Tracing | undefined;

  constructor(logger: Logger, refusals: RefusalCounter, tracing?: Tracing) {
    this.#logger = logger;
    this.#refusals = refusals;
    this.#tracing = tracing;
  }

  /** Sends a proxy-made error; returns its status. A response already begun is cut instead. */
  error(res: ServerResponse, err: ProxyError, req?: IncomingMessage): number {
    const status = statusFor(err);
    this.#note(err, status, req?.socket.remoteAddress, req?.method);
    this.#tracing?.failed(res, err.code);
    if (res.headersSent) {
      res.destroy(err);
      return status;
    }
    const body = errorBody(err);
    res.writeHead(status, errorHeaders(err, body));
    res.end(body);
    return status;
  }

  /** The same on a socket the HTTP server let go of (CONNECT, upgrades) or never parsed (client errors). */
  errorOnSocket(socket: Duplex & { remoteAddress?: string }, err: ProxyError, method?: string): number {
    const status = statusFor(err);
    this.#note(err, status, socket.remoteAddress, method);
    this.#tracing?.failed(socket, err.code);
    answerAndClose(socket, errorResponseBytes(err));
    return status;
  }

  #note(err: ProxyError, status: number, client: string | undefined, method: string | undefined): void {
    if (!REFUSALS.has(err.code)) return;
    this.#refusals.inc(err.code);
    // The details are the proxy's own words (never a header value, a path or a secret).
    this.#logger.info(
      { event: 'refused', reason: err.code, status, client, method, ...err.details },
      `refused: ${err.message}`,
    );
  }
}

/**
 * Sends a whole answer, then closes the socket both ways. The HTTP server keeps half-closed
 * sockets open, and on one it let go of no timeout of its own is left to close it: the socket is
 * destroyed once the answer is flushed and the client closed, or after LINGER_MS, whichever first.
 */
export function answerAndClose(socket: Duplex, answer: string): void {
  if (socket.destroyed) return;
  const linger = setTimeout(() => socket.destroy(), LINGER_MS);
  linger.unref();
  socket.once('close', () => clearTimeout(linger));
  socket.on('error', () => undefined);
  socket.end(answer);
  // Read (and drop) what the client still sends, so its close can be seen.
  socket.resume();
}

/** One client request, as the access log and metrics see it. */
export interface RequestRecord {
  readonly req: IncomingMessage;
  readonly upstream: Upstream;
  readonly tenant: string | undefined;
  readonly started: number;
  /** The client's X-Request-Id when sane, else a fresh one; forwarded upstream and logged. */
  readonly requestId: string;
  /** Its SERVER span (tracing on): the trace id becomes the duration's exemplar. */
  readonly span?: Span | undefined;
}

/** Counts the answer and writes the access-log line (never a header value, only a token fingerprint). */
export function logAnswer(rec: RequestRecord, status: number, token: Token | undefined, retried: boolean): void {
  const u = rec.upstream;
  const seconds = (performance.now() - rec.started) / 1000;
  u.metrics.response(status);
  const span = rec.span;
  u.metrics.requestDuration.observe(seconds, span === undefined ? undefined : exemplarOf(span));
  u.accessLog?.({
    requestId: rec.requestId,
    method: rec.req.method,
    upstream: u.name,
    tenant: rec.tenant,
    status,
    durationMs: Math.round(seconds * 10_000) / 10,
    retried,
    token: token?.fingerprint,
  });
}

/** No token could be had for a request of `upstream` (RFC 9209 http_request_error). */
export function tokenUnavailable(upstream: Upstream, err: unknown): ProxyError {
  const reason = err instanceof TokenError ? err.reason : 'bad_response';
  const details: Record<string, string> = { upstream: upstream.name, reason };
  if (err instanceof TokenError && err.description !== undefined) details['description'] = err.description;
  return new ProxyError('token_unavailable', `no token for upstream ${upstream.name}: ${reason}`, details, {
    cause: err,
  });
}
