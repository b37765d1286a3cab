import type { IncomingMessage } from 'node:http';
import type { JWTPayload } from 'jose';
import { ProxyError } from '../errors.js';
import { bearerToken, challenge } from '../inbound/jwt-validator.js';
import type { CallerTokens, TokenReader } from '../tokens/reader.js';
import type { CallerAuth, ProxyContext, Routing, Tunnel } from './context.js';
import { parseAbsoluteForm, urlHost } from './request-target.js';
import { confine } from './router.js';
import type { Target, Upstream } from './upstream.js';

/** A request let through: where it goes and with which token source (none for egress passthrough). */
export interface Admitted {
  readonly upstream: Upstream;
  readonly target: Target;
  readonly tokens: TokenReader | undefined;
}

/** What admit() decides: a request let through, or the refusal to answer with. */
export type Admission = Admitted | ProxyError;

/**
 * The one admission step of every way in: plain requests (reverse and forward mode), requests
 * inside CONNECT tunnels, and upgrade handshakes. In order: the request itself, the client
 * address, the tunnel (re-admitted after a reload), the route, the proxy credentials (forward
 * mode, throttled), the caller's JWT (gateway mode) and the tenant. Every check reads the
 * configuration in force now, so a keep-alive connection or tunnel opened under an earlier one
 * is judged again at each request.
 *
 * Synchronous unless a caller JWT must be verified: the usual request takes no promise here.
 */
export function admit(ctx: ProxyContext, req: IncomingMessage): Admission | Promise<Admission> {
  const r = ctx.routing;
  const url = req.url ?? '/';
  if (hostCount(req.rawHeaders) > 1) return new ProxyError('bad_request', 'more than one Host header'); // RFC 9112 §3.2
  // TRACE makes the target echo the request it received, and the proxy adds credentials to it
  // (the partner's token, addHeaders): a client MUST NOT send sensitive fields in a TRACE
  // (RFC 9110 §9.3.8), and here the proxy is that client. Refused for every destination.
  if (req.method === 'TRACE')
    return new ProxyError(
      'method_not_allowed',
      'TRACE is not forwarded: the target would echo the credentials the proxy adds',
    );
  const tunnel = ctx.tunnels.get(req.socket);
  const client = tunnel === undefined ? req.socket.remoteAddress : tunnel.clientAddress;
  if (!r.guard.clientAllowed(client)) return clientNotAllowed();
  let routed: Routed | ProxyError;
  if (tunnel !== undefined) routed = inTunnel(ctx, r, tunnel, url);
  else if (url.charCodeAt(0) === 47) routed = reverse(r, req, url);
  else routed = forward(ctx, r, req, url, client);
  if (routed instanceof ProxyError || 'target' in routed) return routed;
  const { upstream, path, clientProto, user } = routed;
  if (r.callerAuth !== undefined) return verifyCaller(r.callerAuth, req, upstream, path, clientProto, user);
  const tokens = tokensFor(upstream, req, user);
  if (tokens instanceof ProxyError) return tokens;
  return { upstream, target: { origin: upstream.origin, path, clientProto }, tokens };
}

export function clientNotAllowed(): ProxyError {
  return new ProxyError('client_not_allowed', 'this client address may not use the proxy');
}

/**
 * Forward mode's proxy credentials (RFC 9110 §11.7.1): the user, or the refusal. A client address
 * that keeps sending wrong ones is made to wait (429, RFC 6585 §4) before they are looked at again.
 */
export function proxyUser(
  ctx: ProxyContext,
  header: string | undefined,
  client: string | undefined,
): string | ProxyError {
  const r = ctx.routing;
  if (!r.guard.requiresProxyAuth) return '';
  const wait = ctx.authThrottle.waitSeconds(client);
  if (wait > 0)
    return new ProxyError(
      'too_many_auth_failures',
      'too many wrong proxy credentials from this address: try again later',
      {},
      { headers: { 'retry-after': String(wait) } },
    );
  const user = r.guard.authenticate(header);
  if (user !== undefined) return user;
  ctx.authThrottle.failed(client);
  return new ProxyError('proxy_auth_required', 'proxy credentials missing or wrong');
}

