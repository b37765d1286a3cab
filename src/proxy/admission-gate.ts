import type { TokenBucket } from './token-bucket.js';

/** Why a request was not let through. */
export type GateRefusal = 'queue_full' | 'rate_limited' | 'queue_timeout';

/** A request the gate lets through (`pass`), or not (`refuse`), now or later. */
export interface GateEntrant {
  pass(): void;
  refuse(reason: GateRefusal): void;
}

/** A queued request: a node of the gate's FIFO list (allocated only when a request has to wait). */
class Waiter {
  prev: Waiter | undefined;
  next: Waiter | undefined;
  readonly entrant: GateEntrant;
  readonly timer: NodeJS.Timeout;

  constructor(entrant: GateEntrant, timer: NodeJS.Timeout) {
    this.entrant = entrant;
    this.timer = timer;
  }
}

/** Returned by enter() for a queued request: leave() frees its place (its client went away). */
export interface QueuePlace {
  leave(): void;
}

export interface GateSettings {
  readonly maxConcurrent: number;
  readonly maxQueued: number;
  readonly queueTimeoutMs: number;
  /** Undefined without a rate limit. */
  readonly bucket: TokenBucket | undefined;
}

/**
 * At most `maxConcurrent` requests dispatched (so undici never queues without bound), a FIFO of
 * at most `maxQueued` waiting for a slot or a rate token, each for at most `queueTimeoutMs`.
 * Past the queue: refused at once, `rate_limited` when only the rate holds requests back (a
 * slot is free), else `queue_full`.
 */
export class AdmissionGate {
  readonly #s: GateSettings;
  #active = 0;
  #queued = 0;
  #head: Waiter | undefined;
  #tail: Waiter | undefined;
  /** Wakes the queue when the next rate token is due (one timer for the whole queue). */
  #tokenTimer: NodeJS.Timeout | undefined;

  constructor(settings: GateSettings) {
    this.#s = settings;
  }

  /** The limits it applies (read-only, for tests and the status page). */
  get settings(): GateSettings {
    return this.#s;
  }

  /** Dispatched now. */
  get active(): number {
    return this.#active;
  }

  get queued(): number {
    return this.#queued;
  }

  /** Requests in hand: dispatched and waiting. */
  get held(): number {
    return this.#active + this.#queued;
  }

  /**
   * Passes the entrant now (synchronously), queues it (returning its place), or refuses it
   * (synchronously). Every pass is paired with one release().
   */
  enter(entrant: GateEntrant): QueuePlace | undefined {
    const s = this.#s;
    const slot = this.#active < s.maxConcurrent;
    if (slot && this.#head === undefined && (s.bucket === undefined || s.bucket.take())) {
      this.#active += 1;
      entrant.pass();
      return undefined;
    }
    if (this.#queued >= s.maxQueued) {
      entrant.refuse(slot ? 'rate_limited' : 'queue_full');
      return undefined;
    }
    const waiter = new Waiter(
      entrant,
      setTimeout(() => this.#timedOut(waiter), s.queueTimeoutMs),
    );
    this.#append(waiter);
    if (slot) this.#pump();
    return { leave: () => this.#remove(waiter) };
  }

  /** A dispatched request is done: its slot goes to the head of the queue. */
  release(): void {
    this.#active -= 1;
    if (this.#head !== undefined) this.#pump();
  }

  /** Seconds a refused client should wait before trying again (RFC 9110 §10.2.3). */
  retryAfterMs(reason: GateRefusal): number {
    const bucket = this.#s.bucket;
    return reason === 'rate_limited' && bucket !== undefined ? bucket.msUntil(this.#queued + 1) : 1_000;
  }

  /** Lets queued requests through while there are slots and rate tokens. */
  #pump(): void {
    const s = this.#s;
    while (this.#head !== undefined && this.#active < s.maxConcurrent) {
      if (s.bucket !== undefined && !s.bucket.take()) {
        this.#wakeForToken(s.bucket.msUntil());
        return;
      }
      const waiter = this.#head;
      this.#remove(waiter);
      this.#active += 1;
      waiter.entrant.pass();
    }
  }

  #wakeForToken(ms: number): void {
    if (this.#tokenTimer !== undefined) return;
    this.#tokenTimer = setTimeout(
      () => {
        this.#tokenTimer = undefined;
        this.#pump();
      },
      Math.max(1, ms),
    );
  }

  #timedOut(waiter: Waiter): void {
    if (!this.#remove(waiter)) return;
    waiter.entrant.refuse('queue_timeout');
  }

  #append(waiter: Waiter): void {
    waiter.prev = this.#tail;
    if (this.#tail === undefined) this.#head = waiter;
    else this.#tail.next = waiter;
    this.#tail = waiter;
    this.#queued += 1;
  }

  /** Takes `waiter` out of the queue; false when it was no longer in it. */
  #remove(waiter: Waiter): boolean {
    if (waiter.prev === undefined && this.#head !== waiter) return false;
    clearTimeout(waiter.timer);
    if (waiter.prev === undefined) this.#head = waiter.next;
    else waiter.prev.next = waiter.next;
    if (waiter.next === undefined) this.#tail = waiter.prev;
    else waiter.next.prev = waiter.prev;
    waiter.prev = undefined;
    waiter.next = undefined;
    this.#queued -= 1;
    return true;
  }
}
