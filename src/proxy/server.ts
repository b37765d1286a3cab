import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ProxyError, errorResponseBytes } from '../errors.js';
import type { CertificateAuthority } from '../mitm/certificate-authority.js';
import { handleConnect, type Tunnel } from './connect.js';
import type { EgressPolicy } from './egress.js';
import { forward, sendError, type Target, type Upstream } from './forwarder.js';
import type { TokenSource } from '../tokens/token-source.js';
import type { ForwardRouter } from './forward-router.js';
import type { InboundGuard } from './inbound-guard.js';
import { parseAbsoluteForm, urlHost } from './request-target.js';
import type { ReverseRouter } from './router.js';
import { handleUpgrade } from './upgrade.js';

/** Everything routing needs; replaced as a whole when the config is reloaded. */
export interface Routing {
  readonly reverse: ReverseRouter;
  readonly forward: ForwardRouter;
  readonly egress: EgressPolicy;
  readonly guard: InboundGuard;
  /** Egress traffic that matched no upstream: forwarded without any token. */
  readonly passthrough: Upstream;
  readonly interception: CertificateAuthority | undefined;
  readonly maxRequestBodyBytes: number;
}

export interface ProxyContext {
  /** Read once per request, so a reload never mixes two configurations in one request. */
  routing: Routing;
  readonly logger: Logger;
  /** Sockets (plain or TLS-intercepted) that carry requests from inside a CONNECT tunnel. */
  readonly tunnels: WeakMap<Duplex, Tunnel>;
  /** Hands a socket to the HTTP server as a new connection (tunnel contents). */
  adopt(socket: Duplex): void;
}

/** Where a request (or upgrade) goes, with which tokens, or the error to answer with. */
export type Resolution = { readonly upstream: Upstream; readonly target: Target; readonly tokens: TokenSource | undefined } | ProxyError;

/**
 * The token source for this request: the upstream's, or its tenant's. A request whose tenant is
 * missing or unknown is refused; it never falls back to another tenant's credentials.
 */
function tokensFor(upstream: Upstream, req: IncomingMessage, user: string | undefined): TokenSource | undefined | ProxyError {
  const t = upstream.tokens;
  if (t === undefined || !('byTenant' in t)) return t;
  const raw = t.from.kind === 'proxyAuthUser' ? user : req.headers[t.from.name];
  const tenant = typeof raw === 'string' && raw !== '' ? raw : undefined;
  const source = tenant === undefined ? undefined : t.byTenant.get(tenant);
  if (source !== undefined) return source;
  const where = t.from.kind === 'proxyAuthUser' ? 'the proxy user' : `the ${t.from.name} header`;
  return new ProxyError('unknown_tenant', tenant === undefined ? `upstream ${upstream.name} needs a tenant (from ${where})` : `unknown tenant for upstream ${upstream.name}`, {
    upstream: upstream.name,
  });
}

function routed(upstream: Upstream, target: Target, req: IncomingMessage, user: string | undefined): Resolution {
  const tokens = tokensFor(upstream, req, user);
  return tokens instanceof ProxyError ? tokens : { upstream, target, tokens };
}

/**
 * Routes one request. Inside a tunnel: the tunnel's upstream. Origin-form (`/partner/x`): reverse
 * mode by path prefix. Absolute-form (`http://host/x`): forward mode by host, after the proxy
 * credentials; hosts of no upstream follow the egress policy and never get a token.
 */
