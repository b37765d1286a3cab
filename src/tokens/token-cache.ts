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
 * endpoint never reuses an old token. The parts are hashed: the key itself holds no secret. The key
 * also names the token's shared-tier entry: its form must not change between releases, or replicas
 * of a new release could not find the refresh token of a rotating grant that the old ones hold.
 */
export function cacheKey(upstream: string, shape: Readonly<Record<string, string | undefined>>): string {
  const hash = createHash('sha256');
  for (const name of Object.keys(shape).sort()) hash.update(`${name}\u0000${shape[name] ?? ''}\u0000`);
  return flatString(`${upstream}:${hash.digest('base64url').slice(0, 22)}`);
}
