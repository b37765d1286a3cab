import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { TokenError } from '../../src/errors.js';
import { backoffDelayMs } from '../../src/tokens/backoff.js';
import { cacheKey } from '../../src/tokens/token-cache.js';
import { MAX_TOKEN_LIFETIME_MS, tokenFromResponse, tokenWithTimes } from '../../src/tokens/token.js';

const NOW = 1_800_000_000_000;
const policy = { refreshBeforeExpiryMs: 300_000, clockSkewMs: 30_000, defaultLifetimeMs: 300_000 };
const res = (accessToken: string, expiresIn?: number) => ({
  accessToken,
  expiresIn,
  scope: undefined,
  refreshToken: undefined,
});

async function jwtExpiringAt(seconds: number): Promise<string> {
  return new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(seconds).sign(new Uint8Array(32));
}

describe('token lifetime', () => {
  it('uses expires_in and caps the refresh lead at half the lifetime and the skew at a quarter', () => {
    const t = tokenFromResponse(res('opaque', 300), NOW, policy);
    expect(t.expiresAt).toBe(NOW + 300_000);
    expect(t.usableUntil).toBe(NOW + 270_000); // 30 s skew < 75 s (a quarter)
    expect(t.refreshAt).toBe(NOW + 150_000); // 300 s lead capped at 150 s (half)
    expect(t.header).toBe('Bearer opaque');
  });

  it('keeps a 10-second token usable for most of its life', () => {
    const t = tokenFromResponse(res('short', 10), NOW, policy);
    expect(t.usableUntil).toBe(NOW + 7_500);
    expect(t.refreshAt).toBe(NOW + 5_000);
  });

  it('takes the earlier of expires_in and the JWT exp claim', async () => {
    const jwt = await jwtExpiringAt(NOW / 1000 + 120);
    expect(tokenFromResponse(res(jwt, 3600), NOW, policy).expiresAt).toBe(NOW + 120_000);
    expect(tokenFromResponse(res(jwt, 60), NOW, policy).expiresAt).toBe(NOW + 60_000);
    expect(tokenFromResponse(res(jwt), NOW, policy).expiresAt).toBe(NOW + 120_000);
  });

  it('falls back to the configured default, never forever, and caps absurd lifetimes at a day', () => {
    expect(tokenFromResponse(res('opaque'), NOW, policy).expiresAt).toBe(NOW + 300_000);
    expect(tokenFromResponse(res('opaque', 10 ** 12), NOW, policy).expiresAt).toBe(NOW + MAX_TOKEN_LIFETIME_MS);
  });

  it('rejects expires_in of zero or less and tokens already expired', async () => {
    expect(() => tokenFromResponse(res('x', 0), NOW, policy)).toThrow(TokenError);
    expect(() => tokenFromResponse(res('x', -5), NOW, policy)).toThrow(/expires_in -5/);
    const stale = await jwtExpiringAt(NOW / 1000 - 1);
    expect(() => tokenFromResponse(res(stale), NOW, policy)).toThrow(/already expired/);
  });

  it('refuses an access token a Bearer header cannot carry, naming the rule but not the token', () => {
    for (const bad of ['two words', 'line\r\nX-Injected: 1', 'tab\there', 'caf\u00e9', 'nul\u0000']) {
      let caught: unknown;
      try {
        tokenFromResponse(res(bad, 60), NOW, policy);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(TokenError);
      expect((caught as TokenError).reason).toBe('bad_response');
      expect((caught as TokenError).message).toMatch(/RFC 6750 §2\.1/);
      expect((caught as TokenError).message).not.toContain(bad);
    }
    // Every visible ASCII character is allowed (RFC 6749 §A.12 VSCHAR without the space).
    const visible = Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => String.fromCharCode(0x21 + i)).join('');
    expect(tokenFromResponse(res(visible, 60), NOW, policy).value).toBe(visible);
  });

  it('keeps the expiry on the whole second, rounded down, and every other moment to the millisecond', () => {
    // NOW + 123 ms: the expiry NOW + 10,124 is given up 124 ms early; the lifetime is 9,877 ms,
    // a quarter of it 2,469.25 (skew, rounded up to 2,470) and half 4,938.5 (lead, 4,939).
    const t = tokenWithTimes('tok', 'refresh-1', NOW + 123, NOW + 10_124, policy);
    expect([t.obtainedAt, t.expiresAt, t.usableUntil, t.refreshAt]).toEqual([
      NOW + 123,
      NOW + 10_000,
      NOW + 7_530,
      NOW + 5_061,
    ]);
    expect([t.value, t.header, t.refreshToken]).toEqual(['tok', 'Bearer tok', 'refresh-1']);
    // Far from when the process started (past and future), the moments are just as exact.
    for (const at of [5_000, 3_000_000_000_000]) {
      const far = tokenWithTimes('tok', undefined, at, at + 300_000, policy);
      expect([far.obtainedAt, far.expiresAt, far.usableUntil, far.refreshAt]).toEqual([
        at,
        at + 300_000,
        at + 270_000,
        at + 150_000,
      ]);
    }
    // A JWT exp with a fraction of a second (RFC 7519 §2 NumericDate).
    expect(tokenFromResponse({ ...res('opaque'), expiresAt: NOW + 60_000.7 }, NOW, policy).expiresAt).toBe(
      NOW + 60_000,
    );
  });

  it('refuses a token whose expiry, on the whole second, is not after the moment it was obtained', () => {
    expect(() => tokenWithTimes('tok', undefined, NOW + 500, NOW + 900, policy)).toThrow(/expires within the second/);
  });

  it('rounds the skew margin and the refresh lead up: a fraction of a millisecond early, never late', () => {
    // Lifetime 9,997 ms: a quarter 2,499.25; half 4,998.5 plus a twentieth of it as jitter, 249.925.
    const t = tokenWithTimes('tok', undefined, NOW + 3, NOW + 10_000, { ...policy, refreshJitter: () => 0.5 });
    expect(t.usableUntil).toBe(NOW + 10_000 - 2_500);
    expect(t.refreshAt).toBe(NOW + 10_000 - 5_249);
  });

  it('puts a refresh off, never earlier than it was, with the token unchanged', () => {
    const t = tokenWithTimes('tok', 'r', NOW, NOW + 300_000, policy);
    const later = t.refreshNotBefore(NOW + 200_000.4);
    expect(later.refreshAt).toBe(NOW + 200_001);
    expect([later.header, later.refreshToken, later.expiresAt, later.usableUntil, later.obtainedAt]).toEqual([
      t.header,
      'r',
      t.expiresAt,
      t.usableUntil,
      t.obtainedAt,
    ]);
    expect(t.refreshNotBefore(NOW + 1_000).refreshAt).toBe(t.refreshAt);
  });

  it('gives every token a short fingerprint that does not contain it', () => {
    const t = tokenFromResponse(res('a-very-secret-token-value', 60), NOW, policy);
    expect(t.fingerprint).toMatch(/^[A-Za-z0-9_-]{12}$/);
    expect('a-very-secret-token-value').not.toContain(t.fingerprint);
  });
});

