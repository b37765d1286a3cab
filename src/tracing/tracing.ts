/**
 * The seam between the request path and OpenTelemetry. The proxy holds a `Tracing | undefined`:
 * undefined when `tracing` is not configured, so the request path pays one check and nothing
 * else (no span, no context object, no AsyncLocalStorage). Spans are passed explicitly (the
 * request's `Forwarding` object carries its server span), never looked up from an ambient context.
 */
import type { IncomingMessage } from 'node:http';
import type { Attributes, Span } from '@opentelemetry/api';

export type { Span } from '@opentelemetry/api';

/** How a request reached the proxy. */
export type RequestRoute = 'reverse' | 'forward' | 'tunnel' | 'upgrade';

/** What a span of a token request may say: names of the configuration, never a credential. */
export interface TokenRequestLabels {
  /** The grant type (client_credentials, password, refresh_token, jwt_bearer, token_exchange, login). */
  readonly grant: string;
  /** The client authentication method (client_secret_basic, private_key_jwt, ...), when the grant has one. */
  readonly clientAuth: string | undefined;
}

export interface Tracing {
  /**
   * The SERVER span of an incoming request or upgrade handshake, continuing its W3C
   * `traceparent`/`tracestate` (a sampled parent is always recorded: parent-based sampling).
   */
  request(req: IncomingMessage, route: RequestRoute): Span;
  /** An INTERNAL span: a child of `parent`, or a new root (background token renewals). */
  internal(name: string, parent: Span | undefined, attributes?: Attributes): Span;
  /** The CLIENT span of one attempt to the target (`resend` > 0 for a replay, OTel `http.request.resend_count`). */
  attempt(parent: Span, method: string, origin: string, path: string, resend: number): Span;
  /** The W3C `traceparent` (and `tracestate`) naming `span` as the parent, for the target request. */
  propagation(span: Span): { readonly traceparent: string; readonly tracestate: string | undefined };
  /** Ties the span of a request to its response (or socket), where proxy-made answers find it. */
  bind(carrier: object, span: Span): void;
  /** A proxy-made error answer on `carrier`: its span ends with status ERROR and `error.type` = this stable reason. */
  failed(carrier: object, reason: string): void;
  /**
   * Ends the SERVER span bound to `carrier` with the answer's status (0: none was sent); the
   * reason `failed` recorded, else `fallback` for an exchange that ended without a whole answer.
   */
  endRequest(carrier: object, status: number, fallback: string | undefined): void;
  /** Exports what is buffered and stops (app close). */
  shutdown(): Promise<void>;
}
