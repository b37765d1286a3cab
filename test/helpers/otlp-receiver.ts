import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One span as OTLP/JSON encodes it (opentelemetry-proto, JSON mapping: ids as hex). */
export interface ReceivedSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client. */
  readonly kind: number;
  readonly attributes: Record<string, string | number | boolean>;
  readonly status: { readonly code?: number; readonly message?: string };
  readonly serviceName: string | undefined;
}

interface AnyValue {
  stringValue?: string;
  intValue?: number | string;
  boolValue?: boolean;
  doubleValue?: number;
}
interface KeyValue {
  key: string;
  value: AnyValue;
}
interface ExportTraceServiceRequest {
  resourceSpans?: {
    resource?: { attributes?: KeyValue[] };
    scopeSpans?: {
      spans?: {
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind: number;
        attributes?: KeyValue[];
        status?: { code?: number; message?: string };
      }[];
    }[];
  }[];
}

export interface OtlpReceiver {
  /** `http://127.0.0.1:<port>/v1/traces` */
  readonly endpoint: string;
  readonly spans: ReceivedSpan[];
  /** Every export body, as received. */
  readonly bodies: Buffer[];
  /** Content types of the exports. */
  readonly contentTypes: string[];
  /** The `x-api-key` header of each export (undefined when absent). */
  readonly apiKeys: (string | undefined)[];
  /** When set, exports are refused with this status (and not decoded), as a collector that rejects them. */
  failWith: number | undefined;
  close(): Promise<void>;
}

function valueOf(v: AnyValue): string | number | boolean {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.boolValue !== undefined) return v.boolValue;
  return v.doubleValue ?? '';
}

function attributes(list: KeyValue[] | undefined): Record<string, string | number | boolean> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, valueOf(kv.value)]));
}

/**
 * A real OTLP/HTTP traces endpoint on loopback: POST /v1/traces with the OTLP JSON encoding
 * (the exporter's default), decoded by the protocol's JSON mapping and answered with an empty
 * ExportTraceServiceResponse, as a collector does.
 */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const bodies: Buffer[] = [];
  const contentTypes: string[] = [];
  const apiKeys: (string | undefined)[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
        return;
      }
      apiKeys.push(req.headers['x-api-key'] as string | undefined);
      if (receiver.failWith !== undefined) {
        res.writeHead(receiver.failWith, { 'content-type': 'application/json' }).end('{}');
        return;
      }
      const body = Buffer.concat(chunks);
      bodies.push(body);
      contentTypes.push(req.headers['content-type'] ?? '');
      const decoded = JSON.parse(body.toString('utf8')) as ExportTraceServiceRequest;
      for (const rs of decoded.resourceSpans ?? []) {
        const serviceName = attributes(rs.resource?.attributes)['service.name'];
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            spans.push({
              traceId: s.traceId,
              spanId: s.spanId,
              ...(s.parentSpanId ? { parentSpanId: s.parentSpanId } : {}),
              name: s.name,
              kind: s.kind,
              attributes: attributes(s.attributes),
              status: s.status ?? {},
              serviceName: typeof serviceName === 'string' ? serviceName : undefined,
            });
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const receiver: OtlpReceiver = {
    endpoint: `http://127.0.0.1:${port}/v1/traces`,
    spans,
    bodies,
    contentTypes,
    apiKeys,
    failWith: undefined,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
  return receiver;
}
