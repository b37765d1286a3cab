import type { ResolvedAuth } from '../config/load.js';
import { clientSecretBasic, clientSecretPost, type ClientAuth } from './client-auth.js';
import { requestToken, type TokenEndpoint, type TokenResponse } from './token-endpoint.js';
import type { Dispatcher } from 'undici';

export function clientAuthFor(auth: ResolvedAuth): ClientAuth {
  switch (auth.clientAuth) {
    case 'client_secret_post':
      return clientSecretPost(auth.clientId, auth.clientSecret);
    case 'client_secret_basic':
      return clientSecretBasic(auth.clientId, auth.clientSecret);
  }
}

/**
 * RFC 6749 §4.4.2: client credentials grant. `audience` is the widespread extension (Auth0,
 * Okta and others) naming the API the token is for; RFC 8707 `resource` is its standard cousin.
 */
export function clientCredentialsGrant(auth: ResolvedAuth, dispatcher: Dispatcher, now: () => number): () => Promise<TokenResponse> {
  const endpoint: TokenEndpoint = {
    url: new URL(auth.tokenUrl),
    dispatcher,
    clientAuth: clientAuthFor(auth),
    timeoutMs: auth.requestTimeoutSeconds * 1000,
  };
  const params: Record<string, string> = { grant_type: 'client_credentials' };
  if (auth.scope !== undefined) params['scope'] = auth.scope;
  if (auth.audience !== undefined) params['audience'] = auth.audience;
  return () => requestToken(endpoint, params, now);
}
