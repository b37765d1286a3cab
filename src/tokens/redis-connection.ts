import { createRequire } from 'node:module';
import type { ConnectionOptions } from 'node:tls';
import { VERIFIED } from '../tls-options.js';
import type * as IoRedis from 'ioredis';
import type { RedisNode } from '../config/redis-schema.js';

/** Access to the data nodes in the Sentinel and Cluster forms. */
interface NodeAccess {
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly tls: boolean;
}

/** Where the shared tier lives: exactly one form is set (the config schema checks it). */
export interface RedisConnection {
  readonly url?: string | undefined;
  readonly sentinel?:
    | (NodeAccess & {
        readonly masterName: string;
        readonly sentinels: readonly RedisNode[];
        readonly db: number;
        readonly sentinelUsername?: string | undefined;
        readonly sentinelPassword?: string | undefined;
      })
    | undefined;
  readonly cluster?: (NodeAccess & { readonly nodes: readonly RedisNode[] }) | undefined;
  /** PEM text of a private CA for TLS connections; verification is never off. */
  readonly caPem?: string | undefined;
}

/** How the client behaves, whatever the form: fail fast, reconnect forever. */
export interface ClientBehaviour {
  readonly enableOfflineQueue: boolean;
  readonly maxRetriesPerRequest: number;
  readonly commandTimeout?: number | undefined;
  readonly connectTimeout: number;
  /** Milliseconds until the next reconnection attempt. */
  readonly retryStrategy: (attempt: number) => number;
}

export type RedisClient = IoRedis.Redis | IoRedis.Cluster;

/**
 * ioredis is loaded when a shared tier is configured, not before: most proxies run without Redis,
 * and loading it cost about 12 MiB of resident size around the import, 19 MB in an idle proxy
 * after its first request (111 → 92 MB; CHANGELOG).
 */
function ioredis(): typeof IoRedis {
  return createRequire(import.meta.url)('ioredis') as typeof IoRedis;
}

/**
 * Opens a client for the configured form. In the Sentinel form ioredis asks the Sentinels for the
 * master and, with `failoverDetector`, reconnects as soon as they announce a new one; in the
 * Cluster form it follows MOVED/ASK redirections and refreshes the slot map itself.
 */
export function connectRedis(connection: RedisConnection, behaviour: ClientBehaviour): RedisClient {
  const tls: ConnectionOptions = connection.caPem === undefined ? VERIFIED : { ...VERIFIED, ca: connection.caPem };
  const { Redis, Cluster } = ioredis();
  if (connection.sentinel !== undefined) {
    const s = connection.sentinel;
    return new Redis({
      ...behaviour,
      name: s.masterName,
      sentinels: [...s.sentinels],
      db: s.db,
      username: s.username,
      password: s.password,
      sentinelUsername: s.sentinelUsername,
      sentinelPassword: s.sentinelPassword,
      failoverDetector: true,
      sentinelRetryStrategy: behaviour.retryStrategy,
      ...(s.tls ? { tls, sentinelTLS: tls, enableTLSForSentinelMode: true } : {}),
    });
  }
  if (connection.cluster !== undefined) {
    const c = connection.cluster;
    const { retryStrategy, enableOfflineQueue, ...perNode } = behaviour;
    return new Cluster([...c.nodes], {
      enableOfflineQueue,
      clusterRetryStrategy: retryStrategy,
      redisOptions: { ...perNode, username: c.username, password: c.password, ...(c.tls ? { tls } : {}) },
    });
  }
  const url = connection.url ?? '';
  return new Redis(url, { ...behaviour, ...(url.startsWith('rediss://') ? { tls } : {}) });
}
