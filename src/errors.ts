/**
 * Every error the proxy can answer with carries a stable `code`; `statusFor` is the one place
 * that maps codes to HTTP answers, so a code never changes its status by accident.
 */
export type ProxyErrorCode =
  | 'token_unavailable'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'upstream_bad_response'
  | 'no_route'
  | 'bad_request'
  | 'method_not_allowed'
  | 'body_too_large'
  | 'egress_denied'
  | 'client_not_allowed'
  | 'proxy_auth_required'
  | 'interception_not_configured'
  | 'unknown_tenant'
  | 'caller_unauthorized'
  | 'caller_auth_unavailable'
  | 'request_timeout'
  | 'headers_too_large'
  | 'too_many_auth_failures'
  | 'overloaded'
  | 'upgrade_failed'
  /** Partner protection (src/proxy/partner-guard.ts): 503s that spare the partner. */
  | 'rate_limited'
  | 'queue_timeout'
  | 'circuit_open'
  | 'upstream_retry_after';

/** Why a token could not be obtained (RFC 6749 §5.2 codes, plus transport-level reasons). */
export type TokenFailureReason =
  | 'invalid_client'
  | 'invalid_grant'
  | 'invalid_scope'
  | 'unsupported_grant_type'
  | 'invalid_request'
  | 'unauthorized_client'
  | 'forbidden'
  | 'timeout'
  | 'network'
  | 'bad_response'
  | 'server_error'
  | 'rate_limited'
  /** RFC 8705 §3: the token is bound to a certificate other than the one the target is presented. */
  | 'certificate_mismatch'
  /**
   * RFC 7523 assertions read from a file the platform rotates (a projected service-account token):
   * it has expired or is about to, or the file cannot be used (missing, not a JWT, no exp). Not
   * sent, and not permanent: the provider retries with its transient backoff, reading the file
   * again each time, so the platform's next rotation ends the failure without a restart.
   */
  | 'assertion_expired'
  | 'assertion_unavailable';

/** Partner text in logs and error bodies is cut to this length. */
const MAX_PARTNER_TEXT = 200;

/** Reasons that a retry cannot fix: the request or the credentials are wrong. */
const PERMANENT_REASONS: ReadonlySet<TokenFailureReason> = new Set([
  'invalid_client',
  'invalid_grant',
  'invalid_scope',
  'unsupported_grant_type',
  'invalid_request',
  'unauthorized_client',
  'forbidden',
  // Only a configuration change (the certificates) makes the token endpoint's answer usable.
  'certificate_mismatch',
]);

export class ProxyError extends Error {
  override readonly name: string = 'ProxyError';
  readonly code: ProxyErrorCode;
  /** Extra JSON fields for the error body; never secrets. */
  readonly details: Readonly<Record<string, string>>;
  /** Extra response headers of the answer (WWW-Authenticate, Retry-After). */
  readonly headers: Readonly<Record<string, string>> | undefined;

  constructor(
    code: ProxyErrorCode,
    message: string,
    details: Record<string, string> = {},
    options?: ErrorOptions & { headers?: Record<string, string> },
  ) {
    super(message, options);
    this.code = code;
    this.details = details;
    this.headers = options?.headers;
  }
}

/** A token endpoint failure, with the reason mapped to a stable vocabulary. */
export class TokenError extends Error {
  override readonly name = 'TokenError';
  readonly reason: TokenFailureReason;
  /** Seconds the server asked us to wait (Retry-After), when it said. */
  readonly retryAfterSeconds: number | undefined;
  /** The partner's `error_description`, cut short; partner text, never our secrets. */
  readonly description: string | undefined;
  readonly status: number | undefined;

  constructor(
    reason: TokenFailureReason,
    message: string,
    extra: { status?: number; retryAfterSeconds?: number; description?: string; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.reason = reason;
    this.status = extra.status;
    this.retryAfterSeconds = extra.retryAfterSeconds;
    this.description = extra.description;
  }

  get permanent(): boolean {
    return PERMANENT_REASONS.has(this.reason);
  }

  /**
   * The same error with any of `secrets` cut out of the partner's text. Some servers echo what
   * they were sent ("client_secret 'abc' is invalid"); that text goes to logs and error bodies.
   */
  withoutSecrets(secrets: readonly string[]): TokenError {
    // Scrub first, then shorten: a secret cut in half by the length limit would survive a scrub.
    const scrub = (text: string | undefined, max: number) => {
      if (text === undefined) return undefined;
      let out = text;
      for (const secret of secrets) if (secret.length >= 4) out = out.split(secret).join('[redacted]');
      return out.length > max ? `${out.slice(0, max)}…` : out;
    };
    const description = scrub(this.description, MAX_PARTNER_TEXT);
    const message = scrub(this.message, 2 * MAX_PARTNER_TEXT) ?? this.message;
    if (description === this.description && message === this.message) return this;
    return new TokenError(this.reason, message, {
      ...(this.status === undefined ? {} : { status: this.status }),
      ...(this.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: this.retryAfterSeconds }),
      ...(description === undefined ? {} : { description }),
    });
  }
}

