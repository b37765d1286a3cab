import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import { ProxyError, TokenError, errorResponseBytes } from '../errors.js';
import { downstreamResponseHeaders, upstreamRequestHeaders } from './headers.js';
import { admitCaller, resolve } from './resolve.js';
import type { Target, Upstream } from './forwarder.js';
import type { TokenReader } from '../tokens/reader.js';
import { answerAndClose, closeWhenIdle, detach } from './detached.js';
import type { ProxyContext } from './context.js';

/**
 * A response head from raw headers. A 101 keeps Connection and Upgrade: they are the switch itself.
 * Any other answer ends the connection: its body (de-chunked by undici) runs until the close.
 */
function head(status: number, statusText: string, raw: readonly Buffer[]): string {
  const headers =
    status === 101 ? raw.map((b) => b.toString('latin1')) : [...downstreamResponseHeaders(raw), 'connection', 'close'];
  let text = `HTTP/1.1 ${status} ${statusText}\r\n`;
  for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${text}\r\n`;
}

/**
 * WebSocket upgrades (RFC 6455 §4, RFC 9110 §7.8): routed like any request, the token is injected
 * on the handshake, and after a 101 the two sockets are joined. A handshake the target refuses
 * (401, 403, ...) goes back to the client as an ordinary response.
 *
 * Any other protocol is never switched to: after its 101 the client would speak through the
 * proxy's connection (and its mTLS identity) with requests that no route, token or policy sees,
 * e.g. an HTTP/2 connection by `Upgrade: h2c` (which RFC 9113 §3.1 deprecates). The offer is
 * ignored instead, as RFC 9110 §7.8 lets a server do: the request goes to the target as an
 * ordinary one (Java's HttpClient and `curl --http2` offer h2c on every http:// GET). One with a
 * body is refused: Node hands such a request over without parsing its body.
 *
 * This uses undici's upgrade support rather than node-http-proxy's `ws()`: the same pool, CA and
 * timeouts as every other request to the upstream, and no unmaintained dependency on this path.
 */
export function handleUpgrade(ctx: ProxyContext, req: IncomingMessage, socket: Duplex, early: Buffer): void {
  socket.on('error', () => undefined);
  detach(ctx, socket);
  closeWhenIdle(socket, ctx.limits.tunnelIdleTimeoutSeconds);
  const websocket = (req.headers.upgrade ?? '').trim().toLowerCase() === 'websocket';
  if (
    !websocket &&
    (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) !== 0)
  ) {
    answerAndClose(
      socket,
      errorResponseBytes(
        new ProxyError(
          'bad_request',
          'a request with a body cannot offer a protocol upgrade here: send it without Upgrade (only WebSocket is relayed)',
        ),
      ),
    );
    return;
  }
  const callerAuth = ctx.routing.callerAuth;
  const where = resolve(ctx, req);
  if (where instanceof ProxyError) {
    answerAndClose(socket, errorResponseBytes(where));
    return;
  }
  if (where.verifyCaller === undefined || callerAuth === undefined) {
    relay(req, socket, early, websocket, where.upstream, where.target, where.tokens);
    return;
  }
  // Gateway mode: the handshake is a request like any other; the caller's JWT is checked first.
  admitCaller(callerAuth, req, where).then(
    (admitted) => {
      if (admitted instanceof ProxyError) answerAndClose(socket, errorResponseBytes(admitted));
      else if ('error' in admitted)
        answerAndClose(socket, errorResponseBytes(admitted.error, { 'www-authenticate': admitted.wwwAuthenticate }));
      else relay(req, socket, early, websocket, where.upstream, admitted.target, admitted.tokens);
    },
    () => socket.destroy(),
  );
}

/** To the target: a WebSocket handshake (then joined on a 101), or else an ordinary request whose answer ends the connection. */
function relay(
  req: IncomingMessage,
  socket: Duplex,
  early: Buffer,
  websocket: boolean,
  upstream: Upstream,
  target: Target,
  tokens: TokenReader | undefined,
): void {
  const tokenReady =
    tokens === undefined ? Promise.resolve(undefined) : Promise.resolve(tokens.current() ?? tokens.obtain());
  tokenReady.then(
    (token) => {
      // Upgrade and Connection are hop-by-hop: undici writes its own from `upgrade`.
      const headers = upstreamRequestHeaders(
        req.rawHeaders,
        {
          clientAddress: req.socket.remoteAddress ?? '',
          proto: target.clientProto,
          strip: target.stripHeaders,
          add: target.addHeaders,
        },
        token?.header,
      );
      const handler: Dispatcher.DispatchHandler = {
        onConnect: (abort) => {
          socket.once('close', () => abort());
        },
        onUpgrade: (statusCode, rawHeaders, upstreamSocket) => {
          socket.write(head(statusCode, 'Switching Protocols', rawHeaders as Buffer[]));
          if (early.length > 0) upstreamSocket.write(early);
          upstreamSocket.on('error', () => socket.destroy());
          socket.once('close', () => upstreamSocket.destroy());
          upstreamSocket.once('close', () => socket.destroy());
          upstreamSocket.pipe(socket);
          socket.pipe(upstreamSocket);
        },
        onHeaders: (statusCode, rawHeaders, _resume, statusText) => {
          socket.write(head(statusCode, statusText, rawHeaders));
          return true;
        },
        onData: (chunk) => socket.write(chunk),
        onComplete: () => {
          socket.end(() => socket.destroy());
        },
        onError: (err) => {
          if (socket.writable)
            answerAndClose(
              socket,
              errorResponseBytes(
                new ProxyError('upstream_unreachable', `upgrade to ${upstream.name} failed: ${err.message}`, {
                  upstream: upstream.name,
                }),
              ),
            );
        },
      };
      const request = { origin: target.origin, path: target.path, method: req.method ?? 'GET', headers };
      upstream.dispatcher.dispatch(websocket ? { ...request, upgrade: 'websocket' } : request, handler);
    },
    (err: unknown) => {
      const reason = err instanceof TokenError ? err.reason : 'bad_response';
      answerAndClose(
        socket,
        errorResponseBytes(
          new ProxyError('token_unavailable', `no token for upstream ${upstream.name}: ${reason}`, {
            upstream: upstream.name,
            reason,
          }),
        ),
      );
    },
  );
}
