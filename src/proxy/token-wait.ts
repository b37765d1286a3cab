import { TokenError } from '../errors.js';
import type { TokenReader } from '../tokens/reader.js';
import type { Token } from '../tokens/token.js';
import { fail } from '../tracing/span-end.js';
import type { Span, Tracing } from '../tracing/tracing.js';

/**
 * A request waiting for a token, as a `token wait` span under its server span. The wait span is
 * handed to the provider: when this request starts the token fetch, the fetch's `token request`
 * spans are its children; one that joins a fetch already under way (single flight) is marked so
 * (`token_proxy.token.fetch` = joined), its wait covering its share of that fetch.
 */
export function obtainTraced(
  tracing: Tracing,
  parent: Span,
  tokens: TokenReader,
  trigger: 'miss' | 'unauthorized',
): Promise<Token> {
  const wait = tracing.internal('token wait', parent, {
    'token_proxy.upstream': tokens.upstream,
    ...(tokens.tenant === undefined ? {} : { 'token_proxy.tenant': tokens.tenant }),
    'token_proxy.token.trigger': trigger,
  });
  return tokens.obtain(trigger, wait).then(
    (token) => {
      wait.end();
      return token;
    },
    (err: unknown) => {
      fail(wait, err instanceof TokenError ? err.reason : 'bad_response');
      wait.end();
      throw err;
    },
  );
}
