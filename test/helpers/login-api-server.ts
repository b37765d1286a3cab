import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

/** One call to the login API (`/auth/login` or `/auth/refresh`; `/jwks` is not recorded). */
export interface LoginApiCall {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  /** The parsed JSON request body (undefined when it was not JSON). */
  readonly body: unknown;
  readonly status: number;
  /** The JSON answer sent back. */
  readonly response: unknown;
  /** The tokens this call handed out, when it succeeded. */
  readonly issued?: {
    readonly accessToken: string;
    readonly refreshToken: string;
    readonly jwtExp: number;
    readonly expiresAtMs: number;
  };
}

/**
 * The answer's shape. `default`: `{"data":{"access_token","refresh_token","access_expires_at"}}`
 * with an ISO-8601 expiry; `flat-epoch`: `{"token","renew","exp"}` with epoch seconds.
 */
export type LoginApiShape = 'default' | 'flat-epoch';

export interface LoginApiServer {
  readonly url: string;
  readonly loginUrl: string;
  readonly refreshUrl: string;
  readonly jwksUrl: string;
  /** `iss` of every access token. */
  readonly issuer: string;
  readonly calls: LoginApiCall[];
  /** Access tokens issued, in order. */
  readonly issuedAccessTokens: string[];
  /** Refresh tokens issued, in order. */
  readonly issuedRefreshTokens: string[];
  /** JWT `exp` of new access tokens: now + this. */
  accessTtlSeconds: number;
  /**
   * The expiry the answer states (`access_expires_at` / `exp`): now + this. Undefined: the same
   * as the JWT exp. Set it apart from accessTtlSeconds to make the two disagree.
   */
  statedTtlSeconds: number | undefined;
  /** Refresh tokens expire this long after issue. */
  refreshTtlSeconds: number;
  /** When true, every /auth call answers 403 with an IP allow-list message. */
  forbidIp: boolean;
  /** When set, an /auth call without this X-Api-Key answers 401 quoting the key it got, as careless APIs do. */
  apiKey: string | undefined;
  shape: LoginApiShape;
  /** Names of the credential fields the login endpoint reads from its JSON body. */
  loginFields: { username: string; password: string };
  /** Revokes every refresh token issued so far. */
  revokeAll(): void;
  /** Clears the records and restores the default settings (keys and credentials stay). */
  reset(): void;
  stop(): Promise<void>;
}

export interface LoginApiServerOptions {
  readonly username: string;
  readonly password: string;
  /** The server's clock (epoch ms); share the proxy's injected clock so lifetimes agree. */
  readonly now?: () => number;
}

const DEFAULTS = { accessTtlSeconds: 300, refreshTtlSeconds: 3600 } as const;

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

