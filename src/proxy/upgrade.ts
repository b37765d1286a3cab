import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import { ProxyError } from '../errors.js';
import type { Token } from '../tokens/token.js';
import { admit, type Admission, type Admitted } from './admit.js';
import type { ProxyContext, Routing } from './context.js';
import { closeWhenIdle, detach } from './detached.js';
import { addProof } from './dpop-request.js';
import { downstreamResponseHeaders, upstreamRequestHeaders } from './headers.js';
import { CLIENT_LEFT, logAnswer, tokenUnavailable, type RequestRecord } from './respond.js';
import { obtainTraced } from './token-wait.js';
import { TracedAttempt } from '../tracing/attempt-handler.js';
import type { Span } from '../tracing/tracing.js';

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

function LEAVE(this: Duplex): void {
  this.destroy();
}

/**
 * WebSocket upgrades (RFC 6455 §4, RFC 9110 §7.8): admitted like any request (admit()), the token
 * is injected on the handshake, and after a 101 the two sockets are joined. A handshake the
 * target refuses (401, 403, ...) goes back to the client as an ordinary response. Answers,
 * refusals, the access line and metrics are those of every other request (respond.ts).
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
  const client = ctx.tunnels.get(req.socket)?.clientAddress ?? req.socket.remoteAddress;
  const credentials = req.headers['proxy-authorization'];
  detach(
    ctx,
    socket,
    (r: Routing) =>
      r.guard.clientAllowed(client) && (credentials === undefined || r.guard.authenticate(credentials) !== undefined),
  );
  closeWhenIdle(socket, ctx.limits.tunnelIdleTimeoutSeconds);
  // The HTTP server's sockets allow half-open: a client that ends its side before the switch has
  // left (it cannot speak the protocol it asked for without sending), so the socket goes now and
  // nothing is opened upstream for it. After the switch, the joined pipes carry an end across.
  socket.once('end', LEAVE);
  // Tracing on: the handshake's SERVER span, ended with its answer (or when the socket closes first).
  const tracing = ctx.tracing;
  let span: Span | undefined;
  if (tracing !== undefined) {
    span = tracing.request(req, 'upgrade');
    tracing.bind(socket, span);
    socket.once('close', () => tracing.endRequest(socket, CLIENT_LEFT, 'client_left'));
  }
  const websocket = (req.headers.upgrade ?? '').trim().toLowerCase() === 'websocket';
  if (
    !websocket &&
    (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) !== 0)
  ) {
    const status = ctx.answers.errorOnSocket(
      socket,
      new ProxyError(
        'bad_request',
        'a request with a body cannot offer a protocol upgrade here: send it without Upgrade (only WebSocket is relayed)',
      ),
      req.method,
    );
    tracing?.endRequest(socket, status, undefined);
    return;
  }
  const admitted = (a: Admission): void => {
    if (a instanceof ProxyError) {
      const status = ctx.answers.errorOnSocket(socket, a, req.method);
      tracing?.endRequest(socket, status, undefined);
    } else new UpgradeRelay(ctx, req, socket, early, websocket, a, span).start();
  };

  try {
    const a = admit(ctx, req);
    if (a instanceof Promise) a.then(admitted, () => socket.destroy());
    else admitted(a);
  } catch {
    socket.destroy();
  }
}

/**
 * To the target: a WebSocket handshake (then joined on a 101), or else an ordinary request whose
 * answer ends the connection. Back-pressure both ways; an error after the answer began cuts the
 * connection (never a second answer in the body); a client that leaves at any point frees the
 * upstream connection.
 */
class UpgradeRelay implements Dispatcher.DispatchHandler {
  readonly #ctx: ProxyContext;
  readonly #req: IncomingMessage;
  readonly #socket: Duplex;
  readonly #early: Buffer;
  readonly #websocket: boolean;
  readonly #a: Admitted;
  readonly #rec: RequestRecord;
  #token: Token | undefined;
  #status = 0;
  #logged = false;

