import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UnsecuredJWT } from 'jose';
import { afterAll, describe, expect, it } from 'vitest';
import { TokenError } from '../../src/errors.js';
import {
  ASSERTION_EXPIRY_MARGIN_MS,
  assertionSecrets,
  describeAssertionFile,
  readAssertion,
} from '../../src/oauth/assertion-file.js';

const NOW = Date.parse('2026-11-23T10:00:00Z');
const NOW_S = NOW / 1000;
const dir = mkdtempSync(join(tmpdir(), 'tp-assertion-'));
let n = 0;

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A JWT with these claims (unsigned: only decoding is under test here; the token servers verify). */
function jwt(claims: Record<string, unknown>): string {
  return new UnsecuredJWT(claims).encode();
}

function fileWith(text: string): string {
  const file = join(dir, `a-${(n += 1)}`);
  writeFileSync(file, text);
  return file;
}

async function failure(file: string, now = NOW): Promise<TokenError> {
  try {
    await readAssertion(file, now);
  } catch (err) {
    if (err instanceof TokenError) return err;
    throw err;
  }
  throw new Error('expected a TokenError');
}

describe('assertion files (RFC 7523, platform-issued)', () => {
  it('reads the file again at every call, without the trailing newline', async () => {
    const first = jwt({ sub: 'a', exp: NOW_S + 600 });
    const file = fileWith(`${first}\n`);
    expect(await readAssertion(file, NOW)).toBe(first);
    const second = jwt({ sub: 'b', exp: NOW_S + 600 });
    writeFileSync(file, `  ${second}\r\n`);
    expect(await readAssertion(file, NOW)).toBe(second);
  });

  it('refuses an assertion that has expired or expires within the margin, naming the file and exp', async () => {
    expect(ASSERTION_EXPIRY_MARGIN_MS).toBe(10_000);
    const cases: [number, string | undefined][] = [
      [-3600, 'expired at 2026-11-23T09:00:00.000Z'],
      [0, 'expired at 2026-11-23T10:00:00.000Z'],
      [9, 'expires at 2026-11-23T10:00:09.000Z, within the 10 s margin'],
      [10, undefined],
      [600, undefined],
    ];
    for (const [offset, problem] of cases) {
      const assertion = jwt({ exp: NOW_S + offset });
      const file = fileWith(assertion);
      if (problem === undefined) {
        expect(await readAssertion(file, NOW)).toBe(assertion);
        continue;
      }
      const err = await failure(file);
      expect(err.reason).toBe('assertion_expired');
      expect(err.message).toBe(`assertion in ${file} ${problem} (exp ${NOW_S + offset}): not sent`);
      expect(err.permanent).toBe(false); // the platform may rotate the file any moment
    }
  });

  it('refuses a missing, empty or oversized file, a non-JWT and a JWT without exp, quoting none of it', async () => {
    const noExp = jwt({ sub: 'system:serviceaccount:a:b' });
    const cases: [string, string][] = [
      [join(dir, 'missing'), `cannot read ${join(dir, 'missing')} (ENOENT)`],
      [fileWith('\n'), 'is empty'],
      [fileWith('x'.repeat(70_000)), 'is larger than 65536 bytes'],
      [fileWith('not-a-jwt-but-a-secret'), 'does not hold a JWT (compact JWS)'],
      [fileWith(noExp), 'has no exp claim (RFC 7523 §3)'],
    ];
    for (const [file, says] of cases) {
      const err = await failure(file);
      expect(err.reason).toBe('assertion_unavailable');
      expect(err.permanent).toBe(false);
      expect(err.message).toContain(file);
      expect(err.message).toContain(says);
      expect(err.message).not.toContain('not-a-jwt-but-a-secret');
      expect(err.message).not.toContain(noExp.split('.')[1]);
    }
  });

  it('describes the claims the next request would send, and why it would not, never the assertion', () => {
    const assertion = jwt({
      iss: 'https://issuer.example',
      sub: 'spiffe://example.org/ns/payments/sa/orders',
      aud: ['a', 'b'],
      exp: NOW_S + 120,
    });
    const file = fileWith(`${assertion}\n`);
    expect(describeAssertionFile(file, NOW)).toEqual({
      file,
      iss: 'https://issuer.example',
      sub: 'spiffe://example.org/ns/payments/sa/orders',
      aud: 'a b',
      expiresAt: '2026-11-23T10:02:00.000Z',
      expiresInSeconds: 120,
    });
    expect(describeAssertionFile(file, NOW + 115_000)).toMatchObject({
      expiresInSeconds: 5,
      problem: 'expires at 2026-11-23T10:02:00.000Z, within the 10 s margin',
    });
    const odd = fileWith(jwt({ iss: 'line\nbreak', sub: 42, exp: NOW_S + 60 }));
    expect(describeAssertionFile(odd, NOW)).toEqual({
      file: odd,
      iss: 'line break',
      expiresAt: '2026-11-23T10:01:00.000Z',
      expiresInSeconds: 60,
    });
    expect(describeAssertionFile(join(dir, 'gone'), NOW)).toEqual({
      file: join(dir, 'gone'),
      problem: `cannot read ${join(dir, 'gone')} (ENOENT)`,
    });
    expect(JSON.stringify(describeAssertionFile(file, NOW))).not.toContain(assertion.split('.')[1]);
  });

  it('names every part of an assertion as a secret to cut out of partner text', () => {
    expect(assertionSecrets('h.p.s')).toEqual(['h.p.s', 'h.p', 's', 'p', 'h']);
    expect(assertionSecrets('h.p.')).toEqual(['h.p.', 'h.p', 'p', 'h']);
  });
});
