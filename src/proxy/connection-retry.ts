import type { Dispatcher } from 'undici';

/**
 * RFC 9110 §9.2.2: methods whose requests may be sent again after a failure (TRACE is refused
 * before it gets here, see admit.ts).
 */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/**
 * Failures of the connection itself, before any response: refused, reset or closed before the
 * response head, no connection within undici's connect timeout. A headers timeout is not one
 * (the partner may be working on the request).
 */
const CONNECTION_FAILURES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
]);

export function isConnectionFailure(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code !== undefined && CONNECTION_FAILURES.has(code);
}

export interface RetryHooks {
  /** Called before each extra attempt (count it, log it). */
  onRetry(attempt: number, err: Error): void;
}

/**
 * Sends a request again, up to `retries` times, when its connection failed before the response
 * head arrived; anything else (an answer, a failure after the head) passes to `inner` as it came.
 * Made only for idempotent methods with a body that can be sent twice (none, or buffered): the
 * caller checks (partner-guard.ts). Unlike undici's RetryHandler it never waits between
 * attempts, never retries on a status code, and never resumes a cut body with a Range request:
 * once the head is relayed to the client the exchange is the client's.
 */
export class ConnectionRetry implements Dispatcher.DispatchHandler {
  readonly #inner: Dispatcher.DispatchHandler;
  readonly #dispatcher: Dispatcher;
  readonly #opts: Dispatcher.DispatchOptions;
  readonly #hooks: RetryHooks;
  #left: number;
  #attempt = 1;
  #answered = false;

  constructor(
    opts: Dispatcher.DispatchOptions,
    inner: Dispatcher.DispatchHandler,
    dispatcher: Dispatcher,
    retries: number,
    hooks: RetryHooks,
  ) {
    this.#opts = opts;
    this.#inner = inner;
    this.#dispatcher = dispatcher;
    this.#left = retries;
    this.#hooks = hooks;
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#inner.onConnect?.(abort);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode >= 200) this.#answered = true;
    return this.#inner.onHeaders?.(statusCode, rawHeaders, resume, statusText) ?? true;
  }

  onData(chunk: Buffer): boolean {
    return this.#inner.onData?.(chunk) ?? true;
  }

  onComplete(trailers: string[] | null): void {
    this.#inner.onComplete?.(trailers);
  }

  onError(err: Error): void {
    if (this.#answered || this.#left === 0 || !isConnectionFailure(err)) {
      this.#inner.onError?.(err);
      return;
    }
    this.#left -= 1;
    this.#attempt += 1;
    this.#hooks.onRetry(this.#attempt, err);
    this.#dispatcher.dispatch(this.#opts, this);
  }
}

/**
 * `pool` with every dispatch going through `wrap` first (upgrades excepted: their handler is not
 * one a retry can wrap). The same shape as undici's own `compose()`, a Proxy that replaces only
 * `dispatch`, but handing on the caller's handler as it is rather than converted: only upstreams
 * with retries configured go through it, the others dispatch on their pool directly.
 */
export function dispatchingThrough(
  pool: Dispatcher,
  wrap: (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => Dispatcher.DispatchHandler,
): Dispatcher {
  const dispatch = (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean =>
    pool.dispatch(opts, opts.upgrade === undefined || opts.upgrade === null ? wrap(opts, handler) : handler);
  return new Proxy(pool, {
    get: (target, key) => (key === 'dispatch' ? dispatch : (Reflect.get(target, key) as unknown)),
  });
}