/** A request routed to an upstream (or to the egress passthrough, with its whole target). */
type Routed =
  | {
      readonly upstream: Upstream;
      readonly path: string;
      readonly clientProto: Target['clientProto'];
      readonly user: string | undefined;
    }
  | Admitted;

function inTunnel(ctx: ProxyContext, r: Routing, tunnel: Tunnel, url: string): Routed | ProxyError {
  if (tunnel.admittedBy !== r) {
    // Opened under an earlier configuration: it passes this one's inbound checks too, or
    // carries nothing more (a removed user or address keeps no access through an open tunnel).
    const user = r.guard.authenticate(tunnel.credentials);
    if (user === undefined)
      return new ProxyError(
        'proxy_auth_required',
        'this tunnel was opened with credentials the configuration no longer accepts: open a new one',
      );
    tunnel.user = user;
    tunnel.admittedBy = r;
  }
  if (url.includes('#')) return noFragment();
  // Requests inside a tunnel may use either form; the tunnel's host alone decides where they
  // go, routed with the configuration in force: after a reload, a long-lived tunnel uses the
  // new configuration's upstream (the old one's pool closes once its own requests are done).
  const path = url.charCodeAt(0) === 47 ? url : (parseAbsoluteForm(url)?.path ?? null);
  if (path === null) return new ProxyError('bad_request', 'malformed request target inside the tunnel');
  const upstream = r.forward.route(tunnel.host, tunnel.port);
  if (upstream === undefined)
    return new ProxyError('no_route', `${tunnel.host}:${tunnel.port} is no longer served by an upstream`);
  return confined(upstream, path, tunnel.proto, tunnel.user);
}

function reverse(r: Routing, req: IncomingMessage, url: string): Routed | ProxyError {
  const route = r.reverse.route(url);
  if (route === null) return traversal();
  if (route === undefined) return new ProxyError('no_route', 'no upstream is configured for this path');
  if (url.includes('#')) return noFragment();
  // Reverse mode needs no proxy credentials; when sent anyway they can name the tenant.
  const header = req.headers['proxy-authorization'];
  const user = header === undefined ? undefined : r.guard.authenticate(header);
  return { upstream: route.upstream, path: route.path, clientProto: 'http', user };
}

function forward(
  ctx: ProxyContext,
  r: Routing,
  req: IncomingMessage,
  url: string,
  client: string | undefined,
): Routed | ProxyError {
  const absolute = parseAbsoluteForm(url);
  if (absolute === null)
    return new ProxyError('bad_request', 'request target must be a path or an absolute http:// URL without userinfo');
  const user = proxyUser(ctx, req.headers['proxy-authorization'], client);
  if (user instanceof ProxyError) return user;
  const upstream = r.forward.route(absolute.host, absolute.port);
  // TLS origination: the app spoke plain http to us; the target URL decides the scheme onwards.
  if (upstream !== undefined) return confined(upstream, absolute.path, 'http', user);
  const decision = r.egress.decide(absolute.host, absolute.port, 'http');
  if (!decision.allowed) {
    return new ProxyError('egress_denied', `egress to ${absolute.host}:${absolute.port} is not allowed`, {
      host: absolute.host,
      port: String(absolute.port),
      rule: decision.rule,
    });
  }
  return {
    upstream: r.passthrough,
    target: { origin: `http://${urlHost(absolute.host)}:${absolute.port}`, path: absolute.path, clientProto: 'http' },
    tokens: undefined,
  };
}

/**
 * Forward mode and tunnels reach an upstream under its target's base path, as reverse mode does:
 * `target: https://gw.example/api` serves `/x` as `/api/x`, and no path may climb out of it.
 */
function confined(
  upstream: Upstream,
  path: string,
  clientProto: Target['clientProto'],
  user: string | undefined,
): Routed | ProxyError {
  const inside = confine(upstream.basePath, path);
  return inside === null ? traversal() : { upstream, path: inside, clientProto, user };
}

function traversal(): ProxyError {
  return new ProxyError('bad_request', 'path segments "." and ".." are not allowed');
}

/**
 * RFC 9112 §3.2: a request target has no fragment. Node's parser lets "#" through, and URL parsers
 * downstream would cut the path there (`/partner/x/..#` → `/partner/`).
 */
