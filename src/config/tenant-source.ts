/**
 * Where a request's tenant name comes from, as the request path reads it: parsed once from the
 * config's `tenants.from` text (`proxyAuthUser`, `header:<Name>`, `jwtClaim:<claim>`), so nothing
 * on the request path looks at that text again.
 */
export type TenantSource =
  | { readonly kind: 'proxyAuthUser'; readonly text: string }
  | { readonly kind: 'header'; readonly name: string; readonly text: string }
  | { readonly kind: 'jwtClaim'; readonly claim: string; readonly text: string };

/** `text` as the schema validated it. Header names are lower case, as Node hands them over. */
export function parseTenantSource(text: string): TenantSource {
  if (text.startsWith('jwtClaim:')) return { kind: 'jwtClaim', claim: text.slice('jwtClaim:'.length), text };
  if (text.startsWith('header:')) return { kind: 'header', name: text.slice('header:'.length).toLowerCase(), text };
  return { kind: 'proxyAuthUser', text };
}
