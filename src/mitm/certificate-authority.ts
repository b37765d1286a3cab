import {
  createPrivateKey,
  generateKeyPair,
  generateKeyPairSync,
  randomBytes,
  sign,
  X509Certificate,
} from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { access, mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import type { SecureContext } from 'node:tls';
import { promisify } from 'node:util';
import { LRUCache } from 'lru-cache';
import type * as Forge from 'node-forge';

/**
 * The interception CA for CONNECT tunnels (forward proxy mode): it mints one leaf certificate per
 * host on demand. node-forge only assembles the certificates; keys are made and every signature is
 * computed by node:crypto (forge's pure-JS RSA takes ~50 ms a signature and blocks the loop).
 */

// node-forge is CommonJS whose exports Node cannot see statically, and its typings declare no
// default export, so neither ESM import form type-checks and works at run time.
const forge = createRequire(import.meta.url)('node-forge') as typeof Forge;

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** Leaves live at most 397 days: the Apple / Chrome limit for TLS server certificates. */
const MAX_LEAF_DAYS = 397;
const RSA_2048 = {
  modulusLength: 2048,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
} as const;
/** LDH labels of 1-63 characters, no leading or trailing hyphen (RFC 1123 section 2.1). */
const DNS_NAME = /^(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*$/i;

export interface CaFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

/**
 * Writes a fresh self-signed CA to `dir/ca.pem` and its PKCS#8 key to `dir/ca-key.pem` (both mode
 * 0600; `dir` is made with mode 0700 if missing). Existing files are never overwritten.
 */
export async function createCaFiles(dir: string): Promise<CaFiles> {
  const certFile = join(dir, 'ca.pem');
  const keyFile = join(dir, 'ca-key.pem');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const file of [certFile, keyFile]) {
    if (await exists(file)) throw new Error(`Refusing to overwrite existing file ${file}`);
  }

  const { publicKey, privateKey } = await promisify(generateKeyPair)('rsa', RSA_2048);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = randomSerial();
  const notBefore = new Date(Date.now() - HOUR_MS); // an hour back, for clients with skewed clocks
  const notAfter = new Date(notBefore);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + 10);
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  const name = [
    { name: 'commonName', value: `token-proxy interception CA ${randomBytes(4).toString('hex')}` },
    { name: 'organizationName', value: 'token-proxy' },
  ];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    // RFC 5280 4.2.1.9: a CA certificate MUST carry basicConstraints cA=TRUE, marked critical.
    { name: 'basicConstraints', cA: true, critical: true },
    // RFC 5280 4.2.1.3: keyCertSign (and cRLSign) for a CA key; SHOULD be critical.
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    // RFC 5280 4.2.1.2: MUST appear in CA certificates; method (1), SHA-1 of the public key.
    { name: 'subjectKeyIdentifier' },
  ]);
  signWith(cert, createPrivateKey(privateKey));

  // 'wx' fails if the file appeared meanwhile: still never an overwrite.
  await writeFile(certFile, forge.pki.certificateToPem(cert), { mode: 0o600, flag: 'wx' });
  await writeFile(keyFile, privateKey, { mode: 0o600, flag: 'wx' });
  return { certFile, keyFile };
}

export interface CertificateAuthorityOptions {
  /** How many per-host leaf contexts to keep (LRU); default 1000. */
  readonly maxHosts?: number;
}

interface Leaf {
  readonly pem: string;
  readonly context: SecureContext;
}

interface LeafKey {
  readonly privatePem: string;
  readonly publicKey: Forge.pki.rsa.PublicKey;
}

export class CertificateAuthority {
  /** The CA certificate (PEM), for clients to trust. */
  readonly certPem: string;
  readonly #cert: Forge.pki.Certificate;
  readonly #key: KeyObject;
  /** The CA's key identifier, repeated in each leaf's authorityKeyIdentifier (binary string). */
  readonly #keyId: string;
  readonly #leaves: LRUCache<string, Leaf>;
  /** One key for every leaf, made on first use: a new host then costs one signature (as mitmproxy). */
  #leafKey: LeafKey | undefined;

