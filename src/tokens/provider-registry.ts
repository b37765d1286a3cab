import { LRUCache } from 'lru-cache';
import { TokenProvider, type ProviderGrant, type ProviderOptions } from './provider.js';

/** A caller's provider (RFC 8693 token exchange), the key of its upstream's settings, and who made it. */
interface CallerEntry {
  /** The key of the upstream's settings without the caller: a reload that drops it drops this too. */
  readonly base: string;
  readonly provider: TokenProvider;
  /** The configuration generation's source whose grant the provider serves. */
  owner: object;
}

/**
 * One TokenProvider per cache key, kept by the app across reloads. A reload builds its upstreams
 * anew, but an unchanged upstream has the same key (the key is made of everything that shapes the
 * token), so it gets the same provider with the new grant: the fetch under way, the newest refresh
 * token and the failure state carry over.
 *
 * Providers of callers (token exchange) are as many as there are callers: they are kept apart, in
 * an LRU bounded like the token cache (tokenCache.maxEntries), and disposed of when evicted.
 */
export class TokenProviders {
  readonly #byKey = new Map<string, TokenProvider>();
  readonly #callers: LRUCache<string, CallerEntry>;
  readonly #common: Omit<ProviderOptions, 'key'>;

  constructor(common: Omit<ProviderOptions, 'key'>, maxCallers = 1_000) {
    this.#common = common;
    this.#callers = new LRUCache<string, CallerEntry>({
      max: maxCallers,
      dispose: (entry) => entry.provider.dispose(),
    });
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

  /**
   * One caller's provider under `key` (which holds a hash of the caller's token, never the token),
   * made on first use with `grant()`. A provider made by an earlier configuration's `owner` is
   * handed this one's grant, as `provide` does for an unchanged upstream on reload.
   */
  forCaller(base: string, key: string, owner: object, grant: () => ProviderGrant): TokenProvider {
    const entry = this.#callers.get(key);
    if (entry !== undefined) {
      if (entry.owner !== owner) {
        entry.provider.setGrant(grant());
        entry.owner = owner;
      }
      return entry.provider;
    }
    const provider = new TokenProvider({ ...this.#common, key }, grant());
    this.#callers.set(key, { base, provider, owner });
    return provider;
  }

  /** Callers' providers held now (at most maxCallers). */
  get callers(): number {
    return this.#callers.size;
  }

  /** After a reload: forgets the keys no upstream uses any more (requests still finishing keep their own reference). */
  keepOnly(keys: Iterable<string>): void {
    const keep = new Set(keys);
    for (const key of this.#byKey.keys()) if (!keep.has(key)) this.#byKey.delete(key);
    const gone = [...this.#callers.entries()].filter(([, entry]) => !keep.has(entry.base)).map(([key]) => key);
    for (const key of gone) this.#callers.delete(key);
  }
}
