import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { recordingReads } from '../../src/config/files.js';
import { loadConfigFile } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { CERT_DIR, testPki } from '../helpers/certs.js';

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
});
