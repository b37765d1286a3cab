import type { Logger } from 'pino';
import { Agent, Pool, type Dispatcher } from 'undici';
import type { Config, ResolvedAuth, UpstreamConfig } from './config/load.js';
import { certificateThumbprint } from './certificate-thumbprint.js';
import type { TokenExchangeSettings } from './config/resolve-auth.js';
import { CallerTokenSources } from './tokens/caller-tokens.js';
import type { ProviderGrant } from './tokens/provider-grant.js';
import type { CallerTokens } from './tokens/reader.js';
import { accessLogFor } from './logger.js';
import { bindRequestMetrics, bindTokenMetrics, type Metrics } from './metrics.js';
import { DpopSigner } from './oauth/dpop-signer.js';
import { createExchangeGrant, createGrant, type Grant } from './oauth/grants.js';
import type { TenantTokens, Upstream } from './proxy/upstream.js';
import type { Clock } from './tokens/clock.js';
import type { TokenProvider } from './tokens/provider.js';
import type { TokenProviders } from './tokens/provider-registry.js';
import { cacheKey } from './tokens/token-cache.js';
import { DEFAULT_RENEWAL_BACKOFF } from './tokens/renewal-policy.js';
import { tlsOptions } from './tls-options.js';
import { UpstreamQueue } from './proxy/upstream-queue.js';
import { guardedDispatcher, partnerGuardFor, type PartnerGuards } from './partner-protection.js';
import type { Tracing } from './tracing/tracing.js';

export interface UpstreamDeps {
  readonly metrics: Metrics;
  readonly clock: Clock;
  readonly logger: Logger;
  /** With a shared tier, replicas spread their refresh moments (see LifetimePolicy.refreshJitter). */
  readonly sharedTier: boolean;
  /** One provider per cache key, kept across reloads. */
  readonly providers: TokenProviders;
  /** Partner guards kept across reloads; without it each configuration builds its own. */
  readonly guards?: PartnerGuards;
  /** OpenTelemetry, when configured: token requests become spans. */
  readonly tracing?: Tracing | undefined;
}

export interface BuiltUpstream {
  readonly upstream: Upstream;
  readonly config: UpstreamConfig;
}

function trimSlash(path: string): string {
  return path.endsWith('/') ? path.slice(0, -1) : path;
}

/**
 * Everything that shapes a token, so a change to any of it (a secret, a scope) means a new cache
 * entry. A DPoP-bound token is useful only with its key (RFC 9449 §6): the key's thumbprint names
 * it, here and in the shared tier, and the key itself never enters the hash. Without DPoP the
 * shape is what it always was (entries of earlier releases stay found).
 */
function tokenShape(
  auth: ResolvedAuth,
  tenant: string | undefined,
  dpop: DpopSigner | undefined,
): Record<string, string | undefined> {
  // The signer's thumbprint: the key the tokens are actually bound to (one per upstream).
  if (auth.type === 'login' || dpop === undefined) return { tenant, auth: JSON.stringify(auth) };
  return {
    tenant,
    auth: JSON.stringify({ ...auth, dpop: undefined }),
    dpop: dpop.thumbprint,
  };
}

