/**
 * The few DER (ITU-T X.690) encodings an X.509 certificate needs, and a reader for the parts of
 * one that the CA uses. Only low tag numbers (< 31), which is all X.509 uses.
 */

/** DER definite length: short form below 128, else the count of big-endian length bytes (X.690 §8.1.3). */
function length(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** One tag-length-value. */
export function tlv(tag: number, ...content: readonly Buffer[]): Buffer {
  const value = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), length(value.length), value]);
}

export const sequence = (...items: readonly Buffer[]): Buffer => tlv(0x30, ...items);
export const set = (...items: readonly Buffer[]): Buffer => tlv(0x31, ...items);
export const octetString = (bytes: Buffer): Buffer => tlv(0x04, bytes);
export const utf8String = (text: string): Buffer => tlv(0x0c, Buffer.from(text, 'utf8'));
export const NULL = Buffer.from([0x05, 0x00]);
/** DER writes TRUE as 0xff (X.690 §11.1); a FALSE that is the DEFAULT is left out instead. */
export const TRUE = Buffer.from([0x01, 0x01, 0xff]);

/** A non-negative INTEGER from its big-endian magnitude: minimal, with a 0 byte when the top bit is set. */
export function unsignedInteger(magnitude: Buffer): Buffer {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const bytes = magnitude.subarray(start);
  return tlv(0x02, ((bytes[0] ?? 0) & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes);
}

export const smallInteger = (n: number): Buffer => unsignedInteger(Buffer.from([n]));

/** An OBJECT IDENTIFIER from dotted text (X.690 §8.19). */
export function oid(dotted: string): Buffer {
  const [first = 0, second = 0, ...rest] = dotted.split('.').map(Number);
  const bytes = [40 * first + second];
  for (const arc of rest) {
    const groups = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) groups.unshift(0x80 | (v & 0x7f));
    bytes.push(...groups);
  }
  return tlv(0x06, Buffer.from(bytes));
}

/** A BIT STRING of whole bytes (no unused bits), as signatures and keys are. */
export const bitString = (bytes: Buffer): Buffer => tlv(0x03, Buffer.from([0]), bytes);

/**
 * A named BIT STRING (as KeyUsage) from its set bit numbers, bit 0 being the most significant:
 * DER drops trailing zero bits and counts them as unused (X.690 §11.2.2).
 */
export function namedBits(bits: readonly number[]): Buffer {
  const last = Math.max(...bits);
  const bytes = Buffer.alloc(Math.floor(last / 8) + 1);
  for (const bit of bits) bytes[bit >> 3] = (bytes[bit >> 3] ?? 0) | (0x80 >> (bit & 7));
  return tlv(0x03, Buffer.from([7 - (last & 7)]), bytes);
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; always seconds and Z. */
export function time(date: Date): Buffer {
  const iso = date.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-:T]/g, '');
  const year = date.getUTCFullYear();
  return year >= 1950 && year < 2050
    ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`))
    : tlv(0x18, Buffer.from(`${digits}Z`));
}

/** A context-specific tag `[n]`: constructed for EXPLICIT and structured IMPLICIT values. */
export const contextConstructed = (n: number, ...content: readonly Buffer[]): Buffer => tlv(0xa0 | n, ...content);
/** A context-specific primitive `[n] IMPLICIT` (dNSName, iPAddress, keyIdentifier). */
export const contextPrimitive = (n: number, bytes: Buffer): Buffer => tlv(0x80 | n, bytes);

/** Where one element lies in a buffer. */
export interface Element {
  readonly tag: number;
  /** The whole element, tag and length included. */
  readonly der: Buffer;
  readonly content: Buffer;
}

/** Reads the element at `offset`; throws on anything a DER encoder would not write. */
export function readElement(buffer: Buffer, offset = 0): Element {
  const tag = buffer[offset];
  const first = buffer[offset + 1];
  if (tag === undefined || first === undefined || (tag & 0x1f) === 0x1f) throw new Error('malformed DER');
  let contentStart = offset + 2;
  let size = first;
  if (first & 0x80) {
    const count = first & 0x7f;
    if (count === 0 || count > 4) throw new Error('malformed DER length');
    size = 0;
    for (let i = 0; i < count; i++) size = size * 256 + (buffer[contentStart + i] ?? 0);
    contentStart += count;
  }
  const end = contentStart + size;
  if (end > buffer.length) throw new Error('truncated DER');
  return { tag, der: buffer.subarray(offset, end), content: buffer.subarray(contentStart, end) };
}

/** The elements inside a constructed element. */
export function childrenOf(element: Element): Element[] {
  const children: Element[] = [];
  for (let offset = 0; offset < element.content.length;) {
    const child = readElement(element.content, offset);
    children.push(child);
    offset += child.der.length;
  }
  return children;
}
