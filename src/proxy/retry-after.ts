/** A partner's Retry-After is believed for at most an hour: a larger value is likely a mistake. */
export const MAX_RETRY_AFTER_MS = 3_600_000;

const DELTA_SECONDS = /^\d+$/;

/**
 * RFC 9110 §10.2.3: Retry-After is delta-seconds or an HTTP-date (§5.6.7). Returns the wait in
 * milliseconds from `now`, capped at MAX_RETRY_AFTER_MS, or undefined for none, a date in the
 * past, or a value that is neither form.
 */
export function retryAfterMs(value: string, now: number): number | undefined {
  const text = value.trim();
  let ms: number;
  if (DELTA_SECONDS.test(text)) ms = Number(text) * 1000;
  else {
    const at = Date.parse(text);
    if (Number.isNaN(at)) return undefined;
    ms = at - now;
  }
  if (!(ms > 0)) return undefined;
  return Math.min(ms, MAX_RETRY_AFTER_MS);
}

/** The Retry-After of undici raw headers (name, value, name, value...), if any. */
export function retryAfterHeader(raw: readonly Buffer[]): string | undefined {
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as Buffer;
    if (name.length === 11 && name.toString('latin1').toLowerCase() === 'retry-after')
      return (raw[i + 1] as Buffer).toString('latin1');
  }
  return undefined;
}

/** Whole seconds for a Retry-After we send: rounded up, at least 1. */
export function retryAfterSeconds(ms: number): string {
  return String(Math.max(1, Math.ceil(ms / 1000)));
}