function noFragment(): ProxyError {
  return new ProxyError('bad_request', 'a request target cannot contain "#"');
}

function hostCount(raw: readonly string[]): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2)
    if ((raw[i] as string).length === 4 && (raw[i] as string).toLowerCase() === 'host') n++;
  return n;
}

/**
 * The token source for this request: the upstream's, or its tenant's. A request whose tenant is
 * missing or unknown is refused; it never falls back to another tenant's credentials.
 */
export function tokensFor(
  upstream: Upstream,
  req: IncomingMessage,
  user: string | undefined,
  claims?: JWTPayload,
): TokenReader | undefined | ProxyError {
  const t = upstream.tokens;
  if (t === undefined) return undefined;
  if ('forCaller' in t) return exchangedFor(upstream, t, req, claims);
  if (!('byTenant' in t)) return t;
  const raw =
    t.from.kind === 'proxyAuthUser'
      ? user
      : t.from.kind === 'header'
        ? req.headers[t.from.name]
        : claims?.[t.from.claim];
  const tenant = typeof raw === 'string' && raw !== '' ? raw : undefined;
  const source = tenant === undefined ? undefined : t.byTenant.get(tenant);
  if (source !== undefined) return source;
  const where =
    t.from.kind === 'proxyAuthUser'
      ? 'the proxy user'
      : t.from.kind === 'header'
        ? `the ${t.from.name} header`
        : `the caller's ${t.from.claim} claim`;
  return new ProxyError(
    'unknown_tenant',
    tenant === undefined
      ? `upstream ${upstream.name} needs a tenant (from ${where})`
      : `unknown tenant for upstream ${upstream.name}`,
    { upstream: upstream.name },
  );
}

/**
 * Token exchange (RFC 8693): the source of this caller's own token. Only a validated caller token
 * gets one (the loader allows token_exchange only with inbound.jwt; without a token here, nothing
 * is exchanged), and one past its `exp` none: it is refused as expired, whatever leeway the
 * validation gave, before any token request is made for it.
 */
function exchangedFor(
  upstream: Upstream,
  callers: CallerTokens,
  req: IncomingMessage,
  claims: JWTPayload | undefined,
): TokenReader | ProxyError {
  // The claims are those of this very header's token, validated by verifyCaller.
  const subjectToken = claims === undefined ? '' : bearerToken(req.headers.authorization);
  const reader = subjectToken === '' || claims === undefined ? undefined : callers.forCaller(subjectToken, claims);
  if (reader !== undefined) return reader;
  const description = claims === undefined ? `upstream ${upstream.name} exchanges the caller's token` : 'token expired';
  return new ProxyError(
    'caller_unauthorized',
    description,
    { reason: claims === undefined ? 'missing' : 'expired' },
    { headers: { 'www-authenticate': challenge(claims === undefined ? undefined : description) } },
  );
}

/**
 * Gateway mode (`inbound.jwt`): the caller's JWT is validated before a partner token is spent on
 * its behalf, whichever way the request came; its claims can name the tenant, and the forwarded
 * claims are added to the target request (what the caller sent under those names is dropped).
 */
async function verifyCaller(
  auth: CallerAuth,
  req: IncomingMessage,
  upstream: Upstream,
  path: string,
  clientProto: Target['clientProto'],
  user: string | undefined,
): Promise<Admission> {
  const v = await auth.validator.validate(req.headers.authorization);
  auth.count(v.ok ? 'valid' : v.result);
  if (!v.ok) {
    const code = v.status === 503 ? 'caller_auth_unavailable' : 'caller_unauthorized';
    return new ProxyError(
      code,
      v.description,
      { reason: v.result },
      { headers: { 'www-authenticate': v.wwwAuthenticate } },
    );
  }
  const tokens = tokensFor(upstream, req, user, v.claims);
  if (tokens instanceof ProxyError) return tokens;
  return {
    upstream,
    target: {
      origin: upstream.origin,
      path,
      clientProto,
      stripHeaders: auth.claimHeaders,
      addHeaders: v.forwardHeaders,
    },
    tokens,
  };
}
