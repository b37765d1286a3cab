import pino from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { TokenError } from '../../src/errors.js';
import { bindTokenMetrics, createMetrics } from '../../src/metrics.js';
import type { Grant } from '../../src/oauth/grants.js';
import type { TokenResponse } from '../../src/oauth/token-endpoint.js';
import { TokenProvider, type ProviderGrant } from '../../src/tokens/provider.js';
import { TokenProviders } from '../../src/tokens/provider-registry.js';
import { TokenCache } from '../../src/tokens/token-cache.js';

/**
 * The provider on its own, with vitest's fake timers: Date.now and setTimeout are the test's, so
 * lifetimes of minutes pass in microseconds and every assertion is about order and counts.
 */

const START = Date.UTC(2026, 11, 7, 12, 0, 0);
const BACKOFF = { baseMs: 1_000, maxMs: 8_000, maxRetryAfterMs: 60_000, permanentMinMs: 5_000, random: () => 0.5 };

/** A scripted token endpoint: each call takes `latencyMs` and answers from `answers`, else a fresh token. */
class ScriptedGrant {
  calls: { kind: 'grant' | 'refresh'; refreshToken?: string }[] = [];
  answers: (TokenResponse | TokenError)[] = [];
  latencyMs = 100;
  lifetimeSeconds = 300;
  rotate = false;
  #n = 0;

  readonly grant: Grant = {
    obtain: () => this.#answer({ kind: 'grant' }),
    refresh: (refreshToken) => this.#answer({ kind: 'refresh', refreshToken }),
  };

  async #answer(call: { kind: 'grant' | 'refresh'; refreshToken?: string }): Promise<TokenResponse> {
    this.calls.push(call);
    await new Promise((resolve) => setTimeout(resolve, this.latencyMs));
    const next = this.answers.shift();
    if (next instanceof TokenError) throw next;
    this.#n += 1;
    return (
      next ?? {
        accessToken: `at-${this.#n}`,
        expiresIn: this.lifetimeSeconds,
        scope: undefined,
        refreshToken: this.rotate ? `rt-${this.#n}` : undefined,
      }
    );
  }
}

function grantFor(scripted: ScriptedGrant, over: Partial<ProviderGrant> = {}): ProviderGrant {
  return {
    upstream: 'partner',
    grant: scripted.grant,
    lifetime: { refreshBeforeExpiryMs: 60_000, clockSkewMs: 30_000, defaultLifetimeMs: 300_000 },
    waitTimeoutMs: 10_000,
    renewalBackoff: { initialMs: 5_000, maxMs: 60_000, maxPaths: 16 },
    metrics: bindTokenMetrics(createMetrics(new Registry(), { defaultMetrics: false }), 'partner', undefined),
    logger: pino({ level: 'silent' }),
    ...over,
  };
}

let scripted: ScriptedGrant;
let provider: TokenProvider;

function make(over: Partial<ProviderGrant> = {}): TokenProvider {
  return new TokenProvider({ key: 'k', cache: new TokenCache(10), backoff: BACKOFF }, grantFor(scripted, over));
}

/** Settles a promise while advancing fake time in steps; returns its outcome. */
async function settle<T>(p: Promise<T>, stepMs = 50, maxMs = 120_000): Promise<T> {
  let done = false;
  let value: T | undefined;
  let error: unknown;
  let failed = false;
  p.then(
    (v) => ((done = true), (value = v)),
    (e: unknown) => ((done = true), (failed = true), (error = e)),
  );
  for (let t = 0; t <= maxMs && !done; t += stepMs) await vi.advanceTimersByTimeAsync(stepMs);
  if (!done) throw new Error('did not settle');
  if (failed) throw error;
  return value as T;
}

beforeEach(() => {
  vi.useFakeTimers({ now: START });
  scripted = new ScriptedGrant();
  provider = make();
});

afterEach(() => {
  vi.useRealTimers();
});

