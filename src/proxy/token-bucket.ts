import type { Clock } from '../tokens/clock.js';

/**
 * A token bucket: `burst` requests may go at once, then `ratePerSecond` on average. Tokens are
 * refilled from the clock when read (no timer), so an idle bucket costs nothing.
 */
export class TokenBucket {
  readonly #clock: Clock;
  readonly #perMs: number;
  readonly #burst: number;
  #tokens: number;
  #at: number;

  constructor(ratePerSecond: number, burst: number, clock: Clock) {
    this.#clock = clock;
    this.#perMs = ratePerSecond / 1000;
    this.#burst = burst;
    this.#tokens = burst;
    this.#at = clock.now();
  }

  #refill(): void {
    const now = this.#clock.now();
    if (now > this.#at) this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#at) * this.#perMs);
    this.#at = now;
  }

  /** Takes one token when there is one. */
  take(): boolean {
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds until `n` more tokens are in the bucket (0 when they are). */
  msUntil(n = 1): number {
    this.#refill();
    const missing = n - this.#tokens;
    return missing <= 0 ? 0 : Math.ceil(missing / this.#perMs);
  }
}
