import { LRUCache } from 'lru-cache';

/** Failed proxy credentials one client address may send per window before it is made to wait. */
export const AUTH_FAILURES_ALLOWED = 10;
export const AUTH_WINDOW_MS = 60_000;
/** How long a client address that went over the allowance gets 429 (even with good credentials). */
export const AUTH_COOL_DOWN_MS = 60_000;
/** Client addresses remembered at most: an attacker with many addresses cannot grow this without bound. */
const MAX_ADDRESSES = 10_000;

interface Failures {
  windowStart: number;
  count: number;
  blockedUntil: number;
}

/**
 * Slows down guessing of proxy credentials (RFC 6585 §4, 429 with Retry-After): after
 * AUTH_FAILURES_ALLOWED failures from one client address within AUTH_WINDOW_MS, every attempt
 * from it is refused for AUTH_COOL_DOWN_MS without a look at the credentials. Kept across
 * reloads; only failures are recorded, so a well-behaved client costs one map lookup.
 */
export class AuthThrottle {
  readonly #now: () => number;
  readonly #failures = new LRUCache<string, Failures>({ max: MAX_ADDRESSES });

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Seconds the address must still wait, or 0 when it may try. */
  waitSeconds(address: string | undefined): number {
    if (this.#failures.size === 0) return 0;
    const f = this.#failures.get(address ?? '');
    if (f === undefined) return 0;
    const left = f.blockedUntil - this.#now();
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  failed(address: string | undefined): void {
    const now = this.#now();
    const key = address ?? '';
    const f = this.#failures.get(key);
    if (f === undefined || now - f.windowStart >= AUTH_WINDOW_MS) {
      this.#failures.set(key, { windowStart: now, count: 1, blockedUntil: 0 });
      return;
    }
    f.count += 1;
    if (f.count > AUTH_FAILURES_ALLOWED) {
      f.blockedUntil = now + AUTH_COOL_DOWN_MS;
      f.windowStart = now;
      f.count = 0;
    }
  }
}
