import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configJsonSchema } from '../../src/config/json-schema.js';
import { configurationReference } from '../../src/config/reference.js';
import { buildConfig, loadConfigFile } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { testPki } from '../helpers/certs.js';

const upstream = (auth: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  name: 'partner',
  target: 'https://api.partner.example',
  pathPrefix: '/partner',
  ...extra,
  auth: {
    type: 'client_credentials',
    tokenUrl: 'https://auth.partner.example/oauth/token',
    clientId: 'c',
    clientSecret: 's',
    ...auth,
  },
});

function problems(doc: unknown, env: Record<string, string> = {}): readonly string[] {
  try {
    buildConfig(doc, { env });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('configuration', () => {
  it('fills in the documented defaults and freezes the result', () => {
    const config = buildConfig({ upstreams: [upstream()] }, { env: {} });
    expect(config.listen).toBe('127.0.0.1:8080');
    expect(config.admin.listen).toBe('127.0.0.1:9464');
    expect(config.tokenCache).toEqual({ maxEntries: 10_000, refreshBeforeExpirySeconds: 300 });
    const u = config.upstreams[0];
    expect(u?.retryBodyLimitBytes).toBe(1_048_576);
    expect(u?.tokenWaitTimeoutSeconds).toBe(10);
    expect(u?.auth).toMatchObject({ type: 'client_credentials', clientAuth: 'client_secret_basic' });
    expect(u?.auth.defaultTokenLifetimeSeconds).toBe(300);
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(u?.auth)).toBe(true);
  });

  it('replaces ${VAR} from the environment and names an unset one with its path, once', () => {
    const config = buildConfig(
      { upstreams: [upstream({ clientSecret: '${PARTNER_SECRET}' })] },
      { env: { PARTNER_SECRET: 'from-env' } },
    );
    expect(config.upstreams[0]?.auth).toMatchObject({ clientSecret: 'from-env' });
    expect(problems({ upstreams: [upstream({ clientSecret: '${MISSING_SECRET}' })] })).toEqual([
      'upstreams[0].auth.clientSecret: environment variable MISSING_SECRET is not set',
    ]);
  });

  it('reports every problem at once, each with its path', () => {
    const found = problems({
      listen: 'everywhere',
      tokenCache: { maxEntries: 0 },
      upstreams: [
        upstream({ tokenUrl: 'http://auth.partner.example/token', clientAuth: 'magic' }, { pathPrefix: 'partner/' }),
        upstream({ clientSecret: undefined }, { target: 'ftp://x' }),
      ],
    });
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^listen: must be host:port/),
        expect.stringMatching(/^tokenCache\.maxEntries: /),
        expect.stringMatching(/^upstreams\[0\]\.auth\.tokenUrl: must be an https:\/\/ URL/),
        expect.stringMatching(/^upstreams\[0\]\.auth\.clientAuth: /),
        expect.stringMatching(/^upstreams\[0\]\.pathPrefix: must start with "\/"/),
        expect.stringMatching(/^upstreams\[1\]\.target: must be an https:\/\/ URL/),
        expect.stringMatching(
          /^upstreams\[1\]\.auth\.clientSecret: set exactly one of clientSecret or clientSecretFile/,
        ),
        expect.stringMatching(/^upstreams\[1\]\.name: duplicate name "partner"/),
      ]),
    );
    expect(found).toHaveLength(8);
  });

  it('accepts plain http only for loopback hosts', () => {
    expect(
      problems({
        upstreams: [upstream({ tokenUrl: 'http://127.0.0.1:9000/token' }, { target: 'http://localhost:9001' })],
      }),
    ).toEqual([]);
    expect(problems({ upstreams: [upstream({}, { target: 'http://10.0.0.5' })] })).toEqual([
      'upstreams[0].target: must be an https:// URL (plain http:// is accepted only for loopback hosts)',
    ]);
  });

  it('rejects unknown keys so a typo does not silently fall back to a default', () => {
    expect(problems({ upstreams: [upstream({ clientSecert: 'x' })] })).toEqual([
      expect.stringMatching(/^upstreams\[0\]\.auth: Unrecognized key: "clientSecert"/),
    ]);
  });

  it('reads secrets and CA files relative to the config file, dropping the trailing newline', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tp-config-'));
    writeFileSync(join(dir, 'secret.txt'), 'file-secret\n');
    writeFileSync(join(dir, 'ca.pem'), testPki().ca);
    writeFileSync(
      join(dir, 'proxy.yaml'),
      [
        'upstreams:',
        '  - name: p',
        '    target: https://api.example',
        '    pathPrefix: /p',
        '    ca: ./ca.pem',
        '    auth:',
        '      type: client_credentials',
        '      tokenUrl: https://auth.example/t',
        '      clientId: c',
        '      clientSecretFile: secret.txt',
        '',
      ].join('\n'),
    );
    const config = loadConfigFile(join(dir, 'proxy.yaml'), { env: {} });
    expect(config.upstreams[0]?.auth).toMatchObject({ clientSecret: 'file-secret' });
    expect(config.upstreams[0]?.ca).toContain('BEGIN CERTIFICATE');
  });

  it('names missing files and unparseable YAML', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tp-config-'));
    writeFileSync(join(dir, 'bad.yaml'), 'upstreams: [\n  - name: x\n');
    expect(() => loadConfigFile(join(dir, 'bad.yaml'), { env: {} })).toThrow(ConfigError);
    writeFileSync(
      join(dir, 'missing.yaml'),
      JSON.stringify({
        upstreams: [upstream({ clientSecret: undefined, clientSecretFile: 'nope.txt' }, { ca: 'nope.pem' })],
      }),
    );
    try {
      loadConfigFile(join(dir, 'missing.yaml'), { env: {} });
      expect.unreachable();
    } catch (err) {
      expect((err as ConfigError).problems).toEqual([
        `upstreams[0].ca: cannot read ${join(dir, 'nope.pem')} (ENOENT)`,
        `upstreams[0].auth.clientSecretFile: cannot read ${join(dir, 'nope.txt')} (ENOENT)`,
      ]);
    }
  });

  it('lets command-line overrides win over the file', () => {
    const config = buildConfig(
      { listen: '127.0.0.1:1', upstreams: [upstream()] },
      { env: {}, overrides: { listen: '127.0.0.1:2', adminListen: '127.0.0.1:3', logLevel: 'warn' } },
    );
    expect([config.listen, config.admin.listen, config.logLevel]).toEqual(['127.0.0.1:2', '127.0.0.1:3', 'warn']);
  });

  it('ships an example config that validates and a JSON Schema that matches the validator', () => {
    const config = loadConfigFile('config/token-proxy.example.yaml', { env: { PARTNER_CLIENT_SECRET: 'x' } });
    expect(config.upstreams.map((u) => u.name)).toEqual(['partner']);
    const shipped = JSON.parse(readFileSync('config/token-proxy.schema.json', 'utf8')) as unknown;
    expect(shipped).toEqual(configJsonSchema()); // stale? run `npm run schema`
    expect(readFileSync('docs/configuration.md', 'utf8')).toBe(configurationReference());
  });
});

