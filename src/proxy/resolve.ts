import type { IncomingMessage } from 'node:http';
import type { JWTPayload } from 'jose';
import { ProxyError } from '../errors.js';
import type { TokenReader } from '../tokens/reader.js';
import type { CallerAuth, ProxyContext, Routing } from './context.js';
import type { Target, Upstream } from './forwarder.js';
import { parseAbsoluteForm, urlHost } from './request-target.js';

/**
 * Where a request (or upgrade) goes, with which tokens, or the error to answer with. In gateway
 * mode with caller validation, `tokens` is decided only after the caller's JWT (see admitCaller).
 */
export type Resolution =
  | {
      readonly upstream: Upstream;
      readonly target: Target;
      readonly tokens: TokenReader | undefined;
      readonly verifyCaller?: { readonly user: string | undefined };
    }
  | ProxyError;

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
  if (t === undefined || !('byTenant' in t)) return t;
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
    {
      upstream: upstream.name,
    },
  );
}

/**
 * A request for an upstream. In gateway mode (`inbound.jwt`) the caller's JWT decides first
 * (admitCaller), whichever way the request came: a forward-mode request or one inside a tunnel
 * spends the partner's token just as a reverse-mode one does.
 */
function routed(
  r: Routing,
  upstream: Upstream,
  path: string,
  clientProto: Target['clientProto'],
  req: IncomingMessage,
  user: string | undefined,
): Resolution {
  const origin = upstream.origin;
  if (r.callerAuth !== undefined)
    return {
      upstream,
      target: { origin, path, clientProto, stripHeaders: r.callerAuth.claimHeaders },
      tokens: undefined,
      verifyCaller: { user },
    };
  const tokens = tokensFor(upstream, req, user);
  return tokens instanceof ProxyError ? tokens : { upstream, target: { origin, path, clientProto }, tokens };
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
 * Routes one request. Inside a tunnel: the tunnel's upstream. Origin-form (`/partner/x`): reverse
 * mode by path prefix. Absolute-form (`http://host/x`): forward mode by host, after the proxy
 * credentials; hosts of no upstream follow the egress policy and never get a token.
 */
export function resolve(ctx: ProxyContext, req: IncomingMessage): Resolution {
  const url = req.url ?? '/';
  const r = ctx.routing;
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
  if (tunnel !== undefined) {
    if (tunnel.admittedBy !== r) {
      // Opened under an earlier configuration: it passes this one's inbound checks too, or
      // carries nothing more (a removed user or address keeps no access through an open tunnel).
      const user = r.guard.clientAllowed(tunnel.clientAddress) ? r.guard.authenticate(tunnel.credentials) : undefined;
      if (user === undefined)
        return new ProxyError(
          'proxy_auth_required',
          'this tunnel was opened with credentials or from an address the configuration no longer accepts: open a new one',
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
    return routed(r, upstream, path, tunnel.proto, req, tunnel.user);
  }
  if (url.charCodeAt(0) === 47) {
    const route = r.reverse.route(url);
    if (route === null) return new ProxyError('bad_request', 'path segments "." and ".." are not allowed');
    if (route === undefined) return new ProxyError('no_route', 'no upstream is configured for this path');
    if (url.includes('#')) return noFragment();
    // Reverse mode needs no proxy credentials; when sent anyway they can name the tenant.
    const header = req.headers['proxy-authorization'];
    const user = header === undefined ? undefined : r.guard.authenticate(header);
    return routed(r, route.upstream, route.path, 'http', req, user);
  }
  const absolute = parseAbsoluteForm(url);
  if (absolute === null)
    return new ProxyError('bad_request', 'request target must be a path or an absolute http:// URL without userinfo');
  const user = r.guard.authenticate(req.headers['proxy-authorization']);
  if (user === undefined) return new ProxyError('proxy_auth_required', 'proxy credentials missing or wrong');
  const upstream = r.forward.route(absolute.host, absolute.port);
  if (upstream !== undefined) {
    // TLS origination: the app spoke plain http to us; the target URL decides the scheme onwards.
    return routed(r, upstream, absolute.path, 'http', req, user);
  }
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

/** A caller refused in gateway mode: the status, WWW-Authenticate (RFC 6750 §3) and the JSON error. */
export interface CallerRefusal {
  readonly error: ProxyError;
  readonly wwwAuthenticate: string;
}

/**
 * Gateway mode: validates the caller's JWT before a partner token is spent on its behalf; picks
 * the tenant from its claims when configured; adds the forwarded claims to the target request.
 */
export async function admitCaller(
  auth: CallerAuth,
  req: IncomingMessage,
  where: Exclude<Resolution, ProxyError>,
): Promise<{ readonly target: Target; readonly tokens: TokenReader | undefined } | CallerRefusal | ProxyError> {
  const v = await auth.validator.validate(req.headers.authorization);
  auth.count(v.ok ? 'valid' : v.result);
  if (!v.ok) {
    const code = v.status === 503 ? 'caller_auth_unavailable' : 'caller_unauthorized';
    return { error: new ProxyError(code, v.description, { reason: v.result }), wwwAuthenticate: v.wwwAuthenticate };
  }
  const tokens = tokensFor(where.upstream, req, where.verifyCaller?.user, v.claims);
  if (tokens instanceof ProxyError) return tokens;
  return { target: { ...where.target, addHeaders: v.forwardHeaders }, tokens };
}