/** Builds the runtime objects of every upstream: pools, token sources (one per tenant), bound metrics. */
export class UpstreamFactory {
  readonly #deps: UpstreamDeps;
  readonly #config: Config;
  /** Every dispatcher made, to close on shutdown. */
  readonly dispatchers: Dispatcher[] = [];
  /** Token sources by `upstream` or `upstream/tenant`. */
  readonly sources = new Map<string, TokenProvider>();
  /** The keys of token exchange upstreams' settings, which their callers' keys extend. */
  readonly callerKeys: string[] = [];

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
    // u.mtls is the target's certificate as configured, or auth.mtls by default (see
    // config/certificate-binding.ts): certificate-bound tokens (RFC 8705 §3) need that one.
    const pool = new Pool(target.origin, {
      connect: tlsOptions(u.ca, u.mtls),
      keepAliveTimeout: 30_000,
      connections: u.maxConnections,
    });
    const tokenAgent = new Agent({ connect: tlsOptions(u.ca, u.auth.mtls) });
    this.dispatchers.push(pool, tokenAgent);
    const presented = u.mtls === undefined ? undefined : certificateThumbprint(u.mtls.cert);
    // One signer per upstream: its tenants share the key, and it remembers each server's nonce.
    const dpopKey = u.auth.type === 'login' ? undefined : u.auth.dpop;
    const dpop = dpopKey === undefined ? undefined : new DpopSigner(dpopKey, () => this.#deps.clock.now());
    let tokens: TokenProvider | TenantTokens | CallerTokens;
    if (u.tenants === undefined && u.auth.type === 'token_exchange') {
      tokens = this.#callers(u, u.auth, tokenAgent, presented);
    } else if (u.tenants === undefined) {
      tokens = this.#source(u, u.auth, undefined, tokenAgent, presented, dpop);
    } else {
      // Every tenant's token goes through the one pool, so all are checked against its certificate.
      const byTenant = new Map(
        Object.entries(u.tenants.auth).map(([tenant, auth]) => [
          tenant,
          this.#source(u, auth, tenant, tokenAgent, presented, dpop),
        ]),
      );
      tokens = { from: u.tenants.from, byTenant };
    }
    const guard = this.#deps.guards?.provide(u, this.#deps) ?? partnerGuardFor(u, this.#deps);
    return {
      name: u.name,
      origin: target.origin,
      basePath: trimSlash(target.pathname),
      dispatcher: guardedDispatcher(guard, pool),
      tokens,
      metrics: bindRequestMetrics(metrics, u.name),
      retryBodyLimitBytes: u.retryBodyLimitBytes,
      timeoutMs: u.timeoutSeconds * 1000,
      queue: new UpstreamQueue(
        u.maxConnections + u.maxQueuedRequests,
        metrics.upstreamRejected.labels(u.name, 'queue_full'),
      ),
      logger,
      accessLog: accessLogFor(logger, this.#config.accessLog),
      dpop,
      guard,
    };
  }

  #source(
    u: UpstreamConfig,
    auth: ResolvedAuth,
    tenant: string | undefined,
    tokenAgent: Dispatcher,
    presentedCertificate: string | undefined,
    dpop: DpopSigner | undefined,
  ): TokenProvider {
    const { clock, metrics, providers } = this.#deps;
    const provider = providers.provide(
      cacheKey(u.name, tokenShape(auth, tenant, dpop)),
      this.#providerGrant(
        u,
        auth,
        tenant,
        createGrant(auth, tokenAgent, () => clock.now(), dpop),
        bindTokenMetrics(metrics, u.name, tenant),
        presentedCertificate,
      ),
    );
    this.sources.set(tenant === undefined ? u.name : `${u.name}/${tenant}`, provider);
    return provider;
  }

  /**
   * RFC 8693: one source per caller, each with its own grant (the caller's token as the subject)
   * and its own cache key, sharing the upstream's metrics (no label names a caller).
   */
  #callers(
    u: UpstreamConfig,
    auth: TokenExchangeSettings,
    tokenAgent: Dispatcher,
    presentedCertificate: string | undefined,
  ): CallerTokens {
    const { clock, metrics, providers } = this.#deps;
    const base = cacheKey(u.name, tokenShape(auth, undefined, undefined));
    this.callerKeys.push(base);
    const tokenMetrics = bindTokenMetrics(metrics, u.name, undefined);
    return new CallerTokenSources({
      base,
      providers,
      clock,
      grant: (subjectToken, notAfter) => ({
        ...this.#providerGrant(
          u,
          auth,
          undefined,
          createExchangeGrant(auth, tokenAgent, () => clock.now(), subjectToken),
          tokenMetrics,
          presentedCertificate,
        ),
        notAfter,
      }),
    });
  }

  #providerGrant(
    u: UpstreamConfig,
    auth: ResolvedAuth,
    tenant: string | undefined,
    grant: Grant,
    tokenMetrics: ProviderGrant['metrics'],
    presentedCertificate: string | undefined,
  ): ProviderGrant {
    const { logger, sharedTier, tracing } = this.#deps;
    return {
      tracing:
        tracing === undefined
          ? undefined
          : {
              tracer: tracing,
              labels: { grant: auth.type, clientAuth: 'clientAuth' in auth ? auth.clientAuth : undefined },
            },
      upstream: u.name,
      tenant,
      grant,
      lifetime: {
        refreshBeforeExpiryMs: this.#config.tokenCache.refreshBeforeExpirySeconds * 1000,
        clockSkewMs: auth.clockSkewSeconds * 1000,
        defaultLifetimeMs: auth.defaultTokenLifetimeSeconds * 1000,
        ...(sharedTier ? { refreshJitter: Math.random } : {}),
      },
      waitTimeoutMs: u.tokenWaitTimeoutSeconds * 1000,
      renewalBackoff: {
        initialMs: u.unauthorizedBackoff.initialSeconds * 1000,
        maxMs: Math.max(u.unauthorizedBackoff.initialSeconds, u.unauthorizedBackoff.maxSeconds) * 1000,
        maxPaths: DEFAULT_RENEWAL_BACKOFF.maxPaths,
      },
      metrics: tokenMetrics,
      logger,
      presentedCertificate,
    };
  }
}
