import { X509Certificate, createPrivateKey } from 'node:crypto';
import { resolve } from 'node:path';
import type { z } from 'zod';
import { authSchema, withTenant, type ParsedAuth, type TenantCredentials } from './auth-schema.js';
import { resolveDpop, type DpopKey } from './dpop.js';
import { checkReadableSecretFile, readSecretFile, readText } from './files.js';

/** A client certificate, as PEM text read at load time. */
export interface Mtls {
  readonly cert: string;
  readonly key: string;
  readonly passphrase: string | undefined;
}

interface Timing {
  readonly defaultTokenLifetimeSeconds: number;
  readonly clockSkewSeconds: number;
  readonly requestTimeoutSeconds: number;
}

export type ClientAuthMethod =
  'client_secret_basic' | 'client_secret_post' | 'private_key_jwt' | 'client_assertion' | 'tls_client_auth' | 'none';

export interface OAuthClientSettings extends Timing {
  readonly tokenUrl: string;
  readonly clientId: string;
  readonly clientAuth: ClientAuthMethod;
  readonly clientSecret: string | undefined;
  readonly privateKey:
    { readonly pem: string; readonly alg: 'RS256' | 'ES256' | 'PS256'; readonly kid: string | undefined } | undefined;
  readonly mtls: Mtls | undefined;
  readonly scope: string | undefined;
  readonly audience: string | undefined;
  /** clientAuth client_assertion: the absolute path of the platform's JWT, read at each token request. */
  readonly clientAssertionFile: string | undefined;
  /** RFC 9449: the upstream's DPoP key, shared by its tenants; undefined for bearer tokens. */
  readonly dpop: DpopKey | undefined;
}

/** RFC 7523 §2.1: the grant is the platform's JWT; a client only when the server authenticates one. */
export type JwtBearerSettings = Omit<OAuthClientSettings, 'clientId'> & {
  readonly type: 'jwt_bearer';
  readonly clientId: string | undefined;
  /** Absolute path, read at each token request. */
  readonly assertionFile: string;
};

export interface LoginSettings extends Timing {
  readonly type: 'login';
  readonly loginUrl: string;
  readonly refreshUrl: string | undefined;
  readonly username: string;
  readonly password: string;
  readonly loginBody: Readonly<Record<string, unknown>>;
  readonly refreshBody: Readonly<Record<string, unknown>>;
  readonly headers: Readonly<Record<string, string>>;
  readonly responseFields: {
    readonly accessToken: string;
    readonly refreshToken: string | undefined;
    readonly expiresAt: string | undefined;
    readonly expiresIn: string | undefined;
  };
  readonly mtls: Mtls | undefined;
}

/** RFC 8693 token exchange of the caller's token (gateway mode). */
export interface TokenExchangeSettings extends OAuthClientSettings {
  readonly type: 'token_exchange';
  readonly subjectTokenType: string;
  readonly resource: string | undefined;
  readonly requestedTokenType: string | undefined;
  /** Absolute path, read for every exchange (a platform may rotate it); undefined: no actor token. */
  readonly actorTokenFile: string | undefined;
  readonly actorTokenType: string;
}

/** Auth settings with every file read and every secret in hand. */
export type ResolvedAuth =
  | TokenExchangeSettings
  | (OAuthClientSettings & { readonly type: 'client_credentials' })
  | (OAuthClientSettings & { readonly type: 'password'; readonly username: string; readonly password: string })
  | (OAuthClientSettings & { readonly type: 'refresh_token'; readonly refreshToken: string })
  | JwtBearerSettings
  | LoginSettings;

/**
 * What the tenants of an upstream share: its auth without a client's own credentials (the
 * endpoint, client authentication method, scope, certificate and timing). A `ResolvedAuth` is one.
 */
export type SharedAuth =
  | (Omit<OAuthClientSettings, 'clientId' | 'clientSecret' | 'privateKey'> & {
      readonly type: 'client_credentials' | 'password' | 'refresh_token' | 'token_exchange' | 'jwt_bearer';
      readonly assertionFile?: string;
    })
  | Omit<LoginSettings, 'username' | 'password'>;

