import pino from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { TokenError } from '../../src/errors.js';
import { bindTokenMetrics, createMetrics } from '../../src/metrics.js';
import type { TokenResponse } from '../../src/oauth/token-endpoint.js';
import { TokenProvider } from '../../src/tokens/provider.js';
import { TokenCache } from '../../src/tokens/token-cache.js';

/**
 * What status() tells the status page: state, last refresh (when, how long), last failure reason.
 * Fake timers: Date.now (the provider's clock) and setTimeout are the test's, so times are exact.
 */

const START = Date.UTC(2026, 11, 7, 12, 0, 0);
const BACKOFF = { baseMs: 1_000, maxMs: 8_000, maxRetryAfterMs: 60_000, permanentMinMs: 5_000, random: () => 0.5 };

let answers: (TokenResponse | TokenError)[];
let latencyMs: number;
let n: number;
let provider: TokenProvider;

async function answer(): Promise<TokenResponse> {
  await new Promise((resolve) => setTimeout(resolve, latencyMs));
  const next = answers.shift();
  if (next instanceof TokenError) throw next;
  n += 1;
  return next ?? { accessToken: `at-${n}`, expiresIn: 300, scope: undefined, refreshToken: undefined };
}

beforeEach(() => {
  vi.useFakeTimers({ now: START });
  answers = [];
  latencyMs = 250;
  n = 0;
  provider = new TokenProvider(
    { key: 'k', cache: new TokenCache(10), backoff: BACKOFF },
    {
      upstream: 'partner',
      grant: { obtain: answer, refresh: answer },
      lifetime: { refreshBeforeExpiryMs: 60_000, clockSkewMs: 30_000, defaultLifetimeMs: 300_000 },
      waitTimeoutMs: 10_000,
      renewalBackoff: { initialMs: 5_000, maxMs: 60_000, maxPaths: 16 },
      metrics: bindTokenMetrics(createMetrics(new Registry(), { defaultMetrics: false }), 'partner', undefined),
      logger: pino({ level: 'silent' }),
    },
  );
});

afterEach(() => {
  vi.useRealTimers();
});

describe('TokenProvider status()', () => {
  it('is none before any fetch, refreshing while the first one is under way, then valid', async () => {
    expect(provider.status()).toEqual({ upstream: 'partner', state: 'none' });
    const pending = provider.obtain();
    expect(provider.status().state).toBe('refreshing');
    await vi.advanceTimersByTimeAsync(250);
    await pending;
    expect(provider.status()).toEqual({
      upstream: 'partner',
      state: 'valid',
      expiresInSeconds: 300,
      lastRefreshAt: START + 250,
      lastRefreshDurationMs: 250,
    });
  });

  it('stays valid while a refresh ahead is under way, and records the new refresh when it lands', async () => {
    const first = provider.obtain();
    await vi.advanceTimersByTimeAsync(250);
    await first;
    vi.setSystemTime(START + 250 + 241_000); // inside the refresh window
    latencyMs = 400;
    expect(provider.current()?.value).toBe('at-1'); // starts the refresh ahead
    expect(provider.status().state).toBe('valid');
    await vi.advanceTimersByTimeAsync(400);
    expect(provider.status()).toMatchObject({
      state: 'valid',
      lastRefreshAt: START + 250 + 241_400,
      lastRefreshDurationMs: 400,
    });
  });

  it('keeps the last failure reason and its time after a later success; lastError only while failing', async () => {
    answers.push(new TokenError('invalid_client', 'client secret sk-do-not-show was refused', { status: 401 }));
    const failed = provider.obtain().catch((err: unknown) => err);
    await vi.advanceTimersByTimeAsync(250);
    expect(await failed).toBeInstanceOf(TokenError);
    const failing = provider.status();
    expect(failing).toEqual({
      upstream: 'partner',
      state: 'failing',
      lastError: 'invalid_client',
      lastFailureReason: 'invalid_client',
      lastFailureAt: START + 250,
    });
    expect(JSON.stringify(failing)).not.toContain('sk-do-not-show');
    vi.setSystemTime(START + 10_000); // past the permanent-error backoff
    const next = provider.obtain();
    await vi.advanceTimersByTimeAsync(250);
    await next;
    expect(provider.status()).toEqual({
      upstream: 'partner',
      state: 'valid',
      expiresInSeconds: 300,
      lastRefreshAt: START + 10_250,
      lastRefreshDurationMs: 250,
      lastFailureReason: 'invalid_client',
      lastFailureAt: START + 250,
    });
  });

  it('is expired when the token in memory is past its last usable moment and nothing is fetching', async () => {
    const first = provider.obtain();
    await vi.advanceTimersByTimeAsync(250);
    await first;
    vi.setSystemTime(START + 250 + 301_000);
    expect(provider.status()).toMatchObject({ state: 'expired' });
    expect(provider.status().expiresInSeconds).toBeUndefined();
  });
});
