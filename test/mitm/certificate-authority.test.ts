import { execFileSync, spawnSync } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { createServer as createTcpServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, TLSSocket } from 'node:tls';
import type { ConnectionOptions, SecureContext } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, createCaFiles } from '../../src/mitm/certificate-authority.js';
import { offsetClock } from '../helpers/time.js';

let dir: string;
let ca: CertificateAuthority;
let caFile: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'token-proxy-ca-'));
  const files = await createCaFiles(join(dir, 'ca'));
  caFile = files.certFile;
  ca = CertificateAuthority.fromPem(readFileSync(files.certFile, 'utf8'), readFileSync(files.keyFile, 'utf8'));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A TLS server choosing its context by SNI through `pick`; resolves with the client's outcome. */
async function handshake(
  pick: (servername: string) => SecureContext,
  servername: string,
  client: ConnectionOptions = { ca: [ca.certPem] },
): Promise<TLSSocket | Error> {
  const server = createServer({ SNICallback: (name, cb) => cb(null, pick(name)) }, (socket) => socket.end());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise<TLSSocket | Error>((resolve) => {
      const socket = connect({ ...client, host: '127.0.0.1', port, servername }, () => {
        resolve(socket);
        socket.end();
      });
      socket.on('error', resolve);
    });
  } finally {
    server.close();
  }
}

/** Clients send no SNI for an IP address, so this server presents `context` to every connection. */
async function handshakeByIp(context: SecureContext): Promise<TLSSocket | Error> {
  const server = createTcpServer((raw) => {
    const socket = new TLSSocket(raw, { isServer: true, secureContext: context });
    socket.on('secure', () => socket.end());
    socket.on('error', () => socket.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise<TLSSocket | Error>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port, ca: [ca.certPem] }, () => {
        resolve(socket);
        socket.end();
      });
      socket.on('error', resolve);
    });
  } finally {
    server.close();
  }
}

