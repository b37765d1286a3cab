import { certificateThumbprint } from '../certificate-thumbprint.js';
import type { Mtls } from './resolve-auth.js';

/**
 * Which client certificate an upstream's target is presented, given certificate-bound tokens
 * (RFC 8705 §3: a token bound to the certificate presented at the token endpoint is accepted
 * only over a connection that presents the same one).
 *
 * Whether tokens are bound is known from `auth.certificateBoundTokens`, true by default when
 * `auth.mtls` is set (a token server that asks for a certificate may bind to it; one that does
 * not loses nothing when the target is presented it too). With bound tokens:
 * - no `upstreams[].mtls`: the target is presented `auth.mtls`;
 * - an `upstreams[].mtls` with another certificate: refused here, at start, with the reason;
 *   every token would be refused by the partner (or, by the proxy's own check, never sent).
 * Without, the target is presented `upstreams[].mtls` or nothing, as configured. Tenants share
 * `auth.mtls` (they cannot set their own: one pool, one certificate, serves them all).
 */
export function targetCertificate(
  target: Mtls | undefined,
  tokenCertificate: Mtls | undefined,
  certificateBoundTokens: boolean | undefined,
  at: string,
  problems: string[],
): Mtls | undefined {
  const bound = certificateBoundTokens ?? tokenCertificate !== undefined;
  if (!bound) return target;
  if (tokenCertificate === undefined) {
    problems.push(
      `${at}.auth.certificateBoundTokens: tokens are bound to the client certificate presented at the token endpoint (RFC 8705 §3): set ${at}.auth.mtls`,
    );
    return target;
  }
  if (target === undefined) return tokenCertificate;
  const [given, bondedTo] = [thumbprintOf(target), thumbprintOf(tokenCertificate)];
  // An unreadable certificate is reported where it was read (resolveMtls).
  if (given !== undefined && bondedTo !== undefined && given !== bondedTo) {
    problems.push(
      `${at}.mtls: the tokens are bound to ${at}.auth.mtls (RFC 8705 §3, certificate x5t#S256=${bondedTo}), and the partner accepts them only over a connection that presents that certificate, but this one is another (x5t#S256=${given}). Remove ${at}.mtls (the target is then presented auth.mtls), give both the same certificate, or set ${at}.auth.certificateBoundTokens: false if the token server does not bind its tokens`,
    );
  }
  return target;
}

function thumbprintOf(m: Mtls): string | undefined {
  try {
    return certificateThumbprint(m.cert);
  } catch {
    return undefined;
  }
}
