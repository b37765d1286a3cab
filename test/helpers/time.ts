/**
 * Time in tests: a clock a test advances instead of sleeping, backoff settings that keep retries
 * short, and bounded waits (every wait has a limit, and a test that hits it fails rather than hangs).
 */
import { performance } from 'node:perf_hooks';
import type { BackoffPolicy } from '../../src/tokens/backoff.js';

/** The proxy's clock in a test: real time plus an offset the test advances instead of sleeping. */
export interface OffsetClock {
  /** Added to the real time; a test sets it (and puts it back to 0 between tests). */
  offsetMs: number;
  /** Real time plus offsetMs. A plain function: it can be handed on alone (`now: clock.now`). */
  readonly now: () => number;
}

export function offsetClock(): OffsetClock {
  const clock: OffsetClock = { offsetMs: 0, now: () => Date.now() + clock.offsetMs };
  return clock;
}

/**
 * Tiny backoff steps (20 ms doubling up to 200 ms; random() = 0.5, so each pause is 3/4 of its
 * step), while a server's Retry-After is honoured as in production (up to 5 min): the only long
 * waits are the ones a test asks for.
 */
export const FAST_BACKOFF: BackoffPolicy = {
  baseMs: 20,
  maxMs: 200,
  maxRetryAfterMs: 300_000,
  permanentMinMs: 5_000,
  random: () => 0.5,
};

/** Tinier still (10 ms doubling up to 50 ms, no jitter), and a Retry-After is cut to 50 ms. */
export const FASTEST_BACKOFF: BackoffPolicy = {
  baseMs: 10,
  maxMs: 50,
  maxRetryAfterMs: 50,
  permanentMinMs: 5_000,
  random: () => 0,
};

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Reads `read` every `everyMs` until `done(value)` holds or `ms` pass; returns the last value
 * either way, for the test to assert on.
 */
export async function pollUntil<T>(
  read: () => T | Promise<T>,
  done: (value: T) => boolean,
  ms: number,
  everyMs = 20,
): Promise<T> {
  const deadline = performance.now() + ms;
  let value = await read();
  while (!done(value) && performance.now() < deadline) {
    await sleep(everyMs);
    value = await read();
  }
  return value;
}

/**
 * Polls `check` until it holds, for state that has no event to wait on; rejects, naming `what`,
 * once `timeoutMs` have passed.
 */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  options: { readonly timeoutMs: number; readonly what: string; readonly everyMs?: number },
): Promise<void> {
  if (!(await pollUntil(check, (ok) => ok, options.timeoutMs, options.everyMs)))
    throw new Error(`${options.what} did not happen within ${options.timeoutMs} ms`);
}

/** 'settled' if `promise` settles within `ms`, else 'pending' (a bounded wait on an event). */
export async function within(promise: Promise<unknown> | undefined, ms: number): Promise<'settled' | 'pending'> {
  if (promise === undefined) return 'pending';
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<'pending'>((ok) => (timer = setTimeout(() => ok('pending'), ms)));
  try {
    return await Promise.race([
      promise.then(
        () => 'settled' as const,
        () => 'settled' as const,
      ),
      limit,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** `promise`'s outcome, or a rejection naming `what` if it has not settled within `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not arrive within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
