import { createHash, X509Certificate } from 'node:crypto';

/**
 * RFC 8705 §3.1 `x5t#S256`: the base64url SHA-256 of the DER form of a certificate (the first
 * one of a PEM chain, the leaf the TLS stack presents). What a certificate-bound token names in
 * its `cnf` claim, so the proxy can compare it with the certificate it presents to a target.
 */
export function certificateThumbprint(pem: string): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');
}
