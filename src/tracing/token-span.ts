import type { Span } from '@opentelemetry/api';
import { fail } from './span-end.js';
import type { TokenRequestLabels, Tracing } from './tracing.js';

/**
 * The span of one token request (one call of the grant, or an adoption from the shared tier):
 * which upstream and tenant, the grant type, the client authentication method and what triggered
 * it. Names from the configuration only: never a secret, assertion, token or header value.
 * `parent` is the `token wait` of the request that started the fetch; none for a renewal ahead
 * of expiry (a root span of its own).
 */
export function tokenRequestSpan(
  tracing: Tracing,
  parent: Span | undefined,
  upstream: string,
  tenant: string | undefined,
  labels: TokenRequestLabels,
  trigger: string,
): Span {
  return tracing.internal('token request', parent, {
    'token_proxy.upstream': upstream,
    ...(tenant === undefined ? {} : { 'token_proxy.tenant': tenant }),
    'token_proxy.token.grant': labels.grant,
    ...(labels.clientAuth === undefined ? {} : { 'token_proxy.token.client_auth': labels.clientAuth }),
    'token_proxy.token.trigger': trigger,
  });
}

/** Ends a token request span: `success`, `shared` (a sibling's token adopted) or `error` with its stable reason. */
export function endTokenRequest(span: Span, outcome: 'success' | 'shared' | 'error', reason?: string): void {
  span.setAttribute('token_proxy.token.outcome', outcome);
  if (reason !== undefined) {
    span.setAttribute('token_proxy.token.reason', reason);
    fail(span, reason);
  }
  span.end();
}