describe('createCaFiles', () => {
  it('writes the certificate and key with mode 0600 and refuses to overwrite them', async () => {
    const target = join(dir, 'fresh', 'nested');
    const { certFile, keyFile } = await createCaFiles(target);
    expect(statSync(certFile).mode & 0o777).toBe(0o600);
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(statSync(target).mode & 0o777).toBe(0o700);
    expect(readFileSync(keyFile, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);

    const cert = new X509Certificate(readFileSync(certFile));
    expect(cert.ca).toBe(true);
    expect(cert.subject).toMatch(/^CN=token-proxy interception CA [0-9a-f]{8}\nO=token-proxy$/);
    expect(cert.checkPrivateKey(createPrivateKey(readFileSync(keyFile)))).toBe(true);
    const years = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / (365.25 * 86_400_000);
    expect(years).toBeCloseTo(10, 1);
    expect(Date.parse(cert.validFrom)).toBeLessThan(Date.now() - 50 * 60_000);

    const before = readFileSync(certFile, 'utf8');
    await expect(createCaFiles(target)).rejects.toThrow(`Refusing to overwrite existing file ${certFile}`);
    expect(readFileSync(certFile, 'utf8')).toBe(before);

    // Only the key left behind: still refused, and the message names the key file.
    rmSync(certFile);
    await expect(createCaFiles(target)).rejects.toThrow(keyFile);
  });
});

describe('CertificateAuthority leaves', () => {
  it('presents a leaf that a client trusting only the CA accepts for its SNI name', async () => {
    const socket = await handshake((name) => ca.secureContextFor(name), 'api.partner.example');
    expect(socket).not.toBeInstanceOf(Error);
    const tls = socket as TLSSocket;
    expect(tls.authorized).toBe(true);
    expect(tls.getPeerCertificate().subjectaltname).toBe('DNS:api.partner.example');
    expect(tls.getPeerCertificate().subject.CN).toBe('api.partner.example');

    // The server sends the CA after the leaf: a client that does not trust it still sees the chain.
    // (Test-only inspection of what the server sends; the product has no such switch.)
    const untrusting = await handshake((name) => ca.secureContextFor(name), 'api.partner.example', {
      rejectUnauthorized: false,
    });
    const chain = (untrusting as TLSSocket).getPeerCertificate(true);
    expect((untrusting as TLSSocket).authorized).toBe(false);
    expect(chain.issuerCertificate.fingerprint256).toBe(new X509Certificate(ca.certPem).fingerprint256);
  });

  it('fails the name check when the leaf is for another host', async () => {
    const context = ca.secureContextFor('api.partner.example');
    const outcome = await handshake(() => context, 'other.example');
    expect(outcome).toBeInstanceOf(Error);
    expect((outcome as NodeJS.ErrnoException).code).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('issues leaves that openssl verifies against the CA, with the expected extensions', () => {
    const leafPem = ca.leafPemFor('API.Partner.Example');
    const leafFile = join(dir, 'leaf.pem');
    writeFileSync(leafFile, leafPem);
    const result = spawnSync('openssl', ['verify', '-purpose', 'sslserver', '-CAfile', caFile, leafFile], {
      encoding: 'utf8',
    });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);

    const text = execFileSync('openssl', ['x509', '-in', leafFile, '-noout', '-text'], { encoding: 'utf8' });
    expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature\n/);
    expect(text).toMatch(/Extended Key Usage:\s+TLS Web Server Authentication/);
    expect(text).toMatch(/Authority Key Identifier:/);
    expect(text).toMatch(/Subject Key Identifier:/);
    expect(text).toContain('Signature Algorithm: ecdsa-with-SHA256');

    const leaf = new X509Certificate(leafPem);
    const caCert = new X509Certificate(ca.certPem);
    expect(leaf.subject).toBe('CN=api.partner.example');
    expect(leaf.issuer).toBe(caCert.subject);
    expect(leaf.ca).toBe(false);
    expect(leaf.verify(caCert.publicKey)).toBe(true);
    expect(leaf.serialNumber).toMatch(/^[4-7][0-9A-F]{31}$/); // 16 bytes, positive, minimal DER
    const days = (Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)) / 86_400_000;
    expect(days).toBe(7 + 1 / 24);
    expect(Date.parse(leaf.validTo)).toBeLessThanOrEqual(Date.parse(caCert.validTo));
    expect(Date.parse(leaf.validFrom)).toBeLessThan(Date.now() - 50 * 60_000);
  });

  it('gives IP literals an IP SAN, IPv4 and IPv6', async () => {
    const v4 = new X509Certificate(ca.leafPemFor('127.0.0.1'));
    expect(v4.subjectAltName).toBe('IP Address:127.0.0.1');
    const v6 = new X509Certificate(ca.leafPemFor('[::FFFF:10.0.0.1]'));
    expect(v6.subjectAltName).toBe('IP Address:0:0:0:0:0:FFFF:A00:1');
    expect(new X509Certificate(ca.leafPemFor('2001:db8::1')).subjectAltName).toBe('IP Address:2001:DB8:0:0:0:0:0:1');
    expect(v4.checkIP('127.0.0.1')).toBe('127.0.0.1');

    // Node checks only IP SANs (never the CN) when the client connected to an IP address.
    const socket = await handshakeByIp(ca.secureContextFor('127.0.0.1'));
    expect(socket).not.toBeInstanceOf(Error);
    expect((socket as TLSSocket).authorized).toBe(true);
    expect((socket as TLSSocket).getPeerCertificate().subjectaltname).toBe('IP Address:127.0.0.1');
    const wrongIp = await handshakeByIp(ca.secureContextFor('127.0.0.2'));
    expect((wrongIp as NodeJS.ErrnoException).code).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('caches per host, signing once, and uses one leaf key for all hosts', () => {
    const fresh = CertificateAuthority.fromPem(ca.certPem, readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8'));
    expect(fresh.cachedHosts).toBe(0);
    const first = fresh.secureContextFor('a.example');
    const pem = fresh.leafPemFor('a.example');
    expect(fresh.cachedHosts).toBe(1);
    expect(fresh.secureContextFor('A.EXAMPLE')).toBe(first);
    expect(fresh.leafPemFor('a.example')).toBe(pem); // a new signature would have a new serial
    expect(fresh.cachedHosts).toBe(1);

    const other = fresh.leafPemFor('b.example');
    expect(fresh.cachedHosts).toBe(2);
    expect(other).not.toBe(pem);
    const spki = (p: string) => new X509Certificate(p).publicKey.export({ type: 'spki', format: 'der' });
    expect(spki(other).equals(spki(pem))).toBe(true);
    expect(spki(other).equals(spki(fresh.certPem))).toBe(false);
  });

  it('evicts the least recently used host beyond maxHosts', () => {
    const small = CertificateAuthority.fromPem(ca.certPem, readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8'), {
      maxHosts: 2,
    });
    const a = small.secureContextFor('a.example');
    small.secureContextFor('b.example');
    small.secureContextFor('c.example');
    expect(small.cachedHosts).toBe(2);
    expect(small.secureContextFor('a.example')).not.toBe(a);
  });

  it.each([
    ['a space', 'a b'],
    ['a wildcard', '*.x'],
    ['a header injection', 'x\r\nEvil: 1'],
    ['300 characters', `${'a'.repeat(59)}.`.repeat(5).slice(0, -1).concat('a')],
    ['an empty name', ''],
    ['an empty label', 'a..b'],
    ['a leading hyphen', '-a.example'],
    ['a slash', 'a.example/CN=evil'],
    ['a non-ASCII lookalike', '\u212Aelvin.example'],
    ['an IPv6 zone id', 'fe80::1%eth0'],
  ])('rejects %s', (_label, hostname) => {
    expect(() => ca.secureContextFor(hostname)).toThrow(/^Invalid hostname for a certificate: /);
    expect(() => ca.leafPemFor(hostname)).toThrow(/^Invalid hostname for a certificate: /);
  });

  it('accepts a 253-character name, truncating only the CN', () => {
    const name = `${'a'.repeat(62)}.`.repeat(4).concat('b');
    expect(name).toHaveLength(253);
    const leaf = new X509Certificate(ca.leafPemFor(name));
    expect(leaf.subjectAltName).toBe(`DNS:${name}`);
    expect(leaf.subject).toBe(`CN=${name.slice(0, 64)}`);
  });
});

describe('CertificateAuthority.fromPem', () => {
  let other: { cert: string; key: string };

  beforeAll(() => {
    const cwd = join(dir, 'openssl');
    mkdirSync(cwd);
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        'key.pem',
        '-out',
        'cert.pem',
        '-days',
        '1',
        '-subj',
        '/CN=leaf',
        '-addext',
        'basicConstraints=CA:FALSE',
      ],
      { cwd, stdio: 'pipe' },
    );
    other = { cert: readFileSync(join(cwd, 'cert.pem'), 'utf8'), key: readFileSync(join(cwd, 'key.pem'), 'utf8') };
  });

  it('rejects a certificate that is not a CA', () => {
    expect(() => CertificateAuthority.fromPem(other.cert, other.key)).toThrow(
      'CA certificate "CN=leaf" is not a CA: basicConstraints cA is not true',
    );
  });

  it('rejects a key that does not match the certificate', () => {
    expect(() => CertificateAuthority.fromPem(ca.certPem, other.key)).toThrow(
      /^CA key does not match the public key of CA certificate "CN=token-proxy interception CA [0-9a-f]{8}\nO=token-proxy"$/,
    );
  });

  it('rejects a CA key TLS clients do not take certificate signatures from (Ed25519)', () => {
    const cwd = join(dir, 'ed25519');
    mkdirSync(cwd);
    execFileSync(
      'openssl',
      [
        ...['req', '-x509', '-newkey', 'ed25519', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '1'],
        ...['-subj', '/CN=ed', '-addext', 'basicConstraints=critical,CA:TRUE'],
      ],
      { cwd, stdio: 'pipe' },
    );
    expect(() =>
      CertificateAuthority.fromPem(
        readFileSync(join(cwd, 'cert.pem'), 'utf8'),
        readFileSync(join(cwd, 'key.pem'), 'utf8'),
      ),
    ).toThrow('CA key must be an RSA key or an EC key on P-256, P-384 or P-521, not ed25519');
  });

  it('rejects unreadable PEM', () => {
    expect(() => CertificateAuthority.fromPem('not a cert', other.key)).toThrow(
      /^CA certificate is not a readable PEM X\.509 certificate: /,
    );
    expect(() => CertificateAuthority.fromPem(ca.certPem, 'not a key')).toThrow(
      /^CA key is not a readable unencrypted PEM private key: /,
    );
  });
});

