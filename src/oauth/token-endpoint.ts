import { errors as undiciErrors, type Dispatcher } from 'undici';
import { TokenError, type TokenFailureReason } from '../errors.js';
import type { ClientAuth } from './client-auth.js';
import { htuOf, type DpopSigner } from './dpop-signer.js';

/** What a token endpoint handed out, as far as the proxy cares. */
export interface TokenResponse {
  readonly accessToken: string;
  /** RFC 6749 §5.1 `expires_in`, seconds; undefined when the server did not say. */
  readonly expiresIn: number | undefined;
  /** An absolute expiry (epoch ms), as JSON login APIs give it; undefined when not given. */
  readonly expiresAt?: number | undefined;
  readonly scope: string | undefined;
  readonly refreshToken: string | undefined;
  /**
   * RFC 8705 §3.1 `cnf.x5t#S256` stated in the answer itself (a server may state the binding of an
   * opaque token there); a JWT access token states it in its own claims.
   */
  readonly certificateThumbprint?: string | undefined;
}

export interface TokenEndpoint {
  readonly url: URL;
  readonly dispatcher: Dispatcher;
  readonly clientAuth: ClientAuth;
  readonly timeoutMs: number;
  /** RFC 9449: every request carries a DPoP proof, and only DPoP tokens are accepted. */
  readonly dpop?: DpopSigner | undefined;
}

/** RFC 6749 §5.2 error codes we map one to one; anything else is classified by status. */
const KNOWN_ERRORS: ReadonlySet<string> = new Set([
  'invalid_client',
  'invalid_grant',
  'invalid_scope',
  'unsupported_grant_type',
  'invalid_request',
  'unauthorized_client',
]);

/**
 * Partner text is kept whole up to this size so secrets it echoes can be cut out completely
 * (TokenError.withoutSecrets); only then is it shortened for logs and error bodies.
 */
const MAX_DESCRIPTION = 2_000;
const MAX_BODY_BYTES = 64 * 1024;

/** RFC 9110 §10.2.3: Retry-After is either delay-seconds or an HTTP-date. */
export function parseRetryAfter(value: string | string[] | undefined, nowMs: number): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined || v.trim() === '') return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim());
  const date = Date.parse(v);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - nowMs) / 1000));
}

export function describe(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  // Partner text goes into logs and error bodies: keep it short and on one line.
  // eslint-disable-next-line no-control-regex
  const clean = value.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return clean.length > MAX_DESCRIPTION ? `${clean.slice(0, MAX_DESCRIPTION)}…` : clean;
}

function reasonForStatus(status: number): TokenFailureReason {
  if (status === 429) return 'rate_limited';
  if (status >= 500) return 'server_error';
  if (status === 401) return 'invalid_client'; // RFC 6749 §5.2: 401 is the invalid_client answer
  if (status === 403) return 'forbidden';
  return 'bad_response';
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export function parseExpiresIn(value: unknown): number | undefined {
  // Some servers send "300" as a string; accept a plain number in either form.
  const n = typeof value === 'string' && /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : value;
  return typeof n === 'number' && Number.isFinite(n) ? n : undefined;
}

/** Interprets a token endpoint answer (RFC 6749 §5.1 success, §5.2 error). */
export function parseTokenResponse(
  status: number,
  headers: Record<string, string | string[] | undefined>,
  text: string,
  nowMs: number,
  expectedType: 'Bearer' | 'DPoP' = 'Bearer',
): TokenResponse {
  const json = parseJson(text);
  const obj =
    json !== null && typeof json === 'object' && !Array.isArray(json) ? (json as Record<string, unknown>) : undefined;
  const retryAfterSeconds = parseRetryAfter(headers['retry-after'], nowMs);
  if (status < 200 || status >= 300) {
    const code = obj?.['error'];
    let reason = reasonForStatus(status);
    if (typeof code === 'string' && KNOWN_ERRORS.has(code) && status < 500) reason = code as TokenFailureReason;
    const description =
      describe(obj?.['error_description']) ?? (obj === undefined ? 'response was not JSON' : undefined);
    throw new TokenError(
      reason,
      `token endpoint answered ${status}${typeof code === 'string' ? ` ${describe(code)}` : ''}`,
      {
        status,
        ...(retryAfterSeconds === undefined ? {} : { retryAfterSeconds }),
        ...(description === undefined ? {} : { description }),
      },
    );
  }
  if (obj === undefined) {
    throw new TokenError('bad_response', `token endpoint answered ${status} with a body that is not a JSON object`, {
      status,
    });
  }
  const accessToken = obj['access_token'];
  if (typeof accessToken !== 'string' || accessToken === '') {
    throw new TokenError('bad_response', 'token response has no access_token', { status });
  }
  const tokenType = obj['token_type'];
  if (expectedType === 'DPoP') {
    // RFC 9449 §5: a token bound to the key says so; a Bearer one (a server that ignored the
    // proof) would be sent unbound, which is what the configuration asked to avoid.
    if (typeof tokenType !== 'string' || tokenType.toLowerCase() !== 'dpop') {
      throw new TokenError(
        'bad_response',
        `token_type ${describe(typeof tokenType === 'string' ? tokenType : (JSON.stringify(tokenType) ?? 'absent'))} is not DPoP: the token endpoint did not bind the token to the DPoP key (RFC 9449 §5)`,
        { status },
      );
    }
  } else if (tokenType !== undefined && (typeof tokenType !== 'string' || tokenType.toLowerCase() !== 'bearer')) {
    // RFC 6749 §7.1 / RFC 6750: without DPoP we can only inject bearer tokens.
    throw new TokenError(
      'bad_response',
      `token_type ${describe(typeof tokenType === 'string' ? tokenType : JSON.stringify(tokenType))} is not Bearer`,
      { status },
    );
  }
  const refreshToken = obj['refresh_token'];
  const scope = obj['scope'];
  const certificateThumbprint = x5tS256(obj['cnf']);
  return {
    accessToken,
    expiresIn: parseExpiresIn(obj['expires_in']),
    scope: typeof scope === 'string' ? scope : undefined,
    refreshToken: typeof refreshToken === 'string' && refreshToken !== '' ? refreshToken : undefined,
    ...(certificateThumbprint === undefined ? {} : { certificateThumbprint }),
  };
}

/**
 * RFC 8705 §3.1: the `x5t#S256` member of a `cnf` (RFC 7800) object, when there is one. A member
 * that is not a string is kept as its JSON text: it names no certificate, so it matches none.
 */
export function x5tS256(cnf: unknown): string | undefined {
  if (cnf === null || typeof cnf !== 'object' || Array.isArray(cnf)) return undefined;
  const value = (cnf as Record<string, unknown>)['x5t#S256'];
  return value === undefined || typeof value === 'string' ? value : JSON.stringify(value);
}

export function transportReason(err: unknown): TokenFailureReason {
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError) return 'timeout';
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) return 'timeout';
  return 'network';
}

