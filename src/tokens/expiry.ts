import type { Token } from './token.js';

/**
 * When a token is used, and when it is replaced. Pure: `now` is passed in.
 *
 * `refreshBeforeExpirySeconds` and `clockSkewSeconds` decide when renewal starts and when a
 * request stops taking the token while a replacement is on its way (see tokenWithTimes). Once no
 * replacement can be had (the endpoint is down, the provider is backing off, or the error is
 * permanent), giving the token up early only turns working requests into 502s: it keeps being
 * used until its actual expiry, less TRIP_MARGIN_MS for the request to reach the partner, and
 * never after it.
 */

/** About one trip to the partner: a token sent this close to its expiry may arrive expired. */
export const TRIP_MARGIN_MS = 1_000;

/** The last moment the token is sent when nothing better can be had. */
export function lastUsableMoment(token: Token): number {
  return Math.max(token.usableUntil, token.expiresAt - TRIP_MARGIN_MS);
}

/**
 * Whether the token may be injected at `now`. `renewalFailing`: the last attempt to replace it
 * failed and none has succeeded since.
 */
export function mayInject(token: Token, now: number, renewalFailing: boolean): boolean {
  return now < token.usableUntil || (renewalFailing && now < lastUsableMoment(token));
}

/** Whether a request that uses the token should also start its replacement. */
export function renewalDue(token: Token, now: number): boolean {
  return now >= token.refreshAt;
}
