// `npm run bench:ab -- <git revision> [seconds] [rounds]`: this checkout's build against another
// revision's, small GETs at 50 connections, alternating runs (default 10 rounds of 5 s), each proxy
// pinned to the proxy core and started with the image's Node flags. Prints each build's median
// req/s and CPU per request and their paired ratio: a check that a hot-path change is a gain,
// finer than the ratio tables of `npm run bench -- --quick`. The other revision is built in a
// temporary git worktree that borrows this checkout's node_modules. Loopback only.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { promisify } from 'node:util';
import { OAuth2Server } from 'oauth2-mock-server';
import { request } from 'undici';
import { HOST, LOAD_CORE, PROXY_CORE, ROOT, freePort, median, print, say, shippedNodeFlags, start, stopAll, waitForPort, work } from './lib.mjs';

const run = promisify(execFile);
const [revision, seconds = '5', rounds = '10'] = process.argv.slice(2);
if (revision === undefined) {
  say('usage: npm run bench:ab -- <git revision> [seconds per run] [rounds]');
  process.exit(2);
}

const cpuSeconds = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in ticks of 10 ms
};

/** The other revision's dist/, built in a worktree under the work directory. */
async function buildRevision(rev) {
  const tree = join(work, 'other');
  await run('git', ['worktree', 'add', '--detach', tree, rev], { cwd: ROOT });
  symlinkSync(join(ROOT, 'node_modules'), join(tree, 'node_modules'));
  await run(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(tree, 'tsconfig.build.json')], { cwd: tree });
  return tree;
}

async function main() {
  if (!existsSync(join(ROOT, 'dist', 'cli.js'))) throw new Error('no dist/: run npm run build first');
  await run('taskset', ['-a', '-cp', LOAD_CORE, String(process.pid)]);
  say(`building ${revision} in a worktree...`);
  const other = await buildRevision(revision);
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

  const builds = [
    { name: `this checkout`, root: ROOT },
    { name: revision, root: other },
  ];
  for (const b of builds) {
    const port = await freePort();
    const adminPort = await freePort();
    const config = join(work, `${builds.indexOf(b)}.yaml`);
    writeFileSync(config, `listen: ${HOST}:${port}\nadmin:\n  listen: ${HOST}:${adminPort}\nlogLevel: warn\naccessLog: false\nupstreams:\n  - name: bench\n    target: http://${HOST}:${upstreamPort}\n    pathPrefix: /bench\n    auth: { type: client_credentials, tokenUrl: ${tokenUrl}, clientId: bench, clientSecret: bench }\n`);
    b.url = `http://${HOST}:${port}/bench/hello`;
    b.child = start(`token-proxy-${builds.indexOf(b)}`, PROXY_CORE, process.execPath, [...shippedNodeFlags(), join(b.root, 'dist', 'cli.js'), 'serve', '--config', config]);
    await waitForPort(port, b.child);
    const res = await request(b.url);
    await res.body.dump();
    if (res.statusCode !== 200) throw new Error(`${b.name} answered ${res.statusCode}`);
    b.runs = [];
  }
  const wrk = async (b, sec) => {
    const before = cpuSeconds(b.child.pid);
    const { stdout } = await run('taskset', ['-c', LOAD_CORE, 'wrk', '-t1', '-c50', `-d${sec}s`, b.url]);
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? 0);
    const total = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0);
    return { rps, cpuMicros: ((cpuSeconds(b.child.pid) - before) / total) * 1e6 };
  };
  say(`warm-up, then ${rounds} rounds of ${seconds} s each, alternating (the order flips every round)`);
  for (const b of builds) await wrk(b, 2);
  for (let r = 0; r < Number(rounds); r += 1) {
    const order = r % 2 === 0 ? builds : [...builds].reverse();
    for (const b of order) b.runs.push(await wrk(b, Number(seconds)));
  }
  const [a, b] = builds;
  const paired = (key) => median(a.runs.map((x, i) => x[key] / b.runs[i][key]));
  print(`| build | req/s (median) | CPU µs per request (median) |\n|---|--:|--:|`);
  for (const x of builds) print(`| ${x.name} | ${Math.round(median(x.runs.map((r) => r.rps))).toLocaleString('en-US')} | ${median(x.runs.map((r) => r.cpuMicros)).toFixed(1)} |`);
  print(`\nthis checkout / ${revision}, paired medians: throughput ${paired('rps').toFixed(3)}×, CPU per request ${paired('cpuMicros').toFixed(3)}×`);
  await tokens.stop();
}

try {
  await main();
} finally {
  await stopAll();
  await run('git', ['worktree', 'remove', '--force', join(work, 'other')], { cwd: ROOT }).catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
process.exit();
