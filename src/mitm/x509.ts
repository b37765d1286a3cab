import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';
import {
  childrenOf,
  contextConstructed,
  contextPrimitive,
  NULL,
  TRUE,
  bitString,
  namedBits,
  octetString,
  oid,
  readElement,
  sequence,
  set,
  smallInteger,
  time,
  unsignedInteger,
  utf8String,
  type Element,
} from './der.js';

/**
 * X.509 v3 certificates (RFC 5280) for the interception CA, assembled in DER here and signed by
 * node:crypto: no certificate library is needed for the handful of fields a CA and a TLS server
 * leaf carry, and every signature is native (RSA or ECDSA).
 */

/** Everything a certificate says except its signature. */
export interface CertificateFields {
  /** DER Name of the issuer (copied byte for byte from the CA, so chains match exactly). */
  readonly issuer: Buffer;
  readonly subject: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** DER SubjectPublicKeyInfo of the certified key. */
  readonly spki: Buffer;
  /** DER Extension elements (see the functions below). */
  readonly extensions: readonly Buffer[];
}

interface SignatureAlgorithm {
  readonly identifier: Buffer;
  readonly hash: string;
}

/** ECDSA hash by curve, as RFC 5480 §4 pairs them; node:crypto signs in the DER form X.509 wants. */
const ECDSA: Readonly<Record<string, SignatureAlgorithm>> = {
  prime256v1: { identifier: sequence(oid('1.2.840.10045.4.3.2')), hash: 'sha256' }, // ecdsa-with-SHA256
  secp384r1: { identifier: sequence(oid('1.2.840.10045.4.3.3')), hash: 'sha384' }, // ecdsa-with-SHA384
  secp521r1: { identifier: sequence(oid('1.2.840.10045.4.3.4')), hash: 'sha512' }, // ecdsa-with-SHA512
};
/** sha256WithRSAEncryption, whose parameters MUST be NULL (RFC 4055 §5). */
const RSA_SHA256: SignatureAlgorithm = { identifier: sequence(oid('1.2.840.113549.1.1.11'), NULL), hash: 'sha256' };

/** How `key` signs certificates; undefined for a key TLS clients would not accept as an issuer. */
export function signatureAlgorithmFor(key: KeyObject): SignatureAlgorithm | undefined {
  if (key.asymmetricKeyType === 'rsa') return RSA_SHA256;
  if (key.asymmetricKeyType === 'ec') return ECDSA[key.asymmetricKeyDetails?.namedCurve ?? ''];
  return undefined;
}

