import { describe, expect, it } from 'vitest';
import { prefersOpenMetrics } from '../../src/admin/openmetrics.js';
import { upstreamRequestHeaders } from '../../src/proxy/headers.js';

const CLIENT_TRACE = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
const PROXY_TRACE = '00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01';
const raw = ['Host', 'api', 'traceparent', CLIENT_TRACE, 'TraceState', 'client=1', 'accept', '*/*'];

function values(headers: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2)
    if ((headers[i] as string).toLowerCase() === name) out.push(headers[i + 1] as string);
  return out;
}

describe('W3C Trace Context towards the target', () => {
  it("replaces the client's traceparent and tracestate with the proxy's, once each, when tracing is on", () => {
    const out = upstreamRequestHeaders(
      raw,
      { clientAddress: '127.0.0.1', proto: 'http', trace: { traceparent: PROXY_TRACE, tracestate: 'client=1' } },
      'Bearer t',
    );
    expect(values(out, 'traceparent')).toEqual([PROXY_TRACE]);
    expect(values(out, 'tracestate')).toEqual(['client=1']);
    expect(values(out, 'accept')).toEqual(['*/*']);
  });

  it('sends no tracestate when the trace has none', () => {
    const out = upstreamRequestHeaders(
      raw,
      { clientAddress: '127.0.0.1', proto: 'http', trace: { traceparent: PROXY_TRACE, tracestate: undefined } },
      undefined,
    );
    expect([values(out, 'traceparent'), values(out, 'tracestate')]).toEqual([[PROXY_TRACE], []]);
  });

  it("passes the client's own trace headers unchanged when tracing is off", () => {
    const out = upstreamRequestHeaders(raw, { clientAddress: '127.0.0.1', proto: 'http' }, undefined);
    expect([values(out, 'traceparent'), values(out, 'tracestate')]).toEqual([[CLIENT_TRACE], ['client=1']]);
  });
});

describe('choosing the /metrics exposition from Accept', () => {
  it.each([
    [undefined, false],
    ['', false],
    ['*/*', false],
    ['text/plain;version=0.0.4', false],
    ['application/openmetrics-text', true],
    ['application/openmetrics-text; version=1.0.0; charset=utf-8', true],
    // Prometheus 2.x
    [
      'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1',
      true,
    ],
    // A scraper that prefers the text format
    ['text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5', false],
    ['application/openmetrics-text;q=0', false],
  ])('Accept %j → OpenMetrics %s', (accept, open) => {
    expect(prefersOpenMetrics(accept)).toBe(open);
  });
});
