/**
 * Every error the proxy can answer with carries a stable `code`; `statusFor` is the one place
 * that maps codes to HTTP answers, so a code never changes its status by accident.
 */
export type ProxyErrorCode =
  | 'token_unavailable'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'no_route'
  | 'bad_request'
  | 'body_too_large';

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
  | 'rate_limited';

/** Reasons that a retry cannot fix: the request or the credentials are wrong. */
const PERMANENT_REASONS: ReadonlySet<TokenFailureReason> = new Set([
  'invalid_client',
  'invalid_grant',
  'invalid_scope',
  'unsupported_grant_type',
  'invalid_request',
  'unauthorized_client',
  'forbidden',
]);

export class ProxyError extends Error {
  override readonly name: string = 'ProxyError';
  readonly code: ProxyErrorCode;
  /** Extra JSON fields for the error body; never secrets. */
  readonly details: Readonly<Record<string, string>>;

  constructor(code: ProxyErrorCode, message: string, details: Record<string, string> = {}, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.details = details;
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
  no_route: 404,
  bad_request: 400,
  body_too_large: 413,
};

export function statusFor(err: ProxyError): number {
  return STATUS[err.code];
}

/** The JSON body sent to a client for a proxy-generated error. */
export function errorBody(err: ProxyError): string {
  return JSON.stringify({ error: err.code, ...err.details, message: err.message });
}
