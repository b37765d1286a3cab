import { execFileSync } from 'node:child_process';
import { X509Certificate, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import {
  createRemoteJWKSet,
  customFetch,
  createLocalJWKSet,
  exportJWK,
  exportPKCS8,
  generateKeyPair,
  jwtVerify,
  type JSONWebKeySet,
  type JWK,
  type JWTPayload,
} from 'jose';
import type * as OidcProviderModule from 'oidc-provider';
import type {
  Adapter,
  AdapterFactory,
  AdapterPayload,
  ClientMetadata,
  KoaContextWithOIDC,
  ResourceServer,
} from 'oidc-provider';
import { testPki } from './certs.js';
import { Agent, fetch as undiciFetch } from 'undici';

/**
 * A real OAuth2 authorization server for integration tests: panva's certified `oidc-provider`
 * over HTTPS (test PKI), with JWT access tokens (RFC 9068, signed with the server's JWKS),
 * client_credentials, refresh_token with rotation and reuse detection, a resource-owner
 * password grant, and the client authentication methods client_secret_basic/post,
 * private_key_jwt (RFC 7523) and tls_client_auth (RFC 8705).
 */

export type ClientAuthMethod =
  | 'client_secret_basic'
  | 'client_secret_post'
  | 'private_key_jwt'
  | 'tls_client_auth'
  /** A public client (only with the `jwtBearer` option, which enables it at the token endpoint). */
  | 'none';

export interface ClientSpec {
  readonly clientId: string;
  /** For client_secret_basic / client_secret_post (either is accepted by oidc-provider for such a client). */
  readonly clientSecret?: string;
  readonly authMethod: ClientAuthMethod;
  /** Public keys that verify this client's private_key_jwt assertions. */
  readonly jwks?: JSONWebKeySet;
  /** RFC 4514 subject DN of the client certificate (tls_client_auth), e.g. `CN=partner-client`. */
  readonly tlsSubjectDn?: string;
  /** e.g. ['client_credentials'], ['password', 'refresh_token']. */
  readonly grantTypes: readonly string[];
  /** Space-separated scopes the client may get in its access tokens. */
  readonly scope?: string;
  /**
   * RFC 8705 §3: this client's access tokens are bound to the certificate it presents at the token
   * endpoint (`cnf.x5t#S256`); needs the server's `certificateBoundAccessTokens` option.
   */
  readonly certificateBoundAccessTokens?: boolean;
}

export interface OidcCall {
  readonly grantType: string;
  /** The client the request named (authenticated or not); undefined when none could be told. */
  readonly clientId: string | undefined;
  /** The client's registered authentication method, when the client was found. */
  readonly authMethod: string | undefined;
  readonly status: number;
  readonly error: string | undefined;
  readonly errorDescription: string | undefined;
  /** oidc-provider's internal reason (`error_detail`), which it keeps out of the response body. */
  readonly errorDetail: string | undefined;
}

export interface OidcServer {
  readonly issuer: string;
  readonly tokenUrl: string;
  readonly jwksUrl: string;
  /** The `aud` of every access token issued. */
  readonly audience: string;
  /** Every token endpoint call, in order. */
  readonly calls: OidcCall[];
  /**
   * With the `jwtBearer` option: the claims of every assertion the jwt-bearer grant verified, in
   * order (empty otherwise).
   */
  readonly bearerAssertions: JWTPayload[];
  /** Refresh tokens presented to the server (grant_type=refresh_token), in order, for reuse assertions. */
  readonly usedRefreshTokens: string[];
  /** Refresh tokens the server handed out, in order. */
  readonly issuedRefreshTokens: string[];
  /** Token exchanges answered with a token (with `tokenExchange`), in order. */
  readonly exchanges: TokenExchangeSeen[];
  /** The newest refresh token handed out (to act behind a client's back in reuse tests). */
  lastIssuedRefreshToken(): string;
  /** Runs (and awaits) `hook` before each token request is processed, e.g. to make one hang. */
  beforeToken(hook: (() => Promise<void>) | undefined): void;
  /** Resolves when the next token request arrives. */
  waitForTokenRequest(): Promise<void>;
  /** A password grant made directly, as a setup step. */
  passwordGrant(
    clientId: string,
    clientSecret: string,
    username: string,
    password: string,
  ): Promise<{ accessToken: string; refreshToken: string }>;
  /**
   * Presents `refreshToken` directly, as someone behind the proxy's back would: with rotation,
   * the proxy's next use of it is a reuse, and the server revokes the grant. Returns the status.
   */
  spendRefreshToken(clientId: string, clientSecret: string, refreshToken: string): Promise<number>;
  stop(): Promise<void>;
}

export interface OidcServerOptions {
  readonly clients: readonly ClientSpec[];
  /** Lifetime of access tokens (default 300). */
  readonly accessTokenTtlSeconds?: number;
  /** Lifetime of refresh tokens (default one day). */
  readonly refreshTokenTtlSeconds?: number;
  /** Resource owners for the password grant: username → password. */
  readonly users?: Record<string, string>;
  /**
   * features.mTLS.certificateBoundAccessTokens (RFC 8705 §3): clients that ask for it get access
   * tokens bound to their certificate. Off unless set.
   */
  readonly certificateBoundAccessTokens?: boolean;
  /** Adds the RFC 8693 token exchange grant (off by default). */
  readonly tokenExchange?: TokenExchangeOptions;
  /**
   * Enables the RFC 7523 §2.1 jwt-bearer grant (and public clients, token_endpoint_auth_method
   * none): an assertion is accepted only when it verifies against `jwks` with this `issuer` and
   * `audience`; the access token's `sub` is the assertion's. Off by default.
   */
  readonly jwtBearer?: { readonly issuer: string; readonly audience: string; readonly jwks: JSONWebKeySet };
  /**
   * RFC 9449 DPoP as oidc-provider's `features.dPoP` does it, with server nonces (`nonceSecret`):
   * `requireNonce` makes every proof without a current nonce fail with `use_dpop_nonce`. PS256
   * proofs are accepted too. Without it, the server keeps oidc-provider's defaults.
   */
  readonly dpop?: { readonly requireNonce: boolean };
}

/** RFC 8693 token exchange: subject tokens are JWTs of another issuer (the callers' IdP). */
export interface TokenExchangeOptions {
  /** The callers' IdP: its JWKS verifies each subject token's signature. */
  readonly subjectJwksUrl: string;
  /** The `iss` a subject token must carry. */
  readonly subjectIssuer: string;
  /** CA of the JWKS endpoint, when it is served over https with a private CA. */
  readonly subjectCa?: string;
}

/** One token exchange the server answered (RFC 8693 §2.1 parameters, the verified subject). */
export interface TokenExchangeSeen {
  /** `sub` of the verified subject token, which the issued token carries too. */
  readonly sub: string;
  readonly subjectTokenType: string | undefined;
  readonly audience: string | undefined;
  readonly resource: string | undefined;
  readonly scope: string | undefined;
  readonly requestedTokenType: string | undefined;
  readonly actorToken: string | undefined;
  readonly actorTokenType: string | undefined;
}

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';

export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

/** The single resource server every access token is issued for (its `aud`). */
const RESOURCE = 'https://api.partner.test/';

function toClientMetadata(spec: ClientSpec): ClientMetadata {
  const metadata: ClientMetadata = {
    client_id: spec.clientId,
    token_endpoint_auth_method: spec.authMethod,
    grant_types: [...spec.grantTypes],
    response_types: [],
    redirect_uris: [],
  };
  if (spec.clientSecret !== undefined) metadata.client_secret = spec.clientSecret;
  if (spec.scope !== undefined) metadata.scope = spec.scope;
  if (spec.jwks !== undefined) metadata.jwks = spec.jwks;
  if (spec.tlsSubjectDn !== undefined) metadata.tls_client_auth_subject_dn = spec.tlsSubjectDn;
  if (spec.certificateBoundAccessTokens === true) metadata.tls_client_certificate_bound_access_tokens = true;
  return metadata;
}

/** A certificate's subject as an RFC 4514 string (most specific RDN first), e.g. `CN=a,O=b`. */
export function subjectDnOf(certPem: string): string {
  return new X509Certificate(certPem).subject.split('\n').reverse().join(',');
}

function peerCertificatePem(ctx: KoaContextWithOIDC): string | undefined {
  const socket = ctx.socket as TLSSocket;
  if (socket.authorized !== true) return undefined;
  const cert = socket.getPeerCertificate();
  if (cert.raw === undefined) return undefined;
  return `-----BEGIN CERTIFICATE-----\n${cert.raw.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`;
}

/**
 * oidc-provider's stores, in memory, one set per server. Its own default in-memory adapter
 * warns on every start and is an LRU of 1,000 entries, which load tests would overflow
 * (evicting live grants and refresh tokens).
 */
function memoryAdapter(): AdapterFactory {
  const entries = new Map<string, { payload: AdapterPayload; expiresAt: number }>();
  const byGrant = new Map<string, Set<string>>();
  const byIndex = new Map<string, string>();
  const live = (key: string): AdapterPayload | undefined => {
    const entry = entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= Date.now()) {
      entries.delete(key);
      return undefined;
    }
    return entry.payload;
  };
  return (model: string): Adapter => {
    const key = (id: string) => `${model}:${id}`;
    return {
      async upsert(id, payload, expiresIn) {
        entries.set(key(id), {
          payload,
          expiresAt: typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity,
        });
        if (typeof payload.grantId === 'string') {
          const members = byGrant.get(payload.grantId) ?? new Set<string>();
          members.add(key(id));
          byGrant.set(payload.grantId, members);
        }
        if (typeof payload.uid === 'string') byIndex.set(`uid:${payload.uid}`, key(id));
        if (typeof payload.userCode === 'string') byIndex.set(`userCode:${payload.userCode}`, key(id));
      },
      async find(id) {
        return live(key(id));
      },
      async findByUid(uid) {
        const k = byIndex.get(`uid:${uid}`);
        return k === undefined ? undefined : live(k);
      },
      async findByUserCode(userCode) {
        const k = byIndex.get(`userCode:${userCode}`);
        return k === undefined ? undefined : live(k);
      },
      async consume(id) {
        const payload = live(key(id));
        if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000);
      },
      async destroy(id) {
        entries.delete(key(id));
      },
      async revokeByGrantId(grantId) {
        for (const k of byGrant.get(grantId) ?? []) entries.delete(k);
        byGrant.delete(grantId);
      },
    };
  };
}

