import { z } from 'zod';
import {
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_TOKEN_LIFETIME_SECONDS,
  DEFAULT_TOKEN_REQUEST_TIMEOUT_SECONDS,
  MAX_TIMER_SECONDS,
  TIMER_LIMIT_MESSAGE,
} from './defaults.js';
import { dpopSchema } from './dpop.js';
import { secureUrl } from './url.js';

const positiveSeconds = z.number().positive().max(MAX_TIMER_SECONDS, TIMER_LIMIT_MESSAGE);

/** What a secret given inline (`${ENV}` preferred) or as a file path (mounted secrets) must be. */
const exactlyOneOf = (name: string) => `set exactly one of ${name} or ${name}File`;

/** Not both forms of a secret; whether one is required is for `credentialProblems` to say. */
function notBoth(ctx: z.RefinementCtx, value: unknown, file: unknown, name: string): void {
  if (value !== undefined && file !== undefined) {
    ctx.addIssue({ code: 'custom', path: [name], message: exactlyOneOf(name) });
  }
}

/** Lifetime and timing settings every grant shares. */
const timing = {
  defaultTokenLifetimeSeconds: z
    .number()
    .positive()
    .default(DEFAULT_TOKEN_LIFETIME_SECONDS)
    .describe('lifetime assumed when the response has neither an expiry nor a JWT exp'),
  clockSkewSeconds: z
    .number()
    .min(0)
    .default(DEFAULT_CLOCK_SKEW_SECONDS)
    .describe('stop using a token this long before it expires (capped at a quarter of its lifetime)'),
  requestTimeoutSeconds: positiveSeconds
    .default(DEFAULT_TOKEN_REQUEST_TIMEOUT_SECONDS)
    .describe('time limit for one token endpoint call'),
};

/** RFC 8705 client certificate, for a token endpoint that wants mTLS (also `upstreams[].mtls`). */
export const mtlsSchema = z
  .strictObject({
    cert: z.string().min(1).describe('PEM file with the client certificate (and chain)'),
    key: z.string().min(1).describe('PEM file with its private key'),
    passphrase: z.string().min(1).optional().describe('passphrase of an encrypted key'),
  })
  .describe('client certificate for mutual TLS');

/** RFC 8705 §3; what follows from it is decided in certificate-binding.ts. */
const certificateBoundTokens = z
  .boolean()
  .optional()
  .describe(
    'the token server binds its tokens to the mtls certificate (RFC 8705 §3, cnf x5t#S256), so the target must be presented that same certificate: it is by default (without upstreams[].mtls), and an upstreams[].mtls that differs is refused at start. Default: true when mtls is set. Whatever this says, a token that names another certificate than the target is presented is never sent (token_unavailable, reason certificate_mismatch)',
  );

const privateKeySchema = z
  .strictObject({
    file: z.string().min(1).describe('PEM (PKCS#8) private key that signs client assertions'),
    alg: z.enum(['RS256', 'ES256', 'PS256']).default('RS256'),
    kid: z.string().min(1).optional().describe('key id the token server knows the key by'),
  })
  .describe('for clientAuth private_key_jwt');

const clientAuthMethod = z.enum([
  'client_secret_basic',
  'client_secret_post',
  'private_key_jwt',
  'client_assertion',
  'tls_client_auth',
  'none',
]);
const CLIENT_AUTH_TEXT =
  'client authentication at the token endpoint: RFC 6749 §2.3.1, RFC 7523 (private_key_jwt; client_assertion: an externally issued JWT from clientAssertionFile), RFC 8705 (tls_client_auth), or none (public client)';

/** A JWT the platform issues and rotates in a file: read at every token request, never at load. */
const assertionFile = (what: string) =>
  z
    .string()
    .min(1)
    .describe(
      `file holding ${what} (a Kubernetes projected service-account token, SPIFFE JWT-SVID or CI OIDC token), read again for every token request; not read at load, not a secret in the config`,
    );