/** Signs `fields` with `issuerKey`; returns the certificate in PEM. */
export function signCertificate(fields: CertificateFields, issuerKey: KeyObject): string {
  const algorithm = signatureAlgorithmFor(issuerKey);
  if (algorithm === undefined) throw new Error(`cannot sign certificates with a ${issuerKey.asymmetricKeyType} key`);
  const tbs = sequence(
    contextConstructed(0, smallInteger(2)), // v3
    randomSerial(),
    algorithm.identifier,
    fields.issuer,
    sequence(time(fields.notBefore), time(fields.notAfter)),
    fields.subject,
    fields.spki,
    contextConstructed(3, sequence(...fields.extensions)),
  );
  const der = sequence(tbs, algorithm.identifier, bitString(sign(algorithm.hash, tbs, issuerKey)));
  const base64 = der.toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN CERTIFICATE-----\n${base64.replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}

/** 16 random bytes, first byte 0x40-0x7f: positive and minimally DER-encoded (RFC 5280 §4.1.2.2). */
function randomSerial(): Buffer {
  const serial = randomBytes(16);
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x40;
  return unsignedInteger(serial);
}

/** A Name of one commonName (and an organizationName when given), as UTF8String (RFC 5280 §4.1.2.6). */
export function name(commonName: string, organization?: string): Buffer {
  const attribute = (type: string, value: string) => set(sequence(oid(type), utf8String(value)));
  return sequence(
    attribute('2.5.4.3', commonName),
    ...(organization === undefined ? [] : [attribute('2.5.4.10', organization)]),
  );
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return sequence(oid(id), ...(critical ? [TRUE] : []), octetString(value));
}

/** RFC 5280 §4.2.1.9: MUST be critical in a CA; pathLen 0, so the CA signs no other CA. */
export const caBasicConstraints = (): Buffer => extension('2.5.29.19', true, sequence(TRUE, smallInteger(0)));
/** An end-entity certificate: cA is FALSE, the DEFAULT, so DER leaves it out. */
export const leafBasicConstraints = (): Buffer => extension('2.5.29.19', true, sequence());

/** RFC 5280 §4.2.1.3 bit numbers. */
export const KEY_USAGE = { digitalSignature: 0, keyCertSign: 5, cRLSign: 6 } as const;
/** RFC 5280 §4.2.1.3: SHOULD be critical. */
export const keyUsage = (...bits: readonly number[]): Buffer => extension('2.5.29.15', true, namedBits(bits));
/** RFC 5280 §4.2.1.12: TLS server authentication only. */
export const serverAuthOnly = (): Buffer => extension('2.5.29.37', false, sequence(oid('1.3.6.1.5.5.7.3.1')));

/** A GeneralName: dNSName [2] or iPAddress [7] (RFC 5280 §4.2.1.6). */
export type GeneralName = { readonly dns: string } | { readonly ip: Buffer };
const generalName = (n: GeneralName): Buffer =>
  'dns' in n ? contextPrimitive(2, Buffer.from(n.dns, 'ascii')) : contextPrimitive(7, n.ip);

export const subjectAltName = (n: GeneralName): Buffer => extension('2.5.29.17', false, sequence(generalName(n)));
export const subjectKeyIdentifier = (id: Buffer): Buffer => extension('2.5.29.14', false, octetString(id));
/** RFC 5280 §4.2.1.1: keyIdentifier [0] only. */
export const authorityKeyIdentifier = (id: Buffer): Buffer =>
  extension('2.5.29.35', false, sequence(contextPrimitive(0, id)));

/**
 * RFC 5280 §4.2.1.10: names every certificate below the CA must fall inside (permitted) or
 * outside (excluded). For an iPAddress the name is the address followed by its mask. Conforming
 * CAs MUST mark it critical.
 */
export function nameConstraints(permitted: readonly GeneralName[], excluded: readonly GeneralName[]): Buffer {
  const subtrees = (tag: number, names: readonly GeneralName[]) =>
    names.length === 0 ? [] : [contextConstructed(tag, ...names.map((n) => sequence(generalName(n))))];
  return extension('2.5.29.30', true, sequence(...subtrees(0, permitted), ...subtrees(1, excluded)));
}

/** RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING's value. */
export function keyIdentifierOf(spki: Buffer): Buffer {
  const [, key] = childrenOf(readElement(spki));
  if (key === undefined) throw new Error('malformed SubjectPublicKeyInfo');
  return createHash('sha1').update(key.content.subarray(1)).digest();
}

/** What a CA certificate lends to the certificates it signs. */
export interface IssuerParts {
  /** Its subject Name, DER: each leaf's issuer. */
  readonly subject: Buffer;
  /** Its subjectKeyIdentifier (or one computed from its key), each leaf's authorityKeyIdentifier. */
  readonly keyId: Buffer;
  /** Whether a keyUsage extension is present and leaves out keyCertSign. */
  readonly keyCertSignDenied: boolean;
}

/** Reads a certificate (DER) for the parts an issuer needs. */
export function issuerParts(certificate: Buffer): IssuerParts {
  const [tbs] = childrenOf(readElement(certificate));
  if (tbs === undefined) throw new Error('malformed certificate');
  const fields = childrenOf(tbs);
  const at = fields[0]?.tag === 0xa0 ? 1 : 0; // the version is [0] EXPLICIT, absent for v1
  const subject = fields[at + 4];
  const spki = fields[at + 5];
  if (subject === undefined || spki === undefined) throw new Error('malformed certificate');
  const extensions = fields.find((f) => f.tag === 0xa3);
  const found = new Map<string, Element>();
  for (const ext of extensions === undefined ? [] : childrenOf(childrenOf(extensions)[0] ?? extensions)) {
    const parts = childrenOf(ext);
    const value = parts.at(-1);
    if (parts[0] !== undefined && value !== undefined)
      found.set(parts[0].content.toString('hex'), readElement(value.content));
  }
  const ski = found.get('551d0e'); // 2.5.29.14, an OCTET STRING
  const usage = found.get('551d0f'); // 2.5.29.15, a BIT STRING: unused-bits byte, then bits 0-7
  return {
    subject: Buffer.from(subject.der),
    keyId: ski === undefined ? keyIdentifierOf(spki.der) : Buffer.from(ski.content),
    keyCertSignDenied: usage !== undefined && ((usage.content[1] ?? 0) & (0x80 >> KEY_USAGE.keyCertSign)) === 0,
  };
}
