import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

/**
 * The demo's authorization server: the client credentials grant only (RFC 6749 §4.4), issuing
 * RS256 JWT access tokens (RFC 9068) that a resource server checks against GET /jwks. Built on
 * jose, a production dependency, so `token-proxy demo` also runs in the container image, which
 * installs no development dependency (issue 19, finding 12). One client, one key, made up at
 * start: a demo, not an authorization server to deploy.
 */
export interface TokenServerOptions {
  readonly clientId: string;
  readonly clientSecret: string;
  /** Space-separated scopes the client may ask for; granted whole when it asks for none. */
  readonly scope: string;
  /** The `aud` claim: the resource server the tokens are for (RFC 9068 §2.2). */
  readonly audience: string;
  readonly tokenSeconds: number;
  readonly host?: string;
}

export interface TokenServer {
  /** The issuer, also the base URL: `${issuer}/token`, `${issuer}/jwks`. */
  readonly issuer: string;
  readonly tokenUrl: string;
  readonly jwksUrl: string;
  /** Access tokens issued so far. */
  readonly issued: number;
  close(): Promise<void>;
}

/** A request body larger than this is refused: a token request is a few form fields. */
const MAX_BODY_BYTES = 16 * 1024;

class OAuthError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    description: string,
  ) {
    super(description);
  }
}

/** Equal strings, compared in constant time (the lengths of their digests do not differ). */
function sameSecret(a: string, b: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(a), digest(b));
}

/** RFC 6749 §2.3.1: id and secret are form-urlencoded, joined by ':', then base64. */
function basicCredentials(header: string | undefined): { id: string; secret: string } | undefined {
  if (header === undefined || !/^basic /i.test(header)) return undefined;
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw new OAuthError(401, 'invalid_client', 'malformed Basic credentials');
  const unform = (s: string) => decodeURIComponent(s.replaceAll('+', ' '));
  try {
    return { id: unform(decoded.slice(0, colon)), secret: unform(decoded.slice(colon + 1)) };
  } catch {
    throw new OAuthError(401, 'invalid_client', 'malformed Basic credentials');
  }
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new OAuthError(413, 'invalid_request', 'request body too large');
    chunks.push(chunk);
  }
  // RFC 6749 §4.4.2: the parameters come as application/x-www-form-urlencoded.
  if (type !== 'application/x-www-form-urlencoded') {
    throw new OAuthError(400, 'invalid_request', 'expected application/x-www-form-urlencoded');
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

export async function startTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const kid = randomUUID();
  const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' }] });
  const allowed = new Set(options.scope.split(' ').filter((s) => s !== ''));
  const host = options.host ?? '127.0.0.1';
  let issuer = '';
  let issued = 0;

  /** The client credentials grant: authenticate the client, check the scope, sign a token. */
  const token = async (req: IncomingMessage): Promise<Record<string, unknown>> => {
    const form = await readForm(req);
    const basic = basicCredentials(req.headers.authorization);
    const bodyId = form.get('client_id');
    const bodySecret = form.get('client_secret');
    // RFC 6749 §2.3: a client uses one authentication method per request.
    if (basic !== undefined && bodySecret !== null) {
      throw new OAuthError(400, 'invalid_request', 'more than one client authentication method');
    }
    const client = basic ?? (bodyId === null || bodySecret === null ? undefined : { id: bodyId, secret: bodySecret });
    const idOk = client !== undefined && sameSecret(client.id, options.clientId);
    if (client === undefined || !(sameSecret(client.secret, options.clientSecret) && idOk)) {
      throw new OAuthError(401, 'invalid_client', 'client authentication failed');
    }
    if (form.get('grant_type') !== 'client_credentials') {
      throw new OAuthError(400, 'unsupported_grant_type', 'only client_credentials is supported');
    }
    // RFC 6749 §3.3: the granted scope; asking for one the client lacks is refused.
    const requested = (form.get('scope') ?? '').split(' ').filter((s) => s !== '');
    if (requested.some((s) => !allowed.has(s))) throw new OAuthError(400, 'invalid_scope', 'scope not allowed');
    const scope = (requested.length > 0 ? requested : [...allowed]).join(' ');
    const accessToken = await new SignJWT({ client_id: options.clientId, scope })
      .setProtectedHeader({ alg: 'RS256', kid, typ: 'at+jwt' })
      .setIssuer(issuer)
      .setSubject(options.clientId)
      .setAudience(options.audience)
      .setJti(randomUUID())
      .setIssuedAt()
      .setExpirationTime(`${options.tokenSeconds}s`)
      .sign(privateKey);
    issued += 1;
    return { access_token: accessToken, token_type: 'Bearer', expires_in: options.tokenSeconds, scope };
  };

  const answer = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    // RFC 6749 §5.1: token responses are not to be cached.
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
    res.end(JSON.stringify(body));
  };

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/jwks') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(jwks);
      return;
    }
    if (path !== '/token') return answer(res, 404, { error: 'not_found' });
    if (req.method !== 'POST') return answer(res, 405, { error: 'invalid_request' }, { allow: 'POST' });
    token(req).then(
      (body) => answer(res, 200, body),
      (err: unknown) => {
        if (!(err instanceof OAuthError)) return answer(res, 500, { error: 'server_error' });
        // RFC 6749 §5.2: invalid_client after an Authorization header is a 401 with a challenge.
        const challenge: Record<string, string> =
          err.status === 401 ? { 'www-authenticate': 'Basic realm="token-proxy demo"' } : {};
        answer(res, err.status, { error: err.code, error_description: err.message }, challenge);
      },
    );
  });
  server.listen(0, host);
  await once(server, 'listening');
  issuer = `http://${host}:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    tokenUrl: `${issuer}/token`,
    jwksUrl: `${issuer}/jwks`,
    get issued() {
      return issued;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
