import { once } from 'node:events';
import { chmodSync, chownSync, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConfig, loadConfigFile } from '../../src/config/load.js';
import { privateKeyModeProblem } from '../../src/config/files.js';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { ConfigError } from '../../src/errors.js';
import { createCaFiles, type CaFiles } from '../../src/mitm/certificate-authority.js';
import { testPki } from '../helpers/certs.js';
import { curl } from '../helpers/clients.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const pki = testPki();
const dir = mkdtempSync(join(tmpdir(), 'tp-interception-'));
let tokenServer: TokenServer;
let partner: PartnerApi;
let ca: CaFiles;

function doc(mitm: Record<string, unknown> = {}) {
  return {
    upstreams: [
      {
        name: 'partner',
        target: partner.url,
        hosts: ['*.partner.example'],
        ca: pki.caFile,
        auth: {
          type: 'client_credentials',
          tokenUrl: tokenServer.tokenUrl,
          clientId: 'wild-client',
          clientSecret: 'wild-secret',
        },
      },
    ],
    mitm: { caCert: ca.certFile, caKey: ca.keyFile, ...mitm },
  };
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  ca = await createCaFiles(join(dir, 'ca'));
});

afterAll(async () => {
  await partner.close();
  await tokenServer.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** CONNECT name:443 through the proxy, then a TLS handshake trusting only the interception CA. */
async function interceptedLeaf(proxy: RunningProxy, name: string): Promise<{ leaf: X509Certificate; tls: Socket }> {
  const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
  socket.write(`CONNECT ${name}:443 HTTP/1.1\r\nHost: ${name}:443\r\n\r\n`);
  const [head] = (await once(socket, 'data')) as [Buffer];
  expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  const tls = tlsConnect({ socket, servername: name, ca: readFileSync(ca.certFile, 'utf8') });
  await once(tls, 'secureConnect');
  expect(tls.authorized).toBe(true);
  return { leaf: new X509Certificate(tls.getPeerCertificate().raw), tls };
}

describe('interception through a real CONNECT', () => {
  it('serves one ECDSA P-256 wildcard leaf, valid 7 days, for every name a client makes up under *.suffix', async () => {
    const proxy = await startProxy(doc());
    try {
      const names = Array.from(
        { length: 20 },
        (_, i) => `r${i}${Math.random().toString(36).slice(2, 8)}.partner.example`,
      );
      const fingerprints = new Set<string>();
      for (const name of names) {
        const { leaf, tls } = await interceptedLeaf(proxy, name);
        tls.destroy();
        fingerprints.add(leaf.fingerprint256);
        expect(leaf.publicKey.asymmetricKeyType).toBe('ec');
        expect(leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
        expect(leaf.subjectAltName).toBe('DNS:*.partner.example');
        expect(leaf.checkHost(name)).toBe('*.partner.example'); // the name the client's check matched
        const validMs = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
        expect(validMs).toBeLessThanOrEqual((7 * 24 + 1) * 3_600_000);
        expect(validMs).toBeGreaterThan(7 * 24 * 3_600_000);
      }
      // One certificate for all twenty names: it was signed once (a new signature has a new serial).
      expect(fingerprints.size).toBe(1);

      // And a real client gets its token injected through it.
      const res = await curl([
        '--proxy',
        proxy.url,
        '--cacert',
        ca.certFile,
        'https://made-up-by-curl.partner.example/w',
      ]);
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body)).toMatchObject({ ok: true, path: '/w', client: 'wild-client' });
    } finally {
      await proxy.close();
    }
  });

  it('shortens the leaves to mitm.leafValidityDays', async () => {
    const proxy = await startProxy(doc({ leafValidityDays: 2 }));
    try {
      const { leaf, tls } = await interceptedLeaf(proxy, 'x.partner.example');
      tls.destroy();
      expect(Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)).toBe((2 * 24 + 1) * 3_600_000);
    } finally {
      await proxy.close();
    }
  });
});

describe('CA key file permissions', () => {
  /** A copy of the CA key with `mode`, owned by uid 1000 when the tests run as root (so not root's). */
  function keyWithMode(name: string, mode: number, owner: 'root' | 'user' = 'user'): string {
    const file = join(dir, name);
    copyFileSync(ca.keyFile, file);
    chmodSync(file, mode);
    if (process.getuid?.() === 0 && owner === 'user') chownSync(file, 1000, 1000);
    return file;
  }

  it.each([
    ['readable by others', '0604', 'others'],
    ['readable by its group', '0640', 'its group'],
    ['writable by others', '0602', 'others'],
    ['readable by everyone', '0644', 'its group and others'],
  ])('refuses to start with a CA key %s (mode %s), naming the file and chmod 600', (_label, text, who) => {
    const mode = Number.parseInt(text, 8);
    const file = keyWithMode(`key-${mode.toString(8)}.pem`, mode);
    let error: unknown;
    try {
      buildConfig(doc({ caKey: file }), { env: {} });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems).toEqual([
      `mitm.caKey: ${file} is accessible to ${who} (mode ${text}): chmod 600 ${file}`,
    ]);
  });

  it('accepts a CA key with mode 0600 or 0400', () => {
    for (const mode of [0o600, 0o400]) {
      const file = keyWithMode(`key-ok-${mode.toString(8)}.pem`, mode);
      expect(buildConfig(doc({ caKey: file }), { env: {} }).mitm?.caKeyPem).toBe(readFileSync(ca.keyFile, 'utf8'));
    }
  });

  it('refuses a reload (the config file read again) once the key was made group-readable', () => {
    const file = keyWithMode('key-reload.pem', 0o600);
    const configFile = join(dir, 'reload.json');
    writeFileSync(configFile, JSON.stringify(doc({ caKey: file })));
    expect(loadConfigFile(configFile, { env: {} }).mitm).toBeDefined();
    chmodSync(file, 0o640);
    expect(() => loadConfigFile(configFile, { env: {} })).toThrow(`(mode 0640): chmod 600 ${file}`);
  });

  it.each([
    // [mode, owner uid, who else may access it]
    ['0600', 1000, 'no problem'],
    ['0400', 1000, 'no problem'],
    ['0640', 1000, 'its group'],
    ['0604', 1000, 'others'],
    ['0660', 1000, 'its group'],
    // Owned by root and readable by its group only: the /etc/ssl/private (group ssl-cert) and
    // Kubernetes Secret with fsGroup layout, which PostgreSQL accepts for its key too.
    ['0640', 0, 'no problem'],
    ['0440', 0, 'no problem'],
    ['0660', 0, 'its group'],
    ['0650', 0, 'its group'],
    ['0644', 0, 'others'],
    ['0644', 1000, 'its group and others'],
  ])('judges mode %s owned by uid %i: %s', (mode, uid, problem) => {
    expect(privateKeyModeProblem(Number.parseInt(mode, 8), uid)).toBe(problem === 'no problem' ? undefined : problem);
  });

  it('accepts a root-owned CA key readable by its group only (0440), as a Kubernetes Secret with fsGroup is mounted', () => {
    const file = keyWithMode('key-root-0440.pem', 0o440, 'root');
    if (process.getuid?.() !== 0) {
      expect(() => buildConfig(doc({ caKey: file }), { env: {} })).toThrow('(mode 0440): chmod 600');
      return;
    }
    expect(buildConfig(doc({ caKey: file }), { env: {} }).mitm).toBeDefined();
  });
});
