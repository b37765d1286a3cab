import type { Dispatcher } from 'undici';
import type { OAuthClientSettings, ResolvedAuth, TokenExchangeSettings } from '../config/resolve-auth.js';
import {
  basicCredentials,
  clientIdOnly,
  clientSecretBasic,
  clientSecretPost,
  formEncode,
  privateKeyJwt,
  type ClientAuth,
} from './client-auth.js';
import { describeAssertionFile, JWT_BEARER_GRANT_TYPE } from './assertion-file.js';
import type { DpopSigner } from './dpop-signer.js';
import type { Grant } from './grant.js';
import { CREDENTIAL_NAME, loginApiGrant, templateSecrets } from './login-api.js';
import { TokenError } from '../errors.js';
import { requestToken, type TokenEndpoint } from './token-endpoint.js';
import { exchangeParams, readActorToken } from './token-exchange.js';
import { bearerAssertion, clientAssertion } from './workload-assertion.js';

// Still imported from here by tokens/token-source.ts.
export type { Grant } from './grant.js';

export function clientAuthFor(c: OAuthClientSettings, now: () => number = Date.now): ClientAuth {
  switch (c.clientAuth) {
    case 'client_assertion':
      // The loader requires the file with this method.
      return clientAssertion(c.clientId, c.clientAssertionFile ?? '', now);
    case 'client_secret_post':
      return clientSecretPost(c.clientId, c.clientSecret ?? '');
    case 'client_secret_basic':
      return clientSecretBasic(c.clientId, c.clientSecret ?? '');
    case 'private_key_jwt': {
      const key = c.privateKey as NonNullable<OAuthClientSettings['privateKey']>; // the loader requires it
      return privateKeyJwt(c.clientId, c.tokenUrl, key.pem, key.alg, key.kid);
    }
    case 'tls_client_auth':
    case 'none':
      return clientIdOnly(c.clientId);
  }
}

function withOptional(
  params: Record<string, string>,
  extra: Record<string, string | undefined>,
): Record<string, string> {
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) params[k] = v;
  return params;
}

/**
 * Builds the grant for an auth block. `dispatcher` carries the CA and client certificate, if any;
 * `dpop`, the upstream's proof signer when its tokens are DPoP-bound (RFC 9449).
 */
export function createGrant(auth: ResolvedAuth, dispatcher: Dispatcher, now: () => number, dpop?: DpopSigner): Grant {
  const grant = withoutSecrets(grantFor(auth, dispatcher, now, dpop), secretsOf(auth));
  // A platform-issued assertion: what it says (never what it is) for /readyz and the token command.
  const file =
    auth.type === 'jwt_bearer' ? auth.assertionFile : auth.type === 'login' ? undefined : auth.clientAssertionFile;
  return file === undefined ? grant : { ...grant, assertion: () => describeAssertionFile(file, now()) };
}

/**
 * RFC 8693: the grant of one caller, its validated JWT the subject token. The caller's token is a
 * secret like the client's: a partner that echoes it in an error never gets it into a log. No
 * refresh: a renewal is the exchange again (while the caller's token lives).
 */
export function createExchangeGrant(
  auth: TokenExchangeSettings,
  dispatcher: Dispatcher,
  now: () => number,
  subjectToken: string,
): Grant {
  const endpoint = endpointFor(auth, dispatcher, now);
  const obtain = async () => {
    const actor = auth.actorTokenFile === undefined ? undefined : await readActorToken(auth.actorTokenFile);
    const call = requestToken(endpoint, exchangeParams(auth, subjectToken, actor), now);
    return actor === undefined ? call : call.catch(clean(formsOf(actor)));
  };
  return withoutSecrets({ obtain, refresh: undefined }, [...secretsOf(auth), ...formsOf(subjectToken)]);
}

function clean(secrets: readonly string[]): (err: unknown) => never {
  return (err) => {
    throw err instanceof TokenError ? err.withoutSecrets(secrets) : err;
  };
}

function endpointFor(auth: OAuthClientSettings, dispatcher: Dispatcher, now: () => number): TokenEndpoint {
  return {
    url: new URL(auth.tokenUrl),
    dispatcher,
    clientAuth: clientAuthFor(auth, now),
    timeoutMs: auth.requestTimeoutSeconds * 1000,
  };
}

/**
 * A secret as sent or as a partner may quote it: plain or JSON-escaped (inside a JSON text), each
 * also form-encoded or URI-encoded (a JSON body re-encoded into a query or form).
 */