describe('shared cache settings (tokenCache.redis)', () => {
  const KEY = Buffer.alloc(32, 7).toString('base64');
  const withRedis = (redis: Record<string, unknown>) => ({
    upstreams: [upstream()],
    tokenCache: { redis: { encryptionKey: KEY, ...redis } },
  });

  it('accepts one server, Sentinel or Cluster, and reads the CA file', () => {
    const pki = testPki();
    const one = buildConfig(withRedis({ url: 'rediss://:pw@redis.internal:6380/2', ca: pki.caFile }), { env: {} })
      .tokenCache.redis;
    expect(one?.connection).toMatchObject({ url: 'rediss://:pw@redis.internal:6380/2', caPem: pki.ca });
    const sentinel = buildConfig(
      withRedis({
        sentinel: { masterName: 'tokens', sentinels: ['10.0.0.1:26379', '[fd00::2]:26379'], password: 'pw' },
      }),
      { env: {} },
    ).tokenCache.redis;
    expect(sentinel?.connection.sentinel).toEqual({
      masterName: 'tokens',
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: 'fd00::2', port: 26379 },
      ],
      db: 0,
      password: 'pw',
      tls: false,
    });
    const cluster = buildConfig(
      withRedis({ cluster: { nodes: ['redis-0.redis:6379', 'redis-1.redis:6379'], tls: true } }),
      { env: {} },
    ).tokenCache.redis;
    expect(cluster?.connection.cluster).toEqual({
      nodes: [
        { host: 'redis-0.redis', port: 6379 },
        { host: 'redis-1.redis', port: 6379 },
      ],
      tls: true,
    });
    expect(cluster?.keyPrefix).toBe('token-proxy:');
  });

  it('names each mistake', () => {
    expect(problems(withRedis({}))).toEqual([
      'tokenCache.redis.url: set exactly one of url (one server), sentinel or cluster',
    ]);
    expect(problems(withRedis({ url: 'redis://a:6379', cluster: { nodes: ['b:6379'] } }))).toEqual([
      'tokenCache.redis.url: set exactly one of url (one server), sentinel or cluster',
    ]);
    expect(problems(withRedis({ url: 'http://a:6379' }))).toEqual([
      'tokenCache.redis.url: must be a redis:// or rediss:// (TLS) URL',
    ]);
    expect(problems(withRedis({ url: 'redis://a:6379', ca: 'ca.pem' }))).toEqual([
      'tokenCache.redis.ca: a CA only applies to TLS: use a rediss:// url, or tls: true',
    ]);
    expect(problems(withRedis({ url: 'redis://a:6379', keyPrefix: 'tp{x}:' }))).toEqual([
      'tokenCache.redis.keyPrefix: must not contain { or }: the keys carry a Redis Cluster hash tag of their own',
    ]);
    expect(problems(withRedis({ cluster: { nodes: ['redis-0', 'redis-1:99999'] } }))).toEqual([
      'tokenCache.redis.cluster.nodes[0]: must be host:port, e.g. 10.0.0.1:26379',
      'tokenCache.redis.cluster.nodes[1]: must be host:port, e.g. 10.0.0.1:26379',
    ]);
    expect(problems(withRedis({ sentinel: { sentinels: ['s:26379'] } }))[0]).toMatch(
      /^tokenCache\.redis\.sentinel\.masterName: /,
    );
    expect(problems(withRedis({ sentinel: { masterName: 'm', sentinels: [] } }))[0]).toMatch(
      /^tokenCache\.redis\.sentinel\.sentinels: /,
    );
    expect(problems(withRedis({ url: 'redis://a:6379', encryptionKey: 'c2hvcnQ=' }))).toEqual([
      'tokenCache.redis.encryptionKey: must be 32 bytes in base64 (openssl rand -base64 32), got 5 bytes',
    ]);
    expect(problems({ upstreams: [upstream()], tokenCache: { redis: { url: 'redis://a:6379' } } })).toEqual([
      'tokenCache.redis.encryptionKey: set exactly one of encryptionKey or encryptionKeyFile: tokens are never stored in Redis unencrypted',
    ]);
    const dir = mkdtempSync(join(tmpdir(), 'tp-redis-ca-'));
    writeFileSync(join(dir, 'not-a-ca.pem'), 'hello');
    expect(problems(withRedis({ url: 'rediss://a:6380', ca: join(dir, 'not-a-ca.pem') }))).toEqual([
      `tokenCache.redis.ca: ${join(dir, 'not-a-ca.pem')} holds no PEM certificate`,
    ]);
    expect(problems(withRedis({ url: 'rediss://a:6380', ca: join(dir, 'missing.pem') }))).toEqual([
      `tokenCache.redis.ca: cannot read ${join(dir, 'missing.pem')} (ENOENT)`,
    ]);
  });
});

