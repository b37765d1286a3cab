import { createHash } from 'node:crypto';
import {
  createRemoteJWKSet,
  customFetch,
  errors,
  jwtVerify,
  type CryptoKey,
  type JWTPayload,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
} from 'jose';
import { LRUCache } from 'lru-cache';
import { Agent, fetch as undiciFetch } from 'undici';
import { tlsOptions } from '../tls-options.js';
import { forwardClaimHeaderProblem } from './forward-claims.js';

/**
 * Validation of the caller's bearer JWT in gateway (reverse) mode: signature against the IdP's
 * JWKS, then the claims (RFC 7519 §7.2), following the JWT best current practices (RFC 8725).
 * Failures are answered the way RFC 6750 §3 asks a resource server to answer.
 */

/** Asymmetric JWS algorithms only (RFC 8725 §3.1, §3.2): the keys come from a public JWKS. */
export const INBOUND_JWT_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
] as const;
export type InboundJwtAlgorithm = (typeof INBOUND_JWT_ALGORITHMS)[number];

export interface InboundJwtSettings {
  readonly jwksUrl: string;
  readonly issuer: string;
  readonly audience: string | readonly string[];
  readonly algorithms: readonly InboundJwtAlgorithm[];
  readonly clockSkewSeconds: number;
  /** Claim → value it must equal, or (space-separated strings such as `scope`, arrays) contain. */
  readonly requiredClaims: Readonly<Record<string, string>>;
  /** Claim name → request header name the claim's value is forwarded in. */
  readonly forwardClaims: Readonly<Record<string, string>>;
  /**
   * JOSE `typ` the token must carry, e.g. `at+jwt` (RFC 9068 §2.1): tells access tokens from the
   * same issuer's ID tokens (RFC 8725 §3.11). Unset: `typ` is not checked.
   */
  readonly requiredTyp?: string | undefined;
  /** PEM of a private CA that signed the JWKS endpoint's certificate (added to the system roots). */
  readonly ca: string | undefined;
  /** Successful validations kept, by token hash. Default 10000. */
  readonly cacheMaxEntries?: number;
  /** Least time between two JWKS fetches caused by an unknown `kid` (jose's cooldownDuration). Default 30000. */
  readonly jwksCooldownMs?: number;
}

export type InboundAuthResult =
  'valid' | 'expired' | 'bad_signature' | 'bad_claims' | 'bad_type' | 'missing' | 'jwks_error';

export type Validation =
  | { ok: true; claims: JWTPayload; forwardHeaders: [string, string][] }
  | {
      ok: false;
      result: Exclude<InboundAuthResult, 'valid'>;
      status: 401 | 503;
      /** The full WWW-Authenticate field value to answer with. */
      wwwAuthenticate: string;
      /** Short, fixed wording; never contains token text. */
      description: string;
    };

export interface InboundJwtValidatorOptions {
  /** Clock in milliseconds (tests move it instead of sleeping). Default Date.now. */
  readonly now?: () => number;
}

const REALM = 'token-proxy';
const DEFAULT_CACHE_MAX_ENTRIES = 10_000;
const DEFAULT_JWKS_COOLDOWN_MS = 30_000;
/** A cached validation is trusted for at most this long, even when the token lives longer. */
const MAX_CACHE_TTL_MS = 300_000;
/** RFC 9110 §5.6.2 token: what a header name may be made of. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Printable ASCII only: no CR/LF (header injection), no controls, nothing Node would refuse. */
const SAFE_HEADER_VALUE = /^[\x20-\x7e]*$/;
/** RFC 6838 §4.2 type[/subtype] names: what a JOSE `typ` media type may be (RFC 7515 §4.1.9). */
export const MEDIA_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(?:\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*)?$/;
/** RFC 6750 §2.1: `Bearer` 1*SP b64token (the scheme is case-insensitive, RFC 9110 §11.1). */
const BEARER_SCHEME = /^Bearer(?: |$)/i;

/** Thrown by the key getter when the JWKS itself could not be had, so it is told apart from a bad token. */
class JwksUnavailable extends Error {
  override readonly name = 'JwksUnavailable';
  readonly description: string;
  constructor(description: string, cause: unknown) {
    super(description, { cause });
    this.description = description;
  }
}

