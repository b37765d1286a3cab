import { startPartnerApi, type PartnerApi, type PartnerOptions } from '../../src/demo/partner-api.js';
import { testPki } from './certs.js';
import type { TokenServer } from './token-server.js';

/**
 * The partner API most tests call: HTTPS with the test certificate, verifying every token's
 * signature against `tokens`' JWKS and its issuer. `extra` adds or overrides options.
 */
export function startVerifyingPartner(tokens: TokenServer, extra: Partial<PartnerOptions> = {}): Promise<PartnerApi> {
  const pki = testPki();
  return startPartnerApi({
    jwksUrl: tokens.jwksUrl,
    issuer: tokens.url,
    tls: { key: pki.key, cert: pki.cert },
    issuerCa: pki.ca,
    ...extra,
  });
}
