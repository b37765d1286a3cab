/**
 * A Bearer challenge whose error says the token itself is fine (RFC 6750 §3.1): `insufficient_scope`
 * (the token lacks a scope; a new one from the same grant would too) or `invalid_request` (the
 * request is malformed). Dropping a good token for these would also cost every other request of
 * the upstream or tenant a wait for its next one: the 401 goes to the client as it came.
 */
const NOT_THE_TOKEN: ReadonlySet<string> = new Set(['insufficient_scope', 'invalid_request']);

/**
 * The parts of a WWW-Authenticate value (RFC 9110 §11.6.1): an auth-param `name=value` (the value
 * a token or a whole quoted string, so nothing inside quotes is read as a parameter) or a bare
 * token, which starts a challenge (its scheme).
 */
const CHALLENGE_PART = /([\w!#$%&'*+.^`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)|([\w!#$%&'*+.^`|~-]+)/g;

/** The `error` parameter of the Bearer challenge in a WWW-Authenticate value (RFC 6750 §3), unquoted. */
export function bearerError(value: string): string | undefined {
  let inBearer = false;
  for (const part of value.matchAll(CHALLENGE_PART)) {
    const [, name, quotedOrToken, scheme] = part;
    if (scheme !== undefined) inBearer = scheme.toLowerCase() === 'bearer';
    else if (inBearer && name?.toLowerCase() === 'error')
      return quotedOrToken?.replace(/^"|"$/g, '').replace(/\\(.)/g, '$1');
  }
  return undefined;
}

/** A 401's raw headers say the token is not what failed (see NOT_THE_TOKEN). */
export function tokenNotAtFault(rawHeaders: readonly Buffer[]): boolean {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as Buffer;
    if (name.length !== 16 || name.toString('latin1').toLowerCase() !== 'www-authenticate') continue;
    const error = bearerError((rawHeaders[i + 1] as Buffer).toString('latin1'));
    if (error !== undefined && NOT_THE_TOKEN.has(error)) return true;
  }
  return false;
}
