import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ProxyError, errorResponseBytes } from '../errors.js';
import { handleConnect } from './connect.js';
import type { ListenerLimits, ProxyContext, Routing } from './context.js';
import { answerAndClose } from './detached.js';
import { Drain } from './drain.js';
import { forward, sendError } from './forwarder.js';
import { admitCaller, resolve } from './resolve.js';
import { handleUpgrade } from './upgrade.js';

type ClientErrorAnswer = readonly [status: number, text: string, message: string];
const BAD_REQUEST: ClientErrorAnswer = [400, 'Bad Request', 'malformed request'];
const CLIENT_ERRORS: Readonly<Record<string, ClientErrorAnswer>> = {
  HPE_HEADER_OVERFLOW: [431, 'Request Header Fields Too Large', 'request headers too large'],
  ERR_HTTP_REQUEST_TIMEOUT: [
    408,
    'Request Timeout',
    'request not received in time (limits.headersTimeoutSeconds, limits.requestTimeoutSeconds)',
  ],
};

/** The proxy listener: reverse mode, forward mode (absolute-form and CONNECT) and upgrades, on one port. */
export function createProxyServer(
  routing: Routing,
  logger: Logger,
  limits: ListenerLimits,
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
  const full: ProxyContext = {
    routing,
    logger,
    tunnels: new WeakMap(),
    adopt: (socket) => server.emit('connection', socket),
    limits,
    detached: new Set(),
  };
  const ctx = full;

  // A refused client's connection is answered 403 and closed. Node's own connection listener has
  // already attached the HTTP parser, so a request the client sent along (or pipelined before
  // the close) would still be parsed and emitted: every handler below drops requests from
  // these sockets.
  const refused = new WeakSet<Duplex>();
  server.on('connection', (socket: Duplex & { remoteAddress?: string }) => {
    if (full.routing.guard.clientAllowed(socket.remoteAddress ?? full.tunnels.get(socket)?.clientAddress)) return;
    refused.add(socket);
    socket.on('error', () => undefined);
    answerAndClose(
      socket,
      errorResponseBytes(new ProxyError('client_not_allowed', 'this client address may not use the proxy')),
    );
  });

  const failed = (res: ServerResponse) => (err: unknown) => {
    // forward() answers every error it expects; this is the last line of defence.
    logger.error({ event: 'internal_error', err: (err as Error).message }, 'unexpected error while forwarding');
    if (!res.headersSent) sendError(res, new ProxyError('upstream_unreachable', 'internal error'));
    else res.destroy();
  };

  const inFlight = new Drain(); // every request, across reloads: what SIGTERM waits for
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (refused.has(req.socket)) {
      req.socket.destroy();
      return;
    }
    const routing = full.routing;
    routing.drain.enter();
    inFlight.enter();
    // 'close' comes once per response: a plain listener spares once()'s wrapper and removal.
    res.on('close', () => {
      routing.drain.leave();
      inFlight.leave();
    });
    const where = resolve(full, req);
    if (where instanceof ProxyError) {
      req.resume();
      sendError(res, where);
      return;
    }
    if (where.verifyCaller === undefined || routing.callerAuth === undefined) {
      try {
        forward(req, res, where.upstream, where.target, where.tokens, routing.maxRequestBodyBytes)?.catch(failed(res));
      } catch (err) {
        failed(res)(err);
      }
      return;
    }
    admitCaller(routing.callerAuth, req, where)
      .then((admitted) => {
        if (admitted instanceof ProxyError || 'error' in admitted) {
          req.resume();
          if (admitted instanceof ProxyError) sendError(res, admitted);
          else sendError(res, admitted.error, { 'www-authenticate': admitted.wwwAuthenticate });
          return undefined;
        }
        return forward(req, res, where.upstream, admitted.target, admitted.tokens, routing.maxRequestBodyBytes);
      })
      .catch(failed(res));
  });

  server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
    refused.has(socket) ? socket.destroy() : handleConnect(full, req, socket, head),
  );
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
    refused.has(socket) ? socket.destroy() : handleUpgrade(full, req, socket, head),
  );

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // Malformed request line or headers, or a client too slow to send them (or its body): answer
    // and close. RFC 9110 §15.5.9 (408), RFC 6585 §5 (431).
    if (!socket.writable) return;
    const [status, text, message] = CLIENT_ERRORS[err.code ?? ''] ?? BAD_REQUEST;
    const body = JSON.stringify({ error: status === 408 ? 'request_timeout' : 'bad_request', message });
    socket.end(
      `HTTP/1.1 ${status} ${text}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
    );
  });
  return { server, ctx, inFlight };
}
