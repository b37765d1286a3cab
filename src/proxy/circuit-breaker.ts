import type { Clock } from '../tokens/clock.js';

/** As exported by `token_proxy_upstream_circuit_state`: 0 closed, 1 half-open, 2 open. */
export type CircuitState = 'closed' | 'half_open' | 'open';
export const CIRCUIT_STATE_VALUE: Readonly<Record<CircuitState, number>> = { closed: 0, half_open: 1, open: 2 };

export type CircuitEvent = 'circuit_opened' | 'circuit_half_open' | 'circuit_closed';

/** What a request may do: go (`probe` when it is the one that decides a half-open circuit), or wait `ms`. */
export type CircuitAdmission =
  { readonly go: true; readonly probe: boolean } | { readonly go: false; readonly ms: number };

const GO: CircuitAdmission = { go: true, probe: false };
const PROBE: CircuitAdmission = { go: true, probe: true };
/** A half-open circuit whose probe is under way: ask again in a second. */
const PROBING: CircuitAdmission = { go: false, ms: 1_000 };

/**
 * The classic breaker (closed → open → half-open): `threshold` consecutive failures open it; it
 * refuses everything for `openMs`; then exactly one probe request goes through, and its outcome
 * closes or re-opens it. Time comes from the clock: open → half-open is seen when a request
 * (or a scrape) asks, no timer runs.
 */
export class CircuitBreaker {
  readonly #clock: Clock;
  readonly #threshold: number;
  readonly #openMs: number;
  readonly #changed: (event: CircuitEvent) => void;
  #failures = 0;
  #openUntil = 0;
  #open = false;
  #probing = false;

  constructor(threshold: number, openMs: number, clock: Clock, changed: (event: CircuitEvent) => void) {
    this.#threshold = threshold;
    this.#openMs = openMs;
    this.#clock = clock;
    this.#changed = changed;
  }

  /** Read-only, for metrics and the status page. */
  get state(): CircuitState {
    if (!this.#open) return 'closed';
    return this.#probing || this.#clock.now() >= this.#openUntil ? 'half_open' : 'open';
  }

  admit(): CircuitAdmission {
    if (!this.#open) return GO;
    if (this.#probing) return PROBING;
    const left = this.#openUntil - this.#clock.now();
    if (left > 0) return { go: false, ms: left };
    this.#probing = true;
    this.#changed('circuit_half_open');
    return PROBE;
  }

  /** The whole forwarded request got an answer the partner is not failing with. */
  succeeded(probe: boolean): void {
    this.#failures = 0;
    // Open, only the probe's answer closes it (a late answer to an earlier request does not).
    if (!this.#open || !probe) return;
    this.#open = false;
    this.#probing = false;
    this.#changed('circuit_closed');
  }

  /** The whole forwarded request failed at the partner (connection, timeout, 502/503/504). */
  failed(probe: boolean): void {
    if (this.#open) {
      if (!probe) return; // an answer to a request sent before it opened
      this.#probing = false;
      this.#reopen();
      return;
    }
    this.#failures += 1;
    if (this.#failures >= this.#threshold) this.#reopen();
  }

  /** The probe ended without a verdict (its client left, no token): the next request probes. */
  inconclusive(probe: boolean): void {
    if (probe) this.#probing = false;
  }

  #reopen(): void {
    this.#open = true;
    this.#failures = 0;
    this.#openUntil = this.#clock.now() + this.#openMs;
    this.#changed('circuit_opened');
  }
}