interface CachedValidation {
  readonly claims: JWTPayload;
  readonly forwardHeaders: readonly (readonly [string, string])[];
  /** min(exp, validated + 300 s), in ms of the injected clock. */
  readonly validUntil: number;
}

/**
 * RFC 6750 §3: error_description is limited to %x20-21 / %x23-5B / %x5D-7E, so a `"` or `\`
 * cannot even be escaped inside it; they are replaced, anything else outside the set dropped.
 */
function quoteDescription(description: string): string {
  return description
    .replace(/"/g, "'")
    .replace(/\\/g, '/')
    .replace(/[^\x20-\x7e]/g, '')
    .slice(0, 120);
}

/** The bearer token of an Authorization header value (RFC 6750 §2.1), '' when there is none. */
export function bearerToken(authorization: string | undefined): string {
  const field = authorization?.trim() ?? '';
  return BEARER_SCHEME.test(field) ? field.slice(6).trim() : '';
}

export function challenge(description?: string): string {
  // RFC 6750 §3.1: a request without any authentication information gets no error code.
  if (description === undefined) return `Bearer realm="${REALM}"`;
  return `Bearer realm="${REALM}", error="invalid_token", error_description="${quoteDescription(description)}"`;
}

function failure(result: 'expired' | 'bad_signature' | 'bad_claims' | 'bad_type', description: string): Validation {
  return {
    ok: false,
    result,
    status: 401,
    wwwAuthenticate: challenge(description),
    description: quoteDescription(description),
  };
}

const MISSING: Validation = Object.freeze({
  ok: false,
  result: 'missing',
  status: 401,
  wwwAuthenticate: challenge(),
  description: 'no bearer token',
});

/** Does a claim's value satisfy the configured required value? */
function claimSatisfies(value: unknown, required: string): boolean {
  if (typeof value === 'string') {
    // Space-separated lists (RFC 6749 §3.3 `scope`, RFC 8693 §4.2): the value must be one of the words.
    return value === required || value.split(' ').includes(required);
  }
  if (typeof value === 'number' || typeof value === 'boolean') return String(value) === required;
  if (Array.isArray(value))
    return value.some(
      (member) =>
        (typeof member === 'string' || typeof member === 'number' || typeof member === 'boolean') &&
        String(member) === required,
    );
  return false;
}

/** A claim's value as a header value, or undefined when it has no safe single-line form. */
function headerValue(value: unknown): string | undefined {
  let text: string | undefined;
  if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') text = String(value);
  else if (
    Array.isArray(value) &&
    value.every((m) => typeof m === 'string' || typeof m === 'number' || typeof m === 'boolean')
  )
    text = value.map(String).join(' ');
  // Objects have no meaningful text form; CR/LF or controls would split or corrupt the request.
  return text !== undefined && SAFE_HEADER_VALUE.test(text) ? text : undefined;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const member of Object.values(value)) deepFreeze(member);
  }
  return value;
}

