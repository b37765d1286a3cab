import { isIP } from 'node:net';
import { z } from 'zod';
import { AddressList, HostList, parseHostPattern } from '../proxy/host-pattern.js';
import { forwardClaimHeaderProblem } from '../inbound/forward-claims.js';
import { INBOUND_JWT_ALGORITHMS, MEDIA_TYPE } from '../inbound/jwt-validator.js';
import {
  authSchema,
  credentialProblems,
  mtlsSchema,
  tenantSourceProblems,
  tenantsSchema,
  tokenExchangeProblems,
} from './auth-schema.js';
import { dpopSharedTierProblems } from './dpop.js';
import { redisSchema } from './redis-schema.js';
import { tracingSchema } from './tracing-schema.js';
import { exposureProblem } from './exposure.js';
import { protectionKeys } from './protection-schema.js';
import { secureUrl } from './url.js';

export { isLoopbackHost } from './url.js';
import {
  DEFAULT_ADMIN_LISTEN,
  DEFAULT_CACHE_MAX_ENTRIES,
  DEFAULT_LEAF_VALIDITY_DAYS,
  DEFAULT_LISTEN,
  DEFAULT_LOG_LEVEL,
  DEFAULT_REFRESH_BEFORE_EXPIRY_SECONDS,
  DEFAULT_RETRY_BODY_LIMIT_BYTES,
  DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
  DEFAULT_TOKEN_WAIT_TIMEOUT_SECONDS,
  DEFAULT_UPSTREAM_MAX_CONNECTIONS,
  DEFAULT_UPSTREAM_MAX_QUEUED_REQUESTS,
  DEFAULT_UPSTREAM_TIMEOUT_SECONDS,
  LOG_LEVELS,
  MAX_TIMER_SECONDS,
  TIMER_LIMIT_MESSAGE,
} from './defaults.js';

/** `host:port`, `[v6]:port`; the host must be an IP literal or `localhost`. */
export function parseListen(value: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  if (!m) return undefined;
  const host = m[1] ?? m[2] ?? '';
  const port = Number(m[3]);
  if (port > 65_535) return undefined;
  if (host !== 'localhost' && isIP(host) === 0) return undefined;
  return { host, port };
}

const listenAddress = z
  .string()
  .refine(
    (v) => parseListen(v) !== undefined,
    'must be host:port with an IP address or localhost, e.g. 127.0.0.1:8080',
  );

const positiveSeconds = z.number().positive().max(MAX_TIMER_SECONDS, TIMER_LIMIT_MESSAGE);

/** A `hosts` entry, parsed into its runtime shape (IP hosts canonical) once, here. */
const hostPattern = z.string().transform((value, ctx) => {
  const parsed = parseHostPattern(value);
  if (typeof parsed !== 'string') return parsed;
  ctx.addIssue({ code: 'custom', message: parsed });
  return z.NEVER;
});

const port = z.number().int().min(1).max(65_535);

/**
 * A list parsed as a whole into its runtime shape, by a parser that reports `[i]: problem` per
 * bad entry: routers, guard and egress policy get the built object and parse nothing.
 */
function listOf<T extends object>(parse: (entries: readonly string[]) => T | string[]) {
  return z.array(z.string()).transform((entries, ctx) => {
    const result = parse(entries);
    if (!Array.isArray(result)) return result;
    for (const problem of result) {
      const m = /^\[(\d+)\]: (.*)$/.exec(problem);
      ctx.addIssue({ code: 'custom', path: m ? [Number(m[1])] : [], message: m ? m[2] : problem });
    }
    return z.NEVER;
  });
}

