import { Histogram, Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { openMetricsText } from '../../src/admin/openmetrics.js';
import { exemplarSeries } from '../../src/metric-series.js';

const BUCKETS = [0.005, 0.01, 0.1, 1];
const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';

/** A histogram with exemplars, in a registry that otherwise writes the Prometheus format (as createMetrics makes it). */
function histogram(registry: Registry): Histogram<string> {
  const shim = {
    contentType: Registry.OPENMETRICS_CONTENT_TYPE,
    registerMetric: (m: never) => registry.registerMetric(m),
  };
  return new Histogram({
    name: 'duration_seconds',
    help: 'h',
    labelNames: ['upstream'],
    buckets: BUCKETS,
    registers: [shim as unknown as Registry],
    enableExemplars: true,
  });
}

describe('histogram series with exemplars (tracing on)', () => {
  it('counts unsampled values on the bound path and sampled ones with their trace id, as prom-client alone would', async () => {
    const boundRegistry = new Registry();
    const plainRegistry = new Registry();
    const bound = histogram(boundRegistry);
    const plain = histogram(plainRegistry);
    const series = exemplarSeries(bound, { upstream: 'a' }, BUCKETS);
    const observe = vi.spyOn(bound, 'observe');
    const values = [0, 0.005, 0.007, 0.01, 0.5, 1, 2, 0.003];
    for (const v of values) {
      series.observe(v);
      plain.observe({ labels: { upstream: 'a' }, value: v });
    }
    series.observe(0.05, TRACE);
    plain.observe({ labels: { upstream: 'a' }, value: 0.05, exemplarLabels: { trace_id: TRACE } });

    expect(observe).toHaveBeenCalledTimes(2); // the binding call and the sampled value
    expect(await boundRegistry.metrics()).toBe(await plainRegistry.metrics());
    const open = await openMetricsText(boundRegistry);
    expect(open).toMatch(
      new RegExp(`^duration_seconds_bucket\\{le="0.1",upstream="a"\\} 6 # \\{trace_id="${TRACE}"\\} 0.05 `, 'm'),
    );
    expect(open).toContain('duration_seconds_count{upstream="a"} 9');
  });
});