function assertSettings(s: InboundJwtSettings): void {
  const problems: string[] = [];
  let url: URL | undefined;
  try {
    url = new URL(s.jwksUrl);
  } catch {
    problems.push(`jwksUrl is not a URL: ${s.jwksUrl}`);
  }
  if (url !== undefined) {
    const loopback =
      url.hostname === 'localhost' || url.hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(url.hostname);
    // Keys fetched over plain http could be swapped by anyone on the path, forging any token.
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback))
      problems.push('jwksUrl must be https (http only on loopback)');
  }
  if (typeof s.issuer !== 'string' || s.issuer === '') problems.push('issuer must be set');
  const audiences = typeof s.audience === 'string' ? [s.audience] : s.audience;
  if (!Array.isArray(audiences) || audiences.length === 0 || audiences.some((a) => typeof a !== 'string' || a === ''))
    problems.push('audience must be set');
  if (!Array.isArray(s.algorithms) || s.algorithms.length === 0)
    problems.push('algorithms must list at least one algorithm');
  for (const alg of s.algorithms ?? []) {
    const name = String(alg);
    // RFC 8725 §3.1/§2.1: `none` is never acceptable; HS* with keys from a public JWKS is the
    // classic RS/HS confusion (the public key used as the HMAC secret), so symmetric algorithms are refused.
    if (name.toLowerCase() === 'none') problems.push('algorithm "none" is never accepted (RFC 8725 §3.1)');
    else if (/^HS\d+$/i.test(name))
      problems.push(
        `algorithm ${name} is not accepted: symmetric algorithms cannot be verified with a public JWKS (RFC 8725 §2.1, §3.1)`,
      );
    else if (!(INBOUND_JWT_ALGORITHMS as readonly string[]).includes(name))
      problems.push(`algorithm ${name} is not supported (one of ${INBOUND_JWT_ALGORITHMS.join(', ')})`);
  }
  if (!Number.isFinite(s.clockSkewSeconds) || s.clockSkewSeconds < 0)
    problems.push('clockSkewSeconds must be a number >= 0');
  if (s.cacheMaxEntries !== undefined && (!Number.isInteger(s.cacheMaxEntries) || s.cacheMaxEntries < 1))
    problems.push('cacheMaxEntries must be an integer >= 1');
  if (s.jwksCooldownMs !== undefined && (!Number.isFinite(s.jwksCooldownMs) || s.jwksCooldownMs < 0))
    problems.push('jwksCooldownMs must be a number >= 0');
  for (const [claim, header] of Object.entries(s.forwardClaims)) {
    if (!HEADER_NAME.test(header))
      problems.push(`forwardClaims.${claim}: ${JSON.stringify(header)} is not a valid header name`);
    else {
      const problem = forwardClaimHeaderProblem(header);
      if (problem !== undefined) problems.push(`forwardClaims.${claim}: ${problem}`);
    }
  }
  if (s.requiredTyp !== undefined && (typeof s.requiredTyp !== 'string' || !MEDIA_TYPE.test(s.requiredTyp)))
    problems.push('requiredTyp must be a media type such as at+jwt');
  for (const [claim, value] of Object.entries(s.requiredClaims)) {
    if (typeof value !== 'string' || value === '') problems.push(`requiredClaims.${claim} must be a non-empty string`);
  }
  if (problems.length > 0) throw new Error(`invalid inbound JWT settings:\n  ${problems.join('\n  ')}`);
}

/** Why the JWKS could not be had, in a few fixed words (no URL, no response text). */
function jwksProblem(err: unknown): string {
  if (err instanceof errors.JWKSTimeout) return 'JWKS request timed out';
  if (err instanceof errors.JWKSInvalid) return 'JWKS response is not a valid key set';
  if (err instanceof errors.JOSEError) {
    if (err.message.includes('200 OK')) return 'JWKS endpoint answered with an error status';
    if (err.message.includes('JSON')) return 'JWKS response is not JSON';
    return 'JWKS could not be loaded';
  }
  return 'JWKS endpoint unreachable';
}

/** Maps a claim check failure (RFC 7519 §4.1) to short wording. */
function claimProblem(err: errors.JWTClaimValidationFailed): string {
  if (err.reason === 'missing') return `missing ${err.claim} claim`;
  if (err.reason === 'invalid') return `invalid ${err.claim} claim`;
  switch (err.claim) {
    case 'iss':
      return 'unexpected issuer';
    case 'aud':
      return 'unexpected audience';
    case 'nbf':
      return 'token not yet valid';
    default:
      return `${err.claim} claim check failed`;
  }
}

