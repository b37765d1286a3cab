import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'tp-tenants-'));
const TOKEN_URL = 'https://auth.partner.example/oauth/token';

/** An upstream with `tenants`; `auth` holds the shared settings only unless a test adds more. */
const tenanted = (auth: Record<string, unknown>, credentials: Record<string, unknown>, name = 'partner') => ({
  name,
  target: 'https://api.partner.example',
  pathPrefix: `/${name}`,
  auth,
  tenants: { from: 'header:X-Tenant', credentials },
});

function problems(doc: unknown, env: Record<string, string> = {}): readonly string[] {
  try {
    buildConfig(doc, { env, baseDir: dir });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('tenants without upstream-level credentials', () => {
  it('loads client credentials set only per tenant, each tenant with its own and the shared settings', () => {
    writeFileSync(join(dir, 'globex-secret.txt'), 'globex-secret\n');
    const config = buildConfig(
      {
        upstreams: [
          tenanted(
            {
              type: 'client_credentials',
              tokenUrl: TOKEN_URL,
              clientAuth: 'client_secret_post',
              scope: 'api',
              audience: 'https://api.partner.example',
              clockSkewSeconds: 10,
            },
            {
              acme: { clientId: 'acme-client', clientSecret: 'acme-secret' },
              globex: { clientId: 'globex-client', clientSecretFile: 'globex-secret.txt', scope: 'api admin' },
            },
          ),
        ],
      },
      { env: {}, baseDir: dir },
    );
    const u = config.upstreams[0];
    const shared = {
      type: 'client_credentials',
      tokenUrl: TOKEN_URL,
      clientAuth: 'client_secret_post',
      audience: 'https://api.partner.example',
      clockSkewSeconds: 10,
    };
    expect(u?.tenants?.auth['acme']).toMatchObject({
      ...shared,
      clientId: 'acme-client',
      clientSecret: 'acme-secret',
      scope: 'api',
    });
    expect(u?.tenants?.auth['globex']).toMatchObject({
      ...shared,
      clientId: 'globex-client',
      clientSecret: 'globex-secret',
      scope: 'api admin',
    });
    // The upstream's own auth keeps what the tenants share, and no credential of any of them.
    expect(u?.auth).toMatchObject(shared);
    expect(u?.auth).not.toHaveProperty('clientId');
    expect(u?.auth).not.toHaveProperty('clientSecret');
  });

  it('loads every grant with its credentials set only per tenant', () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(join(dir, 'acme-key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const config = buildConfig(
      {
        upstreams: [
          tenanted(
            { type: 'client_credentials', tokenUrl: TOKEN_URL, clientAuth: 'private_key_jwt' },
            {
              acme: { clientId: 'acme-client', privateKey: { file: 'acme-key.pem', alg: 'ES256', kid: 'k1' } },
            },
            'jwt',
          ),
          tenanted(
            { type: 'password', tokenUrl: TOKEN_URL, clientAuth: 'none' },
            {
              acme: { clientId: 'acme-client', username: 'acme-user', password: 'acme-pass' },
            },
            'password',
          ),
          tenanted(
            { type: 'refresh_token', tokenUrl: TOKEN_URL, clientId: 'shared-client', clientAuth: 'none' },
            {
              acme: { refreshToken: 'acme-rt' },
            },
            'refresh',
          ),
          tenanted(
            { type: 'login', loginUrl: 'https://partner.example/login' },
            {
              acme: { username: 'acme-user', password: 'acme-pass' },
            },
            'login',
          ),
        ],
      },
      { env: {}, baseDir: dir },
    );
    const acme = (i: number) => config.upstreams[i]?.tenants?.auth['acme'];
    expect(acme(0)).toMatchObject({ clientId: 'acme-client', privateKey: { alg: 'ES256', kid: 'k1' } });
    expect(acme(0)).toHaveProperty('privateKey.pem', expect.stringContaining('BEGIN PRIVATE KEY'));
    expect(acme(1)).toMatchObject({
      type: 'password',
      clientId: 'acme-client',
      username: 'acme-user',
      password: 'acme-pass',
    });
    expect(acme(2)).toMatchObject({ type: 'refresh_token', clientId: 'shared-client', refreshToken: 'acme-rt' });
    expect(acme(3)).toMatchObject({ type: 'login', username: 'acme-user', password: 'acme-pass' });
  });

  it('keeps upstream-level credentials as the default of a tenant that does not override them', () => {
    const config = buildConfig(
      {
        upstreams: [
          tenanted(
            { type: 'client_credentials', tokenUrl: TOKEN_URL, clientId: 'shared', clientSecret: 'shared-s' },
            {
              acme: { clientSecret: 'acme-s' },
              globex: {},
            },
          ),
        ],
      },
      { env: {} },
    );
    const auth = config.upstreams[0]?.tenants?.auth;
    expect(auth?.['acme']).toMatchObject({ clientId: 'shared', clientSecret: 'acme-s' });
    expect(auth?.['globex']).toMatchObject({ clientId: 'shared', clientSecret: 'shared-s' });
  });

  it('names a tenant left without a required credential, with its full path', () => {
    expect(
      problems({
        upstreams: [
          tenanted(
            { type: 'client_credentials', tokenUrl: TOKEN_URL, clientAuth: 'client_secret_post' },
            {
              ok: { clientId: 'ok-client', clientSecret: 'ok-secret' },
              acme: { clientId: 'acme-client' },
            },
          ),
        ],
      }),
    ).toEqual([
      'upstreams[0].tenants.credentials.acme.clientSecret: required for clientAuth client_secret_post (set it here or at upstreams[0].auth)',
    ]);
  });

  it('reports every missing credential at once, together with the other problems', () => {
    const found = problems({
      listen: 'everywhere',
      upstreams: [
        tenanted(
          { type: 'client_credentials', tokenUrl: TOKEN_URL },
          {
            acme: { clientId: 'acme-client' },
            globex: { scope: 'api' },
          },
        ),
        tenanted(
          { type: 'password', tokenUrl: TOKEN_URL, clientId: 'c', clientAuth: 'none' },
          {
            acme: { username: 'acme-user' },
          },
          'second',
        ),
        tenanted({ type: 'login', loginUrl: 'https://partner.example/login' }, { acme: {} }, 'third'),
      ],
    });
    const at = (i: number, tenant: string, field: string, need: string) =>
      `upstreams[${i}].tenants.credentials.${tenant}.${field}: required ${need} (set it here or at upstreams[${i}].auth)`;
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^listen: must be host:port/),
        at(0, 'acme', 'clientSecret', 'for clientAuth client_secret_basic'),
        at(0, 'globex', 'clientId', 'for grant client_credentials'),
        at(0, 'globex', 'clientSecret', 'for clientAuth client_secret_basic'),
        at(1, 'acme', 'password', 'for grant password'),
        at(2, 'acme', 'username', 'for grant login'),
        at(2, 'acme', 'password', 'for grant login'),
      ]),
    );
    expect(found).toHaveLength(7);
  });

  it('still refuses an upstream without tenants and without credentials, as before', () => {
    const plain = (auth: Record<string, unknown>) => ({
      name: 'partner',
      target: 'https://api.partner.example',
      pathPrefix: '/partner',
      auth: { type: 'client_credentials', tokenUrl: TOKEN_URL, ...auth },
    });
    expect(problems({ upstreams: [plain({ clientSecret: 's' })] })).toEqual([
      expect.stringMatching(/^upstreams\[0\]\.auth\.clientId: /),
    ]);
    expect(problems({ upstreams: [plain({ clientId: 'c' })] })).toEqual([
      'upstreams[0].auth.clientSecret: set exactly one of clientSecret or clientSecretFile',
    ]);
    expect(problems({ upstreams: [plain({ clientId: 'c', clientAuth: 'private_key_jwt' })] })).toEqual([
      'upstreams[0].auth.privateKey: clientAuth private_key_jwt needs privateKey.file',
    ]);
    expect(problems({ upstreams: [plain({ type: 'refresh_token', clientId: 'c', clientAuth: 'none' })] })).toEqual([
      'upstreams[0].auth.refreshToken: set exactly one of refreshToken or refreshTokenFile',
    ]);
    expect(
      problems({ upstreams: [plain({ type: 'password', clientId: 'c', clientAuth: 'none', password: 'p' })] }),
    ).toEqual([expect.stringMatching(/^upstreams\[0\]\.auth\.username: /)]);
  });

  it('`check` prints each missing tenant credential with its path, and summarises a good config', async () => {
    const cli = resolve('dist/cli.js');
    const run = async (file: string) => {
      try {
        const { stdout, stderr } = await promisify(execFile)('node', [cli, 'check', '--config', file], {
          env: { PATH: process.env['PATH'] ?? '', ACME_SECRET: 'acme-secret-7f3' },
        });
        return { code: 0, stdout, stderr };
      } catch (err) {
        const e = err as { code: number; stdout: string; stderr: string };
        return { code: e.code, stdout: e.stdout, stderr: e.stderr };
      }
    };
    const yaml = (acme: string) =>
      [
        'upstreams:',
        '  - name: partner',
        '    target: https://api.partner.example',
        '    pathPrefix: /partner',
        '    auth: { type: client_credentials, tokenUrl: https://auth.partner.example/t, clientAuth: client_secret_post }',
        '    tenants:',
        '      from: header:X-Tenant',
        '      credentials:',
        `        acme: ${acme}`,
        '        globex: { clientId: globex-client, clientSecret: globex-s }',
        '',
      ].join('\n');
    writeFileSync(join(dir, 'bad.yaml'), yaml('{ clientId: acme-client }'));
    writeFileSync(join(dir, 'good.yaml'), yaml('{ clientId: acme-client, clientSecret: "${ACME_SECRET}" }'));
    const bad = await run(join(dir, 'bad.yaml'));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(
      'upstreams[0].tenants.credentials.acme.clientSecret: required for clientAuth client_secret_post (set it here or at upstreams[0].auth)',
    );
    const good = await run(join(dir, 'good.yaml'));
    expect(good.code).toBe(0);
    expect(good.stdout).toContain(
      'acme: grant client_credentials at https://auth.partner.example/t, client acme-client',
    );
    expect(good.stdout).toContain(
      'globex: grant client_credentials at https://auth.partner.example/t, client globex-client',
    );
    expect(good.stdout).not.toContain('acme-secret-7f3');
  });
});