  constructor(
    ctx: ProxyContext,
    req: IncomingMessage,
    socket: Duplex,
    early: Buffer,
    websocket: boolean,
    a: Admitted,
    span: Span | undefined,
  ) {
    this.#ctx = ctx;
    this.#req = req;
    this.#socket = socket;
    this.#early = early;
    this.#websocket = websocket;
    this.#a = a;
    this.#rec = {
      req,
      upstream: a.upstream,
      tenant: a.tokens?.tenant,
      started: performance.now(),
      requestId: randomUUID(),
      span,
    };
    span?.setAttribute('token_proxy.upstream', a.upstream.name);
  }

  start(): void {
    const tokens = this.#a.tokens;
    const current = tokens?.current();
    if (tokens === undefined || current !== undefined) {
      this.#dispatch(current);
      return;
    }
    const span = this.#rec.span;
    const tracing = this.#ctx.tracing;
    (span === undefined || tracing === undefined ? tokens.obtain() : obtainTraced(tracing, span, tokens, 'miss')).then(
      (token) => this.#dispatch(token),
      (err: unknown) => {
        if (this.#socket.destroyed) this.#log(CLIENT_LEFT);
        else
          this.#log(
            this.#ctx.answers.errorOnSocket(this.#socket, tokenUnavailable(this.#a.upstream, err), this.#req.method),
          );
      },
    );
  }

  #dispatch(token: Token | undefined): void {
    if (this.#socket.destroyed) {
      this.#log(CLIENT_LEFT);
      return;
    }
    this.#token = token;
    const { upstream, target } = this.#a;
    // Upgrade and Connection are hop-by-hop: undici writes its own from `upgrade`.
    // RFC 9449 §7.1: a DPoP upstream's upgrade carries its proof like any request.
    const dpop = token === undefined ? undefined : upstream.dpop;
    const bound = token === undefined ? undefined : dpop?.binding(token);
    const tracing = this.#ctx.tracing;
    const span = this.#rec.span;
    const attempt =
      tracing === undefined || span === undefined
        ? undefined
        : tracing.attempt(span, this.#req.method ?? 'GET', target.origin, target.path, 0);
    const headers = upstreamRequestHeaders(
      this.#req.rawHeaders,
      {
        clientAddress: this.#req.socket.remoteAddress ?? '',
        proto: target.clientProto,
        requestId: this.#rec.requestId,
        strip: target.stripHeaders,
        add: target.addHeaders,
        trace: attempt === undefined ? undefined : tracing?.propagation(attempt),
      },
      bound === undefined ? token?.header : bound.authorization,
    );
    if (dpop !== undefined && bound !== undefined)
      addProof(headers, dpop, this.#req.method ?? 'GET', target.origin, target.path, bound.ath);
    const request = {
      origin: target.origin,
      path: target.path,
      method: this.#req.method ?? 'GET',
      headers,
      headersTimeout: upstream.timeoutMs,
    };
    const handler = attempt === undefined ? this : new TracedAttempt(attempt, this);
    upstream.dispatcher.dispatch(this.#websocket ? { ...request, upgrade: 'websocket' } : request, handler);
  }

  onConnect(abort: (err?: Error) => void): void {
    // The client may have left while its token was fetched: then there is nothing to connect.
    if (this.#socket.destroyed) abort(new Error('client closed the connection'));
    else this.#socket.once('close', () => abort(new Error('client closed the connection')));
  }

  onUpgrade(statusCode: number, rawHeaders: Buffer[] | string[] | null, upstreamSocket: Duplex): void {
    const socket = this.#socket;
    this.#status = statusCode;
    if (socket.destroyed) {
      upstreamSocket.destroy();
      this.#log(CLIENT_LEFT);
      return;
    }
    socket.off('end', LEAVE);
    socket.write(head(statusCode, 'Switching Protocols', (rawHeaders ?? []) as Buffer[]));
    if (this.#early.length > 0) upstreamSocket.write(this.#early);
    upstreamSocket.on('error', () => socket.destroy());
    socket.once('close', () => upstreamSocket.destroy());
    upstreamSocket.once('close', () => socket.destroy());
    // pipe() pauses and resumes each side with the other's back-pressure.
    upstreamSocket.pipe(socket);
    socket.pipe(upstreamSocket);
    this.#log(statusCode);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true;
    this.#status = statusCode;
    this.#socket.on('drain', resume);
    return this.#socket.write(head(statusCode, statusText, rawHeaders));
  }

  onData(chunk: Buffer): boolean {
    return this.#socket.write(chunk);
  }

  onComplete(): void {
    const socket = this.#socket;
    socket.end(() => socket.destroy());
    this.#log(this.#status);
  }

  onError(err: Error): void {
    const socket = this.#socket;
    if (this.#status !== 0 || socket.destroyed) {
      // The answer began (or the client left): cut the connection, never append a second answer.
      const status = this.#status === 0 ? CLIENT_LEFT : this.#status;
      socket.destroy();
      this.#log(status);
      return;
    }
    const u = this.#a.upstream;
    u.logger.warn({ event: 'upgrade_failed', upstream: u.name, err: err.message }, 'upgrade request failed');
    this.#log(
      this.#ctx.answers.errorOnSocket(
        socket,
        new ProxyError('upgrade_failed', `upgrade to ${u.name} failed: ${err.message}`, { upstream: u.name }),
        this.#req.method,
      ),
    );
  }

  #log(status: number): void {
    if (this.#logged) return;
    this.#logged = true;
    logAnswer(this.#rec, status, this.#token, false);
    this.#ctx.tracing?.endRequest(this.#socket, status, status === CLIENT_LEFT ? 'client_left' : undefined);
  }
}
