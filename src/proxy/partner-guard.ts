import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import type { Counter } from 'prom-client';
import type { Logger } from 'pino';
import { ProxyError, type ProxyErrorCode } from '../errors.js';
import type { Clock } from '../tokens/clock.js';
import type { AdmissionGate, GateEntrant, GateRefusal, QueuePlace } from './admission-gate.js';
import type { CircuitBreaker } from './circuit-breaker.js';
import { ConnectionRetry, IDEMPOTENT_METHODS } from './connection-retry.js';
import { retryAfterHeader, retryAfterMs, retryAfterSeconds } from './retry-after.js';

/** Every reason of `token_proxy_upstream_rejected_total`, exported at 0 from the start. */
export const REJECTION_REASONS = [
  'queue_full',
  'rate_limited',
  'queue_timeout',
  'circuit_open',
  'retry_after',
] as const;
export type RejectionReason = (typeof REJECTION_REASONS)[number];

const CODE: Readonly<Record<RejectionReason, ProxyErrorCode>> = {
  queue_full: 'overloaded', // the code a full queue has always had
  rate_limited: 'rate_limited',
  queue_timeout: 'queue_timeout',
  circuit_open: 'circuit_open',
  retry_after: 'upstream_retry_after',
};

/** A rejection is logged at most this often per upstream and reason; the others are counted in the line. */
const REJECTION_LOG_INTERVAL_MS = 1_000;

/** The request side of an admission: what the forwarder does when the guard decides. */
export interface GuardedRequest {
  readonly res: ServerResponse;
  /** Dispatch now, reporting the outcome to `ticket`. */
  proceed(ticket: GuardTicket): void;
  /** Answer `err` (503) without sending anything. */
  refuse(err: ProxyError): void;
  /** The client went away while the request waited in the queue. */
  left(): void;
}

export interface GuardSettings {
  readonly upstream: string;
  readonly gate: AdmissionGate;
  readonly breaker: CircuitBreaker | undefined;
  readonly retries: number;
  readonly respectRetryAfter: boolean;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly rejected: Counter<'upstream' | 'reason'>;
  readonly retried: Counter<'upstream'>;
}

/**
 * Protects one partner (issue 21): the admission gate (concurrency, FIFO queue, rate), the
 * circuit breaker, the partner's Retry-After, and retries of failed connections. Made only for
 * an upstream that configures one of them: the others' requests check `upstream.guard` once and
 * go on as before.
 *
 * It holds no connection of its own: a reload that leaves the upstream's protection settings as
 * they were keeps the guard (see PartnerGuards), so the breaker stays open, the partner's
 * Retry-After stays in force and the old configuration's requests in flight still count.
 *
 * Order on the way in: breaker (no connection while open), the partner's Retry-After, then the
 * gate. The breaker judges the whole forwarded request once, after the 401 replay and the
 * connection retries: the answer relayed to the client, or the failure answered in its place.
 */
export class PartnerGuard {
  readonly upstream: string;
  readonly gate: AdmissionGate;
  readonly breaker: CircuitBreaker | undefined;
  readonly #s: GuardSettings;
  readonly #rejected: Record<RejectionReason, { inc(): void }>;
  readonly #retried: { inc(): void };
  readonly #logged: Record<RejectionReason, { at: number; suppressed: number }>;
  /** Until then (clock ms) the partner asked not to be sent anything (respectRetryAfter). */
  #holdUntil = 0;

