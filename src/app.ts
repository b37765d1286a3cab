import { EventEmitter, once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import { createAdminServer } from './admin/server.js';
import { readinessView } from './admin/readiness-view.js';
import { RELOAD_OUTCOMES, ReloadRecord, type ReloadDetail, type ReloadOutcome } from './admin/reload-record.js';
import { buildStatus, type ReloadInfo, type StatusSources } from './admin/status.js';
import { upstreamTokens } from './admin/upstream-tokens.js';
import type { Config } from './config/load.js';
import { parseListen } from './config/schema.js';
import { exposureProblem } from './config/exposure.js';
import { ConfigError } from './errors.js';
import { canonicalIp } from './proxy/ip-literal.js';
import { urlHost } from './proxy/request-target.js';
import { createLogger } from './logger.js';
import { createMetrics, type Metrics } from './metrics.js';
import { createProxyServer } from './proxy/server.js';
import { readmitDetached } from './proxy/detached.js';
import { REFUSAL_REASONS } from './proxy/respond.js';
import { CIRCUIT_STATE_VALUE } from './proxy/circuit-breaker.js';
import { PartnerGuards } from './partner-protection.js';
import { SelfAddresses } from './proxy/self-addresses.js';
import { buildGeneration, type Generation } from './generation.js';
import type { BackoffPolicy } from './tokens/backoff.js';
import { systemClock, type Clock } from './tokens/clock.js';
import type { TokenProvider } from './tokens/provider.js';
import { TokenProviders } from './tokens/provider-registry.js';
import { TokenCache } from './tokens/token-cache.js';
import { EntryCipher, cipherKey } from './tokens/entry-cipher.js';
import { RedisTokenStore } from './tokens/redis-store.js';
import { configWarnings } from './config/warnings.js';
import type { SharedTokenStore } from './tokens/shared-store.js';
import { createTracing, type TracingOptions } from './tracing/otel-tracing.js';

export { EGRESS_UPSTREAM } from './generation.js';

export interface AppOptions {
  readonly logger?: Logger;
  readonly registry?: Registry;
  readonly clock?: Clock;
  readonly backoff?: BackoffPolicy;
  /** The config file the process was started with: shown on the status page. */
  readonly configFile?: string;
  /**
   * The status page's circuit-breaker and reload sources; without `reload` it shows the start-up
   * load and App.reload's outcomes, without `breakerState` every breaker as not configured.
   */
  readonly statusHooks?: Pick<StatusSources, 'breakerState' | 'reload'>;
  /** Export timing of the trace SDK (tests and the bench shorten the batch delay). */
  readonly tracing?: TracingOptions;
}

export interface App {
  /** The configuration in force (the newest one after a reload). */
  readonly config: Config;
  readonly metrics: Metrics;
  readonly registry: Registry;
  readonly logger: Logger;
  /** Emits `sharedCache` (boolean) when the Redis tier comes up or goes away. */
  readonly events: EventEmitter;
  /** Whether the shared tier answers (undefined without one). */
  sharedCacheUp(): boolean | undefined;
  /** Token sources by `upstream` (or `upstream/tenant`). */
  readonly tokens: ReadonlyMap<string, TokenProvider>;
  listen(): Promise<{ proxy: AddressInfo; admin: AddressInfo }>;
  /**
   * Swaps in a new configuration without dropping requests: new requests use it at once, requests
   * in flight finish on the old one. Listener addresses, Redis and tenant-label changes need a
   * restart and are reported in the returned warnings. A configuration that would leave the
   * listener, as bound, reachable from other machines without a guard is rejected (ConfigError,
   * logged as config_reload_rejected) and the running one stays.
   */
  reload(next: Config, trigger?: string): Promise<string[]>;
  /**
   * A reload that failed before reload() was reached (the new file could not be read or parsed):
   * the status page shows it as the last reload, outcome `rejected`.
   */
  reloadRejected(problems?: readonly string[], trigger?: string): void;
  /** The last (re)load: when, its outcome, what triggered it and why it was rejected (for the status page). */
  reloadInfo(): ReloadInfo;
  /** Stops accepting, lets in-flight requests finish for up to `shutdownTimeoutSeconds`, then closes. */
  close(): Promise<void>;
}

/** The Redis tier, when configured; its health and failures feed the metrics. */
function createSharedStore(
  config: Config,
  metrics: Metrics,
  logger: Logger,
  events: EventEmitter,
): SharedTokenStore | undefined {
  const redis = config.tokenCache.redis;
  if (redis === undefined) return undefined;
  metrics.sharedCacheUp.set(0);
  return new RedisTokenStore({
    connection: redis.connection,
    keyPrefix: redis.keyPrefix,
    lockTimeoutMs: redis.lockTimeoutMs,
    cipher: new EntryCipher(cipherKey(redis.encryptionKey), redis.previousEncryptionKeys.map(cipherKey)),
    logger,
    onHealth: (up) => {
      metrics.sharedCacheUp.set(up ? 1 : 0);
      events.emit('sharedCache', up);
    },
    onError: (operation) => metrics.sharedCacheErrors.labels(operation).inc(),
  });
}

export function createApp(initial: Config, options: AppOptions = {}): App {
  const logger = options.logger ?? createLogger(initial.logLevel);
  const registry = options.registry ?? new Registry();
  const tenantLabel = initial.upstreams.some((u) => u.tenants !== undefined);
  // Tracing (and the exemplars it gives the histograms) lives as long as the process.
  const tracing = initial.tracing === undefined ? undefined : createTracing(initial.tracing, logger, options.tracing);
  const metrics = createMetrics(registry, { tenantLabel, exemplars: tracing !== undefined });
  const clock = options.clock ?? systemClock;
  const cache = new TokenCache(initial.tokenCache.maxEntries);
  const events = new EventEmitter();
  const store = createSharedStore(initial, metrics, logger, events);
  const shared =
    store === undefined || initial.tokenCache.redis === undefined
      ? undefined
      : {
          store,
          lockTimeoutMs: initial.tokenCache.redis.lockTimeoutMs,
          refreshTokenTtlMs: initial.tokenCache.redis.refreshTokenTtlSeconds * 1000,
        };
  // Callers' providers (token exchange) are bounded like the tokens they hold.
  const providers = new TokenProviders(
    { cache, clock, backoff: options.backoff, shared },
    initial.tokenCache.maxEntries,
  );
  // The listeners' bound addresses, known after listen; every generation's egress guard reads them.
  const self = new SelfAddresses();
  const deps = {
    metrics,
    clock,
    logger,
    sharedTier: shared !== undefined,
    providers,
    self,
    guards: new PartnerGuards(),
    tracing,
  };
  for (const warning of configWarnings(initial)) logger.warn({ event: 'config_warning', warning }, warning);
  let generation: Generation = buildGeneration(initial, deps);
  const sources = new Map(generation.sources);

  // Read at scrape time: the current generation's upstreams (an old one's last requests drain unseen).
  metrics.sampleHeld((inHand, replayBytes) => {
    inHand.reset();
    for (const u of generation.upstreams) inHand.labels(u.name).set(u.guard?.held ?? u.queue.held);
    replayBytes.set(ctx.replayBudget.held);
  });
  // Only upstreams with a circuit breaker have the series (0 closed, 1 half-open, 2 open).
  metrics.sampleCircuits((gauge) => {
    gauge.reset();
    for (const u of generation.upstreams) {
      const breaker = u.guard?.breaker;
      if (breaker !== undefined) gauge.labels(u.name).set(CIRCUIT_STATE_VALUE[breaker.state]);
    }
  });
  // Every reason exported from the start at 0, so a rate() or an alert sees the first refusal.
  for (const reason of REFUSAL_REASONS) metrics.refusals.labels(reason).inc(0);
  const {
    server: proxy,
    ctx,
    inFlight,
  } = createProxyServer(
    generation.routing,
    logger,
    initial.limits,
    { inc: (reason) => metrics.refusals.labels(reason).inc() },
    tracing,
  );
  let listening = false;
  let closing = false;
  const reloads = new ReloadRecord(options.configFile, clock.now());
  // Every outcome exported from the start at 0, so an alert on rejected reloads sees the first one.
  for (const outcome of RELOAD_OUTCOMES) metrics.configReloads.labels(outcome).inc(0);
  metrics.configLastReloadSuccess.set(clock.now() / 1000);
  metrics.configLastReloadSuccessful.set(1);
  // As Prometheus and Alertmanager report their own reloads: an alert needs "the newest file is not in force".
  const recordReload = (outcome: ReloadOutcome, detail?: ReloadDetail): void => {
    metrics.configReloads.labels(outcome).inc();
    metrics.configLastReloadSuccessful.set(outcome === 'success' ? 1 : 0);
    if (outcome === 'success') metrics.configLastReloadSuccess.set(clock.now() / 1000);
    reloads.record(outcome, clock.now(), detail);
  };
  const statusSources: StatusSources = {
    now: () => clock.now(),
    upstreams: () => upstreamTokens(generation.config.upstreams, generation.sources.values()),
    sharedCacheUp: () => store?.up,
    configFile: options.configFile,
    reload: () => reloads.info(),
    // Read-only: the breaker of the current configuration's upstream (issue 21 part 3).
    breakerState: (name) => generation.upstreams.find((u) => u.name === name)?.guard?.breaker?.state,
    ...options.statusHooks,
  };
  const admin = createAdminServer(
    registry,
    {
      ready: () => listening && !closing && generation.warm.every((t) => t.status().state === 'valid'),
      details: () => ({
        ...(store === undefined ? {} : { sharedCache: store.up ? 'up' : 'down (replicas fetch tokens on their own)' }),
        tokens: [...generation.sources.values()].map((t) => readinessView(t.status())),
      }),
    },
    () => buildStatus(statusSources),
  );
  /** Fetches a warm-up token, retrying with growing pauses until one is in hand. */
  const warmUp = (source: TokenProvider, pauseMs = 1_000): void => {
    source.obtain().catch(() => {
      if (
        !closing &&
        generation.sources.get(
          source.tenant === undefined ? source.upstream : `${source.upstream}/${source.tenant}`,
        ) === source
      ) {
        setTimeout(() => warmUp(source, Math.min(pauseMs * 2, 30_000)), pauseMs).unref();
      }
    });
  };

  async function listenOn(server: Server, address: string): Promise<AddressInfo> {
    const { host, port } = parseListen(address) ?? { host: '127.0.0.1', port: 0 };
    server.listen(port, host);
    await once(server, 'listening');
    const bound = server.address() as AddressInfo;
    self.add(bound); // before any request is served: the guard knows the address from the start
    return bound;
  }

  let proxyBound: AddressInfo | undefined;
  /**
   * The inbound rule for a listener reachable from other machines, judged on the address the
   * proxy listener is actually bound to: at start-up (a name may resolve elsewhere than its text
   * says) and on every reload (which cannot move the listener: a new file naming 127.0.0.1 leaves
   * the socket bound to 0.0.0.0). Undefined before listen: the config's own check then holds.
   */
  function boundExposure(config: Config): string | undefined {
    if (proxyBound === undefined) return undefined;
    const address = canonicalIp(proxyBound.address) ?? proxyBound.address;
    const reverseMode = config.upstreams.some((u) => u.pathPrefix !== undefined);
    return exposureProblem(`${urlHost(address)}:${proxyBound.port}`, address, config.inbound, reverseMode);
  }

  /** Settings that live in listeners and process-wide objects: they change only with a restart. */
  function restartOnly(prev: Config, next: Config): string[] {
    const notes: string[] = [];
    if (prev.listen !== next.listen) notes.push('listen');
    if (prev.admin.listen !== next.admin.listen) notes.push('admin.listen');
    if (JSON.stringify(prev.limits) !== JSON.stringify(next.limits)) notes.push('limits');
    if (JSON.stringify(prev.tokenCache) !== JSON.stringify(next.tokenCache)) notes.push('tokenCache');
    if (JSON.stringify(prev.tracing) !== JSON.stringify(next.tracing)) notes.push('tracing');
    if (next.upstreams.some((u) => u.tenants !== undefined) !== tenantLabel)
      notes.push('tenants (the metrics tenant label)');
    return notes.map((n) => `${n} changed: takes effect after a restart`);
  }

  return {
    get config() {
      return generation.config;
    },
    metrics,
    registry,
    logger,
    tokens: sources,
    events,
    sharedCacheUp: () => store?.up,
    async listen() {
      const proxyAddress = await listenOn(proxy, initial.listen);
      proxyBound = proxyAddress;
      const exposed = boundExposure(initial);
      if (exposed !== undefined) {
        await new Promise<void>((resolve) => proxy.close(() => resolve()));
        throw new ConfigError([exposed]);
      }
      const adminAddress = await listenOn(admin, initial.admin.listen);
      listening = true;
      for (const source of generation.warm) warmUp(source);
      logger.info(
        {
          event: 'listening',
          proxy: `${proxyAddress.address}:${proxyAddress.port}`,
          admin: `${adminAddress.address}:${adminAddress.port}`,
          upstreams: initial.upstreams.map((u) => u.name),
        },
        'token-proxy is listening',
      );
      return { proxy: proxyAddress, admin: adminAddress };
    },
    async reload(next, trigger) {
      const exposed = boundExposure(next);
      if (exposed !== undefined) {
        logger.error(
          { event: 'config_reload_rejected', problems: [exposed] },
          'new configuration rejected: the running one stays',
        );
        recordReload('rejected', { trigger, problems: [exposed] });
        throw new ConfigError([exposed]);
      }
      const warnings = [...restartOnly(generation.config, next), ...configWarnings(next)];
      const previous = generation;
      try {
        generation = buildGeneration(next, deps);
      } catch (err) {
        // The running configuration stays; the caller logs why.
        recordReload('failed', { trigger, problems: [(err as Error).message] });
        throw err;
      }
      deps.providers.keepOnly(generation.keys);
      ctx.routing = generation.routing; // new requests route with the new config from here on
      recordReload('success', { trigger });
      const closed = readmitDetached(ctx); // tunnels and WebSockets the new config refuses
      if (closed > 0)
        logger.info(
          { event: 'connections_closed_by_reload', closed },
          `reload closed ${closed} tunnel or WebSocket connections it no longer admits`,
        );
      sources.clear();
      for (const [k, v] of generation.sources) sources.set(k, v);
      for (const source of generation.warm) warmUp(source);
      logger.info(
        { event: 'config_reloaded', upstreams: next.upstreams.map((u) => u.name), warnings },
        'configuration reloaded',
      );
      await previous.close(previous.config.shutdownTimeoutSeconds * 1000);
      return warnings;
    },
    reloadRejected(problems, trigger) {
      recordReload('rejected', { trigger, problems });
    },
    reloadInfo: () => reloads.info(),
    async close() {
      closing = true;
      const closed = new Promise<void>((resolve) => proxy.close(() => resolve()));
      proxy.closeIdleConnections();
      await inFlight.idle(generation.config.shutdownTimeoutSeconds * 1000);
      if (inFlight.active > 0)
        logger.warn(
          { event: 'shutdown_timeout', inFlight: inFlight.active },
          'closing connections of requests still in flight',
        );
      proxy.closeAllConnections();
      for (const socket of ctx.detached.keys()) socket.destroy(); // tunnels and WebSockets: no request of theirs is in flight
      await closed;
      await new Promise<void>((resolve) => admin.close(() => resolve()));
      admin.closeAllConnections();
      await generation.close();
      await store?.close();
      await tracing?.shutdown(); // exports the spans still buffered
    },
  };
}
