import { z } from 'zod';
import {
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_TOKEN_LIFETIME_SECONDS,
  DEFAULT_TOKEN_REQUEST_TIMEOUT_SECONDS,
  MAX_TIMER_SECONDS,
  TIMER_LIMIT_MESSAGE,
} from './defaults.js';
import { secureUrl } from './url.js';

const positiveSeconds = z.number().positive().max(MAX_TIMER_SECONDS, TIMER_LIMIT_MESSAGE);

/** A secret given inline (`${ENV}` preferred) or as a file path (mounted secrets); exactly one. */
function exactlyOne(ctx: z.RefinementCtx, value: unknown, file: unknown, name: string, required: boolean): void {
  const given = Number(value !== undefined) + Number(file !== undefined);
  if (given > 1 || (required && given === 0)) {
    ctx.addIssue({ code: 'custom', path: [name], message: `set exactly one of ${name} or ${name}File` });
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

/** OAuth2 client settings shared by the token-endpoint grants. */
const oauthClient = {
  tokenUrl: secureUrl.describe('token endpoint (RFC 6749 §3.2); https:// except on loopback'),
  clientId: z.string().min(1).describe('OAuth2 client id'),
  clientSecret: z.string().min(1).optional().describe('client secret; use ${ENV_VAR} rather than writing it here'),
  clientSecretFile: z.string().min(1).optional().describe('path to a file holding the secret (e.g. a mounted secret)'),
  clientAuth: z
    .enum(['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'none'])
    .default('client_secret_basic')
    .describe(
      'client authentication at the token endpoint: RFC 6749 §2.3.1, RFC 7523 (private_key_jwt), RFC 8705 (tls_client_auth), or none (public client)',
    ),
  privateKey: z
    .strictObject({
      file: z.string().min(1).describe('PEM (PKCS#8) private key that signs client assertions'),
      alg: z.enum(['RS256', 'ES256', 'PS256']).default('RS256'),
      kid: z.string().min(1).optional().describe('key id the token server knows the key by'),
    })
    .optional()
    .describe('for clientAuth private_key_jwt'),
  mtls: mtlsSchema.optional(),
  scope: z.string().min(1).optional().describe('space-separated scopes to request'),
  audience: z.string().min(1).optional().describe('audience parameter sent with the token request'),
  ...timing,
};

function checkClient(
  auth: {
    clientAuth: string;
    clientSecret?: string | undefined;
    clientSecretFile?: string | undefined;
    privateKey?: unknown;
    mtls?: unknown;
  },
  ctx: z.RefinementCtx,
): void {
  const secretAuth = auth.clientAuth === 'client_secret_basic' || auth.clientAuth === 'client_secret_post';
  exactlyOne(ctx, auth.clientSecret, auth.clientSecretFile, 'clientSecret', secretAuth);
  if (!secretAuth && (auth.clientSecret !== undefined || auth.clientSecretFile !== undefined)) {
    ctx.addIssue({
      code: 'custom',
      path: ['clientSecret'],
      message: `not used with clientAuth ${auth.clientAuth}: remove it`,
    });
  }
  if (auth.clientAuth === 'private_key_jwt' && auth.privateKey === undefined) {
    ctx.addIssue({ code: 'custom', path: ['privateKey'], message: 'clientAuth private_key_jwt needs privateKey.file' });
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
    username: z.string().min(1),
    password: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
  })
  .superRefine((auth, ctx) => {
    checkClient(auth, ctx);
    exactlyOne(ctx, auth.password, auth.passwordFile, 'password', true);
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
    exactlyOne(ctx, auth.refreshToken, auth.refreshTokenFile, 'refreshToken', true);
  })
  .describe('RFC 6749 §6 refresh token grant with a configured refresh token');

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
  .describe('JSON body; the strings {{username}}, {{password}} and {{refreshToken}} are filled in');

const login = z
  .strictObject({
    type: z.literal('login'),
    loginUrl: secureUrl.describe('POST {"username","password"} here'),
    refreshUrl: secureUrl.optional().describe('POST {"refresh_token"} here; without it, renewals log in again'),
    username: z.string().min(1),
    password: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    loginBody: jsonTemplate.default({ username: '{{username}}', password: '{{password}}' }),
    refreshBody: jsonTemplate.default({ refresh_token: '{{refreshToken}}' }),
    headers: z.record(z.string(), z.string()).default({}).describe('extra request headers, e.g. an API key'),
    responseFields,
    mtls: mtlsSchema.optional(),
    ...timing,
  })
  .superRefine((auth, ctx) => exactlyOne(ctx, auth.password, auth.passwordFile, 'password', true))
  .describe("a partner's own JSON login API");

export const authSchema = z.discriminatedUnion('type', [clientCredentials, password, refreshToken, login]);

/** What a tenant may set differently from the upstream's auth. */
export const tenantCredentialsSchema = z.strictObject({
  clientId: z.string().min(1).optional(),
  clientSecret: z.string().min(1).optional(),
  clientSecretFile: z.string().min(1).optional(),
  username: z.string().min(1).optional(),
  password: z.string().min(1).optional(),
  passwordFile: z.string().min(1).optional(),
  refreshToken: z.string().min(1).optional(),
  refreshTokenFile: z.string().min(1).optional(),
  scope: z.string().min(1).optional(),
  audience: z.string().min(1).optional(),
});

export const tenantsSchema = z
  .strictObject({
    from: z
      .string()
      .regex(
        /^(proxyAuthUser|header:[A-Za-z0-9-]+|jwtClaim:[A-Za-z0-9_.:-]+)$/,
        'proxyAuthUser, header:<Header-Name> or jwtClaim:<claim>',
      )
      .describe(
        'where the tenant name comes from: the proxy user (forward mode), a header set by a trusted gateway, or a claim of the validated caller JWT (inbound.jwt)',
      ),
    credentials: z.record(
      z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'tenant names: letters, digits, "_", "." and "-"'),
      tenantCredentialsSchema,
    ),
  })
  .describe('one token (and credentials) per tenant; unknown tenants are refused');

export type ParsedAuth = z.output<typeof authSchema>;
export type TenantCredentials = z.output<typeof tenantCredentialsSchema>;
