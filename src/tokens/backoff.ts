export interface BackoffPolicy {
  readonly baseMs: number;
  readonly maxMs: number;
  /** A Retry-After longer than this is cut to it, so one answer cannot stop refreshes for hours. */
  readonly maxRetryAfterMs: number;
  /**
   * Least wait after a permanent failure (invalid_client and the like): only a config change
   * fixes those, so requests in the meantime get the remembered answer, not a new call.
   */
  readonly permanentMinMs: number;
  /** Returns a number in [0, 1); injected so tests are repeatable. */
  readonly random: () => number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = {
  baseMs: 250,
  maxMs: 30_000,
  maxRetryAfterMs: 300_000,
  permanentMinMs: 5_000,
  random: Math.random,
};

/**
 * Exponential backoff with "equal jitter": half the step is fixed, half random, so retries
 * spread out without ever collapsing to zero. A server's Retry-After (RFC 9110 §10.2.3) wins
 * when it asks for longer (up to maxRetryAfterMs).
 */
export function backoffDelayMs(
  policy: BackoffPolicy,
  failures: number,
  retryAfterSeconds?: number,
  permanent = false,
): number {
  const step = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, failures - 1));
  const jittered = step / 2 + (step / 2) * policy.random();
  const asked = retryAfterSeconds === undefined ? 0 : Math.min(policy.maxRetryAfterMs, retryAfterSeconds * 1000);
  return Math.max(jittered, asked, permanent ? policy.permanentMinMs : 0);
}
