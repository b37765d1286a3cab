import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { flatString } from './flat-string.js';
import type { Token } from './token.js';

/** The in-memory tier: bounded, shared by all upstreams (and later tenants). */
export class TokenCache {
  readonly #lru: LRUCache<string, Token>;

  constructor(maxEntries: number) {
    this.#lru = new LRUCache({ max: maxEntries });
  }

  get(key: string): Token | undefined {
    return this.#lru.get(key);
  }

  set(key: string, token: Token): void {
    this.#lru.set(key, token);
  }

  delete(key: string): void {
    this.#lru.delete(key);
  }

  get size(): number {
    return this.#lru.size;
  }
}

/**
 * One cache entry per set of everything that shapes a token, so a changed secret, scope or
 * endpoint never reuses an old token. The parts are hashed: the key itself holds no secret. 96 bits
 * of SHA-256 (16 base64url characters) keep apart far more shapes than a deployment has (two meet
 * by chance only around 2^48 of them), in a key that is short because 100,000 tenants keep one each.
 */
export function cacheKey(upstream: string, shape: Readonly<Record<string, string | undefined>>): string {
  const hash = createHash('sha256');
  for (const name of Object.keys(shape).sort()) hash.update(`${name}\u0000${shape[name] ?? ''}\u0000`);
  return flatString(`${upstream}:${hash.digest('base64url').slice(0, 16)}`);
}
