import type { Counter, Histogram } from 'prom-client';

/**
 * One labelled series of a prom-client counter or histogram, bound once for the request path.
 *
 * prom-client 15 re-hashes and re-validates the label set and allocates on every `inc()` and
 * `observe()`, bound children included (`labels(...)` only pre-fills the arguments). For the three
 * metric calls of every request that was 5.7% of the proxy's CPU per request (`npm run bench:ab`
 * against a build without them). A bound series lets prom-client make the series once, with its
 * own first call, then adds straight to the record prom-client exports for those labels: names,
 * text format and aggregation stay prom-client's.
 *
 * The record is prom-client's internal per-series object; test/metric-series.test.ts proves that a
 * bound series exports exactly what prom-client's own calls export. Should an upgrade change the
 * record's shape, binding finds no record and every call stays prom-client's own (correct, only
 * slower), and that test fails. Neither metric may be `reset()` or have series `remove()`d: the
 * bound record would be detached (nothing in token-proxy does either).
 */
type LabelSet = Record<string, string>;

interface CounterRecord {
  value: number;
}

interface HistogramRecord {
  labels: LabelSet;
  sum: number;
  count: number;
  bucketValues: Record<string, number>;
}

/** prom-client keeps each series' record in `hashMap`, keyed by the label hash. */
function recordsOf(metric: object): Record<string, unknown> | undefined {
  const records = (metric as { hashMap?: unknown }).hashMap;
  return typeof records === 'object' && records !== null ? (records as Record<string, unknown>) : undefined;
}

function isCounterRecord(x: unknown): x is CounterRecord {
  return typeof x === 'object' && x !== null && typeof (x as CounterRecord).value === 'number';
}

function isHistogramRecord(x: unknown, labels: LabelSet): x is HistogramRecord {
  const r = x as HistogramRecord;
  return (
    typeof x === 'object' &&
    x !== null &&
    r.labels === labels &&
    typeof r.sum === 'number' &&
    typeof r.count === 'number' &&
    typeof r.bucketValues === 'object'
  );
}

export interface CounterSeries {
  inc(): void;
}

export interface HistogramSeries {
  /** `exemplar`: a trace id, kept only by a series made with exemplarSeries (tracing on). */
  observe(value: number, exemplar?: string): void;
}

const NO_EXEMPLAR: Record<string, string> = Object.freeze({});

/**
 * A series of a histogram made with `enableExemplars` (tracing on). A value with a trace id goes
 * through prom-client's own observe, which also keeps it as the bucket's OpenMetrics exemplar
 * (the latest per bucket); a value without one (an unsampled request) takes the bound path.
 */
export function exemplarSeries(
  histogram: Histogram<string>,
  labels: LabelSet,
  buckets: readonly number[],
): HistogramSeries {
  // prom-client's observe takes one object when exemplars are on: the binding call uses that form.
  const plain = histogramSeries(histogram, labels, buckets, (value) =>
    histogram.observe({ labels, value, exemplarLabels: NO_EXEMPLAR }),
  );
  return {
    observe(value: number, exemplar?: string): void {
      if (exemplar === undefined) plain.observe(value);
      else histogram.observe({ labels, value, exemplarLabels: { trace_id: exemplar } });
    },
  };
}

/** A counter series that adds 1 per call; the series appears on its first call, as with prom-client. */
export function counterSeries(counter: Counter<string>, labels: LabelSet): CounterSeries {
  let record: CounterRecord | undefined;
  let bound = false;
  return {
    inc(): void {
      if (record !== undefined) {
        record.value += 1;
        return;
      }
      // prom-client's own call makes the series; it returns the hash that keys its record.
      const made = counter.inc(labels, 1) as unknown as { labelHash?: string } | undefined;
      if (bound) return;
      bound = true;
      const found = made?.labelHash === undefined ? undefined : recordsOf(counter)?.[made.labelHash];
      if (isCounterRecord(found)) record = found;
    },
  };
}

/**
 * A histogram series. `buckets` must be the buckets the histogram was made with: the bucket an
 * observation falls in is found here, as prom-client does (the first upper bound ≥ the value;
 * above the last one only the sum and count grow, and the `+Inf` bucket is the count).
 */
export function histogramSeries(
  histogram: Histogram<string>,
  labels: LabelSet,
  buckets: readonly number[],
  first: (value: number) => void = (value) => histogram.observe(labels, value),
): HistogramSeries {
  let record: HistogramRecord | undefined;
  let bound = false;
  // prom-client keys bucket counts by the bound's string form: converted once, not per call.
  const keys = buckets.map(String);
  return {
    observe(value: number): void {
      if (record === undefined) {
        first(value);
        if (bound) return;
        bound = true;
        // prom-client stores the labels object it was given in the record it makes for them.
        record = Object.values(recordsOf(histogram) ?? {}).find((r): r is HistogramRecord =>
          isHistogramRecord(r, labels),
        );
        return;
      }
      if (!Number.isFinite(value)) return; // prom-client would throw; a duration never is
      record.sum += value;
      record.count += 1;
      for (let i = 0; i < buckets.length; i++) {
        if (value <= (buckets[i] as number)) {
          const key = keys[i] as string;
          record.bucketValues[key] = (record.bucketValues[key] ?? 0) + 1;
          return;
        }
      }
    },
  };
}