  private constructor(
    certPem: string,
    cert: Forge.pki.Certificate,
    key: KeyObject,
    options: CertificateAuthorityOptions,
  ) {
    this.certPem = certPem;
    this.#cert = cert;
    this.#key = key;
    const ski: { subjectKeyIdentifier?: string } | undefined = cert.getExtension('subjectKeyIdentifier');
    this.#keyId = ski?.subjectKeyIdentifier
      ? forge.util.hexToBytes(ski.subjectKeyIdentifier)
      : cert.generateSubjectKeyIdentifier().getBytes();
    this.#leaves = new LRUCache({ max: options.maxHosts ?? 1000 });
  }

  /** Loads and checks a CA; every failure is an Error whose message says what is wrong. */
  static fromPem(certPem: string, keyPem: string, options: CertificateAuthorityOptions = {}): CertificateAuthority {
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(certPem);
    } catch (err) {
      throw new Error(`CA certificate is not a readable PEM X.509 certificate: ${(err as Error).message}`);
    }
    if (!x509.ca) throw new Error(`CA certificate "${x509.subject}" is not a CA: basicConstraints cA is not true`);
    if (Date.parse(x509.validTo) <= Date.now())
      throw new Error(`CA certificate "${x509.subject}" expired on ${x509.validTo}`);

    let key: KeyObject;
    try {
      key = createPrivateKey(keyPem);
    } catch (err) {
      throw new Error(`CA key is not a readable unencrypted PEM private key: ${(err as Error).message}`);
    }
    if (key.asymmetricKeyType !== 'rsa')
      throw new Error(`CA key must be an RSA key, not ${key.asymmetricKeyType ?? 'unknown'}`);
    if (!x509.checkPrivateKey(key))
      throw new Error(`CA key does not match the public key of CA certificate "${x509.subject}"`);

