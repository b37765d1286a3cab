import { createServer, type Server, type ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { renderStatusPage, STATUS_PAGE_HEADERS } from './status-page.js';
import type { StatusReport } from './status.js';
import { OPENMETRICS_CONTENT_TYPE, openMetricsText, prefersOpenMetrics } from './openmetrics.js';

export interface Readiness {
  /** True once the config is loaded, the proxy listener is up and warm-up tokens are in hand. */
  ready(): boolean;
  /** A JSON-able summary for operators (token states; never token values). */
  details(): Record<string, unknown>;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

/**
 * The admin listener: /metrics (Prometheus text format, or OpenMetrics with exemplars when the
 * scraper's Accept prefers it), /healthz (alive), /readyz (serving), and with `status`: / (the
 * status page, HTML) and /status (the same as JSON). GET and HEAD only.
 */
export function createAdminServer(registry: Registry, readiness: Readiness, status?: () => StatusReport): Server {
  return createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      json(res, 405, { error: 'method_not_allowed' });
      return;
    }
    if (path === '/metrics') {
      const open = prefersOpenMetrics(req.headers.accept);
      (open ? openMetricsText(registry) : registry.metrics()).then(
        (text) => {
          res.writeHead(200, {
            'content-type': open ? OPENMETRICS_CONTENT_TYPE : registry.contentType,
            vary: 'accept',
          });
          res.end(text);
        },
        () => json(res, 500, { error: 'metrics_unavailable' }),
      );
    } else if (path === '/healthz') {
      json(res, 200, { status: 'ok' });
    } else if (path === '/readyz') {
      const ready = readiness.ready();
      json(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not_ready', ...readiness.details() });
    } else if (path === '/status' && status !== undefined) {
      json(res, 200, status());
    } else if (path === '/' && status !== undefined) {
      const html = renderStatusPage(status());
      res.writeHead(200, { ...STATUS_PAGE_HEADERS, 'content-length': Buffer.byteLength(html) });
      res.end(html);
    } else {
      json(res, 404, { error: 'not_found' });
    }
  });
}
