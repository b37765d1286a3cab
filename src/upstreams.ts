import type { Logger } from 'pino';
import { Agent, Pool, type Dispatcher } from 'undici';
import type { Config, ResolvedAuth, UpstreamConfig } from './config/load.js';
import { accessLogFor } from './logger.js';
import { bindRequestMetrics, bindTokenMetrics, type Metrics } from './metrics.js';
import { createGrant } from './oauth/grants.js';
import type { TenantTokens, Upstream } from './proxy/forwarder.js';
import type { BackoffPolicy } from './tokens/backoff.js';
import type { KeyStates } from './tokens/key-state.js';
import { cacheKey, type TokenCache } from './tokens/token-cache.js';
import { TokenSource, type Clock, type SharedSettings } from './tokens/token-source.js';
import { tlsOptions } from './tls-options.js';

export interface UpstreamDeps {
  readonly metrics: Metrics;
  readonly cache: TokenCache;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly backoff: BackoffPolicy | undefined;
  readonly shared: SharedSettings | undefined;
  /** Per-key fetch and refresh-token state, kept across reloads. */
  readonly keyStates: KeyStates;
}

export interface BuiltUpstream {
  readonly upstream: Upstream;
  readonly config: UpstreamConfig;
}

function trimSlash(path: string): string {
  return path.endsWith('/') ? path.slice(0, -1) : path;
}

/** Everything that shapes a token, so a change to any of it (a secret, a scope) means a new cache entry. */
function tokenShape(auth: ResolvedAuth, tenant: string | undefined): Record<string, string | undefined> {
  return { tenant, auth: JSON.stringify(auth) };
}

/** Builds the runtime objects of every upstream: pools, token sources (one per tenant), bound metrics. */
export class UpstreamFactory {
  readonly #deps: UpstreamDeps;
  readonly #config: Config;
  /** Every dispatcher made, to close on shutdown. */
  readonly dispatchers: Dispatcher[] = [];
  /** Token sources by `upstream` or `upstream/tenant`. */
  readonly sources = new Map<string, TokenSource>();

  constructor(config: Config, deps: UpstreamDeps) {
    this.#config = config;
    this.#deps = deps;
  }

  build(): BuiltUpstream[] {
    return this.#config.upstreams.map((u) => ({ upstream: this.#upstream(u), config: u }));
  }

  #upstream(u: UpstreamConfig): Upstream {
    const { logger, metrics } = this.#deps;
    const target = new URL(u.target);
    const pool = new Pool(target.origin, {
      connect: tlsOptions(u.ca, u.mtls),
      keepAliveTimeout: 30_000,
      connections: u.maxConnections,
    });
    const tokenAgent = new Agent({ connect: tlsOptions(u.ca, u.auth.mtls) });
    this.dispatchers.push(pool, tokenAgent);
    let tokens: TokenSource | TenantTokens;
    if (u.tenants === undefined) {
      tokens = this.#source(u, u.auth, undefined, tokenAgent);
    } else {
      const f = u.tenants.from;
      const from: TenantTokens['from'] =
        f === 'proxyAuthUser'
          ? { kind: 'proxyAuthUser' }
          : f.startsWith('jwtClaim:')
            ? { kind: 'jwtClaim', claim: f.slice('jwtClaim:'.length) }
            : { kind: 'header', name: f.slice('header:'.length).toLowerCase() };
      const byTenant = new Map(
        Object.entries(u.tenants.auth).map(([tenant, auth]) => [tenant, this.#source(u, auth, tenant, tokenAgent)]),
      );
      tokens = { from, byTenant };
    }
    return {
      name: u.name,
      origin: target.origin,
      basePath: trimSlash(target.pathname),
      dispatcher: pool,
      tokens,
      metrics: bindRequestMetrics(metrics, u.name),
      retryBodyLimitBytes: u.retryBodyLimitBytes,
      timeoutMs: u.timeoutSeconds * 1000,
      logger,
      accessLog: accessLogFor(logger, this.#config.accessLog),
    };
  }

  #source(u: UpstreamConfig, auth: ResolvedAuth, tenant: string | undefined, tokenAgent: Dispatcher): TokenSource {
    const { clock, logger, metrics, cache, backoff, shared, keyStates } = this.#deps;
    const key = cacheKey(u.name, tokenShape(auth, tenant));
    const source = new TokenSource({
      key,
      state: keyStates.of(key),
      upstream: u.name,
      tenant,
      grant: createGrant(auth, tokenAgent, () => clock.now()),
      cache,
      lifetime: {
        refreshBeforeExpiryMs: this.#config.tokenCache.refreshBeforeExpirySeconds * 1000,
        clockSkewMs: auth.clockSkewSeconds * 1000,
        defaultLifetimeMs: auth.defaultTokenLifetimeSeconds * 1000,
        ...(shared === undefined ? {} : { refreshJitter: Math.random }),
      },
      waitTimeoutMs: u.tokenWaitTimeoutSeconds * 1000,
      unauthorizedRenewalIntervalMs: u.unauthorizedRenewalIntervalSeconds * 1000,
      metrics: bindTokenMetrics(metrics, u.name, tenant),
      logger,
      clock,
      ...(backoff === undefined ? {} : { backoff }),
      shared,
    });
    this.sources.set(tenant === undefined ? u.name : `${u.name}/${tenant}`, source);
    return source;
  }
}
