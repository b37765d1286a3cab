import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AdmissionGate, type GateEntrant, type GateRefusal } from '../../src/proxy/admission-gate.js';
import { CircuitBreaker, type CircuitEvent } from '../../src/proxy/circuit-breaker.js';
import { MAX_RETRY_AFTER_MS, retryAfterHeader, retryAfterMs } from '../../src/proxy/retry-after.js';
import { TokenBucket } from '../../src/proxy/token-bucket.js';

/** Unit tests of the partner protection's pure parts, with a clock the test moves. */
function fakeClock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

describe('TokenBucket', () => {
  it('lets a burst through at once, then one request per 1/rate seconds', () => {
    const c = fakeClock();
    const bucket = new TokenBucket(2, 3, c);
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
    expect(bucket.msUntil()).toBe(500);
    c.advance(499);
    expect(bucket.take()).toBe(false);
    c.advance(1);
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);
    expect(bucket.msUntil(3)).toBe(1_500);
  });

  it('never holds more than the burst, however long it was idle', () => {
    const c = fakeClock();
    const bucket = new TokenBucket(10, 2, c);
    c.advance(3_600_000);
    expect([bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, false]);
  });
});

describe('CircuitBreaker', () => {
  const breaker = (c: ReturnType<typeof fakeClock>, events: CircuitEvent[]) =>
    new CircuitBreaker(3, 30_000, c, (e) => events.push(e));

  it('opens after 3 consecutive failures, refuses for openSeconds, then lets exactly one probe through', () => {
    const c = fakeClock();
    const events: CircuitEvent[] = [];
    const b = breaker(c, events);
    b.failed(false);
    b.failed(false);
    b.succeeded(false); // not consecutive: starts again
    b.failed(false);
    b.failed(false);
    expect(b.state).toBe('closed');
    b.failed(false);
    expect(b.state).toBe('open');
    expect(events).toEqual(['circuit_opened']);
    c.advance(10_000);
    expect(b.admit()).toEqual({ go: false, ms: 20_000 });
    c.advance(20_000);
    expect(b.state).toBe('half_open');
    expect(b.admit()).toEqual({ go: true, probe: true });
    expect(b.admit()).toEqual({ go: false, ms: 1_000 }); // one probe at a time
    expect(events).toEqual(['circuit_opened', 'circuit_half_open']);
    b.succeeded(true);
    expect(b.state).toBe('closed');
    expect(b.admit()).toEqual({ go: true, probe: false });
    expect(events).toEqual(['circuit_opened', 'circuit_half_open', 'circuit_closed']);
  });

  it('re-opens for another openSeconds when the probe fails; a late answer to an earlier request changes nothing', () => {
    const c = fakeClock();
    const events: CircuitEvent[] = [];
    const b = breaker(c, events);
    for (let i = 0; i < 3; i++) b.failed(false);
    b.succeeded(false); // sent before it opened
    expect(b.state).toBe('open');
    c.advance(30_000);
    expect(b.admit()).toEqual({ go: true, probe: true });
    b.failed(true);
    expect(b.state).toBe('open');
    expect(b.admit()).toEqual({ go: false, ms: 30_000 });
    expect(events).toEqual(['circuit_opened', 'circuit_half_open', 'circuit_opened']);
  });

  it('hands the probe to the next request when the probe ends without a verdict', () => {
    const c = fakeClock();
    const b = breaker(c, []);
    for (let i = 0; i < 3; i++) b.failed(false);
    c.advance(30_000);
    expect(b.admit()).toEqual({ go: true, probe: true });
    b.inconclusive(true);
    expect(b.admit()).toEqual({ go: true, probe: true });
  });
});

describe('Retry-After (RFC 9110 §10.2.3)', () => {
  const now = Date.parse('2026-12-08T02:00:00Z');

  it.each([
    ['120', 120_000],
    [' 7 ', 7_000],
    ['Tue, 08 Dec 2026 02:00:30 GMT', 30_000],
    ['86400', MAX_RETRY_AFTER_MS],
    ['Wed, 09 Dec 2026 02:00:00 GMT', MAX_RETRY_AFTER_MS],
  ])('reads %j as %i ms (an hour at most)', (value, ms) => {
    expect(retryAfterMs(value, now)).toBe(ms);
  });

  it.each(['0', '-5', '1.5', 'soon', 'Tue, 08 Dec 2026 01:59:00 GMT', ''])('ignores %j', (value) => {
    expect(retryAfterMs(value, now)).toBeUndefined();
  });

  it('finds the field in raw headers whatever its case', () => {
    const raw = ['Content-Type', 'text/plain', 'RETRY-AFTER', '5'].map((s) => Buffer.from(s));
    expect(retryAfterHeader(raw)).toBe('5');
    expect(retryAfterHeader(raw.slice(0, 2))).toBeUndefined();
  });
});

describe('AdmissionGate', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  function entrants() {
    const log: string[] = [];
    const make = (name: string): GateEntrant => ({
      pass: () => log.push(`${name} pass`),
      refuse: (reason: GateRefusal) => log.push(`${name} ${reason}`),
    });
    return { log, make };
  }

  it('lets maxConcurrent through, queues maxQueued in order, refuses the rest as queue_full', () => {
    const gate = new AdmissionGate({ maxConcurrent: 2, maxQueued: 2, queueTimeoutMs: 10_000, bucket: undefined });
    const { log, make } = entrants();
    for (const name of ['a', 'b', 'c', 'd', 'e']) gate.enter(make(name));
    expect(log).toEqual(['a pass', 'b pass', 'e queue_full']);
    expect([gate.active, gate.queued, gate.held]).toEqual([2, 2, 4]);
    gate.release();
    gate.release();
    expect(log.slice(3)).toEqual(['c pass', 'd pass']);
    expect([gate.active, gate.queued]).toEqual([2, 0]);
  });

  it('answers queue_timeout when no slot frees within queueTimeoutMs, and frees the place of one that left', () => {
    const gate = new AdmissionGate({ maxConcurrent: 1, maxQueued: 2, queueTimeoutMs: 5_000, bucket: undefined });
    const { log, make } = entrants();
    gate.enter(make('a'));
    const left = gate.enter(make('b'));
    gate.enter(make('c'));
    left?.leave();
    expect(gate.queued).toBe(1);
    vi.advanceTimersByTime(5_000);
    expect(log).toEqual(['a pass', 'c queue_timeout']);
    expect(gate.queued).toBe(0);
    gate.release();
    expect(gate.active).toBe(0);
  });

  it('holds requests over the rate in the queue until their token is due; rate_limited once the queue is full', () => {
    const c = fakeClock();
    const gate = new AdmissionGate({
      maxConcurrent: 10,
      maxQueued: 1,
      queueTimeoutMs: 10_000,
      bucket: new TokenBucket(1, 1, c),
    });
    const { log, make } = entrants();
    gate.enter(make('a'));
    gate.enter(make('b'));
    gate.enter(make('c'));
    expect(log).toEqual(['a pass', 'c rate_limited']);
    expect(gate.retryAfterMs('rate_limited')).toBe(2_000);
    c.advance(1_000);
    vi.advanceTimersByTime(1_000);
    expect(log).toEqual(['a pass', 'c rate_limited', 'b pass']);
    expect([gate.active, gate.queued]).toEqual([2, 0]);
  });
});