describe('client certificates (mtls)', () => {
  it('checks the certificate, the key and the passphrase at load time', () => {
    const pki = testPki();
    const dir = mkdtempSync(join(tmpdir(), 'tp-mtls-'));
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    writeFileSync(join(dir, 'other.pem'), other.export({ type: 'pkcs8', format: 'pem' }));
    writeFileSync(
      join(dir, 'locked.pem'),
      other.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'right' }),
    );
    const withMtls = (mtls: Record<string, unknown>) => ({ upstreams: [upstream({}, { mtls })] });
    expect(problems(withMtls({ cert: pki.certFile, key: pki.keyFile }))).toEqual([]);
    expect(problems(withMtls({ cert: pki.certFile, key: join(dir, 'other.pem') }))).toEqual([
      'upstreams[0].mtls: cert does not belong to key',
    ]);
    expect(problems(withMtls({ cert: pki.certFile, key: join(dir, 'locked.pem'), passphrase: 'wrong' }))).toEqual([
      'upstreams[0].mtls: key cannot be opened with the passphrase given',
    ]);
    expect(problems(withMtls({ cert: pki.certFile, key: join(dir, 'locked.pem') }))).toEqual([
      'upstreams[0].mtls: key is not a PEM private key (or is encrypted: set passphrase)',
    ]);
    expect(problems(withMtls({ cert: join(dir, 'other.pem'), key: pki.keyFile }))).toEqual([
      'upstreams[0].mtls: cert is not a PEM certificate',
    ]);
  });
});