    const cert = forge.pki.certificateFromPem(x509.toString());
    const usage: { keyCertSign?: boolean } | undefined = cert.getExtension('keyUsage');
    if (usage && !usage.keyCertSign)
      throw new Error(`CA certificate "${x509.subject}" keyUsage does not allow keyCertSign`);
    return new CertificateAuthority(x509.toString(), cert, key, options);
  }

  /** The TLS context to present for `hostname` (cached per host). Throws for an invalid hostname. */
  secureContextFor(hostname: string): SecureContext {
    return this.#leafFor(hostname).context;
  }

  /** The leaf certificate (PEM) for `hostname`, the one `secureContextFor` presents. */
  leafPemFor(hostname: string): string {
    return this.#leafFor(hostname).pem;
  }

  /** How many hosts have a cached leaf. */
  get cachedHosts(): number {
    return this.#leaves.size;
  }

  #leafFor(hostname: string): Leaf {
    const host = parseHost(hostname);
    const cached = this.#leaves.get(host.name);
    if (cached) return cached;
    const leafKey = this.#getLeafKey();
    const pem = this.#signLeaf(host, leafKey.publicKey);
    const leaf = { pem, context: createSecureContext({ key: leafKey.privatePem, cert: `${pem}\n${this.certPem}` }) };
    this.#leaves.set(host.name, leaf);
    return leaf;
  }

  #getLeafKey(): LeafKey {
    if (!this.#leafKey) {
      const { publicKey, privateKey } = generateKeyPairSync('rsa', RSA_2048);
      this.#leafKey = { privatePem: privateKey, publicKey: forge.pki.publicKeyFromPem(publicKey) };
    }
    return this.#leafKey;
  }

  #signLeaf(host: Host, publicKey: Forge.pki.rsa.PublicKey): string {
    const cert = forge.pki.createCertificate();
    cert.publicKey = publicKey;
    cert.serialNumber = randomSerial();
    const now = Date.now();
    cert.validity.notBefore = new Date(now - HOUR_MS);
    cert.validity.notAfter = new Date(Math.min(this.#cert.validity.notAfter.getTime(), now + MAX_LEAF_DAYS * DAY_MS));
    cert.setSubject([{ name: 'commonName', value: host.name.slice(0, 64) }]); // ub-common-name is 64
    cert.setIssuer(this.#cert.subject.attributes);
    cert.setExtensions([
      // RFC 5280 4.2.1.9: an end-entity certificate, never a CA.
      { name: 'basicConstraints', cA: false, critical: true },
      // RFC 5280 4.2.1.3: RSA server keys sign (ECDHE) or decrypt (RSA key exchange); SHOULD be critical.
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      // RFC 5280 4.2.1.12: TLS server authentication only.
      { name: 'extKeyUsage', serverAuth: true },
      // RFC 5280 4.2.1.6: the name clients check (dNSName is [2], iPAddress is [7] in network order).
      { name: 'subjectAltName', altNames: [host.ip ? { type: 7, value: host.ip } : { type: 2, value: host.name }] },
      // RFC 5280 4.2.1.1: identifies the CA key that signed this certificate.
      { name: 'authorityKeyIdentifier', keyIdentifier: this.#keyId },
      // RFC 5280 4.2.1.2: SHOULD appear in end-entity certificates.
      { name: 'subjectKeyIdentifier' },
    ]);
    signWith(cert, this.#key);
    return forge.pki.certificateToPem(cert);
  }
}

interface Host {
  /** Lower-case DNS name or canonical IP literal: the cache key, CN and SAN. */
  readonly name: string;
  /** For an IP literal, its address bytes as a binary string; undefined for a DNS name. */
  readonly ip: string | undefined;
}

/**
 * Accepts only a DNS name or an IP literal (IPv6 optionally in brackets), so a hostile CONNECT
 * target or SNI name cannot put anything else into a certificate.
 */
function parseHost(hostname: string): Host {
  const bare = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  const family = isIP(bare);
  if (family === 4) {
    return { name: bare, ip: Buffer.from(bare.split('.').map(Number)).toString('binary') };
  }
  if (family === 6 && !bare.includes('%')) {
    // The WHATWG URL parser canonicalises: lower case, '::' compression, no embedded dotted quad.
    const name = new URL(`http://[${bare}]`).hostname.slice(1, -1);
    return { name, ip: ipv6Bytes(name) };
  }
  if (hostname.length > 253 || !DNS_NAME.test(hostname)) {
    throw new Error(`Invalid hostname for a certificate: ${JSON.stringify(hostname.slice(0, 300))}`);
  }
  return { name: hostname.toLowerCase(), ip: undefined };
}

/** Canonical IPv6 text (from the URL parser) to its 16 bytes, as a binary string. */
function ipv6Bytes(canonical: string): string {
  const [head = '', tail] = canonical.split('::');
  const groups = head === '' ? [] : head.split(':');
  if (tail !== undefined) {
    const tailGroups = tail === '' ? [] : tail.split(':');
    groups.push(...Array<string>(8 - groups.length - tailGroups.length).fill('0'), ...tailGroups);
  }
  const bytes = Buffer.alloc(16);
  groups.forEach((group, i) => bytes.writeUInt16BE(Number.parseInt(group, 16), i * 2));
  return bytes.toString('binary');
}

/** 16 random bytes, first byte 0x40-0x7f: positive and minimally DER-encoded (RFC 5280 4.1.2.2). */
function randomSerial(): string {
  const serial = randomBytes(16);
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x40;
  return serial.toString('hex');
}

/**
 * sha256WithRSAEncryption, computed natively: forge builds the TBSCertificate and sets the
 * algorithm identifiers, then calls `sign` on this stand-in key.
 */
function signWith(cert: Forge.pki.Certificate, key: KeyObject): void {
  const nativeKey = {
    sign: (): string => {
      const tbs = Buffer.from(forge.asn1.toDer(cert.tbsCertificate).getBytes(), 'binary');
      return sign('sha256', tbs, key).toString('binary');
    },
  };
  cert.sign(nativeKey as unknown as Forge.pki.rsa.PrivateKey, forge.md.sha256.create());
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
