import { assertionSecrets, JWT_BEARER_ASSERTION_TYPE, readAssertion } from './assertion-file.js';
import type { ClientAuth } from './client-auth.js';

/**
 * Secretless clients (workload identity): the platform's JWT, read from its file at each token
 * request, is the credential. Nothing secret is configured, and nothing read is kept: the
 * assertion lives for one request, is cut out of whatever the token endpoint answers
 * (`parts.secrets`), and never reaches a log line.
 */

/**
 * RFC 7523 §2.2 client authentication with an externally issued JWT (federated credentials): the
 * client names itself (§3.1 lets client_id accompany the assertion, and federated endpoints want
 * it) and proves it with the assertion.
 */
export function clientAssertion(clientId: string, file: string, now: () => number): ClientAuth {
  return async (parts) => {
    const assertion = await readAssertion(file, now());
    parts.body.set('client_id', clientId);
    parts.body.set('client_assertion_type', JWT_BEARER_ASSERTION_TYPE);
    parts.body.set('client_assertion', assertion);
    parts.secrets?.push(...assertionSecrets(assertion));
  };
}

/**
 * RFC 7523 §2.1: the assertion is the grant (`grant_type` jwt-bearer is the grant's own parameter).
 * It is added to the token request the way client authentication is: read at the moment of the
 * request, its secrets registered for that request; then `clientAuth`, when the server wants one,
 * adds its own part.
 */
export function bearerAssertion(file: string, now: () => number, clientAuth: ClientAuth | undefined): ClientAuth {
  return async (parts) => {
    const assertion = await readAssertion(file, now());
    parts.body.set('assertion', assertion);
    parts.secrets?.push(...assertionSecrets(assertion));
    await clientAuth?.(parts);
  };
}
