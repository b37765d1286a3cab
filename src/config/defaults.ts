/** Every default in one place, named, so the schema, docs and code agree. */
export const DEFAULT_LISTEN = '127.0.0.1:8080';
export const DEFAULT_ADMIN_LISTEN = '127.0.0.1:9464';
export const DEFAULT_LOG_LEVEL = 'info';
export const DEFAULT_CACHE_MAX_ENTRIES = 10_000;
/** Refresh this long before expiry; capped at half of a token's lifetime (see tokens/lifetime.ts). */
export const DEFAULT_REFRESH_BEFORE_EXPIRY_SECONDS = 300;
export const DEFAULT_RETRY_BODY_LIMIT_BYTES = 1_048_576;
/** Response-header timeout towards the target. */
export const DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 30;
/**
 * Connections open to one target at once; more requests wait for a free one. Bounds what a burst
 * costs the partner (and us: a TLS handshake each) instead of opening a connection per request.
 */
export const DEFAULT_UPSTREAM_MAX_CONNECTIONS = 128;
/** Beyond the connections, this many requests may wait for one (a burst); more get 503 at once. */
export const DEFAULT_UPSTREAM_MAX_QUEUED_REQUESTS = 1024;
/** Requests the egress passthrough holds at once (it has no pool limit of its own to queue behind). */
export const EGRESS_MAX_REQUESTS = 4096;
/** How long a request may wait for a token when none is cached. */
export const DEFAULT_TOKEN_WAIT_TIMEOUT_SECONDS = 10;
/** One token endpoint call may take this long before it counts as a `timeout`. */
export const DEFAULT_TOKEN_REQUEST_TIMEOUT_SECONDS = 5;
/** Lifetime assumed when the response has neither `expires_in` nor a JWT `exp`: never "forever". */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 300;
/** Treat a token as expired this early, capped at a quarter of its lifetime. */
export const DEFAULT_CLOCK_SKEW_SECONDS = 30;
/** In-flight requests get this long to finish after SIGTERM. */
export const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 25;
/**
 * Interception leaves live a week: a leaked leaf key is useful for days, not the year TLS server
 * certificates may last, and a leaf is renewed in use long before it expires.
 */
export const DEFAULT_LEAF_VALIDITY_DAYS = 7;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * The longest delay a Node timer takes (2^31 - 1 ms, about 24.8 days): a longer one fires after
 * 1 ms instead, so every duration that becomes a timer is bounded by it.
 */
export const MAX_TIMER_SECONDS = 2_147_483;
export const TIMER_LIMIT_MESSAGE = 'at most 2147483 seconds (about 24.8 days): the longest delay a timer takes';
