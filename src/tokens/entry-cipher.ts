import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import type { SharedEntry } from './shared-store.js';

const ALGORITHM = 'aes-256-gcm';
/** NIST SP 800-38D §8.2: a 96-bit random IV per message. */
const IV_BYTES = 12;
/** Full-length tags only: a shortened tag would be accepted by default and weaken forgery resistance. */
const TAG_BYTES = 16;

export interface CipherKey {
  /** Short id stored beside each value, so a value names the key that sealed it. */
  readonly id: string;
  readonly key: Buffer;
}

/** The id of a key: the first 8 hex digits of its SHA-256 (names it without revealing it). */
export function keyId(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 8);
}

export function cipherKey(base64: string): CipherKey {
  const key = Buffer.from(base64, 'base64');
  if (key.length !== 32) throw new Error(`an encryption key must be 32 bytes of base64 (got ${key.length} bytes)`);
  return { id: keyId(key), key };
}

/**
 * Seals shared entries with AES-256-GCM. New values use the primary key; older keys still open
 * what they sealed, so keys rotate without a flag day: add the new key as primary, keep the old
 * one as previous until the longest entry TTL has passed, then drop it.
 *
 * Format: `<version>.<keyId>.<iv>.<tag>.<ciphertext>` (base64url); the version is in clear so
 * waiting replicas can compare versions without decrypting.
 */
export class EntryCipher {
  readonly #primary: CipherKey;
  readonly #byId: ReadonlyMap<string, CipherKey>;

  constructor(primary: CipherKey, previous: readonly CipherKey[] = []) {
    this.#primary = primary;
    this.#byId = new Map([primary, ...previous].map((k) => [k.id, k]));
  }

  seal(entry: SharedEntry, aad: string): string {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv(ALGORITHM, this.#primary.key, iv, { authTagLength: TAG_BYTES });
    // The AAD binds the value to its Redis key (no swapping entries between keys) and to its clear
    // version (no rewinding or inflating what waiters compare).
    cipher.setAAD(Buffer.from(`${aad}|${entry.version}`));
    const plain = JSON.stringify({
      a: entry.accessToken,
      r: entry.refreshToken,
      o: entry.obtainedAt,
      e: entry.expiresAt,
    });
    const ct = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return [
      String(entry.version),
      this.#primary.id,
      iv.toString('base64url'),
      cipher.getAuthTag().toString('base64url'),
      ct.toString('base64url'),
    ].join('.');
  }

  /** Throws when the value is malformed, sealed by an unknown key, or tampered with. */
  open(value: string, aad: string): SharedEntry {
    const [version, id, iv, tag, ct] = value.split('.');
    const key = id === undefined ? undefined : this.#byId.get(id);
    if (version === undefined || iv === undefined || tag === undefined || ct === undefined || key === undefined) {
      throw new Error(
        key === undefined && id !== undefined ? `entry sealed with unknown key ${id}` : 'malformed entry',
      );
    }
    const ivBytes = Buffer.from(iv, 'base64url');
    const tagBytes = Buffer.from(tag, 'base64url');
    if (ivBytes.length !== IV_BYTES || tagBytes.length !== TAG_BYTES || !/^\d+$/.test(version))
      throw new Error('malformed entry');
    const decipher = createDecipheriv(ALGORITHM, key.key, ivBytes, { authTagLength: TAG_BYTES });
    decipher.setAAD(Buffer.from(`${aad}|${version}`));
    decipher.setAuthTag(tagBytes);
    const plain = Buffer.concat([decipher.update(Buffer.from(ct, 'base64url')), decipher.final()]).toString('utf8');
    const p = JSON.parse(plain) as { a: string; r?: string; o: number; e: number };
    return { version: Number(version), accessToken: p.a, refreshToken: p.r, obtainedAt: p.o, expiresAt: p.e };
  }

  /** The version of a sealed value without opening it. */
  static versionOf(value: string): number {
    return Number(value.slice(0, value.indexOf('.')));
  }
}
