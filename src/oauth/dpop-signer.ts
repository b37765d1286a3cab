import { constants, createHash, createPrivateKey, randomUUID, sign, type KeyObject } from 'node:crypto';
import type { DpopKey } from '../config/dpop.js';

/**
 * RFC 9449 §8.1 / §9: a nonce is 1*NQCHAR (visible ASCII but `"` and `\`). Longer than any server
 * sends: a bound on what an answer can make the proxy carry in every proof.
 */
const NONCE = /^[\x21\x23-\x5b\x5d-\x7e]{1,512}$/;

/** How a proof's signature is made, per algorithm (RFC 7518 §3.4 and §3.5, RFC 8037 §3.1). */
function signerOf(alg: DpopKey['alg'], key: KeyObject): (input: Buffer) => Buffer {
  switch (alg) {
    case 'ES256':
      // JWS wants r || s (RFC 7518 §3.4), not DER.
      return (input) => sign('sha256', input, { key, dsaEncoding: 'ieee-p1363' });
    case 'PS256':
      return (input) => sign('sha256', input, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    case 'EdDSA':
      return (input) => sign(null, input, key);
  }
}

/** What a request to the target carries for one access token. */
export interface DpopBinding {
  /** `DPoP <token>` (RFC 9449 §7.1). */
  readonly authorization: string;
  /** base64url(SHA-256(token)), the proof's `ath` (RFC 9449 §4.2). */
  readonly ath: string;
}

/** The target URI of a proof: without query and fragment (RFC 9449 §4.2 `htu`). */
export function htuOf(origin: string, path: string): string {
  const q = path.indexOf('?');
  const h = path.indexOf('#');
  const end = q === -1 ? h : h === -1 ? q : Math.min(q, h);
  return `${origin}${end === -1 ? path : path.slice(0, end)}`;
}

/**
 * One upstream's DPoP key at work (RFC 9449): signs proofs for its token endpoint and for every
 * request to its target, and remembers the latest nonce each server gave (per origin, §8 and §9).
 * The key is imported once and the protected header encoded once; a proof is then a UUID, a
 * small JSON payload and one signature, made with node:crypto directly (see bench/dpop-cost.mjs).
 * Proofs and the key are credentials: nothing here logs, and no error carries them.
 */
export class DpopSigner {
  /** RFC 7638 thumbprint of the public key (the tokens' `cnf.jkt`). */
  readonly thumbprint: string;
  readonly #sign: (input: Buffer) => Buffer;
  /** `base64url(header).`, the same for every proof. */
  readonly #head: string;
  readonly #now: () => number;
  readonly #nonces = new Map<string, string>();
  readonly #bindings = new WeakMap<object, DpopBinding>();

  constructor(key: DpopKey, now: () => number) {
    this.thumbprint = key.thumbprint;
    this.#sign = signerOf(key.alg, createPrivateKey(key.privateKeyPem));
    const header = { typ: 'dpop+jwt', alg: key.alg, jwk: key.publicJwk };
    this.#head = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.`;
    this.#now = now;
  }

  /**
   * A proof for one request (RFC 9449 §4.2): `htm`, `htu`, `iat`, a fresh `jti`, the nonce the
   * server at `origin` gave last (if any), and `ath` when the request carries an access token.
   */
  proof(htm: string, origin: string, htu: string, ath?: string): string {
    const nonce = this.#nonces.get(origin);
    const payload =
      `{"jti":"${randomUUID()}","htm":${JSON.stringify(htm)},"htu":${JSON.stringify(htu)},` +
      `"iat":${Math.floor(this.#now() / 1000)}` +
      `${ath === undefined ? '' : `,"ath":"${ath}"`}${nonce === undefined ? '' : `,"nonce":"${nonce}"`}}`;
    const input = this.#head + Buffer.from(payload).toString('base64url');
    return `${input}.${this.#sign(Buffer.from(input, 'latin1')).toString('base64url')}`;
  }

  /** The Authorization value and `ath` for an access token, computed once per token object. */
  binding(token: { readonly value: string }): DpopBinding {
    let bound = this.#bindings.get(token);
    if (bound === undefined) {
      const value = token.value;
      bound = {
        authorization: `DPoP ${value}`,
        ath: createHash('sha256').update(value).digest('base64url'),
      };
      this.#bindings.set(token, bound);
    }
    return bound;
  }

  /**
   * Keeps the `DPoP-Nonce` a server at `origin` sent (RFC 9449 §8.2, §9.1: the newest one wins).
   * Returns whether the value was a usable nonce; anything else is ignored.
   */
  rememberNonce(origin: string, value: string): boolean {
    if (!NONCE.test(value)) return false;
    this.#nonces.set(origin, value);
    return true;
  }

  nonce(origin: string): string | undefined {
    return this.#nonces.get(origin);
  }
}