  constructor(settings: GuardSettings) {
    this.#s = settings;
    this.upstream = settings.upstream;
    this.gate = settings.gate;
    this.breaker = settings.breaker;
    const bind = (reason: RejectionReason) => settings.rejected.labels(settings.upstream, reason);
    this.#rejected = {
      queue_full: bind('queue_full'),
      rate_limited: bind('rate_limited'),
      queue_timeout: bind('queue_timeout'),
      circuit_open: bind('circuit_open'),
      retry_after: bind('retry_after'),
    };
    this.#retried = settings.retried.labels(settings.upstream);
    this.#logged = {
      queue_full: { at: -Infinity, suppressed: 0 },
      rate_limited: { at: -Infinity, suppressed: 0 },
      queue_timeout: { at: -Infinity, suppressed: 0 },
      circuit_open: { at: -Infinity, suppressed: 0 },
      retry_after: { at: -Infinity, suppressed: 0 },
    };
  }

  /** Requests in hand (dispatched and queued), for token_proxy_upstream_requests_in_hand. */
  get held(): number {
    return this.gate.held;
  }

  /** Decides, now or once queued, whether `request` is sent. */
  admit(request: GuardedRequest): void {
    let probe = false;
    const breaker = this.breaker;
    if (breaker !== undefined) {
      const verdict = breaker.admit();
      if (!verdict.go) {
        this.#refuse(request, 'circuit_open', verdict.ms);
        return;
      }
      probe = verdict.probe;
    }
    if (this.#holdUntil !== 0) {
      const left = this.#holdUntil - this.#s.clock.now();
      if (left > 0) {
        breaker?.inconclusive(probe);
        this.#refuse(request, 'retry_after', left);
        return;
      }
      this.#holdUntil = 0;
    }
    const ticket = new GuardTicket(this, request, probe);
    ticket.place = this.gate.enter(ticket);
    if (ticket.place !== undefined) ticket.waitForClient();
  }

  /** Whether failed connections are tried again (retry.connectionFailures > 0). */
  get retries(): boolean {
    return this.#s.retries > 0;
  }

  /**
   * Wraps `handler` so a failed connection is tried again on `pool`, when retries are configured,
   * the method is idempotent and the body can be sent twice (RFC 9110 §9.2.2).
   */
  retrying(
    opts: Dispatcher.DispatchOptions,
    handler: Dispatcher.DispatchHandler,
    pool: Dispatcher,
  ): Dispatcher.DispatchHandler {
    const retries = this.#s.retries;
    if (retries === 0 || !IDEMPOTENT_METHODS.has(opts.method)) return handler;
    const body = opts.body;
    if (body !== null && body !== undefined && !Buffer.isBuffer(body)) return handler; // streamed: once only
    return new ConnectionRetry(opts, handler, pool, retries, this);
  }

  /** ConnectionRetry's hook: every extra attempt is counted and logged. */
  onRetry(attempt: number, err: Error): void {
    this.#retried.inc();
    this.#s.logger.info(
      { event: 'upstream_retry', upstream: this.upstream, attempt, error: (err as NodeJS.ErrnoException).code },
      'connection to the target failed before any response: trying again',
    );
  }

  /** The answer relayed to the client (after any replay and retry): judges the partner. */
  answered(status: number, rawHeaders: readonly Buffer[], probe: boolean): void {
    // RFC 9110 §15.6.3-5: 502, 503 and 504 from the target count as its failures.
    if (status === 502 || status === 503 || status === 504) this.breaker?.failed(probe);
    else this.breaker?.succeeded(probe);
    if ((status === 429 || status === 503) && this.#s.respectRetryAfter) this.#hold(rawHeaders);
  }

  /** No answer from the target: refused, reset, timed out or malformed. */
  failed(probe: boolean): void {
    this.breaker?.failed(probe);
  }

  /** Ended without a verdict on the partner (client gone, no token). */
  inconclusive(probe: boolean): void {
    this.breaker?.inconclusive(probe);
  }

  /** RFC 9110 §10.2.3: the partner asked for a pause; new requests are answered 503 until then. */
  #hold(rawHeaders: readonly Buffer[]): void {
    const value = retryAfterHeader(rawHeaders);
    if (value === undefined) return;
    const now = this.#s.clock.now();
    const ms = retryAfterMs(value, now);
    if (ms === undefined || now + ms <= this.#holdUntil) return;
    this.#holdUntil = now + ms;
    this.#s.logger.warn(
      { event: 'upstream_retry_after', upstream: this.upstream, seconds: Math.ceil(ms / 1000) },
      'the target asked for a pause (Retry-After): new requests are answered 503 until then',
    );
  }

  /** Answers 503 with the reason's code and Retry-After; counts it; logs it (at most once a second). */
  refuse(request: GuardedRequest, reason: GateRefusal): void {
    this.#refuse(request, reason, this.gate.retryAfterMs(reason));
  }

  #refuse(request: GuardedRequest, reason: RejectionReason, waitMs: number): void {
    this.#rejected[reason].inc();
    this.#note(reason);
    request.refuse(
      new ProxyError(
        CODE[reason],
        `upstream ${this.upstream}: ${MESSAGE[reason]}`,
        { upstream: this.upstream },
        { headers: { 'retry-after': retryAfterSeconds(waitMs) } },
      ),
    );
  }

  #note(reason: RejectionReason): void {
    // A full queue is also a refusal, logged per request by respond.ts as it always was.
    if (reason === 'queue_full') return;
    const log = this.#logged[reason];
    const now = this.#s.clock.now();
    if (now - log.at < REJECTION_LOG_INTERVAL_MS) {
      log.suppressed += 1;
      return;
    }
    this.#s.logger.info(
      { event: 'upstream_rejected', upstream: this.upstream, reason, alsoSinceLastLine: log.suppressed },
      `request answered 503 to spare the target: ${reason}`,
    );
    log.at = now;
    log.suppressed = 0;
  }
}

