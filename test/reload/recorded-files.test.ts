import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { recordingReads } from '../../src/config/files.js';
import { loadConfigFile } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { CERT_DIR, testPki } from '../helpers/certs.js';
import jsonSchema from '../../config/token-proxy.schema.json' with { type: 'json' };

const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-recorded-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A file of the test's own, mode 0600 (private keys are refused otherwise). */
function file(name: string, content: string | Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  chmodSync(path, 0o600);
  return path;
}

describe('the files a configuration is read from', () => {
  it('records every file setting it read, in every part of the configuration, and nothing else', () => {
    const f = {
      upstreamCa: file('upstream-ca.pem', pki.ca),
      mtlsCert: file('client.pem', pki.cert),
      mtlsKey: file('client-key.pem', pki.key),
      secret: file('client-secret', 'the-secret\n'), // named relatively in the file
      mitmCert: file('mitm-ca.pem', pki.ca),
      mitmKey: file('mitm-ca-key.pem', readFileSync(join(CERT_DIR, 'ca-key.pem'))),
      redisCa: file('redis-ca.pem', pki.ca),
      redisKey: file('redis-key', randomBytes(32).toString('base64')),
      jwtCa: file('idp-ca.pem', pki.ca),
      password: file('proxy-password', 'pw\n'),
    };
    const config = file(
      'token-proxy.yaml',
      stringify({
        upstreams: [
          {
            name: 'partner',
            target: 'https://127.0.0.1:8443',
            pathPrefix: '/partner',
            ca: f.upstreamCa,
            auth: {
              type: 'client_credentials',
              tokenUrl: 'https://127.0.0.1:8444/token',
              clientId: 'proxy-client',
              clientSecretFile: 'client-secret', // relative: resolved against the config's directory
              mtls: { cert: f.mtlsCert, key: f.mtlsKey },
            },
          },
        ],
        mitm: { caCert: f.mitmCert, caKey: f.mitmKey },
        tokenCache: { redis: { url: 'rediss://127.0.0.1:6379', ca: f.redisCa, encryptionKeyFile: f.redisKey } },
        inbound: {
          jwt: { jwksUrl: 'https://127.0.0.1:8445/jwks', issuer: 'https://idp/', audience: 'tp', ca: f.jwtCa },
          proxyAuth: { users: [{ name: 'app', passwordFile: f.password }] },
        },
      }),
    );
    const read = new Set<string>();
    try {
      recordingReads(read, () => loadConfigFile(config));
    } catch (e) {
      throw new Error((e as ConfigError).problems.join('; '));
    }
    expect([...read].sort()).toEqual([config, ...Object.values(f)].sort());
  });

  it('records the files a failed load looked for, a missing one too, and records nothing outside a load', () => {
    const config = file(
      'broken.yaml',
      stringify({
        upstreams: [
          {
            name: 'partner',
            target: 'https://127.0.0.1:8443',
            pathPrefix: '/partner',
            auth: {
              type: 'client_credentials',
              tokenUrl: 'https://127.0.0.1:8444/token',
              clientId: 'proxy-client',
              clientSecretFile: 'not-there',
            },
          },
        ],
      }),
    );
    const read = new Set<string>();
    expect(() => recordingReads(read, () => loadConfigFile(config))).toThrow(ConfigError);
    expect([...read]).toEqual([config, join(dir, 'not-there')]);
    expect(() => loadConfigFile(config)).toThrow(ConfigError);
    expect([...read]).toHaveLength(2); // the load outside recordingReads added nothing
  });

  it('does not watch a file read afresh for every token request (actorTokenFile) until it is missing', () => {
    const actor = file('actor.jwt', 'actor-token\n');
    const exchangeConfig = (actorTokenFile: string) =>
      file(
        'exchange.yaml',
        stringify({
          upstreams: [
            {
              name: 'partner',
              target: 'https://127.0.0.1:8443',
              pathPrefix: '/partner',
              auth: {
                type: 'token_exchange',
                tokenUrl: 'https://127.0.0.1:8444/token',
                clientId: 'proxy-client',
                clientSecret: 'inline',
                actorTokenFile,
              },
            },
          ],
          inbound: { jwt: { jwksUrl: 'https://127.0.0.1:8445/jwks', issuer: 'https://idp/', audience: 'tp' } },
        }),
      );
    // Rotated in place by the platform and read at each exchange: a reload would only drop the pools.
    const config = exchangeConfig(actor);
    const read = new Set<string>();
    try {
      recordingReads(read, () => loadConfigFile(config));
    } catch (e) {
      throw new Error((e as ConfigError).problems.join('; '));
    }
    expect([...read]).toEqual([config]);
    // Missing, it makes the load fail: watched, so that its arrival reloads.
    const missing = join(dir, 'actor-not-there.jwt');
    const broken = exchangeConfig(missing);
    const failed = new Set<string>();
    expect(() => recordingReads(failed, () => loadConfigFile(broken))).toThrow(ConfigError);
    expect([...failed]).toEqual([broken, missing]);
  });

  it('records a file for every file setting of the schema: a new one cannot be left unwatched', () => {
    // Read afresh at every token request, so never reloaded for (see the actorTokenFile test).
    const readAtEachUse = [
      'upstreams[].auth.clientAssertionFile',
      'upstreams[].auth.assertionFile',
      'upstreams[].auth.actorTokenFile',
    ];
    const fromSchema = fileSettings(jsonSchema).filter((s) => !readAtEachUse.includes(s));
    // One file per setting, named for it, so that what was recorded tells which settings were read.
    const named = (setting: string, content: string | Buffer) =>
      file(`setting-${setting.replace(/\[\]/g, '').replace(/\*/g, 'tenant')}`, content);
    const byFile = new Map<string, string>();
    const f = (setting: string, content: string | Buffer) => {
      const path = named(setting, content);
      byFile.set(path, setting);
      return path;
    };
    const signingKey = () =>
      generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    const base = (name: string) => ({
      name,
      target: 'https://127.0.0.1:8443',
      pathPrefix: `/${name}`,
    });
    const tokenUrl = 'https://127.0.0.1:8444/token';
    const config = file(
      'every-file-setting.yaml',
      stringify({
        upstreams: [
          {
            ...base('secret'),
            ca: f('upstreams[].ca', pki.ca),
            mtls: { cert: f('upstreams[].mtls.cert', pki.cert), key: f('upstreams[].mtls.key', pki.key) },
            auth: {
              type: 'client_credentials',
              tokenUrl,
              clientId: 'c',
              clientSecretFile: f('upstreams[].auth.clientSecretFile', 's'),
              mtls: { cert: f('upstreams[].auth.mtls.cert', pki.cert), key: f('upstreams[].auth.mtls.key', pki.key) },
            },
          },
          {
            ...base('signed'),
            auth: {
              type: 'client_credentials',
              tokenUrl,
              clientId: 'c',
              clientAuth: 'private_key_jwt',
              privateKey: { file: f('upstreams[].auth.privateKey.file', signingKey()), alg: 'ES256' },
              dpop: { key: f('upstreams[].auth.dpop.key', signingKey()) },
            },
          },
          {
            ...base('password'),
            auth: {
              type: 'password',
              tokenUrl,
              clientId: 'c',
              clientSecret: 'inline',
              username: 'u',
              passwordFile: f('upstreams[].auth.passwordFile', 'p'),
            },
            tenants: {
              from: 'jwtClaim:client_id',
              credentials: {
                acme: {
                  clientSecretFile: f('upstreams[].tenants.credentials.*.clientSecretFile', 's'),
                  passwordFile: f('upstreams[].tenants.credentials.*.passwordFile', 'p'),
                },
                beta: { scope: 'b' }, // uses auth's passwordFile (a file replaced by every tenant is not read)
              },
            },
          },
          {
            ...base('refresh'),
            auth: {
              type: 'refresh_token',
              tokenUrl,
              clientId: 'c',
              clientAuth: 'private_key_jwt',
              privateKey: { file: named('auth-key-of-refresh', signingKey()), alg: 'ES256' },
              refreshTokenFile: f('upstreams[].auth.refreshTokenFile', 'r'),
            },
            tenants: {
              from: 'jwtClaim:client_id',
              credentials: {
                acme: {
                  privateKey: { file: f('upstreams[].tenants.credentials.*.privateKey.file', signingKey()) },
                  refreshTokenFile: f('upstreams[].tenants.credentials.*.refreshTokenFile', 'r'),
                },
                beta: { scope: 'b' },
              },
            },
          },
        ],
        mitm: { caCert: f('mitm.caCert', pki.ca), caKey: f('mitm.caKey', readFileSync(join(CERT_DIR, 'ca-key.pem'))) },
        tokenCache: {
          redis: {
            url: 'rediss://127.0.0.1:6379',
            ca: f('tokenCache.redis.ca', pki.ca),
            encryptionKeyFile: f('tokenCache.redis.encryptionKeyFile', randomBytes(32).toString('base64')),
          },
        },
        inbound: {
          jwt: {
            jwksUrl: 'https://127.0.0.1:8445/jwks',
            issuer: 'https://idp/',
            audience: 'tp',
            ca: f('inbound.jwt.ca', pki.ca),
          },
          proxyAuth: { users: [{ name: 'app', passwordFile: f('inbound.proxyAuth.users[].passwordFile', 'pw') }] },
        },
      }),
    );
    const read = new Set<string>();
    try {
      recordingReads(read, () => loadConfigFile(config));
    } catch (e) {
      throw new Error((e as ConfigError).problems.join('; '));
    }
    const settingsRead = [...read].flatMap((path) => byFile.get(path) ?? []);
    // A setting added to the schema and not to this config fails here: add it above.
    expect([...byFile.values()].sort()).toEqual(fromSchema.sort());
    expect(settingsRead.sort()).toEqual(fromSchema.sort());
  });
});