/** The note on a credential the schema leaves optional so that tenants may bring their own. */
const PER_TENANT = 'required, unless every tenant sets its own (tenants.credentials)';

/**
 * OAuth2 client settings shared by the token-endpoint grants. The credentials (client id, secret,
 * private key) are optional in the schema: an upstream with tenants may leave them to each tenant.
 * `credentialProblems` requires them where they end up missing.
 */
const oauthClient = {
  tokenUrl: secureUrl.describe('token endpoint (RFC 6749 §3.2); https:// except on loopback'),
  clientId: z.string().min(1).optional().describe(`OAuth2 client id; ${PER_TENANT}`),
  clientSecret: z.string().min(1).optional().describe('client secret; use ${ENV_VAR} rather than writing it here'),
  clientSecretFile: z.string().min(1).optional().describe('path to a file holding the secret (e.g. a mounted secret)'),
  clientAuth: clientAuthMethod.default('client_secret_basic').describe(CLIENT_AUTH_TEXT),
  privateKey: privateKeySchema.optional(),
  clientAssertionFile: assertionFile('the client assertion (RFC 7523 §2.2) for clientAuth client_assertion').optional(),
  mtls: mtlsSchema.optional(),
  certificateBoundTokens,
  scope: z.string().min(1).optional().describe('space-separated scopes to request'),
  audience: z.string().min(1).optional().describe('audience parameter sent with the token request'),
  dpop: dpopSchema.optional(),
  ...timing,
};

function secretAuth(clientAuth: unknown): clientAuth is 'client_secret_basic' | 'client_secret_post' {
  return clientAuth === 'client_secret_basic' || clientAuth === 'client_secret_post';
}

function checkClient(
  auth: {
    clientAuth: string;
    clientSecret?: string | undefined;
    clientSecretFile?: string | undefined;
    clientAssertionFile?: string | undefined;
    mtls?: unknown;
  },
  ctx: z.RefinementCtx,
): void {
  if (auth.clientAuth === 'client_assertion' && auth.clientAssertionFile === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['clientAssertionFile'],
      message: 'clientAuth client_assertion needs clientAssertionFile',
    });
  }
  if (auth.clientAuth !== 'client_assertion' && auth.clientAssertionFile !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['clientAssertionFile'],
      message: `not used with clientAuth ${auth.clientAuth}: remove it`,
    });
  }
  notBoth(ctx, auth.clientSecret, auth.clientSecretFile, 'clientSecret');
  if (!secretAuth(auth.clientAuth) && (auth.clientSecret !== undefined || auth.clientSecretFile !== undefined)) {
    ctx.addIssue({
      code: 'custom',
      path: ['clientSecret'],
      message: `not used with clientAuth ${auth.clientAuth}: remove it`,
    });
  }
  if (auth.clientAuth === 'tls_client_auth' && auth.mtls === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['mtls'],
      message: 'clientAuth tls_client_auth needs mtls.cert and mtls.key',
    });
  }
}

const clientCredentials = z
  .strictObject({ type: z.literal('client_credentials'), ...oauthClient })
  .superRefine(checkClient)
  .describe('RFC 6749 §4.4 client credentials');

const password = z
  .strictObject({
    type: z.literal('password'),
    ...oauthClient,
    username: z.string().min(1).optional().describe(PER_TENANT),
    password: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
  })
  .superRefine((auth, ctx) => {
    checkClient(auth, ctx);
    notBoth(ctx, auth.password, auth.passwordFile, 'password');
  })
  .describe('RFC 6749 §4.3 resource owner password; renewed with the refresh token it returns');

const refreshToken = z
  .strictObject({
    type: z.literal('refresh_token'),
    ...oauthClient,
    refreshToken: z
      .string()
      .min(1)
      .optional()
      .describe('a long-lived refresh token; rotated ones replace it in memory'),
    refreshTokenFile: z.string().min(1).optional(),
  })
  .superRefine((auth, ctx) => {
    checkClient(auth, ctx);
    notBoth(ctx, auth.refreshToken, auth.refreshTokenFile, 'refreshToken');
  })
  .describe('RFC 6749 §6 refresh token grant with a configured refresh token');

