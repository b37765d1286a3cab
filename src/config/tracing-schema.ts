import { z } from 'zod';

/**
 * `tracing`: OpenTelemetry spans exported over OTLP/HTTP. Absent (the default), nothing is traced
 * and the request path pays one `undefined` check.
 */
export const tracingSchema = z
  .strictObject({
    otlp: z
      .strictObject({
        endpoint: z
          .url({
            protocol: /^https?$/,
            error: 'must be an http:// or https:// URL, e.g. http://otel-collector:4318/v1/traces',
          })
          .optional()
          .describe(
            'OTLP/HTTP traces endpoint (JSON encoding), e.g. http://otel-collector:4318/v1/traces; without it the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables apply, then http://localhost:4318/v1/traces',
          ),
        headers: z
          .record(z.string().min(1), z.string())
          .optional()
          .describe(
            'headers sent with every export (e.g. an API key: use ${ENV_VAR}); OTEL_EXPORTER_OTLP_HEADERS applies too',
          ),
      })
      .prefault({})
      .describe('where spans are sent'),
    sampleRatio: z
      .number()
      .min(0)
      .max(1)
      .default(1)
      .describe(
        'share of new traces recorded (0..1); parent-based: a request whose incoming traceparent is sampled is always recorded, one marked unsampled never',
      ),
    serviceName: z.string().min(1).default('token-proxy').describe('the service.name resource attribute'),
  })
  .describe(
    'OpenTelemetry tracing (OTLP/HTTP): a span per request, its token wait and token requests, and each attempt to the target',
  );

export type TracingSettings = z.output<typeof tracingSchema>;
