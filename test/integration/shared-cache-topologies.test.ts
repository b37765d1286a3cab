import { randomBytes } from 'node:crypto';
import { Cluster, Redis } from 'ioredis';
import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, onTestFinished, vi } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { testPki } from '../helpers/certs.js';
import { startOidcServer, type OidcServer } from '../helpers/oidc-server.js';
import { sharedCacheState, startProxy, type RunningProxy } from '../helpers/proxy.js';
import {
  startRedis,
  startRedisCluster,
  startRedisSentinel,
  type TestRedis,
  type TestRedisCluster,
  type TestRedisSentinel,
} from '../helpers/redis.js';

// The Sentinel, Cluster and TLS forms of the shared tier, each against real redis-server processes.

const pki = testPki();
const KEY = randomBytes(32).toString('base64');
/** Several upstreams, so the cache keys spread over the cluster's hash slots. */
const UPSTREAMS = 8;
let oidc: OidcServer;
let partner: PartnerApi;
let replicas: RunningProxy[] = [];
const client = new Agent({ connections: 400 });

function config(redis: Record<string, unknown>) {
  return {
    // The default lock timeout: a lock outlives a slow token request on a busy machine.
    tokenCache: { redis: { ...redis, encryptionKey: KEY } },
    upstreams: Array.from({ length: UPSTREAMS }, (_, i) => ({
      name: `partner${i}`,
      target: partner.url,
      pathPrefix: `/p${i}`,
      ca: pki.caFile,
      tokenWaitTimeoutSeconds: 5,

      auth: {
        type: 'client_credentials',
        tokenUrl: oidc.tokenUrl,
        clientId: 'fleet-client',
        clientSecret: 'fleet-secret',
        scope: 'api',
      },
    })),
  };
}

async function fleet(
  n: number,
  redis: Record<string, unknown>,
  options: { up?: boolean } = {},
): Promise<RunningProxy[]> {
  const made = await Promise.all(Array.from({ length: n }, () => startProxy(config(redis))));
  replicas.push(...made);
  if (options.up !== false) await Promise.all(made.map((p) => sharedCacheState(p)));
  return made;
}

async function get(p: RunningProxy, path: string) {
  const res = await client.request({ origin: p.url, path, method: 'GET' });
  await res.body.dump();
  return res.statusCode;
}

/** `count` requests spread over the replicas and every upstream, all at once. */
function burst(proxies: readonly RunningProxy[], count: number, tag: string): Promise<number[]> {
  return Promise.all(
    Array.from({ length: count }, (_, i) =>
      get(proxies[i % proxies.length] as RunningProxy, `/p${i % UPSTREAMS}/${tag}${i}`),
    ),
  );
}

function tokenRequests(): number {
  return oidc.calls.filter((c) => c.status === 200).length;
}

/** Makes the partner reject every token it has accepted so far: the next requests meet a 401 storm. */
function revokeAll(): void {
  for (const s of partner.seen) if (s.token !== undefined) partner.revoked.add(s.token);
}

/** Resolves once the replica's shared tier has gone away and come back (a reconnection). */
function reconnection(p: RunningProxy): Promise<void> {
  return new Promise((resolve, reject) => {
    let wentDown = false;
    const timer = setTimeout(() => reject(new Error('no reconnection within 15 s')), 15_000);
    const onChange = (up: boolean) => {
      if (!up) wentDown = true;
      else if (wentDown) {
        clearTimeout(timer);
        p.app.events.off('sharedCache', onChange);
        resolve();
      }
    };
    p.app.events.on('sharedCache', onChange);
  });
}

beforeAll(async () => {
  oidc = await startOidcServer({
    clients: [
      {
        clientId: 'fleet-client',
        clientSecret: 'fleet-secret',
        authMethod: 'client_secret_basic',
        grantTypes: ['client_credentials'],
        scope: 'api',
      },
    ],
  });
  partner = await startPartnerApi({
    jwksUrl: oidc.jwksUrl,
    issuer: oidc.issuer,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
  });
});

afterAll(async () => {
  await partner.close();
  await oidc.stop();
  await client.close();
});

beforeEach(() => {
  oidc.calls.length = 0;
  partner.seen.length = 0;
  partner.revoked.clear();
});

afterEach(async () => {
  await Promise.all(replicas.map((r) => r.close()));
  replicas = [];
});

