/**
 * Requests one upstream holds at a time: those on its connections plus those waiting for one.
 * undici queues without bound behind a busy pool, and each waiting request holds its client's
 * connection and replay buffer; past `limit` the proxy answers 503 at once instead (RFC 9110
 * §15.6.4, with Retry-After), so a stalled partner costs a bounded amount of memory.
 */
export class UpstreamQueue {
  readonly limit: number;
  readonly #full: { inc(): void } | undefined;
  #held = 0;

  /** `full` counts the requests refused for want of a place (token_proxy_upstream_rejected_total). */
  constructor(limit: number, full?: { inc(): void }) {
    this.limit = limit;
    this.#full = full;
  }

  get held(): number {
    return this.#held;
  }

  /** Takes a place, or says there is none. Every true is paired with one release(). */
  enter(): boolean {
    if (this.#held >= this.limit) {
      this.#full?.inc();
      return false;
    }
    this.#held += 1;
    return true;
  }

  release(): void {
    this.#held -= 1;
  }
}
