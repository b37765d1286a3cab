import { Buffer } from 'node:buffer';

/**
 * `text` as one flat string. V8 builds a concatenation or a long slice as a reference to its parts;
 * once such a string is hashed or written it keeps a flattened copy besides them. A string kept
 * for a long time (a cached token's header, its cache key) is worth copying flat once: a cache of
 * 100,000 tenant tokens then holds each token's text once (issue 8, see BENCHMARKS.md).
 * `text` must be Latin-1 (callers hold visible ASCII), which decoding from bytes keeps as it is.
 */
export function flatString(text: string): string {
  return Buffer.from(text, 'latin1').toString('latin1');
}
