/**
 * A challenge whose error says the token itself is fine (RFC 6750 §3.1): `insufficient_scope`
 * (the token lacks a scope; a new one from the same grant would too) or `invalid_request` (the
 * request is malformed), and a DPoP `use_dpop_nonce` (RFC 9449 §9: the proof lacked the
 * server's nonce, not the token). Dropping a good token for these would also cost every other
 * request of the upstream or tenant a wait for its next one: the 401 goes to the client as it came.
 */
const NOT_THE_TOKEN: ReadonlySet<string> = new Set(['insufficient_scope', 'invalid_request', 'use_dpop_nonce']);

/**
 * The parts of a WWW-Authenticate value (RFC 9110 §11.6.1): an auth-param `name=value` (the value
 * a token or a whole quoted string, so nothing inside quotes is read as a parameter) or a bare
 * token, which starts a challenge (its scheme).
 */
const CHALLENGE_PART = /([\w!#$%&'*+.^`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)|([\w!#$%&'*+.^`|~-]+)/g;

/**
 * The `error` parameter of the `scheme` challenge (lower case) in a WWW-Authenticate value,
 * unquoted: Bearer (RFC 6750 §3) or DPoP (RFC 9449 §7.1, same parameters).
 */
export function challengeError(value: string, scheme: 'bearer' | 'dpop'): string | undefined {
  let inScheme = false;
  for (const part of value.matchAll(CHALLENGE_PART)) {
    const [, name, quotedOrToken, found] = part;
    if (found !== undefined) inScheme = found.toLowerCase() === scheme;
    else if (inScheme && name?.toLowerCase() === 'error')
      return quotedOrToken?.replace(/^"|"$/g, '').replace(/\\(.)/g, '$1');
  }
  return undefined;
}

/** The `error` parameter of the Bearer challenge in a WWW-Authenticate value (RFC 6750 §3), unquoted. */
export function bearerError(value: string): string | undefined {
  return challengeError(value, 'bearer');
}

/** The `error` of each WWW-Authenticate challenge of `scheme` in raw headers, in order. */
function* challengeErrors(rawHeaders: readonly Buffer[], scheme: 'bearer' | 'dpop'): Generator<string> {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as Buffer;
    if (name.length !== 16 || name.toString('latin1').toLowerCase() !== 'www-authenticate') continue;
    const error = challengeError((rawHeaders[i + 1] as Buffer).toString('latin1'), scheme);
    if (error !== undefined) yield error;
  }
}

/** A 401's raw headers say the token is not what failed (see NOT_THE_TOKEN), in a Bearer or DPoP challenge. */
export function tokenNotAtFault(rawHeaders: readonly Buffer[]): boolean {
  for (const error of challengeErrors(rawHeaders, 'bearer')) if (NOT_THE_TOKEN.has(error)) return true;
  for (const error of challengeErrors(rawHeaders, 'dpop')) if (NOT_THE_TOKEN.has(error)) return true;
  return false;
}

/** A 401's raw headers carry `WWW-Authenticate: DPoP error="use_dpop_nonce"` (RFC 9449 §9). */
export function asksForDpopNonce(rawHeaders: readonly Buffer[]): boolean {
  for (const error of challengeErrors(rawHeaders, 'dpop')) if (error === 'use_dpop_nonce') return true;
  return false;
}
