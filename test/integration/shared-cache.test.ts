import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { join, resolve } from 'node:path';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import { EntryCipher, cipherKey } from '../../src/tokens/entry-cipher.js';
import { RedisTokenStore } from '../../src/tokens/redis-store.js';
import type { SharedLock } from '../../src/tokens/shared-store.js';
import { testPki } from '../helpers/certs.js';
import { startOidcServer, type OidcServer } from '../helpers/oidc-server.js';
import { sharedCacheState, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { startScriptedServer } from '../helpers/scripted-server.js';

const pki = testPki();
const KEY = randomBytes(32).toString('base64');
let redis: TestRedis;
let oidc: OidcServer;
let partner: PartnerApi;
let replicas: RunningProxy[] = [];
const client = new Agent({ connections: 400 });

function config(auth: Record<string, unknown>) {
  return {
    tokenCache: { redis: { url: redis.url, encryptionKey: KEY, lockTimeoutMs: 1_000 } },
    // 401 storms follow each other quickly here: no pause between 401-triggered renewals.
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        pathPrefix: '/partner',
        ca: pki.caFile,
        tokenWaitTimeoutSeconds: 5,

        auth,
      },
    ],
  };
}

const ccAuth = {
  type: 'client_credentials',
  tokenUrl: '',
  clientId: 'fleet-client',
  clientSecret: 'fleet-secret',
  scope: 'api',
};
const pwAuth = {
  type: 'password',
  tokenUrl: '',
  clientId: 'pw-client',
  clientSecret: 'pw-secret',
  username: 'alice',
  password: 'wonderland',
  scope: 'api',
};

async function fleet(n: number, auth: Record<string, unknown>): Promise<RunningProxy[]> {
  const made = await Promise.all(
    Array.from({ length: n }, () => startProxy(config({ ...auth, tokenUrl: oidc.tokenUrl }))),
  );
  await Promise.all(made.map((p) => sharedCacheState(p)));
  replicas.push(...made);
  return made;
}

async function get(p: RunningProxy, path = '/partner/x') {
  const res = await client.request({ origin: p.url, path, method: 'GET' });
  await res.body.dump();
  return res.statusCode;
}

/** A store of the proxy's own kind on the test's Redis, as a replica opens it (same prefix and key), once connected. */
async function openStore(): Promise<RedisTokenStore> {
  let connected: () => void = () => undefined;
  const up = new Promise<void>((resolve) => (connected = resolve));
  const store = new RedisTokenStore({
    connection: { url: redis.url },
    keyPrefix: 'token-proxy:',
    lockTimeoutMs: 1_000,
    cipher: new EntryCipher(cipherKey(KEY)),
    logger: pino({ level: 'silent' }),
    onHealth: (isUp) => isUp && connected(),
  });
  if (!store.up) await up;
  return store;
}

function tokenEndpointCalls(): string[] {
  return oidc.calls.map((c) => `${c.grantType}:${c.status}`);
}

