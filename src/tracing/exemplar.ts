import { TraceFlags, type Span } from '@opentelemetry/api';

/**
 * The trace id to keep as a histogram exemplar: only that of a sampled span, whose trace is
 * exported (an unsampled one would link to nothing).
 */
export function exemplarOf(span: Span): string | undefined {
  const sc = span.spanContext();
  return (sc.traceFlags & TraceFlags.SAMPLED) !== 0 ? sc.traceId : undefined;
}
