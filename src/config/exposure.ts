import { isLoopbackHost } from './url.js';

/** What decides whether a listener reachable from other machines is guarded. */
export interface InboundGuards {
  readonly allowCidrs?: unknown;
  readonly proxyAuth?: unknown;
  readonly allowAnyone?: unknown;
  readonly jwt?: unknown;
}

/**
 * A proxy listener reachable from other machines needs a guard: client ranges, or proxy
 * credentials (which reverse mode does not ask for, so then a caller JWT), or the explicit
 * `allowAnyone`. `listen` is how the problem names the listener; `host` is judged: the configured
 * text at validation, the address actually bound at start-up and on a reload (a reload cannot
 * move a listener, so a new file naming 127.0.0.1 does not make a socket bound to 0.0.0.0 local).
 */
export function exposureProblem(
  listen: string,
  host: string,
  inbound: InboundGuards | undefined,
  reverseMode: boolean,
): string | undefined {
  if (isLoopbackHost(host) || inbound?.allowCidrs !== undefined || inbound?.allowAnyone === true) return undefined;
  if (inbound?.proxyAuth === undefined)
    return `inbound: listen ${listen} is reachable from other machines: set inbound.allowCidrs or inbound.proxyAuth (or write inbound.allowAnyone: true)`;
  if (inbound.jwt === undefined && reverseMode)
    // Reverse mode asks for no proxy credentials: its tokens would be open to anyone.
    return `inbound: listen ${listen} is reachable from other machines, and inbound.proxyAuth guards forward mode only: the upstreams with a pathPrefix (reverse mode) would inject their tokens for anyone; set inbound.allowCidrs or inbound.jwt (or write inbound.allowAnyone: true)`;
  return undefined;
}