describe('TokenProvider', () => {
  it('fetches once for many simultaneous misses (single flight), then serves from memory', async () => {
    const all = Promise.all(Array.from({ length: 50 }, () => provider.obtain()));
    const tokens = await settle(all);
    expect(new Set(tokens.map((t) => t.value))).toEqual(new Set(['at-1']));
    expect(scripted.calls).toHaveLength(1);
    expect(provider.current()?.value).toBe('at-1');
  });

  it('refreshes ahead in the background: requests in the refresh window never wait and get the old token until the new one is in', async () => {
    await settle(provider.obtain());
    vi.setSystemTime(START + 241_000); // inside refreshBeforeExpiry (60 s), before the skew (30 s)
    expect(provider.current()?.value).toBe('at-1'); // starts the refresh, does not wait for it
    expect(provider.current()?.value).toBe('at-1');
    expect(scripted.calls).toHaveLength(2); // one refresh, however many requests
    await vi.advanceTimersByTimeAsync(100);
    expect(provider.current()?.value).toBe('at-2');
    expect(scripted.calls).toHaveLength(2);
  });

  it('backs off after a transient failure, honouring Retry-After, and then recovers', async () => {
    scripted.answers.push(
      new TokenError('server_error', 'down', { status: 503, retryAfterSeconds: 7 }),
      new TokenError('server_error', 'down', { status: 503 }),
    );
    const started = Date.now();
    const failures: number[] = [];
    provider.on('refreshError', () => failures.push(Date.now() - started));
    const token = await settle(provider.obtain());
    expect(token.value).toBe('at-1');
    // First call at 0 (+100 ms latency), then Retry-After 7 s, then the second backoff step.
    expect(failures).toEqual([100, 7_200]);
    expect(scripted.calls).toHaveLength(3);
  });

  it('answers at once from memory of a permanent failure instead of calling again within the backoff', async () => {
    scripted.answers.push(new TokenError('invalid_client', 'bad secret', { status: 401 }));
    await expect(settle(provider.obtain())).rejects.toMatchObject({ reason: 'invalid_client' });
    await expect(settle(provider.obtain())).rejects.toMatchObject({ reason: 'invalid_client' });
    expect(scripted.calls).toHaveLength(1);
    expect(provider.status()).toMatchObject({ state: 'failing', lastError: 'invalid_client' });
  });

  it('tries again at once after a reload hands it a new grant, instead of waiting out the old backoff', async () => {
    provider = make({ waitTimeoutMs: 300 }); // shorter than the first backoff step (1 s)
    scripted.answers.push(new TokenError('network', 'certificate not trusted'));
    await expect(settle(provider.obtain())).rejects.toMatchObject({ reason: 'network' });
    provider.setGrant(grantFor(scripted, { waitTimeoutMs: 300 })); // a reload: same key, a new CA bundle
    const token = await settle(provider.obtain());
    expect(token.value).toBe('at-1');
    expect(scripted.calls).toHaveLength(2);
  });

  it('serves the current token until its actual expiry (less about a second) while the endpoint is down, never after', async () => {
    await settle(provider.obtain());
    scripted.answers.push(
      ...Array.from({ length: 100 }, () => new TokenError('server_error', 'down', { status: 503 })),
    );
    vi.setSystemTime(START + 241_000);
    expect(provider.current()?.value).toBe('at-1'); // renewal starts, and fails
    await vi.advanceTimersByTimeAsync(200);
    // Past clockSkewSeconds before expiry: still served, since nothing better can be had.
    vi.setSystemTime(START + 285_000);
    expect(provider.current()?.value).toBe('at-1');
    expect(provider.usable(provider.current()!)).toBe(true);
    vi.setSystemTime(START + 298_999);
    expect(provider.current()?.value).toBe('at-1');
    expect(provider.status().state).toBe('valid');
    vi.setSystemTime(START + 299_000);
    expect(provider.current()).toBeUndefined();
    await expect(settle(provider.obtain())).rejects.toMatchObject({ reason: 'server_error' });
  });

  it('a request waiting past the skew moment gets the old token when the fetch fails (not a 502)', async () => {
    await settle(provider.obtain());
    scripted.answers.push(new TokenError('server_error', 'down', { status: 503, retryAfterSeconds: 60 }));
    vi.setSystemTime(START + 275_000); // past the skew: no longer handed out while a renewal may succeed
    expect(provider.current()).toBeUndefined();
    const token = await settle(provider.obtain());
    expect(token.value).toBe('at-1');
  });

  it('a 401 for the cached token: one renewal shared by all, each replayed once with the new token', async () => {
    const used = await settle(provider.obtain());
    const decisions = Array.from({ length: 20 }, () => provider.onUnauthorized(used, '/items', true));
    expect(new Set(decisions)).toEqual(new Set(['replay']));
    const fresh = await settle(Promise.all(decisions.map(() => provider.obtain('unauthorized'))));
    expect(new Set(fresh.map((t) => t.value))).toEqual(new Set(['at-2']));
    expect(scripted.calls).toHaveLength(2);
  });

  it('a partner revoking the token twice within a second: two renewals, both replays recovered', async () => {
    const t1 = await settle(provider.obtain());
    expect(provider.onUnauthorized(t1, '/a', true)).toBe('replay');
    const t2 = await settle(provider.obtain('unauthorized'));
    provider.onAccepted(t2, '/a');
    vi.setSystemTime(Date.now() + 300);
    expect(provider.onUnauthorized(t2, '/a', true)).toBe('replay');
    const t3 = await settle(provider.obtain('unauthorized'));
    expect([t1.value, t2.value, t3.value]).toEqual(['at-1', 'at-2', 'at-3']);
  });

  it('a futile renewal backs off 401 renewals; the first accepted request resets it', async () => {
    const t1 = await settle(provider.obtain());
    expect(provider.onUnauthorized(t1, '/x', true)).toBe('replay');
    const t2 = await settle(provider.obtain('unauthorized'));
    expect(provider.onUnauthorized(t2, '/x', false)).toBe('pass'); // the replay: 401 again
    expect(provider.onUnauthorized(t2, '/y', true)).toBe('pass'); // backing off, no token request
    expect(scripted.calls).toHaveLength(2);
    provider.onAccepted(t2, '/z');
    expect(provider.onUnauthorized(t2, '/y', true)).toBe('replay'); // reset: renewed at once
    await settle(provider.obtain('unauthorized'));
    expect(scripted.calls).toHaveLength(3);
  });

  it('a 401 on a streamed request renews for the requests that follow, though it cannot be replayed', async () => {
    const t1 = await settle(provider.obtain());
    expect(provider.onUnauthorized(t1, '/upload', false)).toBe('pass');
    await vi.advanceTimersByTimeAsync(150);
    expect(provider.current()?.value).toBe('at-2');
  });

  it('keeps the token a 401 dropped when no replacement can be had, until its last usable moment', async () => {
    const t1 = await settle(provider.obtain());
    scripted.answers.push(new TokenError('server_error', 'down', { status: 503, retryAfterSeconds: 60 }));
    expect(provider.onUnauthorized(t1, '/a', true)).toBe('replay');
    await expect(settle(provider.obtain('unauthorized'))).rejects.toMatchObject({ reason: 'server_error' });
    expect(provider.current()?.value).toBe('at-1'); // not every request a 502
    // But a replay after a 401 never gets the token the partner just refused.
    await expect(settle(provider.obtain('unauthorized'))).rejects.toMatchObject({ reason: 'server_error' });
  });

  it('presents each newest rotated refresh token, and after invalid_grant runs the full grant', async () => {
    scripted.rotate = true;
    const t1 = await settle(provider.obtain());
    expect(t1.refreshToken).toBe('rt-1');
    provider.onUnauthorized(t1, '/a', true);
    const t2 = await settle(provider.obtain('unauthorized'));
    provider.onAccepted(t2, '/a');
    scripted.answers.push(new TokenError('invalid_grant', 'revoked', { status: 400 }));
    provider.onUnauthorized(t2, '/a', true);
    const t3 = await settle(provider.obtain('unauthorized'));
    expect(scripted.calls).toEqual([
      { kind: 'grant' },
      { kind: 'refresh', refreshToken: 'rt-1' },
      { kind: 'refresh', refreshToken: 'rt-2' },
      { kind: 'grant' },
    ]);
    expect(t3.value).toBe('at-3');
  });

  it('a reload keeps the fetch under way and the newest refresh token (same key, same provider)', async () => {
    scripted.rotate = true;
    const providers = new TokenProviders({ cache: new TokenCache(10), backoff: BACKOFF });
    const first = providers.provide('k', grantFor(scripted));
    await settle(first.obtain());
    vi.setSystemTime(START + 250_000);
    first.current(); // a refresh ahead starts on the old configuration
    const reloaded = new ScriptedGrant();
    const second = providers.provide('k', grantFor(reloaded));
    expect(second).toBe(first);
    await vi.advanceTimersByTimeAsync(150); // the fetch under way completes: no call of the new grant
    expect(second.current()?.value).toBe('at-2');
    expect(scripted.calls).toHaveLength(2);
    expect(reloaded.calls).toHaveLength(0);
    vi.setSystemTime(START + 500_000); // in the refresh window of the token obtained at 250 s
    second.current();
    await vi.advanceTimersByTimeAsync(200);
    // The next renewal is the new grant's, presenting the newest rotated refresh token.
    expect(reloaded.calls).toEqual([{ kind: 'refresh', refreshToken: 'rt-2' }]);
  });
});