/** The first value of a response header. */
function headerValue(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * RFC 9449 §8: the server wants a nonce in the proof (400 `use_dpop_nonce` with a `DPoP-Nonce`
 * header). Any nonce it sends is remembered, on success too (§8.2: it may rotate them there).
 */
function nonceChallenge(
  dpop: DpopSigner,
  origin: string,
  res: { status: number; headers: Record<string, string | string[] | undefined>; text: string },
): boolean {
  const nonce = headerValue(res.headers, 'dpop-nonce');
  if (nonce === undefined || !dpop.rememberNonce(origin, nonce)) return false;
  if (res.status !== 400) return false;
  const body = parseJson(res.text);
  return body !== null && typeof body === 'object' && (body as Record<string, unknown>)['error'] === 'use_dpop_nonce';
}

/**
 * One POST to the token endpoint (RFC 6749 §4.4.2 and friends). Throws TokenError. With DPoP
 * (RFC 9449 §5), a nonce challenge is answered by exactly one more POST, with a fresh client
 * authentication (a client assertion's `jti` is single use) and a proof carrying the nonce.
 */
export async function requestToken(
  endpoint: TokenEndpoint,
  params: Record<string, string>,
  nowMs: () => number,
): Promise<TokenResponse> {
  const dpop = endpoint.dpop;
  const origin = endpoint.url.origin;
  for (let attempt = 1; ; attempt++) {
    const parts = {
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' } as Record<
        string,
        string
      >,
      body: new URLSearchParams(params),
      secrets: [] as string[],
    };
    await endpoint.clientAuth(parts);
    if (dpop !== undefined) {
      const proof = dpop.proof('POST', origin, htuOf(origin, endpoint.url.pathname));
      parts.headers['dpop'] = proof;
      // A proof is a credential while its iat window lasts: never echoed into logs or errors.
      parts.secrets.push(proof, ...proof.split('.'));
    }
    try {
      const res = await postForText(
        endpoint.dispatcher,
        endpoint.url,
        parts.headers,
        parts.body.toString(),
        endpoint.timeoutMs,
        'token endpoint',
      );
      // Evaluated first, so the nonce of every answer is remembered; only the first is retried.
      if (dpop !== undefined && nonceChallenge(dpop, origin, res) && attempt === 1) continue;
      return parseTokenResponse(res.status, res.headers, res.text, nowMs(), dpop === undefined ? 'Bearer' : 'DPoP');
    } catch (err) {
      // A client assertion (RFC 7523) is new for each request, so only this call knows it: a server
      // that echoes it must not put it into logs or error bodies (the configured secrets are cut
      // out by the grant, see grants.ts).
      throw err instanceof TokenError && parts.secrets.length > 0 ? err.withoutSecrets(parts.secrets) : err;
    }
  }
}

/**
 * One POST whose answer is read as (bounded) text; transport failures become TokenErrors
 * (`timeout`, `network`) named after `what`. The cause keeps the transport error for logs; it
 * never carries the request body.
 */
export async function postForText(
  dispatcher: Dispatcher,
  url: URL,
  headers: Record<string, string>,
  body: string,
  timeoutMs: number,
  what: string,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
  try {
    const res = await dispatcher.request({
      origin: url.origin,
      path: `${url.pathname}${url.search}`,
      method: 'POST',
      headers,
      body,
      signal: AbortSignal.timeout(timeoutMs),
    });
    return { status: res.statusCode, headers: res.headers, text: await readLimited(res.body) };
  } catch (err) {
    if (err instanceof TokenError) throw err;
    const reason = transportReason(err);
    throw new TokenError(
      reason,
      reason === 'timeout'
        ? `${what} did not answer within ${timeoutMs} ms`
        : `${what} unreachable: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

export async function readLimited(body: AsyncIterable<Buffer> & { destroy(): unknown }): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      body.destroy();
      throw new TokenError('bad_response', `token response larger than ${MAX_BODY_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
