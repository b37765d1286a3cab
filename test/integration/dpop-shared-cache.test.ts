import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { testPki } from '../helpers/certs.js';
import { startDpopPartner, type DpopPartner } from '../helpers/dpop-partner.js';
import { startOidcServer, type OidcServer } from '../helpers/oidc-server.js';
import { sharedCacheState, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

const pki = testPki();
const KEY = randomBytes(32).toString('base64');
const dir = mkdtempSync(join(tmpdir(), 'tp-dpop-shared-'));
const client = new Agent({ connections: 10 });
let redis: TestRedis;
let oidc: OidcServer;
let partner: DpopPartner;
const replicas: RunningProxy[] = [];

function keyFile(name: string): string {
  const file = join(dir, name);
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  writeFileSync(file, key.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  return file;
}

function doc(dpop: Record<string, unknown>, redisUrl: string) {
  return {
    tokenCache: { redis: { url: redisUrl, encryptionKey: KEY, lockTimeoutMs: 1_000 } },
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        ca: pki.caFile,
        tokenWaitTimeoutSeconds: 5,
        auth: {
          type: 'client_credentials',
          tokenUrl: oidc.tokenUrl,
          clientId: 'fleet-dpop',
          clientSecret: 'fleet-dpop-secret',
          scope: 'api',
          dpop,
        },
      },
    ],
  };
}

async function replica(dpop: Record<string, unknown>): Promise<RunningProxy> {
  const p = await startProxy(doc(dpop, redis.url));
  replicas.push(p);
  await sharedCacheState(p);
  return p;
}

async function get(p: RunningProxy): Promise<number> {
  const res = await client.request({ origin: p.url, path: '/partner/orders', method: 'GET' });
  await res.body.dump();
  return res.statusCode;
}

const issued = () => oidc.calls.filter((c) => c.clientId === 'fleet-dpop' && c.status === 200).length;

beforeAll(async () => {
  redis = await startRedis();
  oidc = await startOidcServer({
    dpop: { requireNonce: false },
    clients: [
      {
        clientId: 'fleet-dpop',
        clientSecret: 'fleet-dpop-secret',
        authMethod: 'client_secret_basic',
        grantTypes: ['client_credentials'],
        scope: 'api',
      },
    ],
  });
  partner = await startDpopPartner({ jwksUrl: oidc.jwksUrl, issuer: oidc.issuer, requireNonce: false });
});

afterAll(async () => {
  await Promise.all(replicas.map((p) => p.close()));
  await Promise.all([partner.close(), oidc.stop(), redis.stop(), client.close()]);
});

describe('DPoP with the shared Redis tier', () => {
  it('refuses a generated DPoP key together with tokenCache.redis', () => {
    let problems: readonly string[] = [];
    try {
      buildConfig(doc({ alg: 'ES256' }, 'redis://127.0.0.1:1'), { env: {} });
    } catch (err) {
      if (err instanceof ConfigError) problems = err.problems;
    }
    expect(problems).toEqual([
      'upstreams[0].auth.dpop.key: required with tokenCache.redis: a key generated at start lives in one process, and the tokens bound to it are useless to the other replicas',
    ]);
    // The same block with a key file is accepted.
    expect(() => buildConfig(doc({ key: keyFile('ok.pem') }, 'redis://127.0.0.1:1'), { env: {} })).not.toThrow();
  });

  it('shares a DPoP token between replicas of one key file, never with a replica of another key', async () => {
    const shared = keyFile('shared.pem');
    const a = await replica({ key: shared });
    const b = await replica({ key: shared });
    expect(await get(a)).toBe(200);
    expect(await get(b)).toBe(200);
    expect(issued()).toBe(1);
    const other = await replica({ key: keyFile('other.pem') });
    expect(await get(other)).toBe(200);
    expect(issued()).toBe(2);
    const seen = partner.seen.slice(-3);
    expect(seen.map((s) => s.verdict)).toEqual(['ok', 'ok', 'ok']);
    expect(seen[1]?.token).toBe(seen[0]?.token);
    expect(seen[2]?.token).not.toBe(seen[0]?.token);
    expect(seen[2]?.tokenClaims?.['cnf']).not.toEqual(seen[0]?.tokenClaims?.['cnf']);
  });
});