/**
 * Every setting of the configuration's JSON Schema that names a file the proxy reads: `…File`,
 * `privateKey.file`, and the PEM settings (`ca`, `cert`, `key`, `caCert`, `caKey`), as paths like
 * `upstreams[].auth.clientSecretFile` (`[]` an array item, `*` a map entry such as a tenant).
 */
function fileSettings(schema: unknown): string[] {
  const found = new Set<string>();
  const walk = (node: unknown, path: string): void => {
    if (node === null || typeof node !== 'object') return;
    const n = node as Record<string, unknown>;
    for (const [key, value] of Object.entries((n['properties'] ?? {}) as Record<string, unknown>)) {
      const at = path === '' ? key : `${path}.${key}`;
      const { description } = value as { description?: unknown };
      const pem = typeof description === 'string' && description.startsWith('PEM');
      if (key.endsWith('File') || key === 'file' || pem) found.add(at);
      walk(value, at);
    }
    if (n['items'] !== undefined) walk(n['items'], `${path}[]`);
    if (typeof n['additionalProperties'] === 'object') walk(n['additionalProperties'], `${path}.*`);
    for (const k of ['anyOf', 'oneOf', 'allOf']) for (const branch of (n[k] ?? []) as unknown[]) walk(branch, path);
  };
  walk(schema, '');
  return [...found];
}