export function resolveMtls(
  m: { cert: string; key: string; passphrase?: string | undefined } | undefined,
  at: string,
  baseDir: string,
  problems: string[],
): Mtls | undefined {
  if (m === undefined) return undefined;
  const cert = readText(resolve(baseDir, m.cert), `${at}.cert`, problems) ?? '';
  const key = readText(resolve(baseDir, m.key), `${at}.key`, problems) ?? '';
  if (cert !== '' && key !== '') {
    // Checked now: the TLS context is built once at start-up, and a bad pair must be a config error.
    const problem = mtlsProblem(cert, key, m.passphrase);
    if (problem !== undefined) problems.push(`${at}: ${problem}`);
  }
  return { cert, key, passphrase: m.passphrase };
}

function mtlsProblem(cert: string, key: string, passphrase: string | undefined): string | undefined {
  let privateKey;
  try {
    privateKey = createPrivateKey({ key, ...(passphrase === undefined ? {} : { passphrase }) });
  } catch {
    return passphrase === undefined
      ? 'key is not a PEM private key (or is encrypted: set passphrase)'
      : 'key cannot be opened with the passphrase given';
  }
  try {
    return new X509Certificate(cert).checkPrivateKey(privateKey) ? undefined : 'cert does not belong to key';
  } catch {
    return 'cert is not a PEM certificate';
  }
}

/** An upstream's DPoP key, read or generated once (its tenants share it): see resolveDpop. */
export function resolveAuthDpop(a: ParsedAuth, at: string, baseDir: string, problems: string[]): DpopKey | undefined {
  return a.type === 'login' ? undefined : resolveDpop(a.dpop, `${at}.dpop`, baseDir, problems);
}

/** An upstream's auth as its tenants share it, with the certificate read; no credential is read. */
export function resolveSharedAuth(
  a: ParsedAuth,
  at: string,
  baseDir: string,
  problems: string[],
  dpop: DpopKey | undefined = resolveAuthDpop(a, at, baseDir, problems),
): SharedAuth {
  const mtls = resolveMtls(a.mtls, `${at}.mtls`, baseDir, problems);
  const timing = {
    defaultTokenLifetimeSeconds: a.defaultTokenLifetimeSeconds,
    clockSkewSeconds: a.clockSkewSeconds,
    requestTimeoutSeconds: a.requestTimeoutSeconds,
  };
  if (a.type === 'login') {
    const { loginUrl, refreshUrl, loginBody, refreshBody, headers, responseFields: f } = a;
    const responseFields = {
      accessToken: f.accessToken,
      refreshToken: f.refreshToken,
      expiresAt: f.expiresAt,
      expiresIn: f.expiresIn,
    };
    return { type: a.type, loginUrl, refreshUrl, loginBody, refreshBody, headers, responseFields, mtls, ...timing };
  }
  const { type, tokenUrl, clientAuth, scope, audience } = a;
  const clientAssertionFile = a.clientAssertionFile === undefined ? undefined : resolve(baseDir, a.clientAssertionFile);
  return {
    type,
    tokenUrl,
    clientAuth,
    mtls,
    scope,
    audience,
    clientAssertionFile,
    dpop,
    ...(a.type === 'jwt_bearer' ? { assertionFile: resolve(baseDir, a.assertionFile) } : {}),
    ...timing,
  };
}

