import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto';
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

/**
 * The HKDF info label (RFC 5869 §3.2) of the key that names entries: it ties the derived key to this
 * one use, so it is never the encryption key nor any other key derived from it. A new naming scheme
 * takes a new label.
 */
export const NAME_KEY_INFO = 'token-proxy redis key names v1';

/**
 * The key that names Redis entries, derived from an encryption key with HKDF-SHA256 (RFC 5869;
 * no salt, which the RFC reads as a string of zeros: the input is already a uniformly random key).
 */
export function nameKey(key: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), NAME_KEY_INFO, 32));
}

export function cipherKey(base64: string): CipherKey {
  const key = Buffer.from(base64, 'base64');
  if (key.length !== 32) throw new Error(`an encryption key must be 32 bytes of base64 (got ${key.length} bytes)`);
  return { id: keyId(key), key };
}

/**
 * Seals shared entries with AES-256-GCM, and names them. New values use the primary key; older keys
 * still open what they sealed, so keys rotate without a flag day: add the new key as primary, keep
 * the old one as previous until the longest entry TTL has passed, then drop it.
 *
 * Format: `<version>.<keyId>.<iv>.<tag>.<ciphertext>` (base64url); the version is in clear so
 * waiting replicas can compare versions without decrypting.
 *
 * Names: HMAC-SHA256 (RFC 2104) of the cache key under a key derived from each encryption key
 * (`nameKey`). The cache key is a hash of everything that shapes a token, secrets included, so its
 * plain hash would let whoever reads Redis test guesses of those secrets offline against the key
 * names; an HMAC under a secret key gives them nothing to test against.
 */
export class EntryCipher {
  readonly #primary: CipherKey;
  readonly #byId: ReadonlyMap<string, CipherKey>;
  readonly #primaryNameKey: Buffer;
  /** Of the previous keys, in the order given, without the primary key or repeats. */
  readonly #previousNameKeys: readonly Buffer[];

  constructor(primary: CipherKey, previous: readonly CipherKey[] = []) {
    this.#primary = primary;
    this.#byId = new Map([primary, ...previous].map((k) => [k.id, k]));
    this.#primaryNameKey = nameKey(primary.key);
    const seen = new Set([primary.id]);
    this.#previousNameKeys = previous.filter((k) => !seen.has(k.id) && seen.add(k.id)).map((k) => nameKey(k.key));
  }

  /** The id of the primary key: what replicas that should share entries must agree on. */
  get keyId(): string {
    return this.#primary.id;
  }

  /** The name of a cache key's entry under the primary key (base64url). */
  name(cacheKey: string): string {
    return createHmac('sha256', this.#primaryNameKey).update(cacheKey).digest('base64url');
  }

  /** Its names under the previous keys, in their order: where entries written before a rotation are. */
  previousNames(cacheKey: string): string[] {
    return this.#previousNameKeys.map((k) => createHmac('sha256', k).update(cacheKey).digest('base64url'));
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
