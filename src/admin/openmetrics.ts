import { Registry, type OpenMetricsContentType } from 'prom-client';

export const OPENMETRICS_CONTENT_TYPE = Registry.OPENMETRICS_CONTENT_TYPE;

/**
 * Whether a scraper's Accept prefers OpenMetrics (the format that carries exemplars) to the
 * Prometheus text format (RFC 9110 §12.5.1: the highest q wins; Prometheus sends both).
 */
export function prefersOpenMetrics(accept: string | undefined): boolean {
  if (accept === undefined) return false;
  let open = 0;
  let plain = 0;
  for (const range of accept.split(',')) {
    const [type = '', ...params] = range.split(';').map((p) => p.trim().toLowerCase());
    const qParam = params.find((p) => p.startsWith('q='));
    const q = qParam === undefined ? 1 : Number(qParam.slice(2));
    if (!Number.isFinite(q)) continue;
    if (type === 'application/openmetrics-text') open = Math.max(open, q);
    else if (type === 'text/plain' || type === '*/*' || type === 'text/*') plain = Math.max(plain, q);
  }
  return open > 0 && open >= plain;
}

/** The parts of a prom-client metric and registry this file uses (getMetricsAsString is untyped). */
interface Exposed {
  getForPromString?: () => Promise<ExposedData> | ExposedData;
  get(): Promise<ExposedData> | ExposedData;
}
interface ExposedData {
  name: string;
  type: string;
}
interface Writer {
  getMetricsAsString(metric: { get(): ExposedData }): Promise<string>;
}

/** One writer for every scrape: it only formats, and keeps no state of its own. */
const writer = openMetricsWriter();

function openMetricsWriter(): Writer {
  const registry = new Registry<OpenMetricsContentType>();
  registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  return registry as unknown as Writer;
}

/**
 * The registry's metrics in the OpenMetrics text format, exemplars included.
 *
 * Not `registry.setContentType(OPENMETRICS)` then `metrics()`: prom-client's OpenMetrics writer
 * renames every counter object in place (drops `_total` from its name), so every later plain-text
 * scrape would export `token_proxy_requests` where dashboards and alerts expect
 * `token_proxy_requests_total`. Here the registry is only read: each metric's values are
 * formatted by a separate OpenMetrics writer from a copy whose counter name lacks the suffix the
 * format adds back (OpenMetrics 1.0: a counter's samples are named `<name>_total`).
 */
export async function openMetricsText(registry: Registry): Promise<string> {
  const parts = await Promise.all(
    (registry.getMetricsAsArray() as unknown as Exposed[]).map(async (metric) => {
      const data = await (metric.getForPromString === undefined ? metric.get() : metric.getForPromString());
      const view = data.type === 'counter' ? { ...data, name: data.name.replace(/_total$/, '') } : data;
      return writer.getMetricsAsString({ get: () => view });
    }),
  );
  return `${parts.join('\n')}\n# EOF\n`;
}
