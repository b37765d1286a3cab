/**
 * The state the proxy listener's handlers share (server.ts, admit.ts, connect.ts, upgrade.ts,
 * forward.ts). Types only, and nothing imported from those handlers, so none of them has to
 * import another just for a type.
 */
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { InboundJwtValidator } from '../inbound/jwt-validator.js';
import type { CertificateAuthority } from '../mitm/certificate-authority.js';
import type { Drain } from './drain.js';
import type { EgressPolicy } from './egress.js';
import type { Upstream } from './upstream.js';
import type { Answers } from './respond.js';
import type { AuthThrottle } from './auth-throttle.js';
import type { ReplayBudget } from './replay-budget.js';
import type { ForwardRouter } from './forward-router.js';
import type { InboundGuard } from './inbound-guard.js';
import type { ReverseRouter } from './router.js';
import type { Tracing } from '../tracing/tracing.js';

export interface ProxyContext {
  /** Read once per request, so a reload never mixes two configurations in one request. */
  routing: Routing;
  readonly logger: Logger;
  /** Sockets (plain or TLS-intercepted) that carry requests from inside a CONNECT tunnel. */
  readonly tunnels: WeakMap<Duplex, Tunnel>;
  /** Hands a socket to the HTTP server as a new connection (tunnel contents). */
  adopt(socket: Duplex): void;
  readonly limits: ListenerLimits;
  /**
   * Client sockets the HTTP server let go of (CONNECT tunnels, upgraded connections): its own
   * timeouts and closeAllConnections() no longer reach them, so shutdown closes these itself.
   * Each maps to its re-admission check: a reload closes those the new configuration refuses.
   */
  readonly detached: Map<Duplex, (routing: Routing) => boolean>;
  /** Every answer the proxy makes itself, and the refusal log and count. */
  readonly answers: Answers;
  /** Failed proxy credentials per client address (kept across reloads). */
  readonly authThrottle: AuthThrottle;
  /** Bytes held in replay buffers, process-wide. */
  readonly replayBudget: ReplayBudget;
  /** OpenTelemetry spans; undefined when `tracing` is not configured (one check per request). */
  readonly tracing: Tracing | undefined;
}

export interface ListenerLimits {
  readonly maxRequestHeaderBytes: number;
  readonly headersTimeoutSeconds: number;
  readonly requestTimeoutSeconds: number;
  readonly tunnelIdleTimeoutSeconds: number;
  /** A client that reads none of its answer for this long is cut off, freeing the upstream connection. */
  readonly responseIdleTimeoutSeconds: number;
  readonly maxReplayBufferBytes: number;
}

/** Everything routing needs; replaced as a whole when the config is reloaded. */
export interface Routing {
  readonly reverse: ReverseRouter;
  readonly forward: ForwardRouter;
  readonly egress: EgressPolicy;
  readonly guard: InboundGuard;
  /** Egress traffic that matched no upstream: forwarded without any token. */
  readonly passthrough: Upstream;
  readonly interception: CertificateAuthority | undefined;
  readonly maxRequestBodyBytes: number;
  /** Gateway mode: callers must present a valid JWT (inbound.jwt). */
  readonly callerAuth: CallerAuth | undefined;
  /** Requests in flight on this routing (this configuration generation). */
  readonly drain: Drain;
}

export interface CallerAuth {
  readonly validator: InboundJwtValidator;
  /** Headers that carry forwarded claims: whatever the caller sent under these names is dropped. */
  readonly claimHeaders: ReadonlySet<string>;
  count(result: string): void;
}

/** What the proxy knows about a socket carrying requests from inside a CONNECT tunnel. */
export interface Tunnel {
  /** The CONNECT target: each request inside is routed by it (see resolve). */
  readonly host: string;
  readonly port: number;
  /** 'https' when the proxy terminated TLS (interception), 'http' for a plain-HTTP tunnel. */
  readonly proto: 'http' | 'https';
  readonly clientAddress: string | undefined;
  /** The proxy user who opened the tunnel ('' without proxyAuth): it can name the tenant. */
  user: string;
  /** The Proxy-Authorization the tunnel was opened with, to check again after a reload. */
  readonly credentials: string | undefined;
  /** The configuration whose inbound checks the tunnel last passed (see resolve). */
  admittedBy: Routing;
}
