import type { IncomingMessage } from 'node:http';
import {
  ROOT_CONTEXT,
  SpanKind,
  defaultTextMapGetter,
  trace,
  type Attributes,
  type Span,
  type TextMapSetter,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-base';
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_RESEND_COUNT,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_URL_PATH,
  ATTR_URL_SCHEME,
} from '@opentelemetry/semantic-conventions';
import type { TracingSettings } from '../config/tracing-schema.js';
import type { Logger } from 'pino';
import { LoggedExporter } from './logged-exporter.js';
import { endHttpSpan } from './span-end.js';
import type { RequestRoute, Tracing } from './tracing.js';

/** Test and bench knobs: how often the batch goes out (the SDK's default is 5 s). */
export interface TracingOptions {
  readonly scheduledDelayMillis?: number;
}

interface Carrier {
  traceparent: string;
  tracestate: string | undefined;
}
const setter: TextMapSetter<Carrier> = {
  set(carrier, key, value) {
    if (key === 'traceparent') carrier.traceparent = value;
    else if (key === 'tracestate') carrier.tracestate = value;
  },
};

/**
 * The path without its query: a query string can carry an API key or a signature, and no
 * attribute may hold a secret. Only the path goes into spans (OTel `url.path`).
 */
function pathOnly(target: string): string {
  const q = target.indexOf('?');
  return q === -1 ? target : target.slice(0, q);
}

/**
 * OpenTelemetry's trace SDK, wired for the proxy: a BasicTracerProvider that is never
 * registered globally (no context manager, no async hooks), parent-based ratio sampling, a
 * BatchSpanProcessor and the OTLP/HTTP exporter (JSON), W3C Trace Context in and out.
 */
export function createTracing(settings: TracingSettings, logger: Logger, options: TracingOptions = {}): Tracing {
  const exporter = new OTLPTraceExporter({
    ...(settings.otlp.endpoint === undefined ? {} : { url: settings.otlp.endpoint }),
    ...(settings.otlp.headers === undefined ? {} : { headers: { ...settings.otlp.headers } }),
  });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: settings.serviceName }),
    // W3C Trace Context §3.3: a sampled parent is honoured, an unsampled one too; new roots by ratio.
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(settings.sampleRatio) }),
    spanProcessors: [
      new BatchSpanProcessor(
        new LoggedExporter(exporter, logger),
        options.scheduledDelayMillis === undefined ? {} : { scheduledDelayMillis: options.scheduledDelayMillis },
      ),
    ],
  });
  const tracer = provider.getTracer('token-proxy');
  const propagator = new W3CTraceContextPropagator();
  const spans = new WeakMap<object, Span>();
  // server.address, server.port and url.scheme of each target origin, parsed once.
  const origins = new Map<string, Attributes>();
  const originOf = (origin: string): Attributes => {
    let parsed = origins.get(origin);
    if (parsed === undefined) {
      const url = new URL(origin);
      parsed = {
        [ATTR_SERVER_ADDRESS]: url.hostname,
        [ATTR_SERVER_PORT]: Number(url.port) || (url.protocol === 'https:' ? 443 : 80),
        [ATTR_URL_SCHEME]: url.protocol.slice(0, -1),
      };
      if (origins.size < 1_000) origins.set(origin, parsed); // egress origins are unbounded
    }
    return parsed;
  };
  const reasons = new WeakMap<object, string>();

  return {
    request(req: IncomingMessage, route: RequestRoute): Span {
      const parent = propagator.extract(ROOT_CONTEXT, req.headers, defaultTextMapGetter);
      const method = req.method ?? 'GET';
      // Sampled by trace id and parent only (neither sampler reads attributes): an unsampled
      // request builds none.
      const span = tracer.startSpan(method, { kind: SpanKind.SERVER }, parent);
      if (!span.isRecording()) return span;
      const attributes: Attributes = {
        [ATTR_HTTP_REQUEST_METHOD]: method,
        [ATTR_URL_PATH]: pathOnly(route === 'forward' ? absolutePath(req.url ?? '') : (req.url ?? '/')),
        'token_proxy.route': route,
      };
      const client = req.socket.remoteAddress;
      if (client !== undefined) attributes[ATTR_CLIENT_ADDRESS] = client;
      span.setAttributes(attributes);
      return span;
    },
    internal(name, parent, attributes) {
      const ctx = parent === undefined ? ROOT_CONTEXT : trace.setSpan(ROOT_CONTEXT, parent);
      return tracer.startSpan(name, { kind: SpanKind.INTERNAL, ...(attributes ? { attributes } : {}) }, ctx);
    },
    attempt(parent, method, origin, path, resend) {
      const attributes: Attributes = {
        ...originOf(origin),
        [ATTR_HTTP_REQUEST_METHOD]: method,
        [ATTR_URL_PATH]: pathOnly(path),
      };
      if (resend > 0) attributes[ATTR_HTTP_REQUEST_RESEND_COUNT] = resend;
      return tracer.startSpan(method, { kind: SpanKind.CLIENT, attributes }, trace.setSpan(ROOT_CONTEXT, parent));
    },
    propagation(span) {
      const carrier: Carrier = { traceparent: '', tracestate: undefined };
      propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, setter);
      return carrier;
    },
    bind(carrier, span) {
      spans.set(carrier, span);
    },
    failed(carrier, reason) {
      if (spans.has(carrier)) reasons.set(carrier, reason);
    },
    endRequest(carrier, status, fallback) {
      const span = spans.get(carrier);
      if (span === undefined) return;
      spans.delete(carrier);
      endHttpSpan(span, status, false, reasons.get(carrier) ?? fallback);
    },
    async shutdown() {
      await provider.shutdown();
    },
  };
}

/** `/x?y` of an absolute-form target (`http://host/x?y`), for the server span's `url.path`. */
function absolutePath(url: string): string {
  const scheme = url.indexOf('://');
  const slash = scheme === -1 ? -1 : url.indexOf('/', scheme + 3);
  return slash === -1 ? '/' : url.slice(slash);
}