export function resolve(ctx: ProxyContext, req: IncomingMessage): Resolution {
  const url = req.url ?? '/';
  const r = ctx.routing;
  if (hostCount(req.rawHeaders) > 1) return new ProxyError('bad_request', 'more than one Host header'); // RFC 9112 §3.2
  const tunnel = ctx.tunnels.get(req.socket);
  if (tunnel !== undefined) {
    // Requests inside a tunnel may use either form; the tunnel alone decides where they go.
    const path = url.charCodeAt(0) === 47 ? url : (parseAbsoluteForm(url)?.path ?? null);
    if (path === null) return new ProxyError('bad_request', 'malformed request target inside the tunnel');
    return routed(tunnel.upstream, { origin: tunnel.upstream.origin, path, clientProto: tunnel.proto }, req, tunnel.user);
  }
  if (url.charCodeAt(0) === 47) {
    const route = r.reverse.route(url);
    if (route === null) return new ProxyError('bad_request', 'path segments "." and ".." are not allowed');
    if (route === undefined) return new ProxyError('no_route', 'no upstream is configured for this path');
    // Reverse mode needs no proxy credentials; when sent anyway they can name the tenant.
    const header = req.headers['proxy-authorization'];
    const user = header === undefined ? undefined : r.guard.authenticate(header);
    return routed(route.upstream, { origin: route.upstream.origin, path: route.path, clientProto: 'http' }, req, user);
  }
  const absolute = parseAbsoluteForm(url);
  if (absolute === null) return new ProxyError('bad_request', 'request target must be a path or an absolute http:// URL without userinfo');
  const user = r.guard.authenticate(req.headers['proxy-authorization']);
  if (user === undefined) return new ProxyError('proxy_auth_required', 'proxy credentials missing or wrong');
  const upstream = r.forward.route(absolute.host, absolute.port);
  if (upstream !== undefined) {
    // TLS origination: the app spoke plain http to us; the target URL decides the scheme onwards.
    return routed(upstream, { origin: upstream.origin, path: absolute.path, clientProto: 'http' }, req, user);
  }
  const decision = r.egress.decide(absolute.host, absolute.port, 'http');
  if (!decision.allowed) {
    return new ProxyError('egress_denied', `egress to ${absolute.host}:${absolute.port} is not allowed`, { host: absolute.host, port: String(absolute.port), rule: decision.rule });
  }
  return { upstream: r.passthrough, target: { origin: `http://${urlHost(absolute.host)}:${absolute.port}`, path: absolute.path, clientProto: 'http' }, tokens: undefined };
}

function hostCount(raw: readonly string[]): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).length === 4 && (raw[i] as string).toLowerCase() === 'host') n++;
  return n;
}

export interface ListenerLimits {
  readonly maxRequestHeaderBytes: number;
  readonly headersTimeoutSeconds: number;
  readonly requestTimeoutSeconds: number;
}

/** The proxy listener: reverse mode, forward mode (absolute-form and CONNECT) and upgrades, on one port. */
export function createProxyServer(routing: Routing, logger: Logger, limits: ListenerLimits): { server: Server; ctx: ProxyContext } {
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
  };
  const ctx = full;

  server.on('connection', (socket: Duplex & { remoteAddress?: string }) => {
    if (full.routing.guard.clientAllowed(socket.remoteAddress ?? full.tunnels.get(socket)?.clientAddress)) return;
    socket.on('error', () => undefined);
    socket.end(errorResponseBytes(new ProxyError('client_not_allowed', 'this client address may not use the proxy')));
  });

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const where = resolve(full, req);
    if (where instanceof ProxyError) {
      req.resume();
      sendError(res, where);
      return;
    }
    forward(req, res, where.upstream, where.target, where.tokens, full.routing.maxRequestBodyBytes).catch((err: unknown) => {
      // forward() answers every error it expects; this is the last line of defence.
      ctx.logger.error({ event: 'internal_error', err: (err as Error).message }, 'unexpected error while forwarding');
      if (!res.headersSent) sendError(res, new ProxyError('upstream_unreachable', 'internal error'));
      else res.destroy();
    });
  });

  server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => handleConnect(full, req, socket, head));
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => handleUpgrade(full, req, socket, head));

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // Malformed request line or headers: answer 400 (431 for oversized headers) and close.
    if (!socket.writable) return;
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const body = JSON.stringify({ error: 'bad_request', message: status === 431 ? 'request headers too large' : 'malformed request' });
    socket.end(`HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
  });
  return { server, ctx };
}