/** Distinct random names under `suffix`, as a hostile client would CONNECT to. */
function randomNames(count: number, suffix: string): string[] {
  return Array.from({ length: count }, (_, i) => `r${i}${Math.random().toString(36).slice(2, 8)}.${suffix}`);
}

describe('CertificateAuthority under *.suffix host patterns', () => {
  it('signs one wildcard leaf for any number of names one label under a configured *.suffix', async () => {
    const wild = CertificateAuthority.fromPem(ca.certPem, readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8'), {
      wildcardSuffixes: ['partner.example'],
    });
    const names = randomNames(50, 'partner.example');
    const contexts = new Set(names.map((name) => wild.secureContextFor(name)));
    expect(wild.issued).toBe(1);
    expect(wild.cachedHosts).toBe(1);
    expect(contexts.size).toBe(1);
    const leaf = new X509Certificate(wild.leafPemFor(names[7] ?? ''));
    expect(leaf.subjectAltName).toBe('DNS:*.partner.example');
    expect(leaf.subject).toBe('CN=*.partner.example');

    // A client connecting to any of the names accepts that one leaf (RFC 6125 §6.4.3).
    const socket = await handshake((name) => wild.secureContextFor(name), names[42] ?? '');
    expect((socket as TLSSocket).authorized).toBe(true);
    expect(wild.issued).toBe(1);
  });

  it('covers exactly one label: a deeper name gets the wildcard of its parent, the suffix itself its own leaf', async () => {
    const wild = CertificateAuthority.fromPem(ca.certPem, readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8'), {
      wildcardSuffixes: ['partner.example'],
    });
    expect(new X509Certificate(wild.leafPemFor('a.b.partner.example')).subjectAltName).toBe('DNS:*.b.partner.example');
    expect(new X509Certificate(wild.leafPemFor('c.b.partner.example')).subjectAltName).toBe('DNS:*.b.partner.example');
    expect(new X509Certificate(wild.leafPemFor('partner.example')).subjectAltName).toBe('DNS:partner.example');
    expect(new X509Certificate(wild.leafPemFor('api.other.example')).subjectAltName).toBe('DNS:api.other.example');
    expect(wild.issued).toBe(3);

    // The one-label wildcard leaf does not cover a name two labels down: clients refuse it.
    const oneLabel = wild.secureContextFor('x.partner.example');
    const outcome = await handshake(() => oneLabel, 'a.b.partner.example');
    expect((outcome as NodeJS.ErrnoException).code).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('gives names under a one-label suffix (*.example) their own leaves: clients refuse *.example', () => {
    const wild = CertificateAuthority.fromPem(ca.certPem, readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8'), {
      wildcardSuffixes: ['example'],
    });
    expect(new X509Certificate(wild.leafPemFor('a.example')).subjectAltName).toBe('DNS:a.example');
    expect(new X509Certificate(wild.leafPemFor('b.example')).subjectAltName).toBe('DNS:b.example');
    expect(wild.issued).toBe(2);
  });
});