/** Bad configuration: every problem found, each prefixed with its path. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.problems = problems;
  }
}

const STATUS: Readonly<Record<ProxyErrorCode, number>> = {
  token_unavailable: 502,
  upstream_unreachable: 502,
  upstream_timeout: 504,
  upstream_bad_response: 502,
  no_route: 404,
  bad_request: 400,
  method_not_allowed: 405,
  body_too_large: 413,
  egress_denied: 403,
  client_not_allowed: 403,
  proxy_auth_required: 407,
  interception_not_configured: 403,
  unknown_tenant: 403,
  caller_unauthorized: 401,
  caller_auth_unavailable: 503,
  request_timeout: 408,
  headers_too_large: 431,
  too_many_auth_failures: 429,
  overloaded: 503,
  upgrade_failed: 502,
  rate_limited: 503,
  queue_timeout: 503,
  circuit_open: 503,
  upstream_retry_after: 503,
};

/**
 * RFC 9209 Proxy-Status for answers the proxy itself makes, so a client can tell them from a
 * partner's own 403 or 502.
 */
const PROXY_STATUS: Partial<Record<ProxyErrorCode, string>> = {
  token_unavailable: 'token-proxy; error=http_request_error',
  upstream_unreachable: 'token-proxy; error=destination_unavailable',
  upstream_timeout: 'token-proxy; error=connection_timeout',
  upstream_bad_response: 'token-proxy; error=http_protocol_error',
  egress_denied: 'token-proxy; error=destination_ip_prohibited',
  client_not_allowed: 'token-proxy; error=http_request_denied',
  method_not_allowed: 'token-proxy; error=http_request_denied',
  proxy_auth_required: 'token-proxy; error=http_request_denied',
  interception_not_configured: 'token-proxy; error=http_request_denied',
  unknown_tenant: 'token-proxy; error=http_request_denied',
  too_many_auth_failures: 'token-proxy; error=http_request_denied',
  overloaded: 'token-proxy; error=connection_limit_reached',
  upgrade_failed: 'token-proxy; error=http_upgrade_failed',
  // RFC 9209 §2.3.15: the proxy holds the request back to keep the partner within its limits.
  rate_limited: 'token-proxy; error=connection_limit_reached',
  queue_timeout: 'token-proxy; error=connection_limit_reached',
  // RFC 9209 §2.3.3: the partner is deemed unavailable (failing, or it asked for a pause).
  circuit_open: 'token-proxy; error=destination_unavailable',
  upstream_retry_after: 'token-proxy; error=destination_unavailable',
};

export function proxyStatusFor(err: ProxyError): string | undefined {
  return PROXY_STATUS[err.code];
}

export function statusFor(err: ProxyError): number {
  return STATUS[err.code];
}

/** The JSON body sent to a client for a proxy-generated error. */
export function errorBody(err: ProxyError): string {
  return JSON.stringify({ error: err.code, ...err.details, message: err.message });
}

/** Response headers of a proxy-generated error answer. */
export function errorHeaders(err: ProxyError, body: string): Record<string, string | number> {
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  };
  const proxyStatus = proxyStatusFor(err);
  if (proxyStatus !== undefined) headers['proxy-status'] = proxyStatus;
  if (err.code === 'proxy_auth_required') headers['proxy-authenticate'] = 'Basic realm="token-proxy", charset="UTF-8"';
  // RFC 9110 §15.5.6: a 405 lists what may be sent instead (the standard methods but TRACE and CONNECT).
  if (err.code === 'method_not_allowed') headers['allow'] = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';
  // The rest of an oversized body is never read: the connection cannot carry another request.
  if (err.code === 'body_too_large') headers['connection'] = 'close';
  if (err.headers !== undefined) Object.assign(headers, err.headers);
  return headers;
}

/** The same answer as raw HTTP/1.1 bytes, for sockets that have no ServerResponse (CONNECT, upgrades). */
export function errorResponseBytes(err: ProxyError, extra: Record<string, string> = {}): string {
  const body = errorBody(err);
  const headers = Object.entries({ ...errorHeaders(err, body), ...extra })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  return `HTTP/1.1 ${statusFor(err)} ${STATUS_TEXT[statusFor(err)] ?? 'Error'}\r\n${headers}connection: close\r\n\r\n${body}`;
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  407: 'Proxy Authentication Required',
  408: 'Request Timeout',
  413: 'Content Too Large',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};
