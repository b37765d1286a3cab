/**
 * Bytes of request bodies the whole process holds in replay buffers (kept so a request that
 * meets a 401 can be sent again). Each request's own limit is `retryBodyLimitBytes`; this bounds
 * their sum, so many slow or stalled requests cannot hold memory without limit. Past it, a body
 * streams through once without a replay, as an over-limit body does.
 */
export class ReplayBudget {
  readonly limit: number;
  #held = 0;

  constructor(limit: number) {
    this.limit = limit;
  }

  get held(): number {
    return this.#held;
  }

  reserve(bytes: number): boolean {
    if (this.#held + bytes > this.limit) return false;
    this.#held += bytes;
    return true;
  }

  release(bytes: number): void {
    this.#held -= bytes;
  }
}
