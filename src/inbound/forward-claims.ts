import { HOP_BY_HOP, REPLACED_ON_REQUEST } from '../proxy/headers.js';

/**
 * Which request headers a validated caller claim may be forwarded in (`inbound.jwt.forwardClaims`).
 * A claim's value is chosen by whoever can shape their JWT (a display name, an email), so it must
 * never land in a field that routes, frames or authenticates the request to the partner.
 */

/** RFC 9110 §8.6/§8.3/§8.4: fields that describe the request body; a second one would reframe it. */
const BODY_FIELDS: ReadonlySet<string> = new Set(['content-length', 'content-type', 'content-encoding']);

/**
 * Fields that carry credentials: the partner token goes in Authorization (a second one, placed
 * first, could be the one the partner reads), and a Cookie is a session at the partner (RFC 6265).
 */
const CREDENTIAL_FIELDS: ReadonlySet<string> = new Set(['authorization', 'cookie']);

/** Why a claim cannot be forwarded in `header`, or undefined when it can. */
export function forwardClaimHeaderProblem(header: string): string | undefined {
  const name = header.toLowerCase();
  let why: string | undefined;
  if (CREDENTIAL_FIELDS.has(name) || name === 'proxy-authorization') why = 'it carries credentials';
  else if (HOP_BY_HOP.has(name)) why = 'it is hop-by-hop (RFC 9110 §7.6.1)';
  else if (BODY_FIELDS.has(name)) why = 'it describes the request body';
  else if (REPLACED_ON_REQUEST.has(name)) why = 'the proxy sets it itself';
  return why === undefined ? undefined : `a claim cannot be forwarded in ${header}: ${why}`;
}
