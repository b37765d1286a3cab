import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { Span } from '@opentelemetry/api';
import { endHttpSpan } from './span-end.js';

/**
 * Wraps the handler of one attempt to the target (undici's handler API, as the relay and the
 * replay handlers use it) to end its CLIENT span: at the end of the answer, or at the failure,
 * before the wrapped handler goes on (a 401 replay's next attempt then starts after this one
 * ended). Made only when tracing is on.
 */
export class TracedAttempt implements Dispatcher.DispatchHandler {
  readonly #span: Span;
  readonly #inner: Dispatcher.DispatchHandler;
  #status = 0;

  constructor(span: Span, inner: Dispatcher.DispatchHandler) {
    this.#span = span;
    this.#inner = inner;
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#inner.onConnect?.(abort);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode >= 200) this.#status = statusCode;
    return this.#inner.onHeaders?.(statusCode, rawHeaders, resume, statusText) ?? true;
  }

  onUpgrade(statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Duplex): void {
    endHttpSpan(this.#span, statusCode, true);
    this.#inner.onUpgrade?.(statusCode, rawHeaders, socket);
  }

  onData(chunk: Buffer): boolean {
    return this.#inner.onData?.(chunk) ?? true;
  }

  onComplete(trailers: string[] | null): void {
    endHttpSpan(this.#span, this.#status, true);
    this.#inner.onComplete?.(trailers);
  }

  onError(err: Error): void {
    // undici's error code (UND_ERR_HEADERS_TIMEOUT, ECONNREFUSED...), never its message.
    const code = (err as { code?: unknown }).code;
    endHttpSpan(this.#span, this.#status, true, typeof code === 'string' ? code : err.name);
    this.#inner.onError?.(err);
  }
}