/**
 * oidc-provider warns at import on any runtime older than Node 22 LTS ("Unsupported runtime");
 * the project runs on Node 20 where it works, so that one line is kept out of test output.
 */
async function importOidcProvider(): Promise<typeof OidcProviderModule> {
  // eslint-disable-next-line no-console
  const warn = console.warn;
  // eslint-disable-next-line no-console
  console.warn = (...args: unknown[]) => {
    if (typeof args[0] === 'string' && args[0].includes('oidc-provider WARNING: Unsupported runtime')) return;
    warn(...args);
  };
  try {
    return await import('oidc-provider');
  } finally {
    // eslint-disable-next-line no-console
    console.warn = warn;
  }
}

function basicClientId(header: string | undefined): string | undefined {
  if (header?.startsWith('Basic ') !== true) return undefined;
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  try {
    return decodeURIComponent(i === -1 ? decoded : decoded.slice(0, i));
  } catch {
    return undefined;
  }
}

function stringParam(params: Record<string, unknown> | undefined, name: string): string | undefined {
  const value = params?.[name];
  return typeof value === 'string' ? value : undefined;
}

export async function startOidcServer(options: OidcServerOptions): Promise<OidcServer> {
  const { default: Provider, errors } = await importOidcProvider();
  const pki = testPki();
  const accessTokenTtl = options.accessTokenTtlSeconds ?? 300;
  const refreshTokenTtl = options.refreshTokenTtlSeconds ?? 24 * 3600;
  const users = options.users ?? {};
  const specs = new Map(options.clients.map((c) => [c.clientId, c]));
  // oidc-provider only accepts client `scope` metadata made of scopes it knows (`scopes`).
  const scopes = new Set([
    'openid',
    'offline_access',
    ...options.clients.flatMap((c) => (c.scope ?? '').split(' ').filter(Boolean)),
  ]);

  // Listen first: the issuer must carry the port.
  let handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => {
    res.statusCode = 503;
    res.end();
  };
  // Server side of RFC 8705: a client certificate is asked for but not required at the TLS layer,
  // so the token server itself answers invalid_client when it is missing or wrong (ctx.socket.authorized).
  const server: Server = createServer(
    { key: pki.key, cert: pki.cert, ca: [pki.ca], requestCert: true, rejectUnauthorized: false },
    (req, res) => handler(req, res),
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const issuer = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const signingKey = { ...(await exportJWK(privateKey)), kid: 'oidc-server-rs256', alg: 'RS256', use: 'sig' };

  const resourceServerInfo = (clientScope: string | undefined): ResourceServer => ({
    audience: RESOURCE,
    scope: clientScope ?? '',
    accessTokenFormat: 'jwt',
    accessTokenTTL: accessTokenTtl,
  });

  const provider = new Provider(issuer, {
    adapter: memoryAdapter(),
    clients: options.clients.map(toClientMetadata),
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_post',
      'private_key_jwt',
      'tls_client_auth',
      ...(options.jwtBearer === undefined ? [] : (['none'] as const)),
    ],
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    findAccount: (_ctx, sub) => (Object.hasOwn(users, sub) ? { accountId: sub, claims: () => ({ sub }) } : undefined),
    scopes: [...scopes],
    rotateRefreshToken: true,
    clientBasedCORS: () => false,
    ttl: {
      AccessToken: accessTokenTtl,
      ClientCredentials: accessTokenTtl,
      RefreshToken: refreshTokenTtl,
      Grant: refreshTokenTtl,
      Session: 3600,
      Interaction: 600,
      IdToken: 3600,
    },
    ...(options.dpop === undefined ? {} : { enabledJWA: { dPoPSigningAlgValues: ['ES256', 'PS256', 'EdDSA'] } }),
    features: {
      ...(options.dpop === undefined
        ? {}
        : {
            dPoP: {
              enabled: true,
              nonceSecret: randomBytes(32),
              requireNonce: () => options.dpop?.requireNonce === true,
            },
          }),
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource, client) => {
          if (resource !== RESOURCE) throw new errors.InvalidTarget();
          return resourceServerInfo(client.scope);
        },
      },
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: false,
        certificateBoundAccessTokens: options.certificateBoundAccessTokens ?? false,
        getCertificate: peerCertificatePem,
        certificateAuthorized: (ctx) => (ctx.socket as TLSSocket).authorized === true,
        certificateSubjectMatches: (ctx, property, expected) => {
          const pem = peerCertificatePem(ctx);
          return property === 'tls_client_auth_subject_dn' && pem !== undefined && subjectDnOf(pem) === expected;
        },
      },
    },
  });

  // Resource owner password credentials (RFC 6749 §4.3): oidc-provider has no such grant, so
  // this is one made like its own handlers: a Grant, a JWT AccessToken for the resource, and a
  // RefreshToken that the built-in refresh_token grant then rotates.
  provider.registerGrantType<{ username?: string; password?: string }>(
    'password',
    async (ctx) => {
      const { client, params } = ctx.oidc;
      const { username, password } = params;
      if (typeof username !== 'string' || typeof password !== 'string') {
        throw new errors.InvalidRequest('username and password are required');
      }
      if (!Object.hasOwn(users, username) || users[username] !== password) {
        throw new errors.InvalidGrant('invalid resource owner credentials');
      }
      const info = resourceServerInfo(client.scope);
      const allowed = new Set(info.scope.split(' ').filter(Boolean));
      const requested = params.scope !== undefined ? params.scope.split(' ').filter(Boolean) : [...allowed];
      const scope = requested.filter((s) => allowed.has(s)).join(' ');

      const grant = new provider.Grant({ accountId: username, clientId: client.clientId });
      grant.addResourceScope(RESOURCE, scope);
      const grantId = await grant.save();
      ctx.oidc.entity('Grant', grant);

      const at = new provider.AccessToken({ accountId: username, client, grantId, gty: 'password', scope });
      at.resourceServer = new provider.ResourceServer(RESOURCE, info);
      // RFC 8705 §3, as the built-in grants do it: bound to the certificate the client presented.
      if (client.tlsClientCertificateBoundAccessTokens === true) {
        const certificate = peerCertificatePem(ctx);
        if (certificate === undefined) throw new errors.InvalidGrant('mutual TLS client certificate not provided');
        at.setThumbprint('x5t', certificate);
      }
      ctx.oidc.entity('AccessToken', at);
      const accessToken = await at.save();

      let refreshToken: string | undefined;
      if (client.grantTypeAllowed('refresh_token')) {
        const rt = new provider.RefreshToken({
          accountId: username,
          client,
          grantId,
          gty: 'password',
          resource: RESOURCE,
          scope,
          rotations: 0,
        });
        ctx.oidc.entity('RefreshToken', rt);
        refreshToken = await rt.save();
      }

      ctx.body = {
        access_token: accessToken,
        token_type: at.tokenType,
        expires_in: at.expiration,
        refresh_token: refreshToken,
        scope: scope || undefined,
      };
    },
    ['username', 'password', 'scope'],
  );

  const exchanges: TokenExchangeSeen[] = [];
  if (options.tokenExchange !== undefined) {
    registerTokenExchange(provider, errors, options.tokenExchange, resourceServerInfo, exchanges);
  }

  const bearerAssertions: JWTPayload[] = [];
  const jwtBearer = options.jwtBearer;
  if (jwtBearer !== undefined) {
    const trusted = createLocalJWKSet(jwtBearer.jwks);
    // RFC 7523 §2.1 / §3: the assertion is the grant; it must be signed by the trusted issuer, name
    // this server as its audience, and carry iss, sub, aud and exp. No refresh token is issued:
    // renewal is the grant again with a fresh assertion (RFC 7521 §4.1 leaves it to the server).
    provider.registerGrantType<{ assertion?: string; scope?: string }>(
      JWT_BEARER_GRANT,
      async (ctx) => {
        const { client, params } = ctx.oidc;
        if (typeof params.assertion !== 'string') throw new errors.InvalidRequest('assertion is required');
        let claims: JWTPayload;
        try {
          claims = (
            await jwtVerify(params.assertion, trusted, {
              issuer: jwtBearer.issuer,
              audience: jwtBearer.audience,
              requiredClaims: ['iss', 'sub', 'aud', 'exp'],
            })
          ).payload;
        } catch (err) {
          throw new errors.InvalidGrant(`assertion rejected: ${(err as Error).message}`);
        }
        bearerAssertions.push(claims);
        const info = resourceServerInfo(client.scope);
        const allowed = new Set(info.scope.split(' ').filter(Boolean));
        const requested = params.scope !== undefined ? params.scope.split(' ').filter(Boolean) : [...allowed];
        const scope = requested.filter((s) => allowed.has(s)).join(' ');
        const accountId = String(claims.sub);
        const grant = new provider.Grant({ accountId, clientId: client.clientId });
        grant.addResourceScope(RESOURCE, scope);
        const grantId = await grant.save();
        ctx.oidc.entity('Grant', grant);
        const at = new provider.AccessToken({ accountId, client, grantId, gty: 'jwt_bearer', scope });
        at.resourceServer = new provider.ResourceServer(RESOURCE, info);
        ctx.oidc.entity('AccessToken', at);
        ctx.body = {
          access_token: await at.save(),
          token_type: at.tokenType,
          expires_in: at.expiration,
          scope: scope || undefined,
        };
      },
      ['assertion', 'scope'],
    );
  }

  const calls: OidcCall[] = [];
  const usedRefreshTokens: string[] = [];
  const issuedRefreshTokens: string[] = [];
  const errorDetails = new WeakMap<object, string>();
  provider.on('grant.error', (ctx: KoaContextWithOIDC, err: { error_detail?: unknown }) => {
    if (typeof err.error_detail === 'string') errorDetails.set(ctx, err.error_detail);
  });
  let tokenHook: (() => Promise<void>) | undefined;
  const arrivals: (() => void)[] = [];
  provider.use(async (ctx, next) => {
    const isToken = ctx.method === 'POST' && ctx.path === '/token';
    if (isToken) {
      arrivals.splice(0).forEach((arrived) => arrived());
      await tokenHook?.();
    }
    await next();
    if (!isToken) return;
    const oidc = (ctx as Partial<KoaContextWithOIDC>).oidc;
    const params = oidc?.params;
    const grantType = stringParam(params, 'grant_type') ?? '';
    const refreshToken = stringParam(params, 'refresh_token');
    if (grantType === 'refresh_token' && refreshToken !== undefined) usedRefreshTokens.push(refreshToken);
    const client = oidc?.entities.Client;
    const clientId =
      client?.clientId ?? stringParam(params, 'client_id') ?? basicClientId(ctx.get('authorization') || undefined);
    const body = ctx.body as Record<string, unknown> | undefined;
    const issued = ctx.status === 200 ? stringParam(body, 'refresh_token') : undefined;
    if (issued !== undefined) issuedRefreshTokens.push(issued);
    calls.push({
      grantType,
      clientId,
      authMethod: clientId !== undefined ? specs.get(clientId)?.authMethod : undefined,
      status: ctx.status,
      error: ctx.status >= 400 ? stringParam(body, 'error') : undefined,
      errorDescription: ctx.status >= 400 ? stringParam(body, 'error_description') : undefined,
      errorDetail: errorDetails.get(ctx),
    });
  });

  const callback = provider.callback();
  // Koa's callback answers its own errors (ctx.onerror): its promise never rejects.
  handler = (req, res) => void callback(req, res);

  /** One token request made directly (as a setup step, or behind the proxy's back). */
  const postToken = async (
    clientId: string,
    clientSecret: string,
    params: Record<string, string>,
  ): Promise<{ status: number; body: string }> => {
    const agent = new Agent({ connect: { ca: testPki().ca } });
    try {
      const res = await agent.request({
        origin: issuer,
        path: '/token',
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`,
        },
        body: new URLSearchParams(params).toString(),
      });
      return { status: res.statusCode, body: await res.body.text() };
    } finally {
      await agent.close();
    }
  };

  return {
    issuer,
    tokenUrl: `${issuer}/token`,
    jwksUrl: `${issuer}/jwks`,
    audience: RESOURCE,
    calls,
    bearerAssertions,
    usedRefreshTokens,
    issuedRefreshTokens,
    exchanges,
    beforeToken: (hook) => {
      tokenHook = hook;
    },
    waitForTokenRequest: () => new Promise<void>((resolve) => arrivals.push(resolve)),
    lastIssuedRefreshToken: () => {
      const last = issuedRefreshTokens.at(-1);
      if (last === undefined) throw new Error('no refresh token issued yet');
      return last;
    },
    async passwordGrant(clientId, clientSecret, username, password) {
      const res = await postToken(clientId, clientSecret, { grant_type: 'password', username, password, scope: 'api' });
      const json = JSON.parse(res.body) as { access_token: string; refresh_token: string };
      return { accessToken: json.access_token, refreshToken: json.refresh_token };
    },
    async spendRefreshToken(clientId, clientSecret, refreshToken) {
      return (await postToken(clientId, clientSecret, { grant_type: 'refresh_token', refresh_token: refreshToken }))
        .status;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

type TokenExchangeParams = Record<
  | 'subject_token'
  | 'subject_token_type'
  | 'actor_token'
  | 'actor_token_type'
  | 'requested_token_type'
  | 'audience'
  | 'resource'
  | 'scope',
  string | undefined
>;

/**
 * RFC 8693 token exchange as a security token service does it: the subject token's signature is
 * verified against the callers' IdP JWKS (and its issuer and expiry), then a JWT access token for
 * the resource server is issued to the client with the subject's `sub`.
 */
function registerTokenExchange(
  provider: InstanceType<typeof OidcProviderModule.default>,
  errors: typeof OidcProviderModule.errors,
  options: TokenExchangeOptions,
  resourceServerInfo: (clientScope: string | undefined) => ResourceServer,
  exchanges: TokenExchangeSeen[],
): void {
  const agent = options.subjectCa === undefined ? undefined : new Agent({ connect: { ca: options.subjectCa } });
  const jwks = createRemoteJWKSet(
    new URL(options.subjectJwksUrl),
    agent === undefined
      ? {}
      : { [customFetch]: (url, init) => undiciFetch(url, { ...(init as object), dispatcher: agent }) },
  );
  provider.registerGrantType<TokenExchangeParams>(
    TOKEN_EXCHANGE_GRANT,
    async (ctx) => {
      const { client, params } = ctx.oidc;
      if (typeof params.subject_token !== 'string' || params.subject_token_type !== JWT_TOKEN_TYPE) {
        throw new errors.InvalidRequest('subject_token of type urn:ietf:params:oauth:token-type:jwt is required');
      }
      if ((params.actor_token === undefined) !== (params.actor_token_type === undefined)) {
        throw new errors.InvalidRequest('actor_token and actor_token_type go together (RFC 8693 §2.1)');
      }
      let sub: string;
      try {
        const { payload } = await jwtVerify(params.subject_token, jwks, { issuer: options.subjectIssuer });
        if (typeof payload.sub !== 'string') throw new Error('no sub');
        sub = payload.sub;
      } catch {
        throw new errors.InvalidGrant('subject_token is not valid');
      }
      const info = resourceServerInfo(client.scope);
      const allowed = new Set(info.scope.split(' ').filter(Boolean));
      const requested = params.scope !== undefined ? params.scope.split(' ').filter(Boolean) : [...allowed];
      const scope = requested.filter((s) => allowed.has(s)).join(' ');
      const grant = new provider.Grant({ accountId: sub, clientId: client.clientId });
      grant.addResourceScope(RESOURCE, scope);
      const grantId = await grant.save();
      const at = new provider.AccessToken({ accountId: sub, client, grantId, gty: 'token_exchange', scope });
      at.resourceServer = new provider.ResourceServer(RESOURCE, info);
      ctx.oidc.entity('AccessToken', at);
      const accessToken = await at.save();
      exchanges.push({
        sub,
        subjectTokenType: params.subject_token_type,
        audience: params.audience,
        resource: params.resource,
        scope: params.scope,
        requestedTokenType: params.requested_token_type,
        actorToken: params.actor_token,
        actorTokenType: params.actor_token_type,
      });
      ctx.body = {
        access_token: accessToken,
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        token_type: at.tokenType,
        expires_in: at.expiration,
        scope: scope || undefined,
      };
    },
    [
      'subject_token',
      'subject_token_type',
      'actor_token',
      'actor_token_type',
      'requested_token_type',
      'audience',
      'resource',
      'scope',
    ],
  );
}

const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

/** A key pair for private_key_jwt clients: the private key as PKCS#8 PEM, the public one as a JWK with kid/alg/use. */
export async function generateClientKey(
  alg: 'RS256' | 'ES256' | 'PS256',
  kid: string,
): Promise<{ privatePem: string; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return {
    privatePem: await exportPKCS8(privateKey),
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' },
  };
}

/** A client certificate (extendedKeyUsage clientAuth, EC P-256 key) signed by the test CA. */
export function issueClientCertificate(cn: string): { certPem: string; keyPem: string; subjectDn: string } {
  const pki = testPki();
  const caKeyFile = join(dirname(pki.caFile), 'ca-key.pem');
  const dir = mkdtempSync(join(tmpdir(), 'oidc-client-cert-'));
  try {
    const openssl = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    openssl([
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      'key.pem',
      '-out',
      'client.csr',
      '-subj',
      `/CN=${cn}`,
    ]);
    writeFileSync(
      join(dir, 'client.ext'),
      'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n',
    );
    // A random serial rather than -CAcreateserial: test files run in parallel processes.
    const serial = `0x${randomBytes(16).toString('hex')}`;
    openssl([
      'x509',
      '-req',
      '-in',
      'client.csr',
      '-CA',
      pki.caFile,
      '-CAkey',
      caKeyFile,
      '-set_serial',
      serial,
      '-out',
      'client.pem',
      '-days',
      '30',
      '-extfile',
      'client.ext',
    ]);
    const certPem = readFileSync(join(dir, 'client.pem'), 'utf8');
    return { certPem, keyPem: readFileSync(join(dir, 'key.pem'), 'utf8'), subjectDn: subjectDnOf(certPem) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