const upstreamSchema = z
  .strictObject({
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'letters, digits, "_", "." and "-" only (it becomes a metrics label)')
      .describe('names the upstream in logs and metrics'),
    target: secureUrl.describe('base URL of the partner API; https:// except on loopback'),
    pathPrefix: z
      .string()
      .regex(/^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*[^/]$/, 'must start with "/" and not end with "/", e.g. /partner')
      .optional()
      .describe('reverse mode: http://proxy/<pathPrefix>/x is sent to <target>/x'),
    hosts: z
      .array(hostPattern)
      .min(1)
      .optional()
      .describe(
        'forward mode: host names (exact or *.suffix, optional :port; ports 80 and 443 when none) whose requests go to this upstream',
      ),
    ca: z
      .string()
      .min(1)
      .optional()
      .describe('PEM file with extra CA certificates for the target and the token endpoint'),
    retryBodyLimitBytes: z
      .number()
      .int()
      .min(0)
      .default(DEFAULT_RETRY_BODY_LIMIT_BYTES)
      .describe('request bodies up to this size are kept so a 401 can be replayed; larger ones stream'),
    timeoutSeconds: positiveSeconds
      .default(DEFAULT_UPSTREAM_TIMEOUT_SECONDS)
      .describe("time limit for the target's response headers (504 after it)"),
    maxConnections: z
      .number()
      .int()
      .positive()
      .default(DEFAULT_UPSTREAM_MAX_CONNECTIONS)
      .describe(
        'connections kept to the target at most (keep-alive); further requests queue for a free one. Raise it for long-lived responses (streams, long polls)',
      ),
    maxQueuedRequests: z
      .number()
      .int()
      .min(0)
      .default(DEFAULT_UPSTREAM_MAX_QUEUED_REQUESTS)
      .describe(
        'requests that may wait for a free connection beyond maxConnections; more are answered 503 with Retry-After at once',
      ),
    unauthorizedBackoff: z
      .strictObject({
        initialSeconds: positiveSeconds
          .default(5)
          .describe(
            'pause after the first renewal a 401 caused in vain (its replay got 401 again); doubled after each further one',
          ),
        maxSeconds: positiveSeconds.default(300).describe('longest such pause'),
      })
      .default({ initialSeconds: 5, maxSeconds: 300 })
      .describe(
        'a 401 renews the token and replays once; a renewal whose replay is refused again backs off 401-caused renewals (of the path, and of the upstream until a request is accepted)',
      ),
    unauthorizedRenewalIntervalSeconds: z
      .number()
      .min(0)
      .optional()
      .describe('deprecated and ignored: replaced by unauthorizedBackoff (renewals are judged by their outcome)'),
    warmup: z.boolean().default(false).describe('fetch the token at start; /readyz answers 503 until it is in hand'),
    tokenWaitTimeoutSeconds: positiveSeconds
      .default(DEFAULT_TOKEN_WAIT_TIMEOUT_SECONDS)
      .describe('how long a request may wait for a token when none is cached (502 after it)'),
    mtls: mtlsSchema
      .optional()
      .describe(
        'client certificate towards the target. Without it, the target is presented auth.mtls when the tokens are bound to that certificate (auth.certificateBoundTokens, RFC 8705 §3: the default when auth.mtls is set), else none; a different certificate is refused at start while tokens are bound',
      ),
    auth: authSchema,
    tenants: tenantsSchema.optional(),
    ...protectionKeys,
  })
  .superRefine((u, ctx) => {
    if (u.pathPrefix === undefined && u.hosts === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['pathPrefix'],
        message: 'set pathPrefix (reverse mode), hosts (forward mode), or both',
      });
    }
  });

const egressSchema = z.strictObject({
  default: z.enum(['deny', 'allow']).default('deny').describe('what happens to traffic for hosts no upstream serves'),
  // prefault, not default: the default goes through the parser too (zod 4's default skips it).
  allow: listOf((entries) => HostList.parse(entries))
    .prefault([])
    .describe('hosts (exact or *.suffix, optional :port), IPs and CIDR ranges reachable without a token'),
  connectPorts: z.array(port).default([443]).describe('ports an unmatched host may be tunnelled to with CONNECT'),
});

const proxyUserSchema = z
  .strictObject({
    name: z.string().regex(/^[^:\s]{1,64}$/, 'no colon or white space (RFC 7617 user-id)'),
    password: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
  })
  .superRefine((user, ctx) => {
    if (Number(user.password !== undefined) + Number(user.passwordFile !== undefined) !== 1) {
      ctx.addIssue({ code: 'custom', path: ['password'], message: 'set exactly one of password or passwordFile' });
    }
  });