beforeAll(async () => {
  redis = await startRedis();
  oidc = await startOidcServer({
    users: { alice: 'wonderland' },
    clients: [
      {
        clientId: 'fleet-client',
        clientSecret: 'fleet-secret',
        authMethod: 'client_secret_basic',
        grantTypes: ['client_credentials'],
        scope: 'api',
      },
      {
        clientId: 'pw-client',
        clientSecret: 'pw-secret',
        authMethod: 'client_secret_basic',
        grantTypes: ['password', 'refresh_token'],
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
  await redis.stop();
  await client.close();
});

beforeEach(async () => {
  if (!redis.running) await redis.start(); // a test may have left it killed
  const admin = new Redis(redis.url);
  await admin.flushall();
  admin.disconnect();
  oidc.calls.length = 0;
  oidc.usedRefreshTokens.length = 0;
  oidc.issuedRefreshTokens.length = 0;
  partner.seen.length = 0;
  partner.revoked.clear();
});

afterEach(async () => {
  await Promise.all(replicas.map((r) => r.close()));
  replicas = [];
});

describe('shared token cache in Redis', () => {
  it('makes exactly one token request for 300 simultaneous cold requests spread over 3 replicas', async () => {
    const three = await fleet(3, ccAuth);
    const statuses = await Promise.all(
      Array.from({ length: 300 }, (_, i) => get(three[i % 3] as RunningProxy, `/partner/${i}`)),
    );
    expect(statuses).toEqual(Array(300).fill(200));
    expect(tokenEndpointCalls()).toEqual(['client_credentials:200']);
    expect(new Set(partner.seen.map((s) => s.token)).size).toBe(1);
    const metrics = await Promise.all(three.map(async (r) => (await request(`${r.adminUrl}/metrics`)).body.text()));
    const redisHits = metrics.filter((m) =>
      /token_proxy_token_cache_hits_total\{upstream="partner",tier="redis"\} 1/.test(m),
    );
    expect(redisHits).toHaveLength(2); // the two replicas that did not fetch adopted the shared token
  });

  it('a restarted replica reads the valid token from Redis and makes no token request', async () => {
    const [first] = await fleet(1, ccAuth);
    expect(await get(first as RunningProxy)).toBe(200);
    await first?.close();
    replicas = [];
    const [restarted] = await fleet(1, ccAuth);
    expect(await get(restarted as RunningProxy)).toBe(200);
    expect(tokenEndpointCalls()).toEqual(['client_credentials:200']);
    expect(partner.seen.map((s) => s.token)).toEqual([partner.seen[0]?.token, partner.seen[0]?.token]);
  });

  it('passes over a shared entry whose token no Bearer header can carry, and replaces it', async () => {
    const [first] = await fleet(1, ccAuth);
    const key = (first as RunningProxy).app.tokens.get('partner')?.key as string;
    const store = await openStore();
    try {
      const lock = await store.tryLock(key);
      expect(lock).toBeDefined();
      const now = Date.now();
      const poisoned = {
        version: 1,
        accessToken: 'split token\r\nX-Injected: 1',
        refreshToken: undefined,
        obtainedAt: now,
        expiresAt: now + 300_000,
      };
      expect(await store.write(key, poisoned, 60_000, lock as SharedLock)).toBe(true);
      await store.unlock(lock as SharedLock);
      expect(await get(first as RunningProxy)).toBe(200);
      expect(tokenEndpointCalls()).toEqual(['client_credentials:200']);
      const replaced = await store.read(key);
      expect(replaced?.version).toBe(2);
      expect(replaced?.accessToken).toBe(partner.seen[0]?.token);
      expect(partner.seen.map((s) => s.token)).not.toContain(poisoned.accessToken);
    } finally {
      await store.close();
    }
  });

  it('keeps rotating refresh tokens consistent across 3 replicas: zero invalid_grant, zero failed requests', async () => {
    const three = await fleet(3, pwAuth);
    const statuses: number[] = [];
    statuses.push(await get(three[0] as RunningProxy));
    for (let cycle = 0; cycle < 10; cycle++) {
      // The partner rejects the current token; every replica meets the 401 at once.
      partner.revoked.add(partner.seen.filter((s) => s.status === 200).at(-1)?.token as string);
      statuses.push(
        ...(await Promise.all(three.flatMap((r) => [get(r, `/partner/c${cycle}a`), get(r, `/partner/c${cycle}b`)]))),
      );
    }
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(statuses).toHaveLength(61);
    const calls = tokenEndpointCalls();
    expect(calls.filter((c) => c.endsWith(':400'))).toEqual([]);
    expect(calls).toEqual(['password:200', ...Array<string>(10).fill('refresh_token:200')]);
    expect(oidc.usedRefreshTokens).toEqual(oidc.issuedRefreshTokens.slice(0, -1)); // each refresh used the newest one
  });

  it('a refresh that outlasts the lock timeout keeps its lock (a lease): the sibling waits and adopts its result', async () => {
    const [a, b] = (await fleet(2, pwAuth)) as [RunningProxy, RunningProxy];
    expect(await get(a)).toBe(200);
    expect(await get(b)).toBe(200); // adopted from Redis
    partner.revoked.add(partner.seen.at(-1)?.token as string);

    // A meets the 401, takes the lock and sends its refresh, which the token endpoint holds for
    // 1.5 s: longer than the lock's 1 s, shorter than a sibling's wait (twice that). Real time,
    // since what is under test is the lock's expiry in Redis.
    oidc.beforeToken(() => delay(1_500));
    const arrived = oidc.waitForTokenRequest();
    const slowA = get(a, '/partner/slow-a');
    await arrived;
    oidc.beforeToken(undefined);
    // B meets the 401 too, finds the lock still held, and waits for A's entry.
    const [bStatus, aStatus] = await Promise.all([get(b, '/partner/b'), slowA]);
    expect([aStatus, bStatus]).toEqual([200, 200]);
    expect(tokenEndpointCalls()).toEqual(['password:200', 'refresh_token:200']); // one refresh for the fleet
    const aToken = partner.seen.find((s) => s.path === '/slow-a' && s.status === 200)?.token;
    expect(partner.seen.find((s) => s.path === '/b' && s.status === 200)?.token).toBe(aToken);
    expect(oidc.usedRefreshTokens).toEqual(oidc.issuedRefreshTokens.slice(0, 1));
  });

  it('after renewing alone while Redis was unreachable, a replica neither adopts the older shared entry nor spends its refresh token', async () => {
    const [a] = (await fleet(1, pwAuth)) as [RunningProxy];
    expect(await get(a)).toBe(200); // logged in: the shared entry holds T1 and RT1
    redis.pause(); // unreachable, but it keeps that entry
    try {
      partner.revoked.add(partner.seen.at(-1)?.token as string);
      expect(await get(a, '/partner/alone')).toBe(200); // renewed with RT1 without Redis: T2 and RT2 live only in this replica
    } finally {
      redis.resume();
    }
    // The partner rejects T2: the shared entry still offers T1 (not expired, but older than T2)
    // and RT1 (spent). The replica renews with RT2 and writes the result for the fleet.
    partner.revoked.add(partner.seen.at(-1)?.token as string);
    expect(await get(a, '/partner/back')).toBe(200);
    expect(tokenEndpointCalls()).toEqual(['password:200', 'refresh_token:200', 'refresh_token:200']);
    expect(oidc.usedRefreshTokens).toEqual(oidc.issuedRefreshTokens.slice(0, 2));
    // A new replica finds the newest token in Redis: no token request of its own.
    const [b] = (await fleet(1, pwAuth)) as [RunningProxy];
    expect(await get(b, '/partner/newcomer')).toBe(200);
    expect(tokenEndpointCalls()).toHaveLength(3);
    expect(partner.seen.at(-1)?.token).toBe(partner.seen.find((s) => s.path === '/back' && s.status === 200)?.token);
  });

  it("keeps a refresh token the server did not rotate (RFC 6749 §6) in the shared entry, for the refresh token's lifetime", async () => {
    // oidc-provider answers every refresh with a refresh token (the same one when it does not
    // rotate); a server may also leave it out, which only a scripted endpoint shows.
    const grants: string[] = [];
    const endpoint = await startScriptedServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const form = new URLSearchParams(body);
        grants.push(`${form.get('grant_type')}:${form.get('refresh_token') ?? ''}`);
        const answer =
          form.get('grant_type') === 'password'
            ? { access_token: 'login-token', refresh_token: 'the-refresh-token', expires_in: 300, token_type: 'Bearer' }
            : { access_token: `refreshed-${grants.length}`, expires_in: 300, token_type: 'Bearer' }; // no refresh_token
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer));
      });
    });
    const revoked = new Set<string>();
    const target = await startScriptedServer((req, res) => {
      req.resume();
      const token = req.headers.authorization?.slice('Bearer '.length) ?? '';
      res.writeHead(revoked.has(token) ? 401 : 200).end(token);
    });
    try {
      const doc = config({ ...pwAuth, tokenUrl: `${endpoint.url}/token` });
      const one = await startProxy({ ...doc, upstreams: [{ ...doc.upstreams[0], target: target.url, ca: undefined }] });
      replicas.push(one);
      await sharedCacheState(one);
      expect(await get(one)).toBe(200);
      revoked.add('login-token');
      expect(await get(one, '/partner/renewed')).toBe(200);
      expect(grants).toEqual(['password:', 'refresh_token:the-refresh-token']);
      // The entry keeps the refresh token, and lives as long as it may (a day), not the 300 s of the access token.
      const admin = new Redis(redis.url);
      const [key] = (await admin.keys('*')).filter((k) => k.includes(':t:'));
      const ttl = await admin.pttl(key as string);
      admin.disconnect();
      expect(ttl).toBeGreaterThan(86_000_000);
      const store = await openStore();
      try {
        const entry = await store.read(one.app.tokens.get('partner')?.key as string);
        expect(entry).toMatchObject({ accessToken: 'refreshed-2', refreshToken: 'the-refresh-token' });
      } finally {
        await store.close();
      }
    } finally {
      await endpoint.close();
      await target.close();
    }
  });

  it('stores nothing readable in Redis: no token, client id, upstream or tenant name', async () => {
    const [one] = await fleet(1, pwAuth);
    expect(await get(one as RunningProxy)).toBe(200);
    const admin = new Redis(redis.url);
    const keys = await admin.keys('*');
    const values = await Promise.all(keys.map((k) => admin.get(k)));
    const ttls = await Promise.all(keys.map((k) => admin.pttl(k)));
    admin.disconnect();
    const everything = [...keys, ...values].join('\n');
    expect(keys.filter((k) => k.includes(':t:'))).toHaveLength(1);
    for (const secret of [
      partner.seen[0]?.token as string,
      oidc.issuedRefreshTokens[0] as string,
      'pw-client',
      'partner',
      'alice',
      'wonderland',
    ]) {
      expect(everything).not.toContain(secret);
    }
    // TTL of an entry with a refresh token: the refresh token's (a day by default), not the access token's.
    expect(Math.max(...ttls)).toBeGreaterThan(86_000_000);
  });

  it('keeps serving when Redis dies under load, and shares again when it is back', async () => {
    const three = await fleet(3, ccAuth);
    expect(await get(three[0] as RunningProxy)).toBe(200);
    const load = async () => {
      const out: number[] = [];
      for (let i = 0; i < 30; i++) out.push(...(await Promise.all(three.map((r) => get(r, `/partner/load${i}`)))));
      return out;
    };
    const running = load();
    await redis.kill();
    const statuses = await running;
    expect(statuses.every((s) => s === 200)).toBe(true);
    await Promise.all(three.map((r) => sharedCacheState(r, false)));
    const down = (await (await request(`${three[1]?.adminUrl}/readyz`)).body.json()) as {
      status: string;
      sharedCache: string;
    };
    expect(down).toMatchObject({ status: 'ready', sharedCache: 'down (replicas fetch tokens on their own)' });
    expect(await (await request(`${three[1]?.adminUrl}/metrics`)).body.text()).toContain(
      'token_proxy_shared_cache_up 0',
    );
    // While Redis is away a 401 makes each replica fetch on its own: requests still succeed.
    partner.revoked.add(partner.seen.at(-1)?.token as string);
    expect(await Promise.all(three.map((r) => get(r)))).toEqual([200, 200, 200]);

    await redis.start();
    await Promise.all(three.map((r) => sharedCacheState(r)));
    oidc.calls.length = 0;
    // Sharing resumes: one 401 storm, one token request for the whole fleet.
    const current = new Set(partner.seen.slice(-3).map((s) => s.token as string));
    for (const t of current) partner.revoked.add(t);
    expect(await Promise.all(three.map((r) => get(r, '/partner/after')))).toEqual([200, 200, 200]);
    expect(tokenEndpointCalls()).toEqual(['client_credentials:200']);
  });
});