/** Maps anything jwtVerify threw to a result; never includes token text. */
function classify(err: unknown): Validation {
  if (err instanceof JwksUnavailable) {
    // Not the caller's fault: the keys could not be had, so the answer is a retryable 503.
    return { ok: false, result: 'jwks_error', status: 503, wwwAuthenticate: challenge(), description: err.description };
  }
  // RFC 7519 §4.1.4: a token at or past `exp` (beyond the allowed skew) must not be accepted.
  if (err instanceof errors.JWTExpired) return failure('expired', 'token expired');
  // RFC 9068 §4 / RFC 8725 §3.11: not an access token (an ID token, say): its own stable result.
  if (err instanceof errors.JWTClaimValidationFailed && err.claim === 'typ')
    return failure('bad_type', 'token type not accepted (typ)');
  // RFC 7519 §7.2 step 10, §4.1.1/§4.1.3/§4.1.5; RFC 8725 §3.8/§3.9: iss, aud, nbf.
  if (err instanceof errors.JWTClaimValidationFailed) return failure('bad_claims', claimProblem(err));
  // RFC 8725 §3.1: an `alg` outside the configured list (`none`, HS*) is refused before any key is used.
  if (err instanceof errors.JOSEAlgNotAllowed) return failure('bad_signature', 'algorithm not allowed');
  if (err instanceof errors.JWSSignatureVerificationFailed) return failure('bad_signature', 'invalid signature');
  // Unknown `kid` even after refetching the JWKS (or cooling down): no key can verify it.
  if (err instanceof errors.JWKSNoMatchingKey) return failure('bad_signature', 'no matching signing key');
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid)
    return failure('bad_signature', 'malformed token');
  // Anything else (a key that cannot be used for this alg, ...) fails closed.
  return failure('bad_signature', 'token could not be verified');
}

export class InboundJwtValidator {
  private readonly settings: InboundJwtSettings;
  private readonly now: () => number;
  private readonly agent: Agent;
  private readonly getKey: JWTVerifyGetKey;
  private readonly verifyOptions: Omit<JWTVerifyOptions, 'currentDate'>;
  private readonly requiredClaims: readonly (readonly [string, string])[];
  private readonly forwardClaims: readonly (readonly [string, string])[];
  private readonly cache: LRUCache<string, CachedValidation>;
  /** Validations under way, so a burst of the same token is verified once. */
  private readonly inFlight = new Map<string, Promise<Validation>>();