describe('Redis Cluster', () => {
  let cluster: TestRedisCluster;
  beforeAll(async () => {
    cluster = await startRedisCluster();
  }, 30_000);
  afterAll(() => cluster?.stop());

  it('shares one token per upstream across 3 replicas, with entries spread over the nodes', async () => {
    const redis = { cluster: { nodes: cluster.nodes } };
    const three = await fleet(3, redis);
    const cold = await burst(three, 240, 'cold');
    expect(cold).toEqual(Array(240).fill(200));
    expect(tokenRequests()).toBe(UPSTREAMS); // one per upstream for the whole fleet

    // Every entry sits with its lock in one slot; the slots belong to different nodes.
    const perNode = await Promise.all(
      cluster.nodes.map(async (node) => {
        const [host, port] = node.split(':');
        const direct = new Redis({ host, port: Number(port) });
        const keys = await direct.keys('*');
        direct.disconnect();
        return keys;
      }),
    );
    const entries = perNode.flat().filter((k) => k.includes(':t:{'));
    expect(entries).toHaveLength(UPSTREAMS);
    expect(perNode.filter((keys) => keys.some((k) => k.includes(':t:{'))).length).toBeGreaterThanOrEqual(2);

    // A 401 storm on every upstream: the fenced write and unlock scripts run on each slot's node.
    revokeAll();
    expect(await burst(three, 240, 'storm')).toEqual(Array(240).fill(200));
    expect(tokenRequests()).toBe(2 * UPSTREAMS);

    // A new replica reads all of them from the cluster.
    const [late] = await fleet(1, redis);
    expect(await burst([late as RunningProxy], UPSTREAMS, 'late')).toEqual(Array(UPSTREAMS).fill(200));
    expect(tokenRequests()).toBe(2 * UPSTREAMS);

    const admin = new Cluster(
      cluster.nodes.map((n) => ({ host: n.split(':')[0] as string, port: Number(n.split(':')[1]) })),
    );
    const values = await Promise.all(entries.map((k) => admin.get(k)));
    await admin.quit();
    const tokens = [...new Set(partner.seen.map((s) => s.token as string))];
    for (const token of tokens) expect(values.join('\n')).not.toContain(token);
  }, 40_000);
});

describe('Redis Sentinel', () => {
  let sentinel: TestRedisSentinel;
  beforeAll(async () => {
    sentinel = await startRedisSentinel();
  }, 30_000);
  afterAll(() => sentinel?.stop());

  it('finds the master through the Sentinel and follows it across a failover', async () => {
    const redis = { sentinel: { masterName: sentinel.masterName, sentinels: [sentinel.sentinel] } };
    const two = await fleet(2, redis);
    expect(await burst(two, 100, 'cold')).toEqual(Array(100).fill(200));
    expect(tokenRequests()).toBe(UPSTREAMS);

    const reconnected = Promise.all(two.map(reconnection));
    const newMaster = await sentinel.failover();
    await reconnected;
    expect(await sentinel.master()).toBe(newMaster);

    // Writes now go to the promoted server: one refresh per upstream for both replicas, and a new
    // replica finds the refreshed entries there (the old master only replicates them now).
    revokeAll();
    expect(await burst(two, 100, 'storm')).toEqual(Array(100).fill(200));
    expect(tokenRequests()).toBe(2 * UPSTREAMS);
    const [late] = await fleet(1, redis);
    expect(await burst([late as RunningProxy], UPSTREAMS, 'late')).toEqual(Array(UPSTREAMS).fill(200));
    expect(tokenRequests()).toBe(2 * UPSTREAMS);
  }, 40_000);
});

describe('Redis over TLS', () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startRedis({ tls: { cert: pki.certFile, key: pki.keyFile, ca: pki.caFile } });
  });
  afterAll(() => redis?.stop());

  it('shares tokens over rediss:// when the server certificate chains to the configured ca', async () => {
    const two = await fleet(2, { url: redis.url, ca: pki.caFile });
    expect(await burst(two, 50, 'tls')).toEqual(Array(50).fill(200));
    expect(tokenRequests()).toBe(UPSTREAMS);
  });

  it('never trusts a certificate it cannot verify: without the ca the tier stays down and requests still succeed', async () => {
    const refused = redis.nextLog(/Error accepting a client connection/); // the handshake was tried, and failed
    // Not even when the environment asks Node to skip verification.
    vi.stubEnv('NODE_TLS_REJECT_UNAUTHORIZED', '0');
    onTestFinished(() => {
      vi.unstubAllEnvs();
    });
    const [alone] = await fleet(1, { url: redis.url }, { up: false });
    const p = alone as RunningProxy;
    expect(await burst([p], UPSTREAMS, 'untrusted')).toEqual(Array(UPSTREAMS).fill(200));
    await refused;
    expect(p.app.sharedCacheUp()).toBe(false);
    expect(p.logs.some((l) => l.includes('"event":"shared_cache_up"'))).toBe(false);
    expect(tokenRequests()).toBe(UPSTREAMS); // fetched on its own
  });
});
