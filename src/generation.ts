import { Agent, type Dispatcher } from 'undici';
import { DEFAULT_UPSTREAM_TIMEOUT_SECONDS, EGRESS_MAX_REQUESTS } from './config/defaults.js';
import type { Config } from './config/load.js';
import { accessLogFor } from './logger.js';
import { bindRequestMetrics } from './metrics.js';
import { InboundJwtValidator } from './inbound/jwt-validator.js';
import { CertificateAuthority } from './mitm/certificate-authority.js';
import { EgressPolicy } from './proxy/egress.js';
import { egressConnector } from './proxy/egress-connector.js';
import { ForwardRouter } from './proxy/forward-router.js';
import { Drain } from './proxy/drain.js';
import { InboundGuard } from './proxy/inbound-guard.js';
import { ReverseRouter } from './proxy/router.js';
import { UpstreamQueue } from './proxy/upstream-queue.js';
import type { SelfAddresses } from './proxy/self-addresses.js';
import type { Routing } from './proxy/context.js';
import type { Upstream } from './proxy/upstream.js';
import type { TokenProvider } from './tokens/provider.js';
import { UpstreamFactory, type UpstreamDeps } from './upstreams.js';

/** The metrics label of traffic forwarded by the egress policy (no upstream, no token). */
export const EGRESS_UPSTREAM = '_egress';

/**
 * What every generation shares: metrics, the token cache (so reloads keep tokens), clock, logger,
 * and the addresses the listeners are bound to (the egress guard keeps them out of reach).
 */
export type GenerationDeps = UpstreamDeps & { readonly self: SelfAddresses };

/**
 * Everything built from one configuration: routing, upstream pools, token sources. A reload
 * builds a new generation and swaps it in; the old one finishes its in-flight requests and is
 * closed. Tokens live in the cache both share, keyed by everything that shapes them, so an
 * unchanged upstream keeps its token and a changed credential gets a new one.
 */
export interface Generation {
  readonly config: Config;
  readonly routing: Routing;
  /** Every upstream, the egress passthrough last: what the held-now gauges read. */
  readonly upstreams: readonly Upstream[];
  /** Token sources by `upstream` or `upstream/tenant`. */
  readonly sources: ReadonlyMap<string, TokenProvider>;
  /** Every cache key this configuration uses, callers' keys by the key of their upstream's settings. */
  readonly keys: readonly string[];
  /** Sources whose upstream asks for warm-up (/readyz waits for them). */
  readonly warm: readonly TokenProvider[];
  /** Waits (at most `graceMs`) for the requests that started on this generation, then closes its pools. */
  close(graceMs?: number): Promise<void>;
}

export function buildGeneration(config: Config, deps: GenerationDeps): Generation {
  const { metrics, logger } = deps;
  const factory = new UpstreamFactory(config, deps);
  const built = factory.build();
  const egress = new EgressPolicy(config.egress, deps.self);
  // Egress traffic resolves names through the policy, so a name pointing at loopback, link-local
  // or metadata addresses, or at the proxy's own listeners (SSRF), is refused unless allowed.
  const egressAgent = new Agent({ connect: egressConnector(egress) });
  const dispatchers: Dispatcher[] = [...factory.dispatchers, egressAgent];
  const accessLog = accessLogFor(logger, config.accessLog);
  const validator = config.inbound.jwt === undefined ? undefined : new InboundJwtValidator(config.inbound.jwt);
  const routing: Routing = {
    reverse: new ReverseRouter(
      built.flatMap(({ upstream, config: u }) =>
        u.pathPrefix === undefined ? [] : [{ prefix: u.pathPrefix, upstream }],
      ),
    ),
    forward: new ForwardRouter(
      built.flatMap(({ upstream, config: u }) => (u.hosts === undefined ? [] : [{ hosts: u.hosts, upstream }])),
    ),
    egress,
    guard: new InboundGuard(config.inbound),
    passthrough: {
      name: EGRESS_UPSTREAM,
      origin: '',
      basePath: '',
      dispatcher: egressAgent,
      tokens: undefined,
      metrics: bindRequestMetrics(metrics, EGRESS_UPSTREAM),
      retryBodyLimitBytes: 0,
      timeoutMs: DEFAULT_UPSTREAM_TIMEOUT_SECONDS * 1000,
      queue: new UpstreamQueue(EGRESS_MAX_REQUESTS),
      logger,
      accessLog,
      dpop: undefined,
      guard: undefined,
    },
    interception:
      config.mitm === undefined
        ? undefined
        : CertificateAuthority.fromPem(config.mitm.caCertPem, config.mitm.caKeyPem, {
            leafValidityDays: config.mitm.leafValidityDays,
            wildcardSuffixes: wildcardSuffixes(config),
            now: () => deps.clock.now(),
          }),
    maxRequestBodyBytes: config.limits.maxRequestBodyBytes,
    drain: new Drain(),
    callerAuth:
      validator === undefined
        ? undefined
        : {
            validator,
            claimHeaders: new Set(Object.values(config.inbound.jwt?.forwardClaims ?? {}).map((h) => h.toLowerCase())),
            count: (result) => metrics.inboundAuth.labels(result).inc(),
          },
  };
  const warmNames = new Set(config.upstreams.filter((u) => u.warmup).map((u) => u.name));
  return {
    config,
    routing,
    upstreams: [...built.map((b) => b.upstream), routing.passthrough],
    sources: factory.sources,
    keys: [...[...factory.sources.values()].map((source) => source.key), ...factory.callerKeys],
    warm: [...factory.sources.values()].filter((s) => warmNames.has(s.upstream)),
    close: async (graceMs = 0) => {
      // A request may still be waiting for its token or reading its body before it dispatches:
      // wait for it, then close (undici's close() lets dispatched requests finish).
      await routing.drain.idle(graceMs);
      await Promise.all(dispatchers.map((d) => d.close()));
      await validator?.close();
    },
  };
}

/** The suffixes of the upstreams' `*.suffix` host patterns: their names share wildcard leaves. */
function wildcardSuffixes(config: Config): string[] {
  return config.upstreams.flatMap((u) => (u.hosts ?? []).flatMap((p) => (p.wildcard ? [p.host] : [])));
}
