import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { decodeJwt, type JWTPayload } from 'jose';
import { TokenError } from '../errors.js';

/**
 * An RFC 7523 assertion issued by the platform, not by us (a Kubernetes projected service-account
 * token, a SPIFFE JWT-SVID, a CI OIDC token), read from the file the platform keeps rotating.
 *
 * It is decoded, never verified: the token endpoint verifies it against the issuer it trusts; we
 * hold no key for it, and only need its `exp` to avoid sending what the server would refuse, and
 * its `iss`, `sub` and `aud` to tell an operator which identity is in use.
 */

/**
 * An assertion that expires within this margin is not sent. It must still be valid when the token
 * endpoint checks it: after the request's time on the wire (up to requestTimeoutSeconds) and across
 * the clock difference between us and the server, which a strict server does not forgive. Platforms
 * rotate long before this (the kubelet at 80 % of the token's lifetime, at least 10 minutes), so a
 * file this close to its expiry means rotation has stopped: better a clear `assertion_expired` than
 * the server's `invalid_grant`, which reads as a permanent credential error.
 */
export const ASSERTION_EXPIRY_MARGIN_MS = 10_000;

/** Projected tokens are about 1 KiB; anything far larger is not an assertion. */
const MAX_ASSERTION_BYTES = 64 * 1024;

/** What /readyz and the `token` command show of an assertion file: claims, never the assertion. */
export interface AssertionInfo {
  readonly file: string;
  readonly iss?: string;
  readonly sub?: string;
  /** The audience(s), space-separated. */
  readonly aud?: string;
  readonly expiresAt?: string;
  readonly expiresInSeconds?: number;
  /** Why the next token request would not send it. */
  readonly problem?: string;
}

/** RFC 7523 §2.1 grant type and §2.2 client assertion type. */
export const JWT_BEARER_GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
export const JWT_BEARER_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

type Decoded = { readonly claims: JWTPayload; readonly exp: number } | { readonly problem: string };

/** The claims of an assertion, or why it is none; its text is never quoted (it is a credential). */
function decode(assertion: string, file: string): Decoded {
  if (assertion === '') return { problem: `${file} is empty` };
  let claims: JWTPayload;
  try {
    claims = decodeJwt(assertion);
  } catch {
    return { problem: `${file} does not hold a JWT (compact JWS)` };
  }
  // RFC 7523 §3 item 4: the JWT MUST contain an exp claim.
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp))
    return { problem: `the assertion in ${file} has no exp claim (RFC 7523 §3)` };
  return { claims, exp: claims.exp };
}

function iso(epochSeconds: number): string {
  const d = new Date(epochSeconds * 1000);
  return Number.isNaN(d.getTime()) ? String(epochSeconds) : d.toISOString();
}

/** Why an assertion expiring at `exp` (epoch seconds) is not sent at `nowMs`, if it is not. */
function expiryProblem(exp: number, nowMs: number): string | undefined {
  if (exp * 1000 <= nowMs) return `expired at ${iso(exp)}`;
  if (exp * 1000 - nowMs < ASSERTION_EXPIRY_MARGIN_MS)
    return `expires at ${iso(exp)}, within the ${ASSERTION_EXPIRY_MARGIN_MS / 1000} s margin`;
  return undefined;
}

function unreadable(err: unknown, file: string): string {
  return `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
}

/**
 * The assertion in `file` as it is now (the platform rotates it, so it is read for every token
 * request), checked to be a JWT that stays valid beyond the margin. Throws TokenError
 * `assertion_expired` or `assertion_unavailable`, whose messages name the file, never its text.
 */
export async function readAssertion(file: string, nowMs: number): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new TokenError('assertion_unavailable', unreadable(err, file));
  }
  if (text.length > MAX_ASSERTION_BYTES)
    throw new TokenError('assertion_unavailable', `${file} is larger than ${MAX_ASSERTION_BYTES} bytes`);
  const assertion = text.trim();
  const decoded = decode(assertion, file);
  if ('problem' in decoded) throw new TokenError('assertion_unavailable', decoded.problem);
  const problem = expiryProblem(decoded.exp, nowMs);
  if (problem !== undefined)
    throw new TokenError('assertion_expired', `assertion in ${file} ${problem} (exp ${decoded.exp}): not sent`);
  return assertion;
}

/** Short, single-line text of a claim for display (the file is the platform's, still not ours to trust blindly). */
function shown(value: unknown): string | undefined {
  const text =
    typeof value === 'string'
      ? value
      : Array.isArray(value) && value.every((v) => typeof v === 'string')
        ? value.join(' ')
        : undefined;
  // eslint-disable-next-line no-control-regex
  return text?.replace(/[\u0000-\u001f\u007f]+/g, ' ').slice(0, 200);
}

/**
 * The claims of the assertion the next token request would send, for /readyz and the `token`
 * command. Read now rather than remembered: after a rotation it is the new file that matters.
 */
export function describeAssertionFile(file: string, nowMs: number): AssertionInfo {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return { file, problem: unreadable(err, file) };
  }
  const decoded = text.length > MAX_ASSERTION_BYTES ? { problem: `${file} is too large` } : decode(text.trim(), file);
  if ('problem' in decoded) return { file, problem: decoded.problem };
  const { claims, exp } = decoded;
  const problem = expiryProblem(exp, nowMs);
  const fields = { iss: shown(claims.iss), sub: shown(claims.sub), aud: shown(claims.aud) };
  return {
    file,
    ...Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)),
    expiresAt: iso(exp),
    expiresInSeconds: Math.round((exp * 1000 - nowMs) / 1000),
    ...(problem === undefined ? {} : { problem }),
  };
}

/**
 * The forms in which an assertion may come back in a partner's text: whole, its signing input and
 * each of its parts (RFC 7515 §7.1). Base64url survives form- and URI-encoding unchanged.
 */
export function assertionSecrets(assertion: string): string[] {
  const [header = '', payload = '', signature = ''] = assertion.split('.');
  return [assertion, `${header}.${payload}`, signature, payload, header].filter((s) => s !== '');
}
