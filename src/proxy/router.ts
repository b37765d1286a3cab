import type { Upstream } from './upstream.js';

export interface ReverseRoute<U = Upstream> {
  readonly upstream: U;
  /** Path and query to send to the target. */
  readonly path: string;
}

/**
 * A path segment that is "." or "..", also when disguised: percent-encoded dots (RFC 3986 §5.2.4)
 * and separators (%2F, %5C, "\\"), which some servers decode or treat as "/" before resolving.
 */
function escapesPrefix(rest: string): boolean {
  // The dot check ignores the query but not a fragment: "#" is refused later, and a URL parser
  // downstream may read either side of it as the path (`/..#`, `/x#/..`), so it counts as a "/".
  const q = rest.indexOf('?');
  const h = rest.indexOf('#');
  const path = q === -1 || (h !== -1 && h < q) ? rest : rest.slice(0, q);
  if (!path.includes('.') && !path.includes('%') && !path.includes('\\')) return false;
  const plain = path.replace(/%2e/gi, '.').replace(/%2f|%5c|\\|#/gi, '/');
  // Path parameters (`..;x`, RFC 3986 §3.3) are dropped by some servers before resolving.
  return plain.split('/').some((segment) => {
    const name = segment.split(/;|%3b/i)[0];
    return name === '.' || name === '..';
  });
}

/**
 * `path` (origin-form, with query) under `basePath`, or null when it would climb out of it. The
 * rule of every way to an upstream: reverse mode after its prefix, forward mode and tunnels whole.
 */
export function confine(basePath: string, path: string): string | null {
  if (escapesPrefix(path)) return null;
  return basePath === '' ? path : basePath + path;
}

/**
 * Reverse-mode routing: the longest configured path prefix that the request path starts with,
 * at a segment boundary (`/partner` matches `/partner/x` and `/partner?q`, not `/partnerx`).
 */
export class ReverseRouter<U extends { readonly basePath: string } = Upstream> {
  readonly #routes: readonly { prefix: string; upstream: U }[];

  constructor(entries: readonly { prefix: string; upstream: U }[]) {
    this.#routes = [...entries].sort((a, b) => b.prefix.length - a.prefix.length);
  }

  /** undefined: no upstream; null: the path tries to climb out of its prefix. */
  route(url: string): ReverseRoute<U> | undefined | null {
    for (const { prefix, upstream } of this.#routes) {
      if (!url.startsWith(prefix)) continue;
      const next = url.charCodeAt(prefix.length);
      // end of string, '/', or '?'
      if (!(Number.isNaN(next) || next === 47 || next === 63)) continue;
      const rest = url.slice(prefix.length);
      const path = confine(upstream.basePath, rest === '' || rest.charCodeAt(0) === 63 ? `/${rest}` : rest);
      return path === null ? null : { upstream, path };
    }
    return undefined;
  }
}