describe('refresh lock', () => {
  it('is taken over within the lock timeout when its holder is SIGKILLed mid-refresh', async () => {
    // The holder is a separate proxy process; its token request hangs, so it dies holding the lock.
    const dir = mkdtempSync(join(tmpdir(), 'tp-lock-'));
    const file = join(dir, 'proxy.json');
    const doc = config({ ...ccAuth, tokenUrl: oidc.tokenUrl });
    writeFileSync(
      file,
      JSON.stringify({ ...doc, listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, logLevel: 'info' }),
    );
    const holder = spawn('node', [resolve('dist/cli.js'), 'serve', '--config', file], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const proxyPort = new Promise<string>((resolvePort, reject) => {
      holder.stdout.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        const m = /"event":"listening","proxy":"127\.0\.0\.1:(\d+)"/.exec(output);
        if (m && output.includes('"event":"shared_cache_up"')) resolvePort(m[1] as string);
      });
      holder.once('exit', () => reject(new Error(`holder exited: ${output}`)));
    });
    const port = await proxyPort;
    let release!: () => void;
    oidc.beforeToken(() => new Promise<void>((resolveHang) => (release = resolveHang)));
    const arrived = oidc.waitForTokenRequest();
    const holding = client
      .request({ origin: `http://127.0.0.1:${port}`, path: '/partner/held', method: 'GET' })
      .catch(() => undefined);
    await arrived; // the holder has the lock and is waiting on the token endpoint
    oidc.beforeToken(undefined);
    const [waiter] = await fleet(1, ccAuth);
    const waiting = get(waiter as RunningProxy); // finds the lock held: waits for the holder
    holder.kill('SIGKILL');
    await once(holder, 'exit');
    expect(await waiting).toBe(200);
    expect(oidc.calls.filter((c) => c.status === 200)).toHaveLength(1); // the waiter's; the holder's never finished
    // Taken over once the dead holder's lock expired (1 s), not given up on (after 2 x 1 s, the
    // waiter would fetch alone): it took the lock and wrote its token to the shared entry.
    const w = waiter as RunningProxy;
    expect(w.logs.filter((l) => l.includes('"event":"shared_cache_bypassed"'))).toEqual([]);
    const store = await openStore();
    try {
      const shared = await store.read(w.app.tokens.get('partner')?.key as string);
      expect(shared?.accessToken).toBe(w.app.tokens.get('partner')?.current()?.value);
    } finally {
      await store.close();
    }
    release();
    await holding;
  });
});
