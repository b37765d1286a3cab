import { readFile } from 'node:fs/promises';
import type { TokenExchangeSettings } from '../config/resolve-auth.js';
import { TokenError } from '../errors.js';

/** RFC 8693 §2.1: the grant_type of a token exchange request. */
export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';

/**
 * The proxy's own actor token (RFC 8693 §2.1 actor_token), read for every exchange: a platform
 * rotates a projected token in place. Its text never goes into an error (only the file's name).
 */
export async function readActorToken(file: string): Promise<string> {
  let text: string;
  try {
    text = (await readFile(file, 'utf8')).trim();
  } catch (err) {
    throw new TokenError(
      'bad_response',
      `actor token file ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
  if (text === '') throw new TokenError('bad_response', `actor token file ${file} is empty`);
  return text;
}

/**
 * RFC 8693 §2.1: the form parameters of one exchange of `subjectToken` (the caller's validated
 * JWT). `resource` and `audience` name the target service; `scope` narrows what is asked for.
 */
export function exchangeParams(
  auth: TokenExchangeSettings,
  subjectToken: string,
  actorToken: string | undefined,
): Record<string, string> {
  const params: Record<string, string> = {
    grant_type: TOKEN_EXCHANGE_GRANT,
    subject_token: subjectToken,
    subject_token_type: auth.subjectTokenType,
  };
  const optional: Record<string, string | undefined> = {
    resource: auth.resource,
    audience: auth.audience,
    scope: auth.scope,
    requested_token_type: auth.requestedTokenType,
    // §2.1: actor_token_type is REQUIRED when actor_token is present, and absent otherwise.
    actor_token: actorToken,
    actor_token_type: actorToken === undefined ? undefined : auth.actorTokenType,
  };
  for (const [name, value] of Object.entries(optional)) if (value !== undefined) params[name] = value;
  return params;
}
