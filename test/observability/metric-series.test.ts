import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it, vi } from 'vitest';
import { counterSeries, histogramSeries } from '../../src/metric-series.js';

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The same metric in two registries: one fed through bound series, one through prom-client's own calls. */
function pair<M>(make: (registry: Registry) => M): {
  bound: M;
  plain: M;
  boundRegistry: Registry;
  plainRegistry: Registry;
} {
  const boundRegistry = new Registry();
  const plainRegistry = new Registry();
  return { bound: make(boundRegistry), plain: make(plainRegistry), boundRegistry, plainRegistry };
}

describe('bound metric series', () => {
  it('a counter series exports exactly what prom-client counts, and after its first call adds without prom-client', async () => {
    const { bound, plain, boundRegistry, plainRegistry } = pair(
      (registry) =>
        new Counter({ name: 'requests_total', help: 'h', labelNames: ['upstream', 'code'], registers: [registry] }),
    );
    const ok = counterSeries(bound, { upstream: 'a', code: '200' });
    const gone = counterSeries(bound, { upstream: 'a', code: '502' });
    // No series before the first call, as with prom-client's own labels(...).inc().
    expect(await boundRegistry.metrics()).not.toContain('requests_total{');

    const inc = vi.spyOn(bound, 'inc');
    for (let i = 0; i < 1000; i++) ok.inc();
    for (let i = 0; i < 7; i++) gone.inc();
    for (let i = 0; i < 1000; i++) plain.labels('a', '200').inc();
    for (let i = 0; i < 7; i++) plain.labels('a', '502').inc();

    expect(inc).toHaveBeenCalledTimes(2); // one binding call per series, then straight to its record
    const text = await boundRegistry.metrics();
    expect(text).toBe(await plainRegistry.metrics());
    expect(text).toContain('requests_total{upstream="a",code="200"} 1000');
    expect(text).toContain('requests_total{upstream="a",code="502"} 7');
  });

  it('a histogram series puts every value in the bucket prom-client would, bounds and overflow included', async () => {
    const { bound, plain, boundRegistry, plainRegistry } = pair(
      (registry) =>
        new Histogram({
          name: 'duration_seconds',
          help: 'h',
          labelNames: ['upstream'],
          buckets: BUCKETS,
          registers: [registry],
        }),
    );
    const a = histogramSeries(bound, { upstream: 'a' }, BUCKETS);
    const b = histogramSeries(bound, { upstream: 'b' }, BUCKETS);
    const observe = vi.spyOn(bound, 'observe');
    // Exactly on each bound, between bounds, zero, and beyond the last bound (only +Inf, sum, count).
    const values = [0, ...BUCKETS, ...BUCKETS.map((x) => x * 1.5), 31, 1e6, 0.0004];
    for (const v of values) {
      a.observe(v);
      plain.observe({ upstream: 'a' }, v);
    }
    for (let i = 0; i < 100; i++) {
      b.observe(0.0003);
      plain.observe({ upstream: 'b' }, 0.0003);
    }
    expect(observe).toHaveBeenCalledTimes(2);
    const text = await boundRegistry.metrics();
    expect(text).toBe(await plainRegistry.metrics());
    expect(text).toContain(`duration_seconds_count{upstream="a"} ${values.length}`);
    expect(text).toContain('duration_seconds_bucket{le="30",upstream="a"} 29'); // all but 45 (30 × 1.5), 31 and 1e6
    expect(text).toContain('duration_seconds_bucket{le="0.001",upstream="b"} 100');
    expect(
      (await bound.get()).values.find((v) => v.metricName === 'duration_seconds_sum' && v.labels.upstream === 'a')
        ?.value,
    ).toBeCloseTo(
      values.reduce((s, v) => s + v, 0),
      9,
    );
  });

  it('a series of a metric whose records it cannot find still counts, through prom-client', async () => {
    const registry = new Registry();
    const counter = new Counter({ name: 'c_total', help: 'h', labelNames: ['k'], registers: [registry] });
    // As if an upgrade had changed prom-client's internals: inc() no longer returns the label hash.
    const inc = counter.inc.bind(counter);
    const spy = vi.spyOn(counter, 'inc').mockImplementation((...args: Parameters<typeof counter.inc>) => {
      inc(...args);
    });
    const series = counterSeries(counter, { k: 'v' });
    for (let i = 0; i < 5; i++) series.inc();
    expect(spy).toHaveBeenCalledTimes(5);
    expect(await registry.metrics()).toContain('c_total{k="v"} 5');
  });
});
