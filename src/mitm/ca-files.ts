import { generateKeyPair, randomBytes } from 'node:crypto';
import { access, mkdir, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseHostPattern } from '../proxy/host-pattern.js';
import { parseIp } from './ip-bytes.js';
import {
  caBasicConstraints,
  KEY_USAGE,
  keyIdentifierOf,
  keyUsage,
  name,
  nameConstraints,
  signCertificate,
  subjectKeyIdentifier,
  type GeneralName,
} from './x509.js';

const HOUR_MS = 3_600_000;

export interface CaFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

export interface CaInitOptions {
  /**
   * Host patterns as upstreams list them (`*.partner.example`, `api.example:8443`, `10.0.0.5`):
   * when given, the CA carries name constraints and clients refuse its certificates for any other
   * name, so even a stolen key cannot impersonate other sites to them.
   */
  readonly permit?: readonly string[];
}

/**
 * Writes a fresh self-signed ECDSA P-256 CA to `dir/ca.pem` and its PKCS#8 key to
 * `dir/ca-key.pem` (both mode 0600; `dir` is made with mode 0700 if missing). Existing files are
 * never overwritten.
 */
export async function createCaFiles(dir: string, options: CaInitOptions = {}): Promise<CaFiles> {
  const constraints = options.permit === undefined || options.permit.length === 0 ? [] : [permitOnly(options.permit)];
  const certFile = join(dir, 'ca.pem');
  const keyFile = join(dir, 'ca-key.pem');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const file of [certFile, keyFile]) {
    if (await exists(file)) throw new Error(`Refusing to overwrite existing file ${file}`);
  }

  // P-256: every leaf the CA signs costs a fraction of an RSA-2048 signature.
  const { publicKey, privateKey } = await promisify(generateKeyPair)('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const notBefore = new Date(Date.now() - HOUR_MS); // an hour back, for clients with skewed clocks
  const notAfter = new Date(notBefore);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + 10);
  const subject = name(`token-proxy interception CA ${randomBytes(4).toString('hex')}`, 'token-proxy');
  const pem = signCertificate(
    {
      issuer: subject,
      subject,
      notBefore,
      notAfter,
      spki,
      extensions: [
        caBasicConstraints(),
        // keyCertSign (and cRLSign) for a CA key.
        keyUsage(KEY_USAGE.keyCertSign, KEY_USAGE.cRLSign),
        // RFC 5280 §4.2.1.2: MUST appear in CA certificates.
        subjectKeyIdentifier(keyIdentifierOf(spki)),
        ...constraints,
      ],
    },
    privateKey,
  );

  // 'wx' fails if the file appeared meanwhile: still never an overwrite.
  await writeFile(certFile, pem, { mode: 0o600, flag: 'wx' });
  await writeFile(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
  return { certFile, keyFile };
}

/**
 * Name constraints for the given host patterns. A dNSName constraint permits the name and every
 * name below it (RFC 5280 §4.2.1.10), so `*.partner.example` becomes `partner.example`. Name
 * types without a permitted entry are unconstrained, so IPv4 and IPv6 addresses are excluded
 * outright unless one is permitted.
 */
function permitOnly(patterns: readonly string[]): Buffer {
  const permitted: GeneralName[] = [];
  const seen = new Set<string>();
  for (const text of patterns) {
    const pattern = parseHostPattern(text);
    if (typeof pattern === 'string') throw new Error(`--permit ${pattern}`);
    if (seen.has(pattern.host)) continue;
    seen.add(pattern.host);
    permitted.push(isIP(pattern.host) === 0 ? { dns: pattern.host } : { ip: addressAndMask(pattern.host) });
  }
  const families = new Set(permitted.map((n) => ('ip' in n ? n.ip.length : 0)));
  const excluded: GeneralName[] = [];
  if (!families.has(8)) excluded.push({ ip: Buffer.alloc(8) }); // 0.0.0.0/0
  if (!families.has(32)) excluded.push({ ip: Buffer.alloc(32) }); // ::/0
  return nameConstraints(permitted, excluded);
}

/** One address as an iPAddress constraint: its bytes, then an all-ones mask. */
function addressAndMask(address: string): Buffer {
  const bytes = parseIp(address)?.bytes ?? Buffer.alloc(0);
  return Buffer.concat([bytes, Buffer.alloc(bytes.length, 0xff)]);
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