const jwtBearer = z
  .strictObject({
    type: z.literal('jwt_bearer'),
    ...oauthClient,
    clientId: z
      .string()
      .min(1)
      .optional()
      .describe('OAuth2 client id, when the server wants one (required with any clientAuth but none)'),
    // No client authentication unless the server asks for it: the assertion is the credential.
    clientAuth: clientAuthMethod.default('none').describe(CLIENT_AUTH_TEXT),
    assertionFile: assertionFile('the assertion that is the grant (RFC 7523 §2.1)'),
  })
  .superRefine(checkClient)
  .describe(
    'RFC 7523 §2.1 JWT bearer grant: a platform-issued JWT (workload identity) is exchanged for a token; renewed by the grant again with the file as it is then',
  );

/** Dotted paths into the login API's JSON answer. */
const responseFields = z
  .strictObject({
    accessToken: z.string().min(1).default('data.access_token'),
    refreshToken: z.string().min(1).optional().default('data.refresh_token'),
    expiresAt: z.string().min(1).optional().describe('ISO-8601 date or epoch seconds'),
    expiresIn: z.string().min(1).optional().describe('seconds from now'),
  })
  .default({
    accessToken: 'data.access_token',
    refreshToken: 'data.refresh_token',
    expiresAt: 'data.access_expires_at',
  });

const jsonTemplate = z
  .record(z.string(), z.unknown())
  .describe(
    'JSON body; the strings {{username}}, {{password}} and {{refreshToken}} are filled in. Values under fields named like a credential (key, token, secret, auth, pass, sig, …) are kept out of logs and errors',
  );

const login = z
  .strictObject({
    type: z.literal('login'),
    loginUrl: secureUrl.describe('POST {"username","password"} here'),
    refreshUrl: secureUrl.optional().describe('POST {"refresh_token"} here; without it, renewals log in again'),
    username: z.string().min(1).optional().describe(PER_TENANT),
    password: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    loginBody: jsonTemplate.default({ username: '{{username}}', password: '{{password}}' }),
    refreshBody: jsonTemplate.default({ refresh_token: '{{refreshToken}}' }),
    headers: z.record(z.string(), z.string()).default({}).describe('extra request headers, e.g. an API key'),
    responseFields,
    mtls: mtlsSchema.optional(),
    certificateBoundTokens,
    ...timing,
  })
  .superRefine((auth, ctx) => notBoth(ctx, auth.password, auth.passwordFile, 'password'))
  .describe("a partner's own JSON login API");

/** RFC 8693 §3: the token type identifiers the proxy may name. */
const tokenType = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+$/, 'a token type URI, e.g. urn:ietf:params:oauth:token-type:jwt');
export const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

const tokenExchange = z
  .strictObject({
    type: z.literal('token_exchange'),
    ...oauthClient,
    subjectToken: z
      .literal('caller')
      .default('caller')
      .describe("the subject token: the caller's validated JWT (inbound.jwt), one exchanged token per caller"),
    subjectTokenType: tokenType.default(JWT_TOKEN_TYPE).describe('RFC 8693 §2.1 subject_token_type'),
    resource: z.string().min(1).optional().describe('RFC 8693 §2.1 resource: the URI of the target service'),
    requestedTokenType: tokenType.optional().describe('RFC 8693 §2.1 requested_token_type'),
    actorTokenFile: z
      .string()
      .min(1)
      .optional()
      .describe("file holding the proxy's own actor token (RFC 8693 §2.1 actor_token), read for every exchange"),
    actorTokenType: tokenType.default(JWT_TOKEN_TYPE).describe('actor_token_type of the actor token'),
  })
  .superRefine(checkClient)
  .describe("RFC 8693 token exchange of each caller's validated JWT (gateway mode: needs inbound.jwt)");

