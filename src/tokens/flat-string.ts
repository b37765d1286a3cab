import { Buffer } from 'node:buffer';

/**
 * `text` as one flat string. V8 builds a concatenation as a reference to its parts, which keeps a
 * flattened copy besides them once it is hashed or written, and a long slice as a reference into
 * its parent, which keeps the whole parent alive. A string kept
 * for a long time (a cached token's header, its cache key) is worth copying flat once: a cache of
 * 100,000 tenant tokens then holds each token's text once (issue 8, see BENCHMARKS.md).
 * `text` must be Latin-1 (callers hold visible ASCII), which decoding from bytes keeps as it is.
 */
export function flatString(text: string): string {
  return Buffer.from(text, 'latin1').toString('latin1');
}
