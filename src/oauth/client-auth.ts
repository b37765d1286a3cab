import { randomUUID } from 'node:crypto';
import { SignJWT, importPKCS8, type CryptoKey } from 'jose';

/**
 * Client authentication methods for the token endpoint. Each is validated once and returns a
 * small closure that adds its part to a token request.
 */
export interface TokenRequestParts {
  readonly headers: Record<string, string>;
  readonly body: URLSearchParams;
  /**
   * Secrets made for this one request (a client assertion), to be cut out of whatever the token
   * endpoint answers: no configured list can hold them. requestToken always supplies it.
   */
  readonly secrets?: string[];
}

export type ClientAuth = (parts: TokenRequestParts) => void | Promise<void>;

/**
 * RFC 6749 §2.3.1: HTTP Basic, with id and secret each form-urlencoded first (Appendix B), a step
 * many hand-written clients skip and then fail on secrets containing ":" or "%".
 */
/** application/x-www-form-urlencoded form of one value (RFC 6749 Appendix B). */
export function formEncode(value: string): string {
  return new URLSearchParams({ s: value }).toString().slice(2);
}

/** The base64 credentials of the Basic header for this client (a secret in its own right). */
export function basicCredentials(clientId: string, clientSecret: string): string {
  return Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret)}`).toString('base64');
}

export function clientSecretBasic(clientId: string, clientSecret: string): ClientAuth {
  const header = `Basic ${basicCredentials(clientId, clientSecret)}`;
  return (parts) => {
    parts.headers['authorization'] = header;
  };
}

/** RFC 6749 §2.3.1: credentials in the form body (client_secret_post). */
export function clientSecretPost(clientId: string, clientSecret: string): ClientAuth {
  return (parts) => {
    parts.body.set('client_id', clientId);
    parts.body.set('client_secret', clientSecret);
  };
}

/**
 * RFC 8705 §2 (tls_client_auth) and public clients (RFC 6749 §2.1): the client only names itself;
 * with tls_client_auth the certificate on the connection is the proof.
 */
export function clientIdOnly(clientId: string): ClientAuth {
  return (parts) => {
    parts.body.set('client_id', clientId);
  };
}

/** Assertions live a minute: long enough for a slow network, short enough to be useless if caught. */
const ASSERTION_LIFETIME_SECONDS = 60;

/**
 * RFC 7523 §2.2 / §3 (private_key_jwt, OIDC Core §9): a JWT signed with the client's key, with
 * iss = sub = client_id, aud = the token endpoint, and a fresh jti each time (no replay).
 */
export function privateKeyJwt(
  clientId: string,
  tokenUrl: string,
  keyPem: string,
  alg: 'RS256' | 'ES256' | 'PS256',
  kid: string | undefined,
): ClientAuth {
  let key: Promise<CryptoKey> | undefined;
  return async (parts) => {
    key ??= importPKCS8(keyPem, alg);
    const assertion = await new SignJWT({})
      .setProtectedHeader(kid === undefined ? { alg, typ: 'JWT' } : { alg, kid, typ: 'JWT' })
      .setIssuer(clientId)
      .setSubject(clientId)
      .setAudience(tokenUrl)
      .setJti(randomUUID())
      .setIssuedAt()
      .setExpirationTime(`${ASSERTION_LIFETIME_SECONDS}s`)
      .sign(await key);
    parts.body.set('client_id', clientId);
    parts.body.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
    parts.body.set('client_assertion', assertion);
    // The assertion is a credential until it expires: it, its signing input and each of its
    // parts (RFC 7515 §7.1) are scrubbed from the answer. Form-encoding leaves base64url as it is.
    const [header = '', payload = '', signature = ''] = assertion.split('.');
    parts.secrets?.push(assertion, `${header}.${payload}`, signature, payload, header);
  };
}
