/**
 * Which certificate name serves a host. Under a configured `*.suffix` host pattern a client can
 * CONNECT to as many made-up names as it likes (`r1234.partner.example`); one wildcard leaf per
 * parent domain makes that cost one signature instead of one per name.
 *
 * RFC 6125 §6.4.3: a wildcard stands for exactly one left-most label, so `*.partner.example`
 * covers `a.partner.example` but not `a.b.partner.example` (which gets `*.b.partner.example`)
 * nor `partner.example` (which gets its own leaf). Clients refuse wildcards directly under a
 * one-label name (`*.example`, as OpenSSL's and Node's host checks do): such names get their own.
 */
export function leafNameFor(host: string, wildcardSuffixes: readonly string[]): string {
  const dot = host.indexOf('.');
  const parent = host.slice(dot + 1);
  if (dot <= 0 || !parent.includes('.')) return host;
  const under = wildcardSuffixes.some((suffix) => parent === suffix || parent.endsWith(`.${suffix}`));
  return under ? `*.${parent}` : host;
}
