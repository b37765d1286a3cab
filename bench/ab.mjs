// `npm run bench:ab -- <git revision> [seconds] [rounds] [--access-log] [--tracing <ratio>] [--protection]`: this checkout's build against another
// revision's, small GETs at 50 connections, alternating runs (default 10 rounds of 5 s), each proxy
// pinned to the proxy core and started with the image's Node flags. Prints each build's median
// req/s and CPU per request and their paired ratio: a check that a hot-path change is a gain,
// finer than the ratio tables of `npm run bench -- --quick`. The other revision is built in a
// temporary git worktree that borrows this checkout's node_modules. `--access-log`: both with the
// access log on (one JSON line per request to /dev/null), to weigh a change to that path.
// `--tracing <ratio>`: this checkout only runs with OpenTelemetry tracing on at that sample ratio,
// exporting to a sink in the bench process that answers every OTLP post 200; the other revision
// runs as usual, so the ratio is the cost of tracing (`--tracing 1`, `--tracing 0.01`). Loopback only.
import { existsSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { LOAD_CORE, ROOT, median, print, say, shippedNodeFlags, stopAll, work } from './lib.mjs';
import { cpuSecondsOf, run, startOtlpSink, startPartner, startProxy, wrk } from './rig.mjs';

const args = process.argv.slice(2);
const accessLog = args.includes('--access-log');
// `--protection`: this checkout only with partner protection on (limits, breaker, retries), to weigh it.
const protection = args.includes('--protection');
const tracingAt = args.indexOf('--tracing');
const sampleRatio = tracingAt === -1 ? undefined : Number(args[tracingAt + 1]);
const [revision, seconds = '5', rounds = '10'] = args.filter(
  (a, i) =>
    a !== '--access-log' && a !== '--protection' && (tracingAt === -1 || (i !== tracingAt && i !== tracingAt + 1)),
);
if (revision === undefined || (sampleRatio !== undefined && !(sampleRatio >= 0 && sampleRatio <= 1))) {
  say(
    'usage: npm run bench:ab -- <git revision> [seconds per run] [rounds] [--access-log] [--tracing <ratio 0..1>] [--protection]',
  );
  process.exit(2);
}

/** The other revision's dist/, built in a worktree under the work directory. */
async function buildRevision(rev) {
  const tree = join(work, 'other');
  await run('git', ['worktree', 'add', '--detach', tree, rev], { cwd: ROOT });
  symlinkSync(join(ROOT, 'node_modules'), join(tree, 'node_modules'));
  await run(
    process.execPath,
    [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(tree, 'tsconfig.build.json')],
    { cwd: tree },
  );
  return tree;
}

async function main() {
  if (!existsSync(join(ROOT, 'dist', 'cli.js'))) throw new Error('no dist/: run npm run build first');
  await run('taskset', ['-a', '-cp', LOAD_CORE, String(process.pid)]);
  say(`building ${revision} in a worktree...`);
  const other = await buildRevision(revision);
  const partner = await startPartner();
  const sink = sampleRatio === undefined ? undefined : await startOtlpSink();

  const builds = [
    {
      name: `this checkout${sink === undefined ? '' : `, tracing at ${sampleRatio}`}${protection ? ', protection on' : ''}`,
      root: ROOT,
      protection,
      tracing: sink === undefined ? undefined : { endpoint: sink.endpoint, sampleRatio },
    },
    { name: revision, root: other, tracing: undefined, protection: false },
  ];
  for (const b of builds) {
    Object.assign(
      b,
      await startProxy(`token-proxy-${builds.indexOf(b)}`, partner, {
        root: b.root,
        nodeFlags: shippedNodeFlags(),
        accessLog,
        tracing: b.tracing,
        protection: b.protection,
      }),
    );
    b.runs = [];
  }
  const measure = async (b, sec) => {
    const before = cpuSecondsOf(b.child.pid);
    const { rps, requests } = await wrk(b.url, sec, 50);
    return { rps, cpuMicros: ((cpuSecondsOf(b.child.pid) - before) / requests) * 1e6 };
  };
  say(`warm-up, then ${rounds} rounds of ${seconds} s each, alternating (the order flips every round)`);
  for (const b of builds) await measure(b, 2);
  for (let r = 0; r < Number(rounds); r += 1) {
    const order = r % 2 === 0 ? builds : [...builds].reverse();
    for (const b of order) b.runs.push(await measure(b, Number(seconds)));
  }
  const [a, b] = builds;
  const paired = (key) => median(a.runs.map((x, i) => x[key] / b.runs[i][key]));
  print(`| build | req/s (median) | CPU µs per request (median) |\n|---|--:|--:|`);
  for (const x of builds)
    print(
      `| ${x.name} | ${Math.round(median(x.runs.map((r) => r.rps))).toLocaleString('en-US')} | ${median(x.runs.map((r) => r.cpuMicros)).toFixed(1)} |`,
    );
  print(
    `\nthis checkout / ${revision}, paired medians: throughput ${paired('rps').toFixed(3)}×, CPU per request ${paired('cpuMicros').toFixed(3)}×`,
  );
  if (sink !== undefined)
    print(
      `\nOTLP sink: ${sink.stats.exports} exports, ${(sink.stats.bytes / 1e6).toFixed(1)} MB from the traced build`,
    );
  await sink?.stop();
  await partner.stop();
}

try {
  await main();
} finally {
  await stopAll();
  await run('git', ['worktree', 'remove', '--force', join(work, 'other')], { cwd: ROOT }).catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
process.exit();