export const authSchema = z.discriminatedUnion('type', [
  clientCredentials,
  password,
  refreshToken,
  jwtBearer,
  login,
  tokenExchange,
]);

/** What a tenant may set differently from the upstream's auth. */
export const tenantCredentialsSchema = z
  .strictObject({
    clientId: z.string().min(1).optional(),
    clientSecret: z.string().min(1).optional(),
    clientSecretFile: z.string().min(1).optional(),
    privateKey: privateKeySchema.optional(),
    username: z.string().min(1).optional(),
    password: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    refreshToken: z.string().min(1).optional(),
    refreshTokenFile: z.string().min(1).optional(),
    scope: z.string().min(1).optional(),
    audience: z.string().min(1).optional(),
  })
  .describe("this tenant's credentials (and scope, audience), in place of the same ones at auth");

export const tenantsSchema = z
  .strictObject({
    from: z
      .string()
      .regex(
        /^(proxyAuthUser|header:[A-Za-z0-9-]+|jwtClaim:[A-Za-z0-9_.:-]+)$/,
        'proxyAuthUser, header:<Header-Name> or jwtClaim:<claim>',
      )
      .describe(
        'where the tenant name comes from: the proxy user (forward mode), a header set by a trusted gateway (not with inbound.jwt), or a claim of the validated caller JWT (inbound.jwt)',
      ),
    credentials: z.record(
      z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'tenant names: letters, digits, "_", "." and "-"'),
      tenantCredentialsSchema,
    ),
  })
  .describe(
    'one token (and credentials) per tenant; unknown tenants are refused. What the tenants share (endpoint, clientAuth, scope, timing, mtls) stays at auth; a credential set there is the default of a tenant that sets none',
  );

/**
 * Where tenants may come from, given how callers are identified. With inbound.jwt the caller is
 * who its validated JWT says; a `header:` source would let it name any tenant by a header it
 * writes itself, whatever its token says. Runs on the raw document, like credentialProblems.
 */
export function tenantSourceProblems(upstreams: readonly unknown[], callerJwt: boolean): string[] {
  if (!callerJwt) return [];
  return upstreams.flatMap((u, i) => {
    const from = isFields(u) && isFields(u['tenants']) ? u['tenants']['from'] : undefined;
    if (typeof from !== 'string' || !from.startsWith('header:')) return [];
    return [
      `upstreams[${i}].tenants.from: ${from} lets a caller name any tenant in a request header, whatever its validated JWT says: with inbound.jwt, use jwtClaim:<claim> (e.g. jwtClaim:client_id)`,
    ];
  });
}

/**
 * Token exchange (RFC 8693) spends the caller's own token: it exists only in gateway mode, where
 * that token has been validated, and one exchanged token per caller rules out tenants and warm-up.
 * Runs on the raw document, like credentialProblems.
 */
export function tokenExchangeProblems(upstreams: readonly unknown[], callerJwt: boolean): string[] {
  return upstreams.flatMap((u, i) => {
    if (!isFields(u) || !isFields(u['auth']) || u['auth']['type'] !== 'token_exchange') return [];
    const at = `upstreams[${i}]`;
    const problems: string[] = [];
    if (!callerJwt)
      problems.push(
        `${at}.auth.type: token_exchange exchanges the caller's validated JWT and needs inbound.jwt (gateway mode): without it there is no caller token to exchange`,
      );
    if (u['tenants'] !== undefined)
      problems.push(`${at}.tenants: not with auth.type token_exchange (each caller gets its own token already)`);
    if (u['warmup'] === true)
      problems.push(`${at}.warmup: not with auth.type token_exchange (no token exists before a caller asks)`);
    return problems;
  });
}

export type ParsedAuth = z.output<typeof authSchema>;
export type TenantCredentials = z.output<typeof tenantCredentialsSchema>;

