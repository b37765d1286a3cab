import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import type { Logger } from 'pino';

/**
 * Tells the operator when spans cannot be delivered: the SDK drops them silently (its own `diag`
 * logger is global and off). The first failure of a run of failures is logged at warn with the
 * exporter's message (an HTTP status or a network error: never a header, so never the API key),
 * the recovery at info; exporting itself stays the OTLP exporter's.
 */
export class LoggedExporter implements SpanExporter {
  readonly #inner: SpanExporter;
  readonly #logger: Logger;
  #failing = false;

  constructor(inner: SpanExporter, logger: Logger) {
    this.#inner = inner;
    this.#logger = logger;
  }

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.#inner.export(spans, (result) => {
      if (result.code !== ExportResultCode.SUCCESS && !this.#failing) {
        this.#failing = true;
        this.#logger.warn(
          { event: 'trace_export_failed', spans: spans.length, err: result.error?.message },
          'spans could not be exported to the OTLP endpoint: dropped (logged once until an export succeeds)',
        );
      } else if (result.code === ExportResultCode.SUCCESS && this.#failing) {
        this.#failing = false;
        this.#logger.info({ event: 'trace_export_recovered' }, 'spans are exported again');
      }
      done(result);
    });
  }

  shutdown(): Promise<void> {
    return this.#inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.#inner.forceFlush?.() ?? Promise.resolve();
  }
}