function field(body: unknown, name: string): unknown {
  return body !== null && typeof body === 'object' ? (body as Record<string, unknown>)[name] : undefined;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * A partner's proprietary JSON login API on 127.0.0.1 (plain http; loopback): login with
 * username and password, renew with a refresh token that is revoked on use (rotation), access
 * tokens are RS256 JWTs whose key is served at /jwks.
 */
export async function startLoginApiServer(options: LoginApiServerOptions): Promise<LoginApiServer> {
  const now = options.now ?? Date.now;
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  const kid = randomUUID();
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' }] };
  /** Live refresh tokens: value → owner and expiry (epoch ms). */
  const refreshTokens = new Map<string, { username: string; expiresAtMs: number }>();
  const sockets = new Set<Socket>();

  const api: LoginApiServer = {
    url: '',
    loginUrl: '',
    refreshUrl: '',
    jwksUrl: '',
    issuer: '',
    calls: [],
    issuedAccessTokens: [],
    issuedRefreshTokens: [],
    accessTtlSeconds: DEFAULTS.accessTtlSeconds,
    statedTtlSeconds: undefined,
    refreshTtlSeconds: DEFAULTS.refreshTtlSeconds,
    forbidIp: false,
    apiKey: undefined,
    shape: 'default',
    loginFields: { username: 'username', password: 'password' },
    revokeAll: () => refreshTokens.clear(),
    reset() {
      api.calls.length = 0;
      api.issuedAccessTokens.length = 0;
      api.issuedRefreshTokens.length = 0;
      api.accessTtlSeconds = DEFAULTS.accessTtlSeconds;
      api.statedTtlSeconds = undefined;
      api.refreshTtlSeconds = DEFAULTS.refreshTtlSeconds;
      api.forbidIp = false;
      api.apiKey = undefined;
      api.shape = 'default';
      api.loginFields = { username: 'username', password: 'password' };
      refreshTokens.clear();
    },
    stop: async () => undefined,
  };

  async function issue(username: string) {
    const nowSeconds = Math.floor(now() / 1000);
    const jwtExp = nowSeconds + api.accessTtlSeconds;
    const expiresAtMs = (nowSeconds + (api.statedTtlSeconds ?? api.accessTtlSeconds)) * 1000;
    const accessToken = await new SignJWT({ scope: 'api' })
      .setProtectedHeader({ alg: 'RS256', kid })
      .setIssuer(api.issuer)
      .setSubject(username)
      .setJti(randomUUID())
      .setIssuedAt(nowSeconds)
      .setExpirationTime(jwtExp)
      .sign(privateKey);
    const refreshToken = randomBytes(24).toString('base64url');
    refreshTokens.set(refreshToken, { username, expiresAtMs: now() + api.refreshTtlSeconds * 1000 });
    api.issuedAccessTokens.push(accessToken);
    api.issuedRefreshTokens.push(refreshToken);
    const body =
      api.shape === 'flat-epoch'
        ? { token: accessToken, renew: refreshToken, exp: expiresAtMs / 1000 }
        : {
            data: {
              access_token: accessToken,
              refresh_token: refreshToken,
              access_expires_at: new Date(expiresAtMs).toISOString(),
            },
          };
    return { body, issued: { accessToken, refreshToken, jwtExp, expiresAtMs } };
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const method = req.method ?? 'GET';
    if (method === 'GET' && path === '/jwks') {
      sendJson(res, 200, jwks);
      return;
    }
    const body = await readJson(req);
    const record = (status: number, answer: unknown, issued?: LoginApiCall['issued']) => {
      api.calls.push({
        method,
        path,
        headers: req.headers,
        body,
        status,
        response: answer,
        ...(issued === undefined ? {} : { issued }),
      });
      sendJson(res, status, answer);
    };
    if (method !== 'POST' || (path !== '/auth/login' && path !== '/auth/refresh')) {
      record(404, { message: 'not found' });
      return;
    }
    if (api.forbidIp) {
      record(403, { message: 'IP 127.0.0.1 is not in the allow-list' });
      return;
    }
    const givenKey = req.headers['x-api-key'];
    if (api.apiKey !== undefined && givenKey !== api.apiKey) {
      record(401, { message: `invalid API key ${String(givenKey)}` });
      return;
    }
    if (path === '/auth/login') {
      const username = field(body, api.loginFields.username);
      if (username !== options.username || field(body, api.loginFields.password) !== options.password) {
        record(401, { message: 'invalid credentials' });
        return;
      }
      const { body: answer, issued } = await issue(options.username);
      record(200, answer, issued);
      return;
    }
    const presented = field(body, 'refresh_token');
    const entry = typeof presented === 'string' ? refreshTokens.get(presented) : undefined;
    if (typeof presented === 'string') refreshTokens.delete(presented); // rotation: used once, revoked at once
    if (entry === undefined || now() >= entry.expiresAtMs) {
      record(401, { message: 'refresh token revoked' });
      return;
    }
    const { body: answer, issued } = await issue(entry.username);
    record(200, answer, issued);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) sendJson(res, 500, { message: 'login API error' });
      else res.destroy();
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  Object.assign(api, {
    url,
    loginUrl: `${url}/auth/login`,
    refreshUrl: `${url}/auth/refresh`,
    jwksUrl: `${url}/jwks`,
    issuer: url,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  });
  return api;
}
