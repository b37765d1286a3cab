import type { Upstream } from './upstream.js';
import { nameMatches, type HostPattern } from './host-pattern.js';

/** Ports a `hosts` entry without a port answers on. */
const DEFAULT_PORTS: readonly number[] = [80, 443];

/**
 * Forward-mode routing: (host, port) of an absolute-form request or a CONNECT to the upstream
 * that lists the host. Exact names are a map lookup; `*.suffix` entries are scanned after, in
 * configuration order. The first upstream to list a name wins. Patterns come parsed from the
 * configuration, IP hosts canonical, as request-target.ts gives the request's host.
 */
export class ForwardRouter<U = Upstream> {
  readonly #exact = new Map<string, U>();
  readonly #wildcards: { pattern: HostPattern; upstream: U }[] = [];

  constructor(entries: readonly { hosts: readonly HostPattern[]; upstream: U }[]) {
    for (const { hosts, upstream } of entries) {
      for (const pattern of hosts) {
        if (pattern.wildcard) {
          this.#wildcards.push({ pattern, upstream });
          continue;
        }
        for (const port of pattern.port === undefined ? DEFAULT_PORTS : [pattern.port]) {
          const key = `${pattern.host}:${port}`;
          if (!this.#exact.has(key)) this.#exact.set(key, upstream);
        }
      }
    }
  }

  get empty(): boolean {
    return this.#exact.size === 0 && this.#wildcards.length === 0;
  }

  /** `host` in lower case, an IP address canonical (request-target.ts). */
  route(host: string, port: number): U | undefined {
    const exact = this.#exact.get(`${host}:${port}`);
    if (exact !== undefined) return exact;
    for (const { pattern, upstream } of this.#wildcards) {
      if (
        nameMatches(pattern, host) &&
        (pattern.port === undefined ? DEFAULT_PORTS.includes(port) : pattern.port === port)
      )
        return upstream;
    }
    return undefined;
  }
}
