import { isIP } from 'node:net';

/**
 * The one spelling of an IP address that every rule compares: IPv4 in dotted decimal, IPv6 as
 * RFC 5952 §4 text (lower case, no leading zeros, the longest run of zero groups as `::`).
 *
 * An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, RFC 4291 §2.5.5.2) is given as its IPv4
 * address: a dual-stack socket connecting to it reaches that IPv4 host, so it is judged, routed
 * and connected to as that host. Without this, `[::ffff:127.0.0.1]:9464` and `127.0.0.1:9464`
 * would be two hosts to the allow list's port pins and one host to the network.
 *
 * Undefined for anything that is not an IP literal (names, numeric shorthands like `127.1`,
 * which request-target.ts reads, and IPv6 zone ids, which no rule can name).
 */
export function canonicalIp(text: string): string | undefined {
  const family = isIP(text);
  if (family === 4) return text; // isIP accepts dotted decimal without leading zeros only: already canonical
  if (family !== 6 || text.includes('%')) return undefined;
  // The WHATWG URL host serialiser writes IPv6 the RFC 5952 way, embedded IPv4 as hex groups.
  const v6 = new URL(`http://[${text}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6);
  if (mapped === null) return v6;
  const high = parseInt(mapped[1] as string, 16);
  const low = parseInt(mapped[2] as string, 16);
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`;
}
