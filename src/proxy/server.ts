import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ProxyError } from '../errors.js';
import { admit, clientNotAllowed, type Admission } from './admit.js';
import { AuthThrottle } from './auth-throttle.js';
import { handleConnect } from './connect.js';
import type { ListenerLimits, ProxyContext, Routing } from './context.js';
import { Drain } from './drain.js';
import { forward } from './forward.js';
import { ReplayBudget } from './replay-budget.js';
import { requestSpan } from './request-span.js';
import type { Span, Tracing } from '../tracing/tracing.js';
import { Answers, type RefusalCounter } from './respond.js';
import { handleUpgrade } from './upgrade.js';

/** Node's parser errors that have their own answer; any other is a malformed request (400). */
const CLIENT_ERRORS: Readonly<Record<string, () => ProxyError>> = {
  // RFC 6585 §5
  HPE_HEADER_OVERFLOW: () => new ProxyError('headers_too_large', 'request headers too large'),
  // RFC 9110 §15.5.9
  ERR_HTTP_REQUEST_TIMEOUT: () =>
    new ProxyError(
      'request_timeout',
      'request not received in time (limits.headersTimeoutSeconds, limits.requestTimeoutSeconds)',
    ),
};

/** The proxy listener: reverse mode, forward mode (absolute-form and CONNECT) and upgrades, on one port. */
export function createProxyServer(
  routing: Routing,
  logger: Logger,
  limits: ListenerLimits,
  refusals: RefusalCounter,
  tracing?: Tracing,
): { server: Server; ctx: ProxyContext; inFlight: Drain } {
  const server = createServer({
    keepAliveTimeout: 65_000,
    // Slow clients (slowloris) are cut off: headers within headersTimeout, the whole request
    // within requestTimeout, checked every second rather than Node's default 30 s.
    maxHeaderSize: limits.maxRequestHeaderBytes,
    headersTimeout: limits.headersTimeoutSeconds * 1000,
    requestTimeout: limits.requestTimeoutSeconds * 1000,
    connectionsCheckingInterval: 1_000,
  });
  const ctx: ProxyContext = {
    routing,
    logger,
    tunnels: new WeakMap(),
    adopt: (socket) => server.emit('connection', socket),
    limits,
    detached: new Map(),
    answers: new Answers(logger, refusals, tracing),
    authThrottle: new AuthThrottle(),
    replayBudget: new ReplayBudget(limits.maxReplayBufferBytes),
    tracing,
  };

  // A refused client's connection is answered 403 and closed. Node's own connection listener has
  // already attached the HTTP parser, so a request the client sent along (or pipelined before
  // the close) would still be parsed and emitted: every handler below drops requests from
  // these sockets.
  const refused = new WeakSet<Duplex>();
  server.on('connection', (socket: Duplex & { remoteAddress?: string }) => {
    if (ctx.routing.guard.clientAllowed(socket.remoteAddress ?? ctx.tunnels.get(socket)?.clientAddress)) return;
    refused.add(socket);
    ctx.answers.errorOnSocket(socket, clientNotAllowed());
  });

  const failed = (res: ServerResponse) => (err: unknown) => {
    // forward() answers every error it expects; this is the last line of defence.
    logger.error({ event: 'internal_error', err: (err as Error).message }, 'unexpected error while forwarding');
    if (!res.headersSent) ctx.answers.error(res, new ProxyError('upstream_unreachable', 'internal error'));
    else res.destroy();
  };

  const admitted = (
    req: IncomingMessage,
    res: ServerResponse,
    a: Admission,
    span: Span | undefined,
  ): Promise<void> | undefined => {
    if (a instanceof ProxyError) {
      req.resume();
      ctx.answers.error(res, a, req);
      return undefined;
    }
    return forward(ctx, req, res, a, span);
  };

  const inFlight = new Drain(); // every request, across reloads: what SIGTERM waits for
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (refused.has(req.socket)) {
      req.socket.destroy();
      return;
    }
    const drain = ctx.routing.drain;
    drain.enter();
    inFlight.enter();
    // 'close' comes once per response: a plain listener spares once()'s wrapper and removal.
    res.on('close', () => {
      drain.leave();
      inFlight.leave();
    });
    // The one check a request pays for tracing when it is off.
    const span = ctx.tracing === undefined ? undefined : requestSpan(ctx.tracing, ctx, req, res);
    try {
      const a = admit(ctx, req);
      const sent = a instanceof Promise ? a.then((x) => admitted(req, res, x, span)) : admitted(req, res, a, span);
      sent?.catch(failed(res));
    } catch (err) {
      failed(res)(err);
    }
  });

  server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
    refused.has(socket) ? socket.destroy() : handleConnect(ctx, req, socket, head),
  );
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
    refused.has(socket) ? socket.destroy() : handleUpgrade(ctx, req, socket, head),
  );

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // Malformed request line or headers, or a client too slow to send them (or its body): answer
    // and close; the socket is destroyed after a short linger even if the client never closes.
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const answer = CLIENT_ERRORS[err.code ?? '']?.() ?? new ProxyError('bad_request', 'malformed request');
    ctx.answers.errorOnSocket(socket, answer);
  });
  return { server, ctx, inFlight };
}