describe('CertificateAuthority leaf keys and lifetime', () => {
  let rsaCa: { cert: string; key: string; file: string };

  beforeAll(() => {
    const cwd = join(dir, 'rsa-ca');
    mkdirSync(cwd);
    execFileSync(
      'openssl',
      [
        ...['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem'],
        ...['-days', '30', '-subj', '/CN=rsa interception CA'],
        ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'],
      ],
      { cwd, stdio: 'pipe' },
    );
    const file = join(cwd, 'cert.pem');
    rsaCa = { cert: readFileSync(file, 'utf8'), key: readFileSync(join(cwd, 'key.pem'), 'utf8'), file };
  });

  it.each([
    ['an EC P-256 CA (ca init)', 'ecdsa-with-SHA256'],
    ['an RSA CA (openssl)', 'sha256WithRSAEncryption'],
  ])('issues ECDSA P-256 leaves, one key for all, signed by %s', (label, algorithm) => {
    const rsa = label.includes('RSA');
    const authority = rsa
      ? CertificateAuthority.fromPem(rsaCa.cert, rsaCa.key)
      : CertificateAuthority.fromPem(ca.certPem, readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8'));
    const pems = ['one.example', 'two.example'].map((name) => authority.leafPemFor(name));
    const leaves = pems.map((pem) => new X509Certificate(pem));
    for (const leaf of leaves) {
      expect(leaf.publicKey.asymmetricKeyType).toBe('ec');
      expect(leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    }
    const spki = (x: X509Certificate) => x.publicKey.export({ type: 'spki', format: 'der' });
    expect(spki(leaves[0] as X509Certificate).equals(spki(leaves[1] as X509Certificate))).toBe(true);

    const leafFile = join(dir, `leaf-${rsa ? 'rsa' : 'ec'}.pem`);
    writeFileSync(leafFile, pems[0] ?? '');
    const result = spawnSync(
      'openssl',
      ['verify', '-purpose', 'sslserver', '-CAfile', rsa ? rsaCa.file : caFile, leafFile],
      { encoding: 'utf8' },
    );
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const text = execFileSync('openssl', ['x509', '-in', leafFile, '-noout', '-text'], { encoding: 'utf8' });
    expect(text).toContain(`Signature Algorithm: ${algorithm}`);
    expect(text).toContain('NIST CURVE: P-256');
    // RFC 8813 §3: an ECDSA key signs; keyEncipherment is for RSA key transport only.
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature\n/);
  });

  it('keeps leaves valid for leafValidityDays (7 by default), starting an hour back', () => {
    // A still clock, on a whole second (X.509 times have no fractions): the hour back is exact.
    const at = Math.floor(Date.now() / 1000) * 1000;
    const now = () => at;
    const key = readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8');
    const days = (pem: string) => {
      const x = new X509Certificate(pem);
      return (Date.parse(x.validTo) - Date.parse(x.validFrom)) / 86_400_000;
    };
    const byDefault = CertificateAuthority.fromPem(ca.certPem, key, { now });
    const leaf = new X509Certificate(byDefault.leafPemFor('a.example'));
    expect(days(leaf.toString())).toBeCloseTo(7 + 1 / 24, 3);
    expect(Date.parse(leaf.validFrom)).toBe(at - 3_600_000);
    const short = CertificateAuthority.fromPem(ca.certPem, key, { now, leafValidityDays: 2 });
    expect(days(short.leafPemFor('a.example'))).toBeCloseTo(2 + 1 / 24, 3);
  });

  it('renews a leaf on its first use after two thirds of its lifetime, not before', () => {
    const clock = offsetClock();
    const authority = CertificateAuthority.fromPem(ca.certPem, readFileSync(join(dir, 'ca', 'ca-key.pem'), 'utf8'), {
      now: clock.now,
      leafValidityDays: 3,
      wildcardSuffixes: ['partner.example'],
    });
    const first = authority.leafPemFor('a.partner.example');
    clock.offsetMs = 2 * 86_400_000 - 60_000; // a minute before two of the three days are over
    expect(authority.leafPemFor('b.partner.example')).toBe(first);
    expect(authority.issued).toBe(1);

    clock.offsetMs = 2 * 86_400_000 + 60_000;
    const renewed = authority.leafPemFor('c.partner.example');
    expect(renewed).not.toBe(first);
    expect(authority.issued).toBe(2);
    expect(Date.parse(new X509Certificate(renewed).validTo)).toBeGreaterThan(
      Date.parse(new X509Certificate(first).validTo) + 2 * 86_400_000 - 120_000,
    );
    expect(authority.leafPemFor('d.partner.example')).toBe(renewed);
    expect(authority.issued).toBe(2);
  });
});

describe('createCaFiles name constraints', () => {
  let constrained: { certFile: string; authority: CertificateAuthority };

  beforeAll(async () => {
    const files = await createCaFiles(join(dir, 'constrained'), {
      permit: ['*.partner.example', 'api.other.example:8443'],
    });
    constrained = {
      certFile: files.certFile,
      authority: CertificateAuthority.fromPem(
        readFileSync(files.certFile, 'utf8'),
        readFileSync(files.keyFile, 'utf8'),
      ),
    };
  });

  function verify(name: string): { status: number | null; stderr: string; stdout: string } {
    const leafFile = join(dir, `nc-${name.replaceAll(':', '_')}.pem`);
    writeFileSync(leafFile, constrained.authority.leafPemFor(name));
    return spawnSync('openssl', ['verify', '-purpose', 'sslserver', '-CAfile', constrained.certFile, leafFile], {
      encoding: 'utf8',
    });
  }

  it('writes critical RFC 5280 name constraints: the permitted names pass, any other name fails', () => {
    const text = execFileSync('openssl', ['x509', '-in', constrained.certFile, '-noout', '-text'], {
      encoding: 'utf8',
    });
    expect(text).toMatch(
      /X509v3 Name Constraints: critical\s+Permitted:\s+DNS:partner\.example\s+DNS:api\.other\.example\s+Excluded:\s+IP:0\.0\.0\.0\/0\.0\.0\.0\s+IP:0:0:0:0:0:0:0:0\/0:0:0:0:0:0:0:0\s/,
    );
    expect(verify('x.partner.example').status).toBe(0);
    expect(verify('api.other.example').status).toBe(0);
    for (const name of ['bank.example', 'partner.example.evil', 'other.example', '10.0.0.1']) {
      const result = verify(name);
      expect(result.status, name).toBe(2);
      expect(result.stderr, name).toMatch(/(permitted|excluded) subtree violation/);
    }
  });

  it('is enforced by a TLS client: a handshake for an unpermitted name fails', async () => {
    const trust = { ca: [readFileSync(constrained.certFile, 'utf8')] };
    const ok = await handshake((name) => constrained.authority.secureContextFor(name), 'x.partner.example', trust);
    expect((ok as TLSSocket).authorized).toBe(true);
    const refused = await handshake((name) => constrained.authority.secureContextFor(name), 'bank.example', trust);
    expect(refused).toBeInstanceOf(Error);
    expect((refused as Error).message).toBe('permitted subtree violation'); // X509_V_ERR_PERMITTED_VIOLATION
  });

  it('writes no name constraints unless asked', () => {
    const text = execFileSync('openssl', ['x509', '-in', caFile, '-noout', '-text'], { encoding: 'utf8' });
    expect(text).not.toContain('Name Constraints');
    expect(text).toContain('Public Key Algorithm: id-ecPublicKey');
  });
});
