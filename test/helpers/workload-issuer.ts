import { randomUUID } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JSONWebKeySet } from 'jose';

/**
 * A test stand-in for a platform's workload identity issuer (the Kubernetes API server's
 * service-account issuer, a SPIFFE JWT-SVID issuer, a CI OIDC provider): its own signing key and
 * JWKS, minting projected-token-style JWTs into a file the test rotates, as the kubelet does.
 */
export interface WorkloadIssuer {
  readonly issuer: string;
  /** The public keys that verify its tokens (what its OIDC discovery would serve). */
  readonly jwks: JSONWebKeySet;
  /** Signs a token; `expiresInSeconds` may be negative (an expired token). */
  mint(options: MintOptions): Promise<MintedToken>;
  /** Mints a token and writes it to `file` (atomically, as the kubelet's atomic writer swaps it in). */
  writeTo(file: string, options: MintOptions): Promise<MintedToken>;
}

export interface MintOptions {
  readonly audience: string;
  /** Default `system:serviceaccount:payments:orders` (the shape of a Kubernetes service account). */
  readonly subject?: string;
  /** Default 600 (the least expirationSeconds Kubernetes allows). */
  readonly expiresInSeconds?: number;
}

export interface MintedToken {
  readonly token: string;
  readonly jti: string;
  readonly sub: string;
  /** Epoch seconds. */
  readonly exp: number;
}

export async function startWorkloadIssuer(
  issuer = 'https://kubernetes.default.svc.cluster.local',
): Promise<WorkloadIssuer> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const kid = `workload-${randomUUID().slice(0, 8)}`;
  const jwks: JSONWebKeySet = { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' }] };
  const mint = async (o: MintOptions): Promise<MintedToken> => sign(privateKey, kid, issuer, o);
  return {
    issuer,
    jwks,
    mint,
    async writeTo(file, o) {
      const minted = await mint(o);
      // The kubelet writes a new file and swaps it in: a reader never sees half a token.
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, `${minted.token}\n`);
      renameSync(tmp, file);
      return minted;
    },
  };
}

async function sign(key: CryptoKey, kid: string, issuer: string, o: MintOptions): Promise<MintedToken> {
  const now = Math.floor(Date.now() / 1000);
  const sub = o.subject ?? 'system:serviceaccount:payments:orders';
  const exp = now + (o.expiresInSeconds ?? 600);
  const jti = randomUUID();
  const [, namespace = '', name = ''] = /^system:serviceaccount:([^:]+):(.+)$/.exec(sub) ?? [];
  const token = await new SignJWT({
    'kubernetes.io': { namespace, serviceaccount: { name, uid: randomUUID() } },
  })
    .setProtectedHeader({ alg: 'RS256', kid })
    .setIssuer(issuer)
    .setSubject(sub)
    .setAudience([o.audience])
    .setIssuedAt(Math.min(now, exp - 1))
    .setNotBefore(Math.min(now, exp - 1))
    .setExpirationTime(exp)
    .setJti(jti)
    .sign(key);
  return { token, jti, sub, exp };
}
