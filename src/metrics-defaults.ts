import { collectDefaultMetrics, type Registry } from 'prom-client';

/**
 * prom-client's default gauges whose names end in `_total`, a suffix Prometheus reserves for
 * counters (`promtool check metrics`: 'non-counter metrics should not have "_total" suffix').
 * Each is only the sum of a well-named gauge prom-client exports beside it, labelled by `type`:
 * `nodejs_active_handles_total` is `sum(nodejs_active_handles)`, and so on. Renaming them is not
 * possible (those names are taken), so they are dropped and nothing is lost.
 */
export const MISNAMED_DEFAULT_METRICS = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
] as const;

/**
 * The default Node.js process metrics (CPU, memory, event loop lag, GC, handles...) less the
 * misnamed gauges above. A default metric's value is computed by its own `collect()` when the
 * registry is scraped, so removing it from the registry also stops its collection.
 */
export function collectWellNamedDefaultMetrics(registry: Registry): void {
  collectDefaultMetrics({ register: registry });
  for (const name of MISNAMED_DEFAULT_METRICS) registry.removeSingleMetric(name);
}
