import { createHash, createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { EntryCipher, cipherKey, keyId, nameKey } from '../../src/tokens/entry-cipher.js';
import type { SharedEntry } from '../../src/tokens/shared-store.js';

const ACCESS = 'eyJhbGciOiJSUzI1NiJ9.access-token-SECRET-4f1c2a9e7b.signature-part';
const REFRESH = 'refresh-token-SECRET-8d3e6f0a2c-rotating-one';
const AAD = createHash('sha256').update('partner:tenant-a:client-xyz').digest('base64url');
const OTHER_AAD = createHash('sha256').update('partner:tenant-b:client-xyz').digest('base64url');

const entry: SharedEntry = {
  version: 7,
  accessToken: ACCESS,
  refreshToken: REFRESH,
  obtainedAt: 1_800_000_000_123,
  expiresAt: 1_800_003_600_123,
};

const newKey = () => cipherKey(randomBytes(32).toString('base64'));

/** The sealed format: `<version>.<keyId>.<iv>.<tag>.<ciphertext>`. */
function parts(sealed: string): [string, string, string, string, string] {
  const p = sealed.split('.');
  expect(p).toHaveLength(5);
  return p as [string, string, string, string, string];
}

/** Flips one bit of one byte of a base64url part (decoded, so the damage is exactly one byte). */
function flipByte(sealed: string, index: 3 | 4, byte = 0): string {
  const p = parts(sealed);
  const raw = Buffer.from(p[index], 'base64url');
  raw[byte] = (raw[byte] ?? 0) ^ 0x01;
  p[index] = raw.toString('base64url');
  return p.join('.');
}

/**
 * Every base64 and base64url rendering of a secret as it would appear inside a longer encoded text:
 * one per alignment (the secret starting at byte offset 0, 1 or 2 of a 3-byte group), keeping only
 * the characters that depend on the secret alone.
 */
function base64Forms(secret: string): string[] {
  const forms: string[] = [];
  for (let shift = 0; shift < 3; shift++) {
    const encoded = Buffer.concat([Buffer.alloc(shift, 0x41), Buffer.from(secret)]).toString('base64');
    const start = Math.ceil((shift * 4) / 3);
    const end = Math.floor(((shift + secret.length) * 8) / 6);
    const b64 = encoded.slice(start, end);
    forms.push(b64, b64.replaceAll('+', '-').replaceAll('/', '_'));
  }
  return forms;
}

describe('EntryCipher', () => {
  it('seals and opens an entry, keeping every field', () => {
    const cipher = new EntryCipher(newKey());
    expect(cipher.open(cipher.seal(entry, AAD), AAD)).toStrictEqual(entry);
    // Without a refresh token (client credentials), and with version 0.
    const bare: SharedEntry = { version: 0, accessToken: 'a', refreshToken: undefined, obtainedAt: 1, expiresAt: 2 };
    expect(cipher.open(cipher.seal(bare, AAD), AAD)).toStrictEqual(bare);
  });

  it('uses a fresh IV per seal: the same entry never seals to the same text', () => {
    const cipher = new EntryCipher(newKey());
    const one = parts(cipher.seal(entry, AAD));
    const two = parts(cipher.seal(entry, AAD));
    expect(Buffer.from(one[2], 'base64url')).toHaveLength(12);
    expect(one[2]).not.toBe(two[2]);
    expect(one[4]).not.toBe(two[4]);
  });

  it('leaves no token text in the sealed value, neither plain nor in any base64 form', () => {
    const cipher = new EntryCipher(newKey());
    const sealed = cipher.seal(entry, AAD);
    const forbidden = [ACCESS, REFRESH, ...base64Forms(ACCESS), ...base64Forms(REFRESH)];
    // The check can fail: an unencrypted JSON rendering in base64/base64url is caught by it.
    const plainJson = JSON.stringify({ a: ACCESS, r: REFRESH, o: entry.obtainedAt, e: entry.expiresAt });
    for (const encoding of ['base64', 'base64url'] as const) {
      const leaked = Buffer.from(plainJson).toString(encoding);
      expect(base64Forms(ACCESS).some((f) => leaked.includes(f))).toBe(true);
      expect(base64Forms(REFRESH).some((f) => leaked.includes(f))).toBe(true);
    }
    expect(forbidden.filter((f) => sealed.includes(f))).toEqual([]);
    // Nor fragments: no 12-character run of either token.
    for (const secret of [ACCESS, REFRESH]) {
      for (let i = 0; i + 12 <= secret.length; i++) expect(sealed).not.toContain(secret.slice(i, i + 12));
    }
  });

  it('opens values sealed with a previous key after rotation, and seals new ones with the new key', () => {
    const oldKey = newKey();
    const rotatedKey = newKey();
    const before = new EntryCipher(oldKey);
    const sealedOld = before.seal(entry, AAD);
    expect(parts(sealedOld)[1]).toBe(oldKey.id);

    const after = new EntryCipher(rotatedKey, [oldKey]);
    expect(after.open(sealedOld, AAD)).toStrictEqual(entry);
    const sealedNew = after.seal({ ...entry, version: 8 }, AAD);
    expect(parts(sealedNew)[1]).toBe(rotatedKey.id);
    expect(rotatedKey.id).not.toBe(oldKey.id);
    expect(after.open(sealedNew, AAD)).toStrictEqual({ ...entry, version: 8 });

    // Once the previous key is dropped, what it sealed no longer opens.
    expect(() => new EntryCipher(rotatedKey).open(sealedOld, AAD)).toThrow(oldKey.id);
  });

  it('binds a value to its Redis key: a value sealed under one AAD does not open under another', () => {
    const cipher = new EntryCipher(newKey());
    const sealed = cipher.seal(entry, AAD);
    expect(() => cipher.open(sealed, OTHER_AAD)).toThrow();
    expect(() => cipher.open(sealed, '')).toThrow();
    expect(cipher.open(sealed, AAD)).toStrictEqual(entry);
  });

  it('rejects a value with one byte of the ciphertext or of the tag flipped', () => {
    const cipher = new EntryCipher(newKey());
    const sealed = cipher.seal(entry, AAD);
    const ctLength = Buffer.from(parts(sealed)[4], 'base64url').length;
    expect(() => cipher.open(flipByte(sealed, 4, 0), AAD)).toThrow();
    expect(() => cipher.open(flipByte(sealed, 4, ctLength - 1), AAD)).toThrow();
    expect(() => cipher.open(flipByte(sealed, 3, 0), AAD)).toThrow();
    expect(() => cipher.open(flipByte(sealed, 3, 15), AAD)).toThrow();
    // The untouched value still opens (the flips above are what broke it).
    expect(cipher.open(sealed, AAD)).toStrictEqual(entry);
  });

  it('rejects a value sealed with an unknown key, naming the key id', () => {
    const stranger = newKey();
    const sealed = new EntryCipher(stranger).seal(entry, AAD);
    const cipher = new EntryCipher(newKey(), [newKey()]);
    expect(() => cipher.open(sealed, AAD)).toThrow(`entry sealed with unknown key ${stranger.id}`);
  });

  it('rejects malformed values', () => {
    const cipher = new EntryCipher(newKey());
    expect(() => cipher.open('', AAD)).toThrow();
    expect(() => cipher.open('1.abc', AAD)).toThrow();
    expect(() => cipher.open('not a sealed value', AAD)).toThrow();
  });

  it('cipherKey accepts exactly 32 bytes of base64 and names the key by its hash', () => {
    const raw = randomBytes(32);
    const key = cipherKey(raw.toString('base64'));
    expect(key.key.equals(raw)).toBe(true);
    expect(key.id).toMatch(/^[0-9a-f]{8}$/);
    expect(key.id).toBe(createHash('sha256').update(raw).digest('hex').slice(0, 8));
    expect(keyId(raw)).toBe(key.id);
    expect(key.id).not.toBe(raw.toString('hex').slice(0, 8));

    for (const length of [0, 16, 31, 33, 64]) {
      expect(() => cipherKey(randomBytes(length).toString('base64')), `${length} bytes`).toThrow(
        `must be 32 bytes of base64 (got ${length} bytes)`,
      );
    }
    // A 32-character string is not a 32-byte key.
    expect(() => cipherKey('x'.repeat(32))).toThrow(/32 bytes/);
  });

  it('names a cache key by HMAC-SHA256 under an HKDF-derived key: a fixed answer, never the plain SHA-256 or an HMAC under the key itself', () => {
    // Known answer, computed outside Node (Python's hmac per RFC 5869 and RFC 2104): a change of
    // scheme would orphan every shared entry, so it must be deliberate (a new info label).
    const fixed = cipherKey(Buffer.from(Array.from({ length: 32 }, (_, i) => i)).toString('base64'));
    expect(nameKey(fixed.key).toString('hex')).toBe('5d2c8568a36f82ab4272a71f366e82b36d8e304780eb1943b090d0bc091019a9');
    const cacheKey = 'partner:tenant-a:client-xyz';
    const name = new EntryCipher(fixed).name(cacheKey);
    expect(name).toBe('ZBJtFD--6IvAJr9SIodSGdIR6OYvV-4SO4nNpEqQ5I0');
    expect(name).toBe(createHmac('sha256', nameKey(fixed.key)).update(cacheKey).digest('base64url'));
    expect(name).not.toBe(AAD); // the plain SHA-256 of the cache key
    expect(name).not.toBe(createHmac('sha256', fixed.key).update(cacheKey).digest('base64url'));
    // Another encryption key, or a previous key beside it, changes nothing about the primary's name but its own.
    expect(new EntryCipher(fixed, [newKey()]).name(cacheKey)).toBe(name);
    expect(new EntryCipher(fixed, [newKey()]).keyId).toBe(fixed.id);
    expect(new EntryCipher(newKey(), [fixed]).name(cacheKey)).not.toBe(name);
  });

  it('lists the names under previous keys in their order, leaving out the primary key and repeats', () => {
    const [primary, k1, k2] = [newKey(), newKey(), newKey()];
    const cacheKey = 'partner:tenant-a:client-xyz';
    const nameUnder = (k: typeof primary) => new EntryCipher(k).name(cacheKey);
    expect(new EntryCipher(primary).previousNames(cacheKey)).toEqual([]);
    expect(new EntryCipher(primary, [k2, primary, k1, k2]).previousNames(cacheKey)).toEqual([
      nameUnder(k2),
      nameUnder(k1),
    ]);
  });

  it('EntryCipher.versionOf reads the clear version without a key', () => {
    const cipher = new EntryCipher(newKey());
    for (const version of [0, 1, 42, 9_007_199_254]) {
      const sealed = cipher.seal({ ...entry, version }, AAD);
      expect(EntryCipher.versionOf(sealed)).toBe(version);
      expect(sealed.startsWith(`${version}.`)).toBe(true);
    }
  });

  it('refuses shortened tags and a tampered clear version (both are authenticated)', () => {
    const cipher = new EntryCipher(newKey());
    const sealed = cipher.seal({ ...entry, version: 7 }, AAD);
    const [v, id, iv, tag, ct] = sealed.split('.') as [string, string, string, string, string];
    const short = Buffer.from(tag, 'base64url').subarray(0, 4).toString('base64url');
    expect(() => cipher.open([v, id, iv, short, ct].join('.'), AAD)).toThrow();
    expect(() => cipher.open(sealed.replace(/^7\./, '99.'), AAD)).toThrow();
    expect(cipher.open(sealed, AAD).version).toBe(7);
  });
});
