// `npm run bench:post-after-idle`: 1 MiB POSTs through token-proxy after an idle spell, started
// with the image's Node flags (Dockerfile ENTRYPOINT) and without them, alternating. It shows the
// slow phase described in bench/what-was-tried.md: in a process that started and then idled,
// V8's old-generation limit is small, and the ArrayBuffers of the request bodies set off a
// mark-compact every few requests.
// Prints req/s and the proxy's CPU per request for each POST run. About a minute; loopback only.
// IDLE_SECONDS (default 15) sets the idle spell; RETRY_BODY_LIMIT_BYTES=0 streams the bodies;
// KEEP_WORK=1 keeps the work directory (the proxies' logs, e.g. with --trace-gc in the ENTRYPOINT).
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { setTimeout as delay } from 'node:timers/promises';
import { LOAD_CORE, print, say, shippedNodeFlags, stop, stopAll, work } from './lib.mjs';
import { cpuSecondsOf, run, startPartner, startProxy, wrk } from './rig.mjs';

const ROUNDS = 3;
const IDLE_SECONDS = Number(process.env.IDLE_SECONDS ?? 15);
const shipped = shippedNodeFlags();

async function main() {
  await run('taskset', ['-a', '-cp', LOAD_CORE, String(process.pid)]);
  const partner = await startPartner();
  const post = join(work, 'post-1mib.lua');
  writeFileSync(
    post,
    `wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/octet-stream"\nwrk.body = string.rep("x", ${1024 * 1024})\n`,
  );

  const variants = [
    { name: `image flags (${shipped.join(' ') || 'none'})`, flags: shipped },
    { name: 'no flags', flags: [] },
  ];
  say(
    `one request to each (its token is fetched), then ${IDLE_SECONDS} s idle: V8 shrinks the heap limit of an idle process`,
  );
  const retryBodyLimitBytes = Number(process.env.RETRY_BODY_LIMIT_BYTES ?? 1024 * 1024);
  for (const v of variants) {
    Object.assign(
      v,
      await startProxy(`token-proxy-${v.flags.length}`, partner, { nodeFlags: v.flags, retryBodyLimitBytes }),
    );
    v.runs = [];
  }
  await delay(IDLE_SECONDS * 1000);
  for (let round = 0; round < ROUNDS; round += 1) {
    for (const v of variants) {
      const before = cpuSecondsOf(v.child.pid);
      const { rps, requests } = await wrk(v.url, 3, 10, post);
      v.runs.push({ rps, cpuMicros: ((cpuSecondsOf(v.child.pid) - before) / requests) * 1e6 });
    }
  }
  print('| token-proxy started with | 1 MiB POST req/s, each 3 s run | proxy CPU µs per request |');
  print('|---|---|---|');
  for (const v of variants)
    print(
      `| ${v.name} | ${v.runs.map((r) => Math.round(r.rps)).join(', ')} | ${v.runs.map((r) => Math.round(r.cpuMicros)).join(', ')} |`,
    );
  for (const v of variants) await stop(v.child);
  await partner.stop();
}

try {
  await main();
} finally {
  await stopAll();
  if (process.env.KEEP_WORK) say(`work directory kept: ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
process.exit();
