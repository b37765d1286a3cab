import { describe, expect, it } from 'vitest';
import {
  AUTH_COOL_DOWN_MS,
  AUTH_FAILURES_ALLOWED,
  AUTH_WINDOW_MS,
  AuthThrottle,
} from '../../src/proxy/auth-throttle.js';

describe('AuthThrottle', () => {
  const clock = () => {
    let now = 1_000_000;
    return { now: () => now, advance: (ms: number) => (now += ms) };
  };

  it('lets an address fail AUTH_FAILURES_ALLOWED times a window, then makes it wait AUTH_COOL_DOWN_MS', () => {
    const c = clock();
    const t = new AuthThrottle(c.now);
    for (let i = 0; i < AUTH_FAILURES_ALLOWED; i++) t.failed('10.0.0.1');
    expect(t.waitSeconds('10.0.0.1')).toBe(0);
    t.failed('10.0.0.1');
    expect(t.waitSeconds('10.0.0.1')).toBe(AUTH_COOL_DOWN_MS / 1000);
    expect(t.waitSeconds('10.0.0.2')).toBe(0); // another address is not held to it
    c.advance(AUTH_COOL_DOWN_MS - 1_000);
    expect(t.waitSeconds('10.0.0.1')).toBe(1);
    c.advance(1_000);
    expect(t.waitSeconds('10.0.0.1')).toBe(0);
  });

  it('starts a new count each window: failures spread out never block', () => {
    const c = clock();
    const t = new AuthThrottle(c.now);
    for (let i = 0; i < 5 * AUTH_FAILURES_ALLOWED; i++) {
      t.failed('10.0.0.1');
      if (i % AUTH_FAILURES_ALLOWED === AUTH_FAILURES_ALLOWED - 1) c.advance(AUTH_WINDOW_MS);
    }
    expect(t.waitSeconds('10.0.0.1')).toBe(0);
  });
});
