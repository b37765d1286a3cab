import { SpanStatusCode, type Span } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE, ATTR_HTTP_RESPONSE_STATUS_CODE } from '@opentelemetry/semantic-conventions';

/**
 * Ends an HTTP span with its answer's status. OTel HTTP semantic conventions: a SERVER span is
 * an error for a 5xx, a CLIENT span for any status ≥ 400; `reason`, the proxy's stable error code,
 * becomes `error.type` (else the status code does, as the conventions say).
 */
export function endHttpSpan(span: Span, status: number, client: boolean, reason?: string): void {
  if (status > 0) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
  if (reason !== undefined || status >= (client ? 400 : 500)) fail(span, reason ?? String(status));
  span.end();
}

/** Status ERROR with the proxy's stable reason (never an error message: it may quote a header). */
export function fail(span: Span, reason: string): void {
  span.setAttribute(ATTR_ERROR_TYPE, reason);
  span.setStatus({ code: SpanStatusCode.ERROR, message: reason });
}