const inboundJwtSchema = z
  .strictObject({
    jwksUrl: secureUrl.describe("the caller IdP's JWKS; https:// except on loopback"),
    issuer: z.string().min(1).describe('required iss'),
    audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).describe('required aud (one of them)'),
    algorithms: z
      .array(z.enum(INBOUND_JWT_ALGORITHMS))
      .min(1)
      .default(['RS256', 'ES256'])
      .describe('accepted signature algorithms (asymmetric only: no none, no HS*)'),
    clockSkewSeconds: z.number().min(0).default(30),
    requiredClaims: z
      .record(z.string(), z.string())
      .default({})
      .describe('claim → value it must equal (or contain, for scope-like lists)'),
    requiredTyp: z
      .string()
      .regex(MEDIA_TYPE, 'a media type such as at+jwt')
      .optional()
      .describe(
        'JOSE typ the token must carry, e.g. at+jwt (RFC 9068): refuses the same IdP\'s ID tokens; compared case-insensitively, "application/" optional',
      ),
    forwardClaims: z
      .record(
        z.string(),
        z
          .string()
          .regex(/^[A-Za-z0-9-]+$/, 'a header name')
          .superRefine((header, ctx) => {
            const problem = forwardClaimHeaderProblem(header);
            if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
          }),
      )
      .default({})
      .describe(
        'claim → request header that carries it to the partner; not a header the proxy sets, a hop-by-hop, body or credential header',
      ),
    ca: z.string().min(1).optional().describe('PEM file of a private CA for the JWKS endpoint'),
  })
  .describe('gateway mode: validate the caller bearer JWT before spending a partner token on it');

const inboundSchema = z.strictObject({
  jwt: inboundJwtSchema.optional(),
  allowCidrs: listOf((entries) => AddressList.parse(entries))
    .optional()
    .describe('client addresses allowed to use the proxy (every request on the listener)'),
  proxyAuth: z
    .strictObject({ users: z.array(proxyUserSchema).min(1) })
    .optional()
    .describe('Basic Proxy-Authorization required for forward-mode requests (absolute-form and CONNECT)'),
  allowAnyone: z.boolean().default(false).describe('allow a non-loopback listener without allowCidrs or proxyAuth'),
});

export const configSchema = z.strictObject({
  listen: listenAddress
    .default(DEFAULT_LISTEN)
    .describe('proxy listener, host:port (flag --listen, env TOKEN_PROXY_LISTEN)'),
  admin: z
    .strictObject({
      listen: listenAddress
        .default(DEFAULT_ADMIN_LISTEN)
        .describe('admin listener: /metrics, /healthz, /readyz, / (status page), /status (--admin-listen)'),
    })
    .default({ listen: DEFAULT_ADMIN_LISTEN }),
  logLevel: z.enum(LOG_LEVELS).default(DEFAULT_LOG_LEVEL).describe('JSON logs on stdout (--log-level)'),
  accessLog: z
    .boolean()
    .default(true)
    .describe(
      'one JSON line per request at info level (request id, upstream, status, duration, retry, token fingerprint)',
    ),
  watch: z
    .boolean()
    .default(true)
    .describe(
      'reload, as on SIGHUP, when the config file or a file it names changes (Kubernetes Secret and ConfigMap swaps included); false: SIGHUP only',
    ),
  shutdownTimeoutSeconds: positiveSeconds
    .default(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS)
    .describe('on SIGTERM, requests in flight get this long to finish'),
  limits: z
    .strictObject({
      maxRequestHeaderBytes: z
        .number()
        .int()
        .min(1024)
        .default(16_384)
        .describe('larger request headers are answered 431'),
      maxRequestBodyBytes: z
        .number()
        .int()
        .min(0)
        .default(104_857_600)
        .describe('larger request bodies are answered 413'),
      headersTimeoutSeconds: positiveSeconds
        .default(10)
        .describe('a client must send its request headers within this time (slowloris)'),
      requestTimeoutSeconds: positiveSeconds
        .default(300)
        .describe('a client must send its whole request within this time'),
      tunnelIdleTimeoutSeconds: positiveSeconds
        .default(600)
        .describe('a CONNECT tunnel or WebSocket connection with no traffic either way for this long is closed'),
      responseIdleTimeoutSeconds: positiveSeconds
        .default(60)
        .describe(
          'a client that reads none of its response for this long is cut off and the upstream connection freed (slow readers)',
        ),
      maxReplayBufferBytes: z
        .number()
        .int()
        .min(0)
        .default(67_108_864)
        .describe(
          'request bodies held for a 401 replay, summed over all requests; past it, bodies stream through without a replay',
        ),
    })
    .default({
      maxRequestHeaderBytes: 16_384,
      maxRequestBodyBytes: 104_857_600,
      headersTimeoutSeconds: 10,
      requestTimeoutSeconds: 300,
      tunnelIdleTimeoutSeconds: 600,
      responseIdleTimeoutSeconds: 60,
      maxReplayBufferBytes: 67_108_864,
    }),
  tokenCache: z
    .strictObject({
      maxEntries: z
        .number()
        .int()
        .positive()
        .default(DEFAULT_CACHE_MAX_ENTRIES)
        .describe('tokens kept in memory (one per upstream, tenant and credential set)'),
      refreshBeforeExpirySeconds: z
        .number()
        .min(0)
        .default(DEFAULT_REFRESH_BEFORE_EXPIRY_SECONDS)
        .describe('refresh this long before expiry, in the background; never more than half of a token lifetime'),
      redis: redisSchema.optional(),
    })
    .default({
      maxEntries: DEFAULT_CACHE_MAX_ENTRIES,
      refreshBeforeExpirySeconds: DEFAULT_REFRESH_BEFORE_EXPIRY_SECONDS,
    }),
  upstreams: z.array(upstreamSchema).min(1, 'configure at least one upstream'),
  mitm: z
    .strictObject({
      caCert: z
        .string()
        .min(1)
        .describe('PEM file of the CA that signs interception certificates (token-proxy ca init)'),
      caKey: z
        .string()
        .min(1)
        .describe('PEM file of its private key: refused when its group or others can read it (chmod 600)'),
      leafValidityDays: z
        .number()
        .int()
        .min(1)
        .max(397)
        .default(DEFAULT_LEAF_VALIDITY_DAYS)
        .describe('days an interception certificate is valid; renewed in use once two thirds have passed'),
    })
    .optional()
    .describe('TLS interception of CONNECT tunnels to upstream hosts'),
  egress: egressSchema.prefault({ default: 'deny', allow: [], connectPorts: [443] }),
  inbound: inboundSchema.prefault({ allowAnyone: false }),
  tracing: tracingSchema.optional(),
});

