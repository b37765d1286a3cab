import { isIP } from 'node:net';

/** An IP literal in its canonical text and network-order bytes, as X.509 iPAddress names carry it. */
export interface IpAddress {
  /** Dotted quad, or IPv6 as the WHATWG URL parser writes it (lower case, `::` compressed). */
  readonly text: string;
  /** 4 or 16 bytes. */
  readonly bytes: Buffer;
}

/** Reads an IPv4 or IPv6 literal (IPv6 without a zone id); undefined for anything else. */
export function parseIp(literal: string): IpAddress | undefined {
  const family = isIP(literal);
  if (family === 4) return { text: literal, bytes: Buffer.from(literal.split('.').map(Number)) };
  if (family !== 6 || literal.includes('%')) return undefined;
  const text = new URL(`http://[${literal}]`).hostname.slice(1, -1);
  const [head = '', tail] = text.split('::');
  const groups = head === '' ? [] : head.split(':');
  if (tail !== undefined) {
    const tailGroups = tail === '' ? [] : tail.split(':');
    groups.push(...Array<string>(8 - groups.length - tailGroups.length).fill('0'), ...tailGroups);
  }
  const bytes = Buffer.alloc(16);
  groups.forEach((group, i) => bytes.writeUInt16BE(Number.parseInt(group, 16), i * 2));
  return { text, bytes };
}