  constructor(settings: InboundJwtSettings, options: InboundJwtValidatorOptions = {}) {
    assertSettings(settings);
    this.settings = settings;
    this.now = options.now ?? (() => Date.now());
    this.requiredClaims = Object.entries(settings.requiredClaims);
    this.forwardClaims = Object.entries(settings.forwardClaims);
    this.cache = new LRUCache({ max: settings.cacheMaxEntries ?? DEFAULT_CACHE_MAX_ENTRIES });
    // Our own agent: trusts the private CA (plus the system roots) and is closed by close().
    this.agent = new Agent({ connect: tlsOptions(settings.ca) });
    const agent = this.agent;
    // Keys are cached by jose; an unknown `kid` triggers one refetch (key rotation), but no more
    // often than the cooldown, so a flood of made-up `kid`s cannot hammer the IdP. Concurrent
    // refetches share one request. Only this configured URL is ever fetched: `jku`/`x5u`/`jwk`
    // headers in the token are ignored (RFC 8725 §3.10).
    const remote = createRemoteJWKSet(new URL(settings.jwksUrl), {
      cooldownDuration: settings.jwksCooldownMs ?? DEFAULT_JWKS_COOLDOWN_MS,
      [customFetch]: (url, init) => undiciFetch(url, { ...(init as object), dispatcher: agent }),
    });
    this.getKey = async (header, token) => {
      try {
        return await remote(header, token);
      } catch (err) {
        // No key for this kid/alg: the token's problem. Anything else: the JWKS could not be had.
        if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) throw err;
        throw new JwksUnavailable(jwksProblem(err), err);
      }
    };
    this.verifyOptions = {
      // RFC 8725 §3.1: only the configured asymmetric algorithms; `none`/HS* never reach a key.
      algorithms: [...settings.algorithms],
      // RFC 7519 §4.1.1 / RFC 8725 §3.8: the token must come from the configured issuer.
      issuer: settings.issuer,
      // RFC 7519 §4.1.3 / RFC 8725 §3.9: and be meant for us, not for another service.
      audience: typeof settings.audience === 'string' ? settings.audience : [...settings.audience],
      // RFC 7519 §4.1.4/§4.1.5: "some small leeway" for clock skew on exp and nbf.
      clockTolerance: settings.clockSkewSeconds,
      // A token without `exp` would be valid forever (and cacheable without bound): refused.
      requiredClaims: ['exp'],
      // RFC 9068 §4: the `typ` header, checked after the signature; jose compares it as a media
      // type (case-insensitive, `application/` optional, RFC 7515 §4.1.9) and requires it present.
      ...(settings.requiredTyp === undefined ? {} : { typ: settings.requiredTyp }),
    };
  }

  /** Authorization header value (or undefined) → result; never throws. */
  async validate(authorization: string | undefined): Promise<Validation> {
    try {
      const token = bearerToken(authorization);
      // RFC 6750 §3.1: no (bearer) credentials at all → a challenge without an error code.
      if (token === '') return MISSING;
      // RFC 6750 §2.1: a b64token is one word; anything else is not a compact JWS (RFC 7515 §7.1).
      if (/\s/.test(token)) return failure('bad_signature', 'malformed token');
      // The cache key is a hash: the token itself is never kept, returned or logged.
      const key = createHash('sha256').update(token).digest('base64url');
      const cached = this.cache.get(key);
      if (cached !== undefined) {
        // Entries never outlive `exp` or 300 s; past that the token is verified again.
        if (this.now() < cached.validUntil)
          return { ok: true, claims: cached.claims, forwardHeaders: cached.forwardHeaders.map(([h, v]) => [h, v]) };
        this.cache.delete(key);
      }
      let pending = this.inFlight.get(key);
      if (pending === undefined) {
        pending = this.verify(token, key).finally(() => this.inFlight.delete(key));
        this.inFlight.set(key, pending);
      }
      return copy(await pending);
    } catch (err) {
      return classify(err);
    }
  }

  private async verify(token: string, key: string): Promise<Validation> {
    const now = this.now();
    let claims: JWTPayload;
    try {
      claims = await this.jwtVerify(token, now);
    } catch (err) {
      return classify(err);
    }
    // RFC 7519 §7.2 step 10: application-specific claims (scope, roles, ...).
    for (const [claim, required] of this.requiredClaims) {
      if (!claimSatisfies(claims[claim], required))
        return failure('bad_claims', `required claim ${claim} not satisfied`);
    }
    const forwardHeaders: [string, string][] = [];
    for (const [claim, header] of this.forwardClaims) {
      const value = headerValue(claims[claim]);
      if (value !== undefined) forwardHeaders.push([header, value]);
    }
    deepFreeze(claims);
    // exp is required and numeric (checked by jose). Never cache past exp, nor for more than 300 s.
    const validUntil = Math.min((claims.exp ?? 0) * 1000, now + MAX_CACHE_TTL_MS);
    if (validUntil > now)
      this.cache.set(key, { claims, forwardHeaders: forwardHeaders.map(([h, v]) => [h, v] as const), validUntil });
    return { ok: true, claims, forwardHeaders };
  }

  private async jwtVerify(token: string, now: number): Promise<JWTPayload> {
    const options: JWTVerifyOptions = { ...this.verifyOptions, currentDate: new Date(now) };
    try {
      return (await jwtVerify(token, this.getKey, options)).payload;
    } catch (err) {
      if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
      // A token without `kid` while the JWKS holds several keys of its type (mid-rotation):
      // try each candidate, as jose documents; any other failure is final.
      for await (const candidate of err as unknown as AsyncIterable<CryptoKey>) {
        try {
          return (await jwtVerify(token, candidate, options)).payload;
        } catch (inner) {
          if (inner instanceof errors.JWSSignatureVerificationFailed) continue;
          throw inner;
        }
      }
      throw new errors.JWSSignatureVerificationFailed();
    }
  }

  /** Forgets cached validations and closes the JWKS connections. */
  async close(): Promise<void> {
    this.cache.clear();
    await this.agent.close();
  }
}

/** Each caller gets its own forwardHeaders array (claims are frozen and shared). */
function copy(v: Validation): Validation {
  return v.ok ? { ok: true, claims: v.claims, forwardHeaders: v.forwardHeaders.map(([h, value]) => [h, value]) } : v;
}
