import { decodeJwt } from 'jose';
import { TokenError } from '../errors.js';
import { x5tS256 } from '../oauth/token-endpoint.js';

/**
 * RFC 8705 §3: a certificate-bound access token is only accepted over a connection that presents
 * the certificate it is bound to. Sending it with another certificate (or none) is useless at
 * best, and hands a token to a target that must refuse it; so the proxy checks each token it
 * obtains against the certificate its target is presented, and never injects one that differs.
 */

/**
 * The certificates (`x5t#S256`) a token is bound to: the one its token response states, and the
 * one a JWT access token names in its own `cnf` claim (read without verifying: the proxy is not
 * the audience, and only asks what the token says of itself). None for an unbound, opaque token.
 */
export function boundCertificates(accessToken: string, stated: string | undefined): string[] {
  const bound = stated === undefined ? [] : [stated];
  if (accessToken.split('.').length !== 3) return bound;
  try {
    const claimed = x5tS256(decodeJwt(accessToken)['cnf']);
    if (claimed !== undefined) bound.push(claimed);
  } catch {
    // an opaque token that merely looks like a JWT: it states nothing
  }
  return bound;
}

/**
 * Why a token bound to `bound` may not go to a target presented `presented` (a thumbprint, or
 * undefined for no client certificate); undefined when it may. Thumbprints name public
 * certificates: they are safe in logs and error bodies.
 */
export function certificateMismatch(bound: readonly string[], presented: string | undefined): TokenError | undefined {
  const other = bound.find((b) => b !== presented);
  if (other === undefined) return undefined;
  const given = presented === undefined ? 'no client certificate' : `certificate x5t#S256=${presented}`;
  return new TokenError(
    'certificate_mismatch',
    `token is bound to client certificate x5t#S256=${other} (RFC 8705 §3) but the target is presented ${given}: not sent`,
  );
}
