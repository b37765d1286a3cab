import { describe, expect, it } from 'vitest';
import { lastUsableMoment, mayInject, renewalDue, TRIP_MARGIN_MS } from '../../src/tokens/expiry.js';
import { tokenWithTimes } from '../../src/tokens/token.js';

// A five-minute token obtained at T, renewed from 60 s before expiry, given up 30 s before it while a
// replacement can be had.
const T = 1_800_000_000_000;
const token = tokenWithTimes('abc', undefined, T, T + 300_000, {
  refreshBeforeExpiryMs: 60_000,
  clockSkewMs: 30_000,
  defaultLifetimeMs: 300_000,
});

describe('expiry rules', () => {
  it.each([
    // [seconds after T, renewal failing, may inject]
    [0, false, true],
    [239, false, true],
    [269.999, false, true],
    [270, false, false], // clockSkewSeconds before expiry: wait for the replacement
    [270, true, true], // … unless none can be had: used on
    [298.999, true, true],
    [299, true, false], // never within TRIP_MARGIN_MS of the expiry
    [300, true, false],
    [400, true, false],
  ])('at T+%ss with renewal failing=%s: may inject %s', (s, failing, expected) => {
    expect(mayInject(token, T + s * 1000, failing)).toBe(expected);
  });

  it('the last usable moment is the expiry less the trip margin', () => {
    expect(lastUsableMoment(token)).toBe(T + 300_000 - TRIP_MARGIN_MS);
    expect(TRIP_MARGIN_MS).toBe(1_000);
  });

  it('a short token keeps its skew-capped moment when that is later than expiry less the margin', () => {
    // 2 s token: skew capped at a quarter (500 ms), so usableUntil (T+1.5 s) is after expiry-1 s.
    const short = tokenWithTimes('s', undefined, T, T + 2_000, {
      refreshBeforeExpiryMs: 60_000,
      clockSkewMs: 30_000,
      defaultLifetimeMs: 300_000,
    });
    expect(lastUsableMoment(short)).toBe(T + 1_500);
    expect(mayInject(short, T + 1_499, true)).toBe(true);
    expect(mayInject(short, T + 1_500, true)).toBe(false);
  });

  it.each([
    [0, false],
    [239.999, false],
    [240, true], // refreshBeforeExpirySeconds before expiry
    [299, true],
  ])('renewal is due at T+%ss: %s', (s, due) => {
    expect(renewalDue(token, T + s * 1000)).toBe(due);
  });
});
