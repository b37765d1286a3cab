import { describe, expect, it } from 'vitest';
import { futileBackoffMs, RenewalPolicy, type TokenSituation } from '../../src/tokens/renewal-policy.js';

const settings = { initialMs: 5_000, maxMs: 300_000, maxPaths: 3 };
const CURRENT: TokenSituation = { isCurrent: true, renewing: false };
const RENEWING: TokenSituation = { isCurrent: true, renewing: true };
const OLDER: TokenSituation = { isCurrent: false, renewing: false };

describe('renewal policy (401 → renew, replay, or pass)', () => {
  it.each([
    [1, 5_000],
    [2, 10_000],
    [3, 20_000],
    [7, 300_000],
    [30, 300_000],
  ])('the pause after %i futile renewals is %i ms (doubling, capped)', (count, ms) => {
    expect(futileBackoffMs(settings, count)).toBe(ms);
  });

  it.each<[string, TokenSituation, string]>([
    ['the cached token, nothing under way', CURRENT, 'renew'],
    ['the cached token while a renewal is under way', RENEWING, 'replay'],
    ['an older token (a newer one is cached)', OLDER, 'replay'],
  ])('a first 401 for %s: %s', (_, situation, decision) => {
    expect(new RenewalPolicy(settings).onUnauthorized(0, '/a', 'Bearer t1', situation)).toBe(decision);
  });

  it('a token revoked twice within one second is renewed twice: a renewal whose replay was accepted holds nothing against the next', () => {
    const p = new RenewalPolicy(settings);
    expect(p.onUnauthorized(0, '/a', 'Bearer t1', CURRENT)).toBe('renew');
    p.onAccepted('/a', 'Bearer t2'); // the replay with the new token went through
    expect(p.onUnauthorized(400, '/a', 'Bearer t2', CURRENT)).toBe('renew');
    p.onAccepted('/a', 'Bearer t3');
    expect(p.onUnauthorized(800, '/b', 'Bearer t3', CURRENT)).toBe('renew');
    expect(p.backingOff(800)).toBe(false);
  });

  it('a replay refused again proves the 401 was not about the token: the path and the key back off', () => {
    const p = new RenewalPolicy(settings);
    expect(p.onUnauthorized(0, '/always401', 'Bearer t1', CURRENT)).toBe('renew');
    // The replay with t2 is answered 401 too: judged futile, passed to the client.
    expect(p.onUnauthorized(100, '/always401', 'Bearer t2', CURRENT)).toBe('pass');
    expect(p.backingOff(100)).toBe(true);
    // Other replays of the same renewal: passed, and counted once (the pause is still 5 s).
    expect(p.onUnauthorized(150, '/always401', 'Bearer t2', CURRENT)).toBe('pass');
    expect(p.onUnauthorized(4_999, '/always401?x=1', 'Bearer t2', CURRENT)).toBe('pass');
    expect(p.onUnauthorized(5_100, '/always401', 'Bearer t2', CURRENT)).toBe('renew');
  });

  it('an accepted request ends the key-wide backoff at once; the futile path keeps its own', () => {
    const p = new RenewalPolicy(settings);
    p.onUnauthorized(0, '/always401', 'Bearer t1', CURRENT);
    p.onUnauthorized(10, '/always401', 'Bearer t2', CURRENT); // futile
    expect(p.onUnauthorized(20, '/other', 'Bearer t2', CURRENT)).toBe('pass'); // key backing off
    p.onAccepted('/other', 'Bearer t2');
    expect(p.backingOff(30)).toBe(false);
    expect(p.onUnauthorized(30, '/always401', 'Bearer t2', CURRENT)).toBe('pass'); // the path still is
    // A genuine revocation elsewhere is recovered at once.
    expect(p.onUnauthorized(40, '/other', 'Bearer t2', CURRENT)).toBe('renew');
  });

  it('a partner that rejects every token gets a trickle: renewals at 0, 5, 15, 35, 75 s … then one per 300 s, reset by the first accepted request', () => {
    const p = new RenewalPolicy(settings);
    const renewals: number[] = [];
    let token = 1;
    for (let s = 0; s <= 1_000; s++) {
      const now = s * 1_000;
      const path = `/r${s}`;
      if (p.onUnauthorized(now, path, `Bearer t${token}`, CURRENT) === 'renew') {
        renewals.push(s);
        token += 1;
        expect(p.onUnauthorized(now, path, `Bearer t${token}`, CURRENT)).toBe('pass'); // its replay
      }
    }
    expect(renewals.slice(0, 8)).toEqual([0, 5, 15, 35, 75, 155, 315, 615]);
    expect(renewals).toHaveLength(9);
    p.onAccepted('/r0', `Bearer t${token}`);
    expect(p.onUnauthorized(1_000_500, '/fresh', `Bearer t${token}`, CURRENT)).toBe('renew');
  });

  it('a renewal for a path is judged only by an answer carrying another token', () => {
    const p = new RenewalPolicy(settings);
    p.onUnauthorized(0, '/a', 'Bearer t1', CURRENT);
    // Concurrent 401s for t1 on the same path while the renewal runs: replays, no judgement.
    expect(p.onUnauthorized(5, '/a', 'Bearer t1', RENEWING)).toBe('replay');
    expect(p.backingOff(5)).toBe(false);
    p.onAccepted('/a', 'Bearer t1'); // an answer for the old token proves nothing
    expect(p.onUnauthorized(6, '/a', 'Bearer t2', CURRENT)).toBe('pass'); // but t2 refused: futile
  });

  it('remembers at most maxPaths paths, forgetting the oldest', () => {
    const p = new RenewalPolicy(settings);
    for (const [i, path] of ['/1', '/2', '/3', '/4'].entries()) {
      p.onUnauthorized(i, path, `Bearer a${i}`, CURRENT);
      p.onUnauthorized(i, path, `Bearer b${i}`, CURRENT); // futile
      p.onAccepted('/ok', `Bearer b${i}`); // the key-wide pause ends
    }
    // '/1' was forgotten: renewed at once; '/4' is remembered and still pausing.
    expect(p.onUnauthorized(10, '/1', 'Bearer x', CURRENT)).toBe('renew');
    expect(p.onUnauthorized(10, '/4', 'Bearer x', CURRENT)).toBe('pass');
  });
});