/**
 * Checks across fields (unique names and prefixes, distinct listeners, credentials given at an
 * upstream's auth or per tenant). They run on the raw document, so they are reported together
 * with field errors rather than only once those are fixed.
 */
export function crossFieldProblems(doc: unknown): string[] {
  const problems: string[] = [];
  const cfg = (doc ?? {}) as { listen?: unknown; admin?: { listen?: unknown }; upstreams?: unknown };
  const upstreams = Array.isArray(cfg.upstreams) ? (cfg.upstreams as { name?: unknown; pathPrefix?: unknown }[]) : [];
  const inbound = (
    cfg as { inbound?: { allowCidrs?: unknown; proxyAuth?: unknown; allowAnyone?: unknown; jwt?: unknown } }
  ).inbound;
  for (const field of ['name', 'pathPrefix'] as const) {
    const seen = new Map<unknown, number>();
    upstreams.forEach((u, i) => {
      const value = u?.[field];
      if (typeof value !== 'string') return;
      const before = seen.get(value);
      if (before !== undefined)
        problems.push(`upstreams[${i}].${field}: duplicate ${field} "${value}" (also upstreams[${before}])`);
      else seen.set(value, i);
    });
  }
  const listen = cfg.listen ?? DEFAULT_LISTEN;
  const admin = cfg.admin?.listen ?? DEFAULT_ADMIN_LISTEN;
  if (typeof listen === 'string' && listen === admin && parseListen(listen)?.port !== 0) {
    problems.push('admin.listen: must differ from listen');
  }
  const host = typeof listen === 'string' ? parseListen(listen)?.host : undefined;
  if (typeof listen === 'string' && host !== undefined) {
    const reverseMode = upstreams.some((u) => typeof u?.pathPrefix === 'string');
    const exposed = exposureProblem(listen, host, inbound, reverseMode);
    if (exposed !== undefined) problems.push(exposed);
  }
  problems.push(...credentialProblems(upstreams));
  problems.push(...tenantSourceProblems(upstreams, inbound?.jwt !== undefined));
  problems.push(...tokenExchangeProblems(upstreams, inbound?.jwt !== undefined));
  problems.push(...dpopSharedTierProblems(doc));
  return problems;
}

export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;
export type ParsedUpstream = ParsedConfig['upstreams'][number];
export type ParsedAuth = ParsedUpstream['auth'];
