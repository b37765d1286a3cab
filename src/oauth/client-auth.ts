/**
 * Client authentication methods for the token endpoint. Each is validated once and returns a
 * small closure that adds its part to a token request.
 */
export interface TokenRequestParts {
  readonly headers: Record<string, string>;
  readonly body: URLSearchParams;
}

export type ClientAuth = (parts: TokenRequestParts) => void;

/**
 * RFC 6749 §2.3.1: HTTP Basic, with id and secret each form-urlencoded first (Appendix B), a step
 * many hand-written clients skip and then fail on secrets containing ":" or "%".
 */
export function clientSecretBasic(clientId: string, clientSecret: string): ClientAuth {
  const encode = (s: string) => new URLSearchParams({ s }).toString().slice(2);
  const header = `Basic ${Buffer.from(`${encode(clientId)}:${encode(clientSecret)}`).toString('base64')}`;
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
