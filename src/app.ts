import { EventEmitter, once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import { Agent } from 'undici';
import { createAdminServer } from './admin/server.js';
import type { Config } from './config/load.js';
import { parseListen } from './config/schema.js';
import { DEFAULT_UPSTREAM_TIMEOUT_SECONDS } from './config/defaults.js';
import { createLogger } from './logger.js';
import { bindRequestMetrics, createMetrics, type Metrics } from './metrics.js';
import { EgressPolicy } from './proxy/egress.js';
import { ForwardRouter } from './proxy/forward-router.js';
import { InboundGuard } from './proxy/inbound-guard.js';
import { ReverseRouter } from './proxy/router.js';
import { createProxyServer } from './proxy/server.js';
import { CertificateAuthority } from './mitm/certificate-authority.js';
import type { BackoffPolicy } from './tokens/backoff.js';
import { TokenCache } from './tokens/token-cache.js';
import { systemClock, type Clock, type TokenSource } from './tokens/token-source.js';
import { UpstreamFactory } from './upstreams.js';
import { EntryCipher, cipherKey } from './tokens/entry-cipher.js';
import { RedisTokenStore } from './tokens/redis-store.js';
import type { SharedTokenStore } from './tokens/shared-store.js';

/** The metrics label of traffic forwarded by the egress policy (no upstream, no token). */
export const EGRESS_UPSTREAM = '_egress';

export interface AppOptions {
  readonly logger?: Logger;
  readonly registry?: Registry;
  readonly clock?: Clock;
  readonly backoff?: BackoffPolicy;
}

export interface App {
  readonly config: Config;
  readonly metrics: Metrics;
  readonly registry: Registry;
  readonly logger: Logger;
  /** Emits `sharedCache` (boolean) when the Redis tier comes up or goes away. */
  readonly events: EventEmitter;
  /** Whether the shared tier answers (undefined without one). */
  sharedCacheUp(): boolean | undefined;
  /** Token sources by `upstream` (or `upstream/tenant`). */
  readonly tokens: ReadonlyMap<string, TokenSource>;
  listen(): Promise<{ proxy: AddressInfo; admin: AddressInfo }>;
  /** Stops accepting, lets in-flight requests finish for up to `shutdownTimeoutSeconds`, then closes. */
  close(): Promise<void>;
}

/** The Redis tier, when configured; its health and failures feed the metrics. */
function createSharedStore(config: Config, metrics: Metrics, logger: Logger, events: EventEmitter): SharedTokenStore | undefined {
  const redis = config.tokenCache.redis;
  if (redis === undefined) return undefined;
  metrics.sharedCacheUp.set(0);
  return new RedisTokenStore({
    url: redis.url,
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

export function createApp(config: Config, options: AppOptions = {}): App {
  const logger = options.logger ?? createLogger(config.logLevel);
  const registry = options.registry ?? new Registry();
  const metrics = createMetrics(registry, { tenantLabel: config.upstreams.some((u) => u.tenants !== undefined) });
  const clock = options.clock ?? systemClock;
  const cache = new TokenCache(config.tokenCache.maxEntries);
  const events = new EventEmitter();
  const store = createSharedStore(config, metrics, logger, events);
  const shared =
    store === undefined || config.tokenCache.redis === undefined
      ? undefined
      : { store, lockTimeoutMs: config.tokenCache.redis.lockTimeoutMs, refreshTokenTtlMs: config.tokenCache.redis.refreshTokenTtlSeconds * 1000 };
  const factory = new UpstreamFactory(config, { metrics, cache, clock, logger, backoff: options.backoff, shared });
  const withConfig = factory.build();
  const dispatchers = factory.dispatchers;
  const egressAgent = new Agent();
  dispatchers.push(egressAgent);
  const proxy = createProxyServer({
    reverse: new ReverseRouter(withConfig.flatMap(({ upstream, config: u }) => (u.pathPrefix === undefined ? [] : [{ prefix: u.pathPrefix, upstream }]))),
    forward: new ForwardRouter(withConfig.flatMap(({ upstream, config: u }) => (u.hosts === undefined ? [] : [{ hosts: u.hosts, upstream }]))),
    egress: new EgressPolicy(config.egress),
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
      logger,
      accessLog: config.accessLog && logger.isLevelEnabled('info'),
    },
    interception: config.mitm === undefined ? undefined : CertificateAuthority.fromPem(config.mitm.caCertPem, config.mitm.caKeyPem),
    logger,
  });
  let listening = false;
  let closing = false;
  // Sources whose upstream asks for warm-up: /readyz waits for their first token.
  const warm = withConfig.flatMap(({ config: u }) => (u.warmup ? [...factory.sources.values()].filter((t) => t.upstream === u.name) : []));
  const admin = createAdminServer(registry, {
    ready: () => listening && !closing && warm.every((t) => t.status().state === 'valid'),
    details: () => ({
      ...(store === undefined ? {} : { sharedCache: store.up ? 'up' : 'down (replicas fetch tokens on their own)' }),
      tokens: [...factory.sources.values()].map((t) => t.status()),
    }),
  });
  /** Fetches a warm-up token, retrying with growing pauses until one is in hand. */
  const warmUp = (source: TokenSource, pauseMs = 1_000): void => {
    source.obtain().catch(() => {
      if (!closing) setTimeout(() => warmUp(source, Math.min(pauseMs * 2, 30_000)), pauseMs).unref();
    });
  };

  let inFlight = 0;
  const idle: (() => void)[] = [];
  proxy.on('request', (_req, res) => {
    inFlight += 1;
    res.once('close', () => {
      inFlight -= 1;
      if (inFlight === 0) idle.splice(0).forEach((resolve) => resolve());
    });
  });

  async function listenOn(server: Server, address: string): Promise<AddressInfo> {
    const { host, port } = parseListen(address) ?? { host: '127.0.0.1', port: 0 };
    server.listen(port, host);
    await once(server, 'listening');
    return server.address() as AddressInfo;
  }

  return {
    config,
    metrics,
    registry,
    logger,
    tokens: factory.sources,
    events,
    sharedCacheUp: () => store?.up,
    async listen() {
      const proxyAddress = await listenOn(proxy, config.listen);
      const adminAddress = await listenOn(admin, config.admin.listen);
      listening = true;
      for (const source of warm) warmUp(source);
      logger.info(
        { event: 'listening', proxy: `${proxyAddress.address}:${proxyAddress.port}`, admin: `${adminAddress.address}:${adminAddress.port}`, upstreams: config.upstreams.map((u) => u.name) },
        'token-proxy is listening',
      );
      return { proxy: proxyAddress, admin: adminAddress };
    },
    async close() {
      closing = true;
      const closed = new Promise<void>((resolve) => proxy.close(() => resolve()));
      proxy.closeIdleConnections();
      if (inFlight > 0) {
        const drained = new Promise<void>((resolve) => idle.push(resolve));
        const limit = new Promise<void>((resolve) => setTimeout(resolve, config.shutdownTimeoutSeconds * 1000).unref());
        await Promise.race([drained, limit]);
        if (inFlight > 0) logger.warn({ event: 'shutdown_timeout', inFlight }, 'closing connections of requests still in flight');
      }
      proxy.closeAllConnections();
      await closed;
      await new Promise<void>((resolve) => admin.close(() => resolve()));
      admin.closeAllConnections();
      await Promise.all(dispatchers.map((d) => d.close()));
      await store?.close();
    },
  };
}