type Fields = Readonly<Record<string, unknown>>;

/**
 * A tenant's auth block: the upstream's, with the tenant's values in place of the same ones there
 * (a value given inline or as a file replaces both forms of it).
 */
export function withTenant(base: Fields, own: Fields): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(own)) {
    if (value === undefined) continue;
    const name = key.endsWith('File') ? key.slice(0, -4) : key;
    delete merged[name];
    delete merged[`${name}File`];
    merged[key] = value;
  }
  return merged;
}

/** Credentials that may be given inline or as a file (`clientSecretFile`). */
const FILE_FORM = new Set(['clientSecret', 'password', 'refreshToken']);

interface MissingCredential {
  readonly field: string;
  /** What needs it: `grant password`, `clientAuth client_secret_post`. */
  readonly neededBy: string;
}

/**
 * The credentials a whole auth block (an upstream's, or a tenant's merged with it) lacks. Only
 * presence counts, so it works on the raw document: the schema judges the values themselves.
 */
function missingCredentials(auth: Fields): MissingCredential[] {
  const missing: MissingCredential[] = [];
  const need = (field: string, neededBy: string) => {
    if (auth[field] === undefined && (!FILE_FORM.has(field) || auth[`${field}File`] === undefined))
      missing.push({ field, neededBy });
  };
  const type = auth['type'];
  if (
    type === 'client_credentials' ||
    type === 'password' ||
    type === 'refresh_token' ||
    type === 'token_exchange' ||
    type === 'jwt_bearer'
  ) {
    // The jwt-bearer grant needs a client only when the server authenticates one (RFC 7523 §3.1).
    const clientAuth = auth['clientAuth'] ?? (type === 'jwt_bearer' ? 'none' : 'client_secret_basic');
    if (type !== 'jwt_bearer') need('clientId', `grant ${type}`);
    else if (typeof clientAuth === 'string' && clientAuth !== 'none') need('clientId', `clientAuth ${clientAuth}`);
    if (secretAuth(clientAuth)) need('clientSecret', `clientAuth ${clientAuth}`);
    if (clientAuth === 'private_key_jwt') need('privateKey', 'clientAuth private_key_jwt');
  }
  if (type === 'password' || type === 'login') {
    need('username', `grant ${type}`);
    need('password', `grant ${type}`);
  }
  if (type === 'refresh_token') need('refreshToken', 'grant refresh_token');
  return missing;
}

/** What is said of a credential missing at an upstream without tenants (the secrets' wording is unchanged). */
function missingAtAuth(m: MissingCredential): string {
  if (FILE_FORM.has(m.field)) return exactlyOneOf(m.field);
  if (m.field === 'privateKey') return 'clientAuth private_key_jwt needs privateKey.file';
  return `required for ${m.neededBy}`;
}

function isFields(value: unknown): value is Fields {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * Every credential a token request would lack, named by its path: at `auth` for an upstream
 * without tenants, else for each tenant whose own credentials and the upstream's defaults leave
 * one out. Runs on the raw document, so the gaps are reported together with the field errors.
 */
export function credentialProblems(upstreams: readonly unknown[]): string[] {
  return upstreams.flatMap((u, i) => {
    if (!isFields(u) || !isFields(u['auth'])) return [];
    const at = `upstreams[${i}]`;
    const auth = u['auth'];
    const tenants = u['tenants'];
    if (tenants === undefined) return missingCredentials(auth).map((m) => `${at}.auth.${m.field}: ${missingAtAuth(m)}`);
    const credentials = isFields(tenants) ? tenants['credentials'] : undefined;
    if (!isFields(credentials)) return [];
    return Object.entries(credentials).flatMap(([name, own]) =>
      isFields(own)
        ? missingCredentials(withTenant(auth, own)).map(
            (m) =>
              `${at}.tenants.credentials.${name}.${m.field}: required for ${m.neededBy} (set it here or at ${at}.auth)`,
          )
        : [],
    );
  });
}
