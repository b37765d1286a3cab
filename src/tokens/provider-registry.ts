import { TokenProvider, type ProviderGrant, type ProviderOptions } from './provider.js';

/**
 * One TokenProvider per cache key, kept by the app across reloads. A reload builds its upstreams
 * anew, but an unchanged upstream has the same key (the key is made of everything that shapes the
 * token), so it gets the same provider with the new grant: the fetch under way, the newest refresh
 * token and the failure state carry over.
 */
export class TokenProviders {
  readonly #byKey = new Map<string, TokenProvider>();
  readonly #common: Omit<ProviderOptions, 'key'>;

  constructor(common: Omit<ProviderOptions, 'key'>) {
    this.#common = common;
  }

  /** The key's provider, made on first use, now serving `grant`. */
  provide(key: string, grant: ProviderGrant): TokenProvider {
    let provider = this.#byKey.get(key);
    if (provider === undefined) {
      provider = new TokenProvider({ ...this.#common, key }, grant);
      this.#byKey.set(key, provider);
    } else {
      provider.setGrant(grant);
    }
    return provider;
  }

  /** After a reload: forgets the keys no upstream uses any more (requests still finishing keep their own reference). */
  keepOnly(keys: Iterable<string>): void {
    const keep = new Set(keys);
    for (const key of this.#byKey.keys()) if (!keep.has(key)) this.#byKey.delete(key);
  }
}
