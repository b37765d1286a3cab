import { htuOf, type DpopSigner } from '../oauth/dpop-signer.js';

/**
 * Adds the proof of one request to a DPoP upstream (RFC 9449 §7.1) to its header list, whose
 * Authorization is already `DPoP <token>`: `htm`, `htu` (the target URL without query and
 * fragment), `ath` and the target's latest nonce. A DPoP header the client sent goes: its proof
 * belonged to its own credential, which the proxy has replaced, and a request carrying two is
 * refused (§4.3 check 1).
 */
export function addProof(
  headers: string[],
  dpop: DpopSigner,
  method: string,
  origin: string,
  path: string,
  ath: string,
): string[] {
  for (let i = headers.length - 2; i >= 0; i -= 2) {
    const name = headers[i] as string;
    if (name.length === 4 && name.toLowerCase() === 'dpop') headers.splice(i, 2);
  }
  headers.push('dpop', dpop.proof(method, origin, htuOf(origin, path), ath));
  return headers;
}

/** The `DPoP-Nonce` value of raw response headers (RFC 9449 §9), or undefined. */
export function dpopNonceOf(rawHeaders: readonly Buffer[]): string | undefined {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as Buffer;
    if (name.length === 10 && name.toString('latin1').toLowerCase() === 'dpop-nonce')
      return (rawHeaders[i + 1] as Buffer).toString('latin1');
  }
  return undefined;
}
