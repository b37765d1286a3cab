// `npm run bench:post-after-idle`: 1 MiB POSTs through token-proxy after an idle spell, started
// with the image's Node flags (Dockerfile ENTRYPOINT) and without them, alternating. It shows the
// slow phase described in bench/what-was-tried.md: in a process that started and then idled,
// V8's old-generation limit is small, and the ArrayBuffers of the request bodies set off a
// mark-compact every few requests.
// Prints req/s and the proxy's CPU per request for each POST run. About a minute; loopback only.
// IDLE_SECONDS (default 15) sets the idle spell; RETRY_BODY_LIMIT_BYTES=0 streams the bodies;
// KEEP_WORK=1 keeps the work directory (the proxies' logs, e.g. with --trace-gc in the ENTRYPOINT).
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { OAuth2Server } from 'oauth2-mock-server';
import { request } from 'undici';
import { HOST, LOAD_CORE, PROXY_CORE, freePort, print, say, shippedNodeFlags, start, stop, stopAll, waitForPort, work } from './lib.mjs';

const run = promisify(execFile);
const ROUNDS = 3;
const IDLE_SECONDS = Number(process.env.IDLE_SECONDS ?? 15);
const shipped = shippedNodeFlags();

const cpuSeconds = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in ticks of 10 ms
};

async function wrk(url, seconds, connections, script) {
  const args = ['-c', LOAD_CORE, 'wrk', '-t1', `-c${connections}`, `-d${seconds}s`, ...(script ? ['-s', script] : []), url];
  const { stdout } = await run('taskset', args);
  return Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? 0);
}

async function main() {
  await run('taskset', ['-a', '-cp', LOAD_CORE, String(process.pid)]);
  const tokens = new OAuth2Server();
  await tokens.issuer.keys.generate('RS256');
  await tokens.start(await freePort(), HOST);
  const tokenUrl = `http://${HOST}:${tokens.address().port}/token`;
  const upstreamPort = await freePort();
  const upstream = start('upstream', LOAD_CORE, process.execPath, ['bench/upstream.mjs'], {
    env: { PORT: String(upstreamPort), BENCH_JWK: JSON.stringify(tokens.issuer.keys.toJSON()[0]) },
    ipc: true,
  });
  await waitForPort(upstreamPort, upstream);
  const post = join(work, 'post-1mib.lua');
  writeFileSync(post, `wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/octet-stream"\nwrk.body = string.rep("x", ${1024 * 1024})\n`);

  const variants = [
    { name: `image flags (${shipped.join(' ') || 'none'})`, flags: shipped },
    { name: 'no flags', flags: [] },
  ];
  for (const v of variants) {
    const port = await freePort();
    const adminPort = await freePort();
    const config = join(work, `${v.flags.length}.yaml`);
    writeFileSync(config, `listen: ${HOST}:${port}\nadmin:\n  listen: ${HOST}:${adminPort}\nlogLevel: warn\nupstreams:\n  - name: bench\n    target: http://${HOST}:${upstreamPort}\n    pathPrefix: /bench\n    retryBodyLimitBytes: ${process.env.RETRY_BODY_LIMIT_BYTES ?? 1048576}\n    auth: { type: client_credentials, tokenUrl: ${tokenUrl}, clientId: bench, clientSecret: bench }\n`);
    v.url = `http://${HOST}:${port}/bench/hello`;
    v.child = start(`token-proxy-${v.flags.length}`, PROXY_CORE, process.execPath, [...v.flags, 'dist/cli.js', 'serve', '--config', config]);
    await waitForPort(port, v.child);
    v.runs = [];
  }
  say(`one request to each (its token is fetched), then ${IDLE_SECONDS} s idle: V8 shrinks the heap limit of an idle process`);
  for (const v of variants) {
    const res = await request(v.url);
    const body = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`${v.name}: ${res.statusCode} ${body}`);
  }
  await delay(IDLE_SECONDS * 1000);
  for (let round = 0; round < ROUNDS; round += 1) {
    for (const v of variants) {
      const before = cpuSeconds(v.child.pid);
      const rps = await wrk(v.url, 3, 10, post);
      v.runs.push({ rps, cpuMicros: ((cpuSeconds(v.child.pid) - before) / (rps * 3)) * 1e6 });
    }
  }
  print('| token-proxy started with | 1 MiB POST req/s, each 3 s run | proxy CPU µs per request |');
  print('|---|---|---|');
  for (const v of variants) print(`| ${v.name} | ${v.runs.map((r) => Math.round(r.rps)).join(', ')} | ${v.runs.map((r) => Math.round(r.cpuMicros)).join(', ')} |`);
  for (const v of variants) await stop(v.child);
  await tokens.stop();
}

try {
  await main();
} finally {
  await stopAll();
  if (process.env.KEEP_WORK) say(`work directory kept: ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
process.exit();
