/**
 * Counts requests in flight on one configuration generation, so a reload can close the old
 * generation's connection pools only once the requests that started on it are done.
 */
export class Drain {
  #active = 0;
  #waiters: (() => void)[] = [];

  enter(): void {
    this.#active += 1;
  }

  leave(): void {
    this.#active -= 1;
    if (this.#active === 0) this.#waiters.splice(0).forEach((wake) => wake());
  }

  get active(): number {
    return this.#active;
  }

  /** Resolves when nothing is in flight, or after `timeoutMs`, whichever comes first. */
  idle(timeoutMs: number): Promise<void> {
    if (this.#active === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      timer.unref();
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
