import type { StatusReport, TokenReport, UpstreamReport } from './status.js';

/**
 * The response headers of the page: it loads nothing (inline CSS only, no script), so the policy
 * forbids everything else; nosniff keeps a browser from reading it as anything but HTML.
 */
export const STATUS_PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy':
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

const ESCAPES: Readonly<Record<string, string>> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Escapes text for an element's content or a quoted attribute (the five characters HTML gives meaning). */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ESCAPES[c] ?? c);
}

const NONE = '—';

/** A time as its ISO text (the JSON's value) in a <time>, with how long ago beside it. */
function time(at: string | null, now: number): string {
  if (at === null) return NONE;
  const ago = Math.max(0, Math.round((now - Date.parse(at)) / 1000));
  return `<time datetime="${escapeHtml(at)}">${escapeHtml(at)}</time> <span class="ago">(${ago} s ago)</span>`;
}

function cell(field: string, html: string, cls = ''): string {
  return `<td data-field="${field}"${cls === '' ? '' : ` class="${cls}"`}>${html}</td>`;
}

function tokenRow(u: UpstreamReport, t: TokenReport | undefined, now: number): string {
  const tenant = t?.tenant ?? null;
  const state = t === undefined ? 'per caller' : t.state;
  return [
    `<tr data-upstream="${escapeHtml(u.name)}"${tenant === null ? '' : ` data-tenant="${escapeHtml(tenant)}"`}>`,
    cell('upstream', escapeHtml(u.name)),
    cell('tenant', tenant === null ? NONE : escapeHtml(tenant)),
    cell('state', escapeHtml(state), `state ${t === undefined ? 'per_caller' : escapeHtml(t.state)}`),
    cell('expiresIn', t?.expiresInSeconds == null ? NONE : `${t.expiresInSeconds} s`),
    cell('lastRefreshAt', time(t?.lastRefreshAt ?? null, now)),
    cell('lastRefreshDuration', t?.lastRefreshDurationMs == null ? NONE : `${t.lastRefreshDurationMs} ms`),
    cell('lastFailureReason', t?.lastFailureReason == null ? NONE : escapeHtml(t.lastFailureReason)),
    cell('lastFailureAt', time(t?.lastFailureAt ?? null, now)),
    cell('breaker', escapeHtml(u.breaker), `breaker ${escapeHtml(u.breaker)}`),
    '</tr>',
  ].join('');
}

const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#fff}
h1{font-size:1.3rem;margin:0 0 .8rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;margin:0 0 1.2rem}
dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
.ago{color:#57606a}
.state,.breaker{font-weight:600}
.valid,.closed,.up{color:#1a7f37}.refreshing,.half_open{color:#9a6700}
.failing,.expired,.open,.down{color:#cf222e}.none,.per_caller,.not_configured{color:#57606a}
`;

/** The status page: built from the report alone, so it shows exactly what GET /status says. */
export function renderStatusPage(report: StatusReport): string {
  const now = Date.parse(report.generatedAt);
  const c = report.config;
  const rows = report.upstreams.flatMap((u) =>
    u.tokens.length === 0 ? [tokenRow(u, undefined, now)] : u.tokens.map((t) => tokenRow(u, t, now)),
  );
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>token-proxy status</title>
<style>${STYLE}</style>
</head>
<body>
<h1>token-proxy status</h1>
<dl>
<dt>Generated</dt><dd data-field="generatedAt">${time(report.generatedAt, now)}</dd>
<dt>Shared cache</dt><dd data-field="sharedCache" class="${escapeHtml(report.sharedCache)}">${escapeHtml(report.sharedCache)}</dd>
<dt>Config file</dt><dd data-field="configFile">${c.file === null ? NONE : escapeHtml(c.file)}</dd>
<dt>Last reload</dt><dd data-field="lastReloadAt">${time(c.lastReloadAt, now)}</dd>
<dt>Outcome</dt><dd data-field="lastReloadOutcome">${c.lastReloadOutcome === null ? NONE : escapeHtml(c.lastReloadOutcome)}</dd>
<dt>Triggered by</dt><dd data-field="lastReloadTrigger">${c.lastReloadTrigger === null ? NONE : escapeHtml(c.lastReloadTrigger)}</dd>
<dt>Last success</dt><dd data-field="lastSuccessfulReloadAt">${time(c.lastSuccessfulReloadAt, now)}</dd>
</dl>
<table>
<thead><tr><th>Upstream</th><th>Tenant</th><th>Token</th><th>Expires in</th><th>Last refresh</th><th>Took</th><th>Last failure</th><th>Failed at</th><th>Breaker</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>
</body>
</html>
`;
}