describe('cache key', () => {
  it('changes with anything that shapes the token and never contains the secret', () => {
    const base = {
      tokenUrl: 'https://a/t',
      clientId: 'c',
      clientSecret: 's3cr3t',
      scope: 'x',
      audience: undefined,
      grant: 'client_credentials',
    };
    const key = cacheKey('partner', base);
    expect(key).toMatch(/^partner:[A-Za-z0-9_-]{22}$/);
    expect(key).not.toContain('s3cr3t');
    expect(cacheKey('partner', { ...base })).toBe(key);
    for (const change of [
      { clientSecret: 'other' },
      { scope: 'y' },
      { audience: 'z' },
      { tokenUrl: 'https://b/t' },
      { clientId: 'd' },
    ]) {
      expect(cacheKey('partner', { ...base, ...change })).not.toBe(key);
    }
  });
});

describe('backoff', () => {
  const p = { baseMs: 100, maxMs: 1_000, maxRetryAfterMs: 5_000, permanentMinMs: 0, random: () => 1 };
  it('doubles per failure up to the maximum, with jitter in the upper half', () => {
    expect([1, 2, 3, 4, 5, 6].map((n) => backoffDelayMs(p, n))).toEqual([100, 200, 400, 800, 1_000, 1_000]);
    expect(backoffDelayMs({ ...p, random: () => 0 }, 3)).toBe(200);
  });
  it('honours a longer Retry-After up to its own cap', () => {
    expect(backoffDelayMs(p, 1, 3)).toBe(3_000);
    expect(backoffDelayMs(p, 1, 3600)).toBe(5_000);
  });
});
