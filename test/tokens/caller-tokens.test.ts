import pino from 'pino';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { bindTokenMetrics, createMetrics } from '../../src/metrics.js';
import { CallerTokenSources } from '../../src/tokens/caller-tokens.js';
import type { ProviderGrant } from '../../src/tokens/provider-grant.js';
import { TokenProviders } from '../../src/tokens/provider-registry.js';
import type { TokenProvider } from '../../src/tokens/provider.js';
import { TokenCache } from '../../src/tokens/token-cache.js';
import { tokenWithTimes } from '../../src/tokens/token.js';

/**
 * The sources of a token exchange upstream (RFC 8693) on their own: one provider per caller
 * token, bounded, and never a token used past the caller token's exp. The exchange is a stub
 * that names the subject it was given, so a token tells whose it is.
 */

const NOW = Date.UTC(2026, 11, 8, 12, 0, 0);
const POLICY = { refreshBeforeExpiryMs: 60_000, clockSkewMs: 30_000, defaultLifetimeMs: 300_000 };
const metrics = bindTokenMetrics(createMetrics(new Registry(), { defaultMetrics: false }), 'partner', undefined);

function setup(maxCallers: number) {
  const clock = { t: NOW, now: () => clock.t };
  const cache = new TokenCache(maxCallers);
  const providers = new TokenProviders({ cache, clock }, maxCallers);
  /** Subjects exchanged, in order. */
  const exchanged: string[] = [];
  const sources = (base: string) =>
    new CallerTokenSources({
      base,
      providers,
      clock,
      grant: (subject, notAfter): ProviderGrant => ({
        upstream: 'partner',
        grant: {
          obtain: () => {
            exchanged.push(subject);
            // The STS grants an hour, whatever the caller's token says.
            return Promise.resolve({
              accessToken: `for-${subject}`,
              expiresIn: 3600,
              scope: undefined,
              refreshToken: undefined,
            });
          },
          refresh: undefined,
        },
        lifetime: POLICY,
        waitTimeoutMs: 1_000,
        metrics,
        logger: pino({ level: 'silent' }),
        notAfter,
      }),
    });
  return { clock, cache, providers, exchanged, sources };
}

const claims = (expSeconds: number) => ({ sub: 'x', exp: expSeconds });
const inSeconds = (s: number) => Math.floor(NOW / 1000) + s;

describe('callers of a token exchange upstream', () => {
  it("caps the token at the caller token's exp: no skew margin, no refresh ahead, nothing after it", () => {
    const token = tokenWithTimes('t', undefined, NOW, NOW + 3_600_000, POLICY);
    const capped = token.cappedAt(NOW + 120_000);
    expect([capped?.expiresAt, capped?.usableUntil, capped?.refreshAt]).toEqual([
      NOW + 120_000,
      NOW + 120_000,
      NOW + 120_000,
    ]);
    expect(capped?.header).toBe('Bearer t');
    // A caller token that outlives the exchanged one changes nothing.
    expect(token.cappedAt(NOW + 7_200_000)).toBe(token);
    // Nor one whose end falls inside the skew margin (the token's own end comes first there).
    expect(token.cappedAt(NOW + 3_590_000)).toBe(token);
    expect(token.cappedAt(NOW)).toBeUndefined();
  });

  it('gives each caller token its own provider and token, the first exchange capped at its exp', async () => {
    const { sources, exchanged, cache } = setup(10);
    const s = sources('partner:base');
    const a = s.forCaller('caller-a', claims(inSeconds(120))) as TokenProvider;
    const b = s.forCaller('caller-b', claims(inSeconds(600))) as TokenProvider;
    expect(a).not.toBe(b);
    expect(s.forCaller('caller-a', claims(inSeconds(120)))).toBe(a);
    const [ta, tb] = await Promise.all([a.obtain(), b.obtain()]);
    expect([ta.value, tb.value]).toEqual(['for-caller-a', 'for-caller-b']);
    expect([ta.usableUntil, tb.usableUntil]).toEqual([NOW + 120_000, NOW + 600_000]);
    expect(exchanged).toEqual(['caller-a', 'caller-b']);
    expect(cache.size).toBe(2);
    // The key holds the hash of the caller token, never the token.
    expect(a.key).not.toContain('caller-a');
    expect(a.key.startsWith('partner:base.')).toBe(true);
  });

  it('refuses a caller token at or past its exp before any exchange', () => {
    const { clock, sources, exchanged } = setup(10);
    const s = sources('partner:base');
    expect(s.forCaller('caller-a', claims(inSeconds(0)))).toBeUndefined();
    expect(s.forCaller('caller-b', { sub: 'x' })).toBeUndefined(); // no exp: nothing to cap with
    const c = s.forCaller('caller-c', claims(inSeconds(60))) as TokenProvider;
    clock.t = NOW + 60_000;
    expect(s.forCaller('caller-c', claims(inSeconds(60)))).toBeUndefined();
    expect(c.current()).toBeUndefined();
    expect(exchanged).toEqual([]);
  });

  it('keeps at most maxCallers providers: the least recently used is evicted with its token, and its caller exchanges anew', async () => {
    const { sources, exchanged, providers, cache } = setup(2);
    const s = sources('partner:base');
    const exp = claims(inSeconds(600));
    const a = s.forCaller('caller-a', exp) as TokenProvider;
    await a.obtain();
    await (s.forCaller('caller-b', exp) as TokenProvider).obtain();
    await (s.forCaller('caller-c', exp) as TokenProvider).obtain();
    expect(providers.callers).toBe(2);
    expect(cache.size).toBe(2);
    expect(a.current()).toBeUndefined(); // its token left with it
    const again = s.forCaller('caller-a', exp) as TokenProvider;
    expect(again).not.toBe(a);
    expect((await again.obtain()).value).toBe('for-caller-a');
    expect(exchanged).toEqual(['caller-a', 'caller-b', 'caller-c', 'caller-a']);
    // A fetch the evicted provider still had under way fills no slot.
    const late = s.forCaller('caller-d', exp) as TokenProvider;
    const pending = late.obtain();
    s.forCaller('caller-e', exp);
    s.forCaller('caller-f', exp); // evicts late while its exchange runs
    expect((await pending).value).toBe('for-caller-d');
    expect(cache.get(late.key)).toBeUndefined();
  });

  it('keeps callers across a reload of unchanged settings with the new grant, and drops those of settings no longer used', async () => {
    const { sources, exchanged, providers } = setup(10);
    const exp = claims(inSeconds(600));
    const before = sources('partner:one');
    const kept = before.forCaller('caller-a', exp) as TokenProvider;
    await kept.obtain();
    const dropped = sources('partner:two').forCaller('caller-a', exp) as TokenProvider;
    await dropped.obtain();
    providers.keepOnly(['partner:one']);
    expect(providers.callers).toBe(1);
    expect(dropped.current()).toBeUndefined();
    const after = sources('partner:one'); // the next generation's sources, same settings
    expect(after.forCaller('caller-a', exp)).toBe(kept);
    expect(kept.current()?.value).toBe('for-caller-a');
    expect(exchanged).toEqual(['caller-a', 'caller-a']);
    providers.keepOnly([]);
    expect(providers.callers).toBe(0);
  });
});
