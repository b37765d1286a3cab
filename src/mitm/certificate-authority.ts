import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { SecureContext } from 'node:tls';
import { LRUCache } from 'lru-cache';
import { DEFAULT_LEAF_VALIDITY_DAYS } from '../config/defaults.js';
import { parseIp } from './ip-bytes.js';
import { leafNameFor } from './leaf-name.js';
import {
  authorityKeyIdentifier,
  issuerParts,
  KEY_USAGE,
  keyIdentifierOf,
  keyUsage,
  leafBasicConstraints,
  name,
  serverAuthOnly,
  signatureAlgorithmFor,
  signCertificate,
  subjectAltName,
  subjectKeyIdentifier,
  type GeneralName,
} from './x509.js';

export { createCaFiles, type CaFiles, type CaInitOptions } from './ca-files.js';

/**
 * The interception CA for CONNECT tunnels (forward proxy mode): it mints leaf certificates on
 * demand. Leaves carry one ECDSA P-256 key, so a TLS handshake costs an ECDSA signature rather
 * than an RSA one; names under a `*.suffix` pattern share a wildcard leaf (leaf-name.ts), so
 * made-up names cost no new signature; leaves live days, not a year, and are renewed in use.
 */

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** A leaf is renewed on its first use once this share of its lifetime has passed. */
const RENEW_AFTER = 2 / 3;
/** LDH labels of 1-63 characters, no leading or trailing hyphen (RFC 1123 section 2.1). */
const DNS_NAME = /^(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*$/i;

export interface CertificateAuthorityOptions {
  /** How many leaves to keep (LRU); default 1000. */
  readonly maxHosts?: number;
  /** Suffixes of the `*.suffix` host patterns (without `*.`): their names share wildcard leaves. */
  readonly wildcardSuffixes?: readonly string[];
  /** How long a leaf is valid (plus an hour back for skewed clocks); default 7. */
  readonly leafValidityDays?: number;
  /** Milliseconds since the epoch; default Date.now. */
  readonly now?: () => number;
}

interface Leaf {
  readonly pem: string;
  readonly context: SecureContext;
  /** When the next use signs a new leaf instead (ms). */
  readonly renewAt: number;
}

export class CertificateAuthority {
  /** The CA certificate (PEM), for clients to trust. */
  readonly certPem: string;
  readonly #key: KeyObject;
  readonly #issuer: Buffer;
  readonly #keyId: Buffer;
  readonly #notAfter: number;
  readonly #leaves: LRUCache<string, Leaf>;
  readonly #wildcardSuffixes: readonly string[];
  readonly #validityMs: number;
  readonly #now: () => number;
  /**
   * One ECDSA P-256 key for every leaf, made once per CA load (a reload makes a new one): a new
   * name then costs one signature and no key generation, as in mitmproxy. A key per leaf would
   * isolate nothing, since the CA key that can sign any leaf sits in the same process memory.
   */
  readonly #leafKeyPem: string;
  readonly #leafSpki: Buffer;
  #issued = 0;

  private constructor(x509: X509Certificate, key: KeyObject, options: CertificateAuthorityOptions) {
    this.certPem = x509.toString();
    this.#key = key;
    const parts = issuerParts(x509.raw);
    this.#issuer = parts.subject;
    this.#keyId = parts.keyId;
    this.#notAfter = Date.parse(x509.validTo);
    this.#leaves = new LRUCache({ max: options.maxHosts ?? 1000 });
    this.#wildcardSuffixes = options.wildcardSuffixes ?? [];
    this.#validityMs = (options.leafValidityDays ?? DEFAULT_LEAF_VALIDITY_DAYS) * DAY_MS;
    this.#now = options.now ?? Date.now;
    const leafKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    this.#leafKeyPem = leafKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    this.#leafSpki = leafKey.publicKey.export({ type: 'spki', format: 'der' });
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
    if (Date.parse(x509.validTo) <= (options.now ?? Date.now)())
      throw new Error(`CA certificate "${x509.subject}" expired on ${x509.validTo}`);

    let key: KeyObject;
    try {
      key = createPrivateKey(keyPem);
    } catch (err) {
      throw new Error(`CA key is not a readable unencrypted PEM private key: ${(err as Error).message}`);
    }
    if (signatureAlgorithmFor(key) === undefined) {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      throw new Error(
        `CA key must be an RSA key or an EC key on P-256, P-384 or P-521, not ${key.asymmetricKeyType ?? 'unknown'}${curve === undefined ? '' : ` (${curve})`}`,
      );
    }
    if (!x509.checkPrivateKey(key))
      throw new Error(`CA key does not match the public key of CA certificate "${x509.subject}"`);
    if (issuerParts(x509.raw).keyCertSignDenied)
      throw new Error(`CA certificate "${x509.subject}" keyUsage does not allow keyCertSign`);
    return new CertificateAuthority(x509, key, options);
  }

  /** The TLS context to present for `hostname` (cached per leaf). Throws for an invalid hostname. */
  secureContextFor(hostname: string): SecureContext {
    return this.#leafFor(hostname).context;
  }

  /** The leaf certificate (PEM) for `hostname`, the one `secureContextFor` presents. */
  leafPemFor(hostname: string): string {
    return this.#leafFor(hostname).pem;
  }

  /** How many leaves are cached (a wildcard leaf counts once for all its names). */
  get cachedHosts(): number {
    return this.#leaves.size;
  }

  /** How many leaves this CA has signed: each one a signature on the event loop. */
  get issued(): number {
    return this.#issued;
  }

  #leafFor(hostname: string): Leaf {
    const ip = parseIp(hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname);
    if (ip === undefined && (hostname.length > 253 || !DNS_NAME.test(hostname))) {
      throw new Error(`Invalid hostname for a certificate: ${JSON.stringify(hostname.slice(0, 300))}`);
    }
    const leafName = ip?.text ?? leafNameFor(hostname.toLowerCase(), this.#wildcardSuffixes);
    const now = this.#now();
    const cached = this.#leaves.get(leafName);
    if (cached !== undefined && now < cached.renewAt) return cached;
    const leaf = this.#issue(leafName, ip === undefined ? { dns: leafName } : { ip: ip.bytes }, now);
    this.#leaves.set(leafName, leaf);
    return leaf;
  }

  #issue(leafName: string, san: GeneralName, now: number): Leaf {
    if (now >= this.#notAfter) throw new Error(`CA certificate expired on ${new Date(this.#notAfter).toISOString()}`);
    const notAfter = Math.min(this.#notAfter, now + this.#validityMs);
    const pem = signCertificate(
      {
        issuer: this.#issuer,
        subject: name(leafName.slice(0, 64)), // ub-common-name is 64
        notBefore: new Date(now - HOUR_MS), // an hour back, for clients with skewed clocks
        notAfter: new Date(notAfter),
        spki: this.#leafSpki,
        extensions: [
          leafBasicConstraints(),
          // An ECDSA key only signs (RFC 8813 §3: keyEncipherment is for RSA key transport).
          keyUsage(KEY_USAGE.digitalSignature),
          serverAuthOnly(),
          subjectAltName(san),
          authorityKeyIdentifier(this.#keyId),
          // RFC 5280 §4.2.1.2: SHOULD appear in end-entity certificates.
          subjectKeyIdentifier(keyIdentifierOf(this.#leafSpki)),
        ],
      },
      this.#key,
    );
    this.#issued++;
    return {
      pem,
      context: createSecureContext({ key: this.#leafKeyPem, cert: `${pem}${this.certPem}` }),
      renewAt: now + (notAfter - now) * RENEW_AFTER,
    };
  }
}