const MESSAGE: Readonly<Record<RejectionReason, string>> = {
  queue_full: 'limits.maxConcurrentRequests in flight and limits.maxQueuedRequests waiting already',
  rate_limited: 'over limits.requestsPerSecond with the queue full',
  queue_timeout: 'no slot within limits.queueTimeoutSeconds',
  circuit_open: 'circuit open after consecutive failures of the target',
  retry_after: 'the target asked for a pause (Retry-After)',
};

/**
 * One admitted (or queued) request: the gate's entrant, and what the relay reports the outcome
 * to. `done()` runs once when the client's response closes, however the request ended.
 */
export class GuardTicket implements GateEntrant {
  readonly #guard: PartnerGuard;
  readonly #request: GuardedRequest;
  readonly probe: boolean;
  place: QueuePlace | undefined;
  #onClose: (() => void) | undefined;
  #judged = false;

  constructor(guard: PartnerGuard, request: GuardedRequest, probe: boolean) {
    this.#guard = guard;
    this.#request = request;
    this.probe = probe;
  }

  /** Queued: a client that leaves frees its place. */
  waitForClient(): void {
    this.#onClose = () => {
      this.place?.leave();
      this.place = undefined;
      this.#guard.inconclusive(this.probe);
      this.#request.left();
    };
    if (this.#request.res.destroyed) this.#onClose();
    else this.#request.res.once('close', this.#onClose);
  }

  pass(): void {
    this.#stopWaiting();
    this.#request.proceed(this);
  }

  refuse(reason: GateRefusal): void {
    this.#stopWaiting();
    this.#guard.inconclusive(this.probe);
    this.#guard.refuse(this.#request, reason);
  }

  answered(status: number, rawHeaders: readonly Buffer[]): void {
    if (this.#judged) return;
    this.#judged = true;
    this.#guard.answered(status, rawHeaders, this.probe);
  }

  failed(): void {
    if (this.#judged) return;
    this.#judged = true;
    this.#guard.failed(this.probe);
  }

  /** The dispatched request is over: its slot is free. */
  done(): void {
    this.#guard.gate.release();
    if (!this.#judged) this.#guard.inconclusive(this.probe);
  }

  #stopWaiting(): void {
    this.place = undefined;
    if (this.#onClose !== undefined) this.#request.res.off('close', this.#onClose);
  }
}