/** An auth block with every credential it needs (`credentialProblems` has checked they are there). */
export function resolveAuth(
  a: ParsedAuth,
  at: string,
  baseDir: string,
  problems: string[],
  dpop: DpopKey | undefined = resolveAuthDpop(a, at, baseDir, problems),
): ResolvedAuth {
  const secret = (value: string | undefined, file: string | undefined, name: string) =>
    value ?? (file === undefined ? undefined : readSecretFile(file, baseDir, `${at}.${name}File`, problems));
  // Checked before: a gap found here still fails the load, never sends an empty credential.
  const required = (value: string | undefined, file: string | undefined, name: string): string => {
    if (value === undefined && file === undefined) problems.push(`${at}.${name}: required`);
    return secret(value, file, name) ?? '';
  };
  const mtls = resolveMtls(a.mtls, `${at}.mtls`, baseDir, problems);
  if (a.type === 'login') {
    const f = a.responseFields;
    return {
      type: 'login',
      loginUrl: a.loginUrl,
      refreshUrl: a.refreshUrl,
      username: required(a.username, undefined, 'username'),
      password: required(a.password, a.passwordFile, 'password'),
      loginBody: a.loginBody,
      refreshBody: a.refreshBody,
      headers: a.headers,
      responseFields: {
        accessToken: f.accessToken,
        refreshToken: f.refreshToken,
        expiresAt: f.expiresAt,
        expiresIn: f.expiresIn,
      },
      mtls,
      defaultTokenLifetimeSeconds: a.defaultTokenLifetimeSeconds,
      clockSkewSeconds: a.clockSkewSeconds,
      requestTimeoutSeconds: a.requestTimeoutSeconds,
    };
  }
  const privateKey =
    a.privateKey === undefined
      ? undefined
      : {
          pem: readText(resolve(baseDir, a.privateKey.file), `${at}.privateKey.file`, problems) ?? '',
          alg: a.privateKey.alg,
          kid: a.privateKey.kid,
        };
  // The jwt-bearer grant may name no client (credentialProblems has checked when it must).
  const clientId = a.type === 'jwt_bearer' ? a.clientId : required(a.clientId, undefined, 'clientId');
  const client: OAuthClientSettings = {
    tokenUrl: a.tokenUrl,
    clientId: clientId ?? '',
    clientAuth: a.clientAuth,
    clientSecret: secret(a.clientSecret, a.clientSecretFile, 'clientSecret'),
    privateKey,
    mtls,
    scope: a.scope,
    audience: a.audience,
    // Paths only: the platform writes and rotates these files, they are read per token request.
    clientAssertionFile: a.clientAssertionFile === undefined ? undefined : resolve(baseDir, a.clientAssertionFile),
    dpop,
    defaultTokenLifetimeSeconds: a.defaultTokenLifetimeSeconds,
    clockSkewSeconds: a.clockSkewSeconds,
    requestTimeoutSeconds: a.requestTimeoutSeconds,
  };
  switch (a.type) {
    case 'jwt_bearer':
      return { ...client, type: a.type, clientId, assertionFile: resolve(baseDir, a.assertionFile) };
    case 'client_credentials':
      return { ...client, type: a.type };
    case 'password':
      return {
        ...client,
        type: a.type,
        username: required(a.username, undefined, 'username'),
        password: required(a.password, a.passwordFile, 'password'),
      };
    case 'refresh_token':
      return {
        ...client,
        type: a.type,
        refreshToken: required(a.refreshToken, a.refreshTokenFile, 'refreshToken'),
      };
    case 'token_exchange': {
      // Read now only to fail `check` on a missing file; each exchange reads it again.
      const actorTokenFile = a.actorTokenFile === undefined ? undefined : resolve(baseDir, a.actorTokenFile);
      if (actorTokenFile !== undefined)
        checkReadableSecretFile(actorTokenFile, baseDir, `${at}.actorTokenFile`, problems);
      return {
        ...client,
        type: a.type,
        subjectTokenType: a.subjectTokenType,
        resource: a.resource,
        requestedTokenType: a.requestedTokenType,
        actorTokenFile,
        actorTokenType: a.actorTokenType,
      };
    }
  }
}

/**
 * A tenant's auth: the upstream's, with the tenant's values in place of the same ones there (see
 * `withTenant`), validated as a whole like any auth block.
 */
export function tenantAuth(
  base: ParsedAuth,
  override: TenantCredentials,
  at: string,
  baseDir: string,
  problems: string[],
  dpop?: DpopKey,
): ResolvedAuth | undefined {
  const parsed = authSchema.safeParse(withTenant(base, override));
  if (!parsed.success) {
    problems.push(
      ...parsed.error.issues.map(
        (i: z.core.$ZodIssue) => `${at}${i.path.map((p) => `.${String(p)}`).join('')}: ${i.message}`,
      ),
    );
    return undefined;
  }
  return resolveAuth(parsed.data, at, baseDir, problems, dpop);
}
