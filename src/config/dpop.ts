import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { resolve } from 'node:path';
import { z } from 'zod';
import { readPrivateKeyFile } from './files.js';

/** RFC 9449 §4.2: the proof's `alg`; one per key type the proxy can sign with. */
export const DPOP_ALGS = ['ES256', 'PS256', 'EdDSA'] as const;
export type DpopAlg = (typeof DPOP_ALGS)[number];

export const dpopSchema = z
  .strictObject({
    key: z
      .string()
      .min(1)
      .optional()
      .describe(
        'PEM private key file: EC P-256 (ES256), RSA of 2048 bits or more (PS256) or Ed25519 (EdDSA); refused when its group or others can read it. Without it a key is generated at start (not with tokenCache.redis)',
      ),
    alg: z
      .enum(DPOP_ALGS)
      .optional()
      .describe("the proof's signing algorithm; by default the one of the key's type (ES256 for a generated key)"),
  })
  .describe(
    'RFC 9449 DPoP: tokens bound to this key, and a fresh proof signed with it on every token request and every request to the target',
  );

export type ParsedDpop = z.output<typeof dpopSchema>;

/** A DPoP key as the runtime needs it: plain data, so the frozen config can hold it. */
export interface DpopKey {
  readonly alg: DpopAlg;
  /** PKCS#8 PEM; never logged, never part of a cache key (the thumbprint is). */
  readonly privateKeyPem: string;
  /** The public key's required members (RFC 7638 §3.2), as the proof's `jwk` header carries it. */
  readonly publicJwk: Readonly<Record<string, string>>;
  /** RFC 7638 SHA-256 thumbprint of the public key: the token's `cnf.jkt` (RFC 9449 §6). */
  readonly thumbprint: string;
  /** Generated at start: it lives in this process only. */
  readonly generated: boolean;
}

/** RFC 7638 §3.2: the required members of each key type, in lexicographic order. */
const REQUIRED_MEMBERS: Readonly<Record<string, readonly string[]>> = {
  EC: ['crv', 'kty', 'x', 'y'],
  RSA: ['e', 'kty', 'n'],
  OKP: ['crv', 'kty', 'x'],
};

/** The public JWK with only its required members, and its RFC 7638 thumbprint. */
export function publicJwkOf(key: KeyObject): { jwk: Record<string, string>; thumbprint: string } {
  const full = createPublicKey(key).export({ format: 'jwk' }) as Record<string, unknown>;
  const jwk: Record<string, string> = {};
  for (const name of REQUIRED_MEMBERS[String(full['kty'])] ?? []) jwk[name] = String(full[name]);
  // The members are already in lexicographic order, and JSON.stringify adds no whitespace.
  const thumbprint = createHash('sha256').update(JSON.stringify(jwk)).digest('base64url');
  return { jwk, thumbprint };
}

/** The algorithm a key type signs with, or undefined for a type DPoP here does not support. */
function algOfKey(key: KeyObject): DpopAlg | undefined {
  const type = key.asymmetricKeyType;
  if (type === 'ec') return key.asymmetricKeyDetails?.namedCurve === 'prime256v1' ? 'ES256' : undefined;
  if (type === 'rsa' || type === 'rsa-pss') return 'PS256';
  if (type === 'ed25519') return 'EdDSA';
  return undefined;
}

function generate(alg: DpopAlg): KeyObject {
  if (alg === 'PS256') return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  if (alg === 'EdDSA') return generateKeyPairSync('ed25519').privateKey;
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
}

/** RSA below 2048 bits is refused (RFC 7518 §3.5 asks for at least 2048). */
const MIN_RSA_BITS = 2048;

/**
 * Reads (or, without `key`, generates) the DPoP key of an upstream once, at load: every tenant
 * of the upstream shares it, and its thumbprint names the cached tokens. Problems are pushed
 * with their path, as for every other file the config names.
 */
export function resolveDpop(
  d: ParsedDpop | undefined,
  at: string,
  baseDir: string,
  problems: string[],
): DpopKey | undefined {
  if (d === undefined) return undefined;
  let key: KeyObject;
  if (d.key === undefined) {
    key = generate(d.alg ?? 'ES256');
  } else {
    const pem = readPrivateKeyFile(resolve(baseDir, d.key), `${at}.key`, problems);
    if (pem === undefined) return undefined;
    try {
      key = createPrivateKey(pem);
    } catch {
      problems.push(`${at}.key: ${d.key} is not a PEM private key (an encrypted key is not supported)`);
      return undefined;
    }
  }
  const keyAlg = algOfKey(key);
  if (keyAlg === undefined) {
    problems.push(`${at}.key: ${d.key ?? ''} must be an EC P-256, RSA or Ed25519 private key`);
    return undefined;
  }
  if (d.alg !== undefined && d.alg !== keyAlg) {
    problems.push(`${at}.alg: ${d.alg} cannot be signed with the ${keyAlg} key ${d.key ?? ''}`);
    return undefined;
  }
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (keyAlg === 'PS256' && bits !== undefined && bits < MIN_RSA_BITS) {
    problems.push(`${at}.key: an RSA key needs at least ${MIN_RSA_BITS} bits, ${d.key ?? ''} has ${bits}`);
    return undefined;
  }
  const { jwk, thumbprint } = publicJwkOf(key);
  return {
    alg: keyAlg,
    privateKeyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicJwk: jwk,
    thumbprint,
    generated: d.key === undefined,
  };
}

function isFields(value: unknown): value is Readonly<Record<string, unknown>> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * With the shared tier a token is useful only together with its key: a key generated at start
 * exists in one replica, so the others (and this one after a restart) would hold tokens they
 * cannot prove. Runs on the raw document, with the other cross-field checks.
 */
export function dpopSharedTierProblems(doc: unknown): string[] {
  if (!isFields(doc) || !isFields(doc['tokenCache']) || doc['tokenCache']['redis'] === undefined) return [];
  const upstreams = Array.isArray(doc['upstreams']) ? (doc['upstreams'] as unknown[]) : [];
  return upstreams.flatMap((u, i) => {
    const dpop = isFields(u) && isFields(u['auth']) ? u['auth']['dpop'] : undefined;
    if (!isFields(dpop) || dpop['key'] !== undefined) return [];
    return [
      `upstreams[${i}].auth.dpop.key: required with tokenCache.redis: a key generated at start lives in one process, and the tokens bound to it are useless to the other replicas`,
    ];
  });
}
