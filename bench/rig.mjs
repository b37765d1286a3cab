// The small rig the side benchmarks share (ab.mjs, post-after-idle.mjs): the token server and the
// upstream on the load core, token-proxy processes on the proxy core, wrk runs and the CPU time of
// one process. run.mjs has its own, fuller set-up (comparison points, TLS, IPC statistics).
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { promisify } from 'node:util';
import { OAuth2Server } from 'oauth2-mock-server';
import { request } from 'undici';
import { HOST, LOAD_CORE, PROXY_CORE, ROOT, freePort, start, waitForPort, work } from './lib.mjs';

export const run = promisify(execFile);

/** The token server (oauth2-mock-server) and the bench upstream that checks its tokens. */
export async function startPartner() {
  const tokens = new OAuth2Server();
  await tokens.issuer.keys.generate('RS256');
  await tokens.start(await freePort(), HOST);
  const upstreamPort = await freePort();
  const upstream = start('upstream', LOAD_CORE, process.execPath, ['bench/upstream.mjs'], {
    env: { PORT: String(upstreamPort), BENCH_JWK: JSON.stringify(tokens.issuer.keys.toJSON()[0]) },
    ipc: true,
  });
  await waitForPort(upstreamPort, upstream);
  return { tokenUrl: `http://${HOST}:${tokens.address().port}/token`, upstreamPort, stop: () => tokens.stop() };
}

/**
 * A token-proxy (from `root`, this checkout by default) on the proxy core, with one reverse-mode
 * upstream; resolves once it has answered one request with 200 (its token is then cached).
 * `accessLog`: one line per request at level info, standard output to /dev/null. `tracing`:
 * `{ endpoint, sampleRatio }`, OpenTelemetry on, exporting there (see startOtlpSink). `protection`:
 * the upstream has every partner protection on (limits, a breaker, retries, respectRetryAfter),
 * with limits far above the load, so what is measured is their cost, not their effect.
 */
/** Partner protection settings of the bench upstream (`protection`): all on, none ever reached. */
const PROTECTION = [
  '    limits: { maxConcurrentRequests: 256, maxQueuedRequests: 1024, requestsPerSecond: 1000000, burst: 1000000 }',
  '    circuitBreaker: { consecutiveFailures: 5, openSeconds: 30 }',
  '    retry: { connectionFailures: 1 }',
  '    respectRetryAfter: true',
  '',
].join('\n');

export async function startProxy(
  name,
  partner,
  {
    root = ROOT,
    nodeFlags = [],
    retryBodyLimitBytes = 1024 * 1024,
    accessLog = false,
    tracing,
    protection = false,
  } = {},
) {
  const port = await freePort();
  const adminPort = await freePort();
  const config = join(work, `${name}.yaml`);
  writeFileSync(
    config,
    `listen: ${HOST}:${port}\nadmin:\n  listen: ${HOST}:${adminPort}\nlogLevel: ${accessLog ? 'info' : 'warn'}\naccessLog: ${accessLog}\nupstreams:\n  - name: bench\n    target: http://${HOST}:${partner.upstreamPort}\n    pathPrefix: /bench\n    retryBodyLimitBytes: ${retryBodyLimitBytes}\n    auth: { type: client_credentials, tokenUrl: ${partner.tokenUrl}, clientId: bench, clientSecret: bench }\n` +
      (protection ? PROTECTION : '') +
      (tracing === undefined
        ? ''
        : `tracing:\n  otlp: { endpoint: ${tracing.endpoint} }\n  sampleRatio: ${tracing.sampleRatio}\n`),
  );
  const child = start(
    name,
    PROXY_CORE,
    process.execPath,
    [...nodeFlags, join(root, 'dist', 'cli.js'), 'serve', '--config', config],
    accessLog ? { stdout: '/dev/null' } : {},
  );
  await waitForPort(port, child);
  const url = `http://${HOST}:${port}/bench/hello`;
  const res = await request(url);
  const body = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`${name}: ${res.statusCode} ${body}`);
  return { url, child };
}

/** One wrk run on the load core: requests per second and requests completed. */
export async function wrk(url, seconds, connections, script) {
  const { stdout } = await run('taskset', [
    '-c',
    LOAD_CORE,
    'wrk',
    '-t1',
    `-c${connections}`,
    `-d${seconds}s`,
    ...(script ? ['-s', script] : []),
    url,
  ]);
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? 0),
    requests: Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0),
  };
}

/** CPU seconds (user and system) one process has used so far. */
export function cpuSecondsOf(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime: ticks of 10 ms (CLK_TCK 100)
}

/**
 * A stand-in OTLP/HTTP collector in the bench process (the load core): reads each export and
 * answers 200 with an empty ExportTraceServiceResponse, as a collector does, so that a traced
 * proxy pays the whole cost of exporting (serialising, sending) and nothing more.
 */
export async function startOtlpSink() {
  const stats = { exports: 0, bytes: 0 };
  const server = createServer((req, res) => {
    req.on('data', (chunk) => (stats.bytes += chunk.length));
    req.on('end', () => {
      stats.exports += 1;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  return {
    endpoint: `http://${HOST}:${server.address().port}/v1/traces`,
    stats,
    stop: () => new Promise((resolve) => server.close(resolve)),
  };
}