function formsOf(secret: string): string[] {
  return [secret, JSON.stringify(secret).slice(1, -1)].flatMap((s) => [s, formEncode(s), encodeURIComponent(s)]);
}

/**
 * Every secret an auth block holds, in every form it is sent in (plain, form-encoded, inside the
 * Basic credentials): none may come back in a partner's error text.
 */
function secretsOf(auth: ResolvedAuth): string[] {
  const plain = [
    auth.type === 'login' || auth.type === 'password' ? auth.password : undefined,
    auth.type === 'login' ? undefined : auth.clientSecret,
    auth.type === 'refresh_token' ? auth.refreshToken : undefined,
    // A login API's extra headers carry its API key (the documented use): those named like a
    // credential are secrets (not, say, Accept, whose value would be blanked in every message).
    ...(auth.type === 'login'
      ? Object.entries(auth.headers)
          .filter(([name]) => CREDENTIAL_NAME.test(name))
          .map(([, value]) => value)
      : []),
    // Secrets written into the login API's body templates (a client secret, an API key).
    ...(auth.type === 'login' ? [...templateSecrets(auth.loginBody), ...templateSecrets(auth.refreshBody)] : []),
  ].filter((s): s is string => s !== undefined && s !== '');
  const forms = plain.flatMap(formsOf);
  if (auth.type !== 'login' && auth.clientId !== undefined && auth.clientSecret !== undefined)
    forms.push(basicCredentials(auth.clientId, auth.clientSecret));
  return [...new Set(forms)];
}

function withoutSecrets(grant: Grant, secrets: readonly string[]): Grant {
  const clean = (err: unknown): never => {
    throw err instanceof TokenError ? err.withoutSecrets(secrets) : err;
  };
  const refresh = grant.refresh;
  return {
    obtain: () => grant.obtain().catch(clean),
    // The refresh token in use is a secret too (it is the one the partner may echo).
    refresh:
      refresh === undefined
        ? undefined
        : (rt) =>
            refresh(rt).catch((err: unknown) =>
              clean(err instanceof TokenError ? err.withoutSecrets(formsOf(rt)) : err),
            ),
  };
}

function grantFor(auth: ResolvedAuth, dispatcher: Dispatcher, now: () => number, dpop: DpopSigner | undefined): Grant {
  if (auth.type === 'login') return loginApiGrant(auth, dispatcher, now);
  const clientId = auth.clientId;
  const endpoint: TokenEndpoint = {
    url: new URL(auth.tokenUrl),
    dispatcher,
    clientAuth:
      auth.type === 'jwt_bearer'
        ? bearerAssertion(
            auth.assertionFile,
            now,
            clientId === undefined ? undefined : clientAuthFor({ ...auth, clientId }, now),
          )
        : clientAuthFor(auth, now),
    timeoutMs: auth.requestTimeoutSeconds * 1000,
    dpop,
  };
  const call = (params: Record<string, string>) => requestToken(endpoint, params, now);
  // RFC 6749 §6: a refresh may narrow the scope but never needs to repeat it.
  const refresh = (refreshToken: string) => call({ grant_type: 'refresh_token', refresh_token: refreshToken });
  switch (auth.type) {
    case 'client_credentials':
      // RFC 6749 §4.4.3: no refresh token here; renewal is simply the grant again.
      return {
        obtain: () =>
          call(withOptional({ grant_type: 'client_credentials' }, { scope: auth.scope, audience: auth.audience })),
        refresh: undefined,
      };
    case 'password':
      return {
        obtain: () =>
          call(
            withOptional(
              { grant_type: 'password', username: auth.username, password: auth.password },
              { scope: auth.scope, audience: auth.audience },
            ),
          ),
        refresh,
      };
    case 'jwt_bearer':
      // RFC 7523 §2.1. No refresh: a refresh token would outlive the platform's rotating assertion
      // (and the identity's revocation); renewal is the grant again with the file as it is then.
      return {
        obtain: () =>
          call(withOptional({ grant_type: JWT_BEARER_GRANT_TYPE }, { scope: auth.scope, audience: auth.audience })),
        refresh: undefined,
      };
    case 'refresh_token':
      return {
        obtain: () =>
          call(
            withOptional(
              { grant_type: 'refresh_token', refresh_token: auth.refreshToken },
              { scope: auth.scope, audience: auth.audience },
            ),
          ),
        refresh,
      };
    case 'token_exchange':
      // One grant per caller, made with the caller's token (createExchangeGrant).
      throw new Error('token_exchange grants are made per caller');
  }
}
