// What every part of the benchmark (run.mjs, scenarios.mjs) shares: the work directory, pinned
// processes in their own process groups, CPU accounting from /proc, noise detection, IPC calls
// and a few formatting helpers.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import process from 'node:process';
import { clearTimeout, setTimeout } from 'node:timers';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/** A run in which processes this benchmark did not start used more than this share of a core. */
export const DISTURBED = 0.1;
export const PROXY_CORE = '0';
export const LOAD_CORE = '1';
export const HOST = '127.0.0.1'; // loopback only, always
const CLK_TCK = 100; // /proc/<pid>/stat times are in ticks (getconf CLK_TCK; 100 on Linux)

// Progress and warnings go to stderr, the tables to stdout.
export const say = (line) => process.stderr.write(`${line}\n`);
export const print = (text) => process.stdout.write(`${text}\n`);

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const work = mkdtempSync(join(tmpdir(), 'token-proxy-bench-'));
export const children = [];

/**
 * The Node.js flags the image starts token-proxy with (the words between `node` and `dist/cli.js`
 * in the Dockerfile's ENTRYPOINT): the benchmarks run the product as it is shipped.
 */
export function shippedNodeFlags() {
  const entrypoint = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
  const words = entrypoint ? JSON.parse(entrypoint[1]) : [];
  const script = words.indexOf('dist/cli.js');
  if (words[0] !== 'node' || script === -1)
    throw new Error('Dockerfile: expected ENTRYPOINT ["node", ...flags, "dist/cli.js"]');
  return words.slice(1, script);
}

// ---------------------------------------------------------------- processes

/**
 * Starts a command pinned to `core`, in its own process group so stopAll() also gets its children.
 * Output goes to <work>/<name>.log; `stdout: '/dev/null'` sends standard output there instead
 * (the access-log configuration: the log lines are written, then thrown away).
 */
export function start(name, core, command, args, { env = {}, ipc = false, stdout } = {}) {
  const log = join(work, `${name.replace(/\W+/g, '-')}.log`);
  const fd = openSync(log, 'a');
  const out = stdout === undefined ? fd : openSync(stdout, 'a');
  const child = spawn('taskset', ['-c', core, command, ...args], {
    cwd: ROOT,
    detached: true,
    env: { ...process.env, ...env },
    stdio: ['ignore', out, fd, ...(ipc ? ['ipc'] : [])],
  });
  closeSync(fd);
  if (out !== fd) closeSync(out);
  child.label = name;
  child.log = log;
  child.exited = false;
  child.on('exit', () => (child.exited = true));
  children.push(child);
  return child;
}

/** An error message in one line: its first line and, when there are more, its last (a log's last line says why). */
export function oneLine(message) {
  const lines = String(message)
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.length > 1 ? `${lines[0]} … ${lines.at(-1)}` : (lines[0] ?? '');
}

export function logTail(child, lines = 15) {
  try {
    return readFileSync(child.log, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

function signalGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // ESRCH: the group is gone already
  }
}

/** SIGTERM to one started process group; SIGKILL after `graceMs`. Resolves once it has exited. */
export async function stop(child, graceMs = 3000) {
  if (!child.exited) {
    signalGroup(child, 'SIGTERM');
    await Promise.race([once(child, 'exit'), delay(graceMs)]);
  }
  signalGroup(child, 'SIGKILL');
  const i = children.indexOf(child);
  if (i !== -1) children.splice(i, 1);
}

/** SIGTERM to every process group, then SIGKILL to whatever is left after 3 s. */
export async function stopAll() {
  const alive = children.filter((c) => !c.exited);
  for (const c of alive) signalGroup(c, 'SIGTERM');
  await Promise.race([Promise.all(alive.map((c) => (c.exited ? null : once(c, 'exit')))), delay(3000)]);
  for (const c of children) signalGroup(c, 'SIGKILL'); // also a group whose leader exited first (nginx workers)
  children.length = 0;
}

/** Runs a pinned command to completion and returns its stdout. */
export async function runPinned(name, core, command, args) {
  const child = start(name, core, command, args);
  const [code] = await once(child, 'exit');
  children.splice(children.indexOf(child), 1);
  const out = readFileSync(child.log, 'utf8');
  rmSync(child.log);
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${code}):\n${out}`);
  return out;
}

export async function freePort() {
  const server = createServer().listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export async function waitForPort(port, child) {
  for (let i = 0; i < 200; i += 1) {
    if (child?.exited) throw new Error(`${child.label} exited during start-up:\n${logTail(child)}`);
    const ok = await new Promise((resolve) => {
      const socket = connect(port, HOST, () => {
        socket.end();
        resolve(true);
      }).on('error', () => resolve(false));
    });
    if (ok) return;
    await delay(50);
  }
  throw new Error(`nothing listens on ${HOST}:${port} after 10 s${child ? `:\n${logTail(child)}` : ''}`);
}

/** Calls into a child started with an IPC channel: it answers { id, result } or { id, error }. */
export function rpc(child) {
  let next = 0;
  const waiting = new Map();
  child.on('message', (msg) => {
    const w = waiting.get(msg?.id);
    if (w === undefined) return;
    waiting.delete(msg.id);
    clearTimeout(w.timer);
    if (msg.error !== undefined) w.reject(new Error(`${child.label}: ${msg.error}`));
    else w.resolve(msg.result);
  });
  child.on('exit', () => {
    for (const w of waiting.values()) w.reject(new Error(`${child.label} exited:\n${logTail(child)}`));
    waiting.clear();
  });
  return (msg, timeoutMs = 120_000) =>
    new Promise((resolve, reject) => {
      const id = ++next;
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error(`${child.label} did not answer '${msg.op}' within ${timeoutMs} ms:\n${logTail(child)}`));
      }, timeoutMs);
      waiting.set(id, { resolve, reject, timer });
      child.send({ ...msg, id });
    });
}

// ---------------------------------------------------------------- CPU and memory from /proc

/** CPU ticks used so far per process group (a started command and its children: nginx's worker). */
function ticksByGroup() {
  const ticks = new Map();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue;
    }
    // Fields after "(comm) ": state ppid pgrp ... utime (14th field) stime (15th).
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks.set(Number(f[2]), (ticks.get(Number(f[2])) ?? 0) + Number(f[11]) + Number(f[12]));
  }
  return ticks;
}

/** This script's CPU ticks plus those of its exited children (so wrk's, once it has finished). */
function ownTicks() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
}

/** Per core: ticks in tasks (user, nice, system), busy (also irq, softirq, steal) and total. */
function coreTicks() {
  const out = {};
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)/.exec(line);
    if (!m) continue;
    const [user, nice, system, idle, iowait, irq, softirq, steal] = m[2].split(' ').map(Number);
    const tasks = user + nice + system;
    out[m[1]] = {
      tasks,
      steal,
      busy: tasks + irq + softirq + steal,
      total: tasks + idle + iowait + irq + softirq + steal,
    };
  }
  return out;
}

export const sample = () => ({ groups: ticksByGroup(), own: ownTicks(), cores: coreTicks() });

/**
 * What happened on the machine between two samples, in shares of one core: how busy each core
 * was, how much the proxy under test used (seconds of CPU), and how much went to others: processes
 * this benchmark did not start (another build or test run) and, on a virtual machine, time the
 * host gave to other guests (steal). A run where others took a real share is "disturbed".
 */
export function cpuBetween(before, after, proxyPgid) {
  const d = (core, field) => after.cores[core][field] - before.cores[core][field];
  const coreTotal = Math.max(1, d(PROXY_CORE, 'total'));
  const groupDelta = (pgid) => (after.groups.get(pgid) ?? 0) - (before.groups.get(pgid) ?? 0);
  const ours = after.own - before.own + children.reduce((sum, c) => sum + groupDelta(c.pid), 0);
  const cores = Object.keys(after.cores);
  const tasks = cores.reduce((sum, core) => sum + d(core, 'tasks'), 0);
  const steal = cores.reduce((sum, core) => sum + d(core, 'steal'), 0);
  return {
    proxyCore: d(PROXY_CORE, 'busy') / coreTotal,
    loadCore: d(LOAD_CORE, 'busy') / Math.max(1, d(LOAD_CORE, 'total')),
    proxyCpu: proxyPgid ? groupDelta(proxyPgid) / CLK_TCK : NaN,
    foreign: (Math.max(0, tasks - ours) + steal) / coreTotal,
    steal: steal / coreTotal,
  };
}

/** Peak resident memory (VmHWM) of a started process group: the sum over its processes (nginx: master and worker). */
export function peakRssMiB(pgid) {
  let kib = 0;
  let found = false;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]) !== pgid) continue;
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) {
        kib += Number(m[1]);
        found = true;
      }
    } catch {
      // gone meanwhile
    }
  }
  return found ? kib / 1024 : NaN;
}

/**
 * Others share this machine (a test run, a build). Waits, in 1 s samples, until processes this
 * benchmark did not start use under DISTURBED of a core; spends at most what is left of the
 * spare seconds, which also pay for measuring disturbed runs again, so the run stays bounded.
 */
export const spare = { seconds: 0, budget: 0 };
export async function waitForQuiet() {
  while (spare.seconds > 0) {
    const before = sample();
    await delay(1000);
    spare.seconds -= 1;
    if (cpuBetween(before, sample()).foreign <= DISTURBED) return true;
  }
  return false;
}

/** First line a tool prints about its version: nginx -v writes to stderr, wrk -v exits 1. */
export function version(command, args) {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n')[0];
}

export function hasCommand(command) {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- numbers

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Nearest-rank percentile of an already sorted array (q in 0..1). */
export const percentile = (sorted, q) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];

export const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
export const ratio = (x, y) => (y > 0 && Number.isFinite(x) ? `${(x / y).toFixed(2)}×` : '–');
export const ms = (x, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : '–');
export const pct = (x) => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '–');

// ---------------------------------------------------------------- targets

/** One line of the targets table: what issue 8 asks, what this run measured, met or missed (undefined: not measured). */
export const target = (what, measured, met, { noisy = false, note = '' } = {}) => ({
  what,
  measured,
  met,
  noisy,
  note,
});

// ---------------------------------------------------------------- rounds and tables

/**
 * Measures every configuration `plan.rounds` times with `runOne(config, seconds)`, alternating
 * configurations and rotating their order each round, so drift (thermal, noisy neighbours)
 * spreads over all of them instead of biasing whichever ran last. A run that other processes
 * disturbed is measured again once they are gone, within the spare seconds.
 */
export async function rounds(list, plan, runOne, unit = 'req/s', scale = 1) {
  const results = list.map((config) => ({ config, runs: [] }));
  for (let r = 0; r < plan.rounds; r += 1) {
    for (let i = 0; i < results.length; i += 1) {
      const entry = results[(i + r) % results.length];
      let run = await runOne(entry.config, plan.seconds);
      while (run.foreign > DISTURBED && spare.seconds >= plan.seconds) {
        say(
          `  (${entry.config.name}: other processes used ${Math.round(run.foreign * 100)}% of a core; measuring again)`,
        );
        spare.seconds -= plan.seconds;
        if (!(await waitForQuiet())) break;
        run = await runOne(entry.config, plan.seconds);
      }
      entry.runs.push(run);
      const bad = run.non2xx + run.socketErrors + run.unauthorized > 0 ? ' (errors)' : '';
      say(
        `  round ${r + 1}/${plan.rounds} ${entry.config.name}: ${int(run.rps * scale)} ${unit}${bad}${run.foreign > DISTURBED ? ` (other processes: ${pct(run.foreign)} of a core)` : ''}`,
      );
    }
  }
  for (const entry of results) entry.peakRss = entry.config.child ? peakRssMiB(entry.config.child.pid) : NaN;
  return results;
}

export function summarize(allRuns, scale = 1) {
  // Runs disturbed by other processes are left out while at least half the runs are clean.
  const clean = allRuns.filter((r) => r.foreign <= DISTURBED);
  const runs = clean.length * 2 >= allRuns.length ? clean : allRuns;
  const values = runs.map((r) => r.rps * scale);
  return {
    clean: clean.length,
    count: allRuns.length,
    noisy: runs !== clean,
    median: median(values),
    min: Math.min(...values),
    max: Math.max(...values),
    cpuMicros: median(runs.map((r) => r.cpuMicrosPerRequest)),
    cpuBusy: median(runs.map((r) => r.cpuBusy)),
    proxyCore: median(runs.map((r) => r.proxyCore)),
    loadCore: median(runs.map((r) => r.loadCore)),
    foreign: Math.max(...allRuns.map((r) => r.foreign)),
    p50: median(runs.map((r) => r.latencyMs?.p50 ?? NaN)),
    p99: median(runs.map((r) => r.latencyMs?.p99 ?? NaN)),
    // Errors count in every run, disturbed or not.
    non2xx: allRuns.reduce((a, r) => a + r.non2xx, 0),
    socketErrors: allRuns.reduce((a, r) => a + r.socketErrors, 0),
    unauthorized: allRuns.reduce((a, r) => a + r.unauthorized, 0),
    errors: allRuns.reduce((a, r) => a + r.non2xx + r.socketErrors + r.unauthorized, 0),
  };
}

/**
 * The ratio of two configurations measured in the same rounds: the median over rounds of the
 * ratio within each round. A round runs its configurations back to back, so a slow drift of the
 * machine (another guest on the host, clock speed) cancels out, which a ratio of medians over
 * the whole run does not do. Rounds another process disturbed are left out while half are clean.
 */
export function pairedRatio(results, a, b) {
  const ra = results.find((r) => r.config.name === a)?.runs ?? [];
  const rb = results.find((r) => r.config.name === b)?.runs ?? [];
  const pairs = ra.map((x, i) => [x, rb[i]]).filter(([, y]) => y !== undefined);
  const clean = pairs.filter(([x, y]) => x.foreign <= DISTURBED && y.foreign <= DISTURBED);
  const use = clean.length * 2 >= pairs.length && clean.length > 0 ? clean : pairs;
  const ratios = use.map(([x, y]) => x.rps / y.rps);
  return {
    ratio: median(ratios),
    min: Math.min(...ratios),
    max: Math.max(...ratios),
    noisy: use !== clean,
    rounds: ratios.length,
  };
}

/** "0.52× (rounds 0.49–0.55×)": a paired ratio and its spread. */
export const pairedText = (p) =>
  p.rounds > 1 ? `${p.ratio.toFixed(2)}× (rounds ${p.min.toFixed(2)}–${p.max.toFixed(2)}×)` : `${p.ratio.toFixed(2)}×`;

/** Which core ran out: a ratio against a configuration limited by the load core understates its headroom. */
function limit(s) {
  const full = 0.95;
  if (s.proxyCore >= full && s.loadCore >= full) return 'both cores';
  if (s.proxyCore >= full) return 'proxy core';
  if (s.loadCore >= full) return 'load core';
  return 'neither (waits)';
}

/**
 * The ratio table of one scenario: medians, spread, ratios against `baselines` (configuration
 * names), the proxy's CPU per request and peak RSS, where the cores were, noise and errors.
 * Returns the markdown and the summaries by configuration name.
 */
export function table(results, { unit, scale = 1, digits = 0, baselines, latency = false }) {
  const byName = Object.fromEntries(
    results.map((r) => [r.config.name, { ...summarize(r.runs, scale), peakRss: r.peakRss }]),
  );
  const fmt = (x) => (digits === 0 ? int(x) : x.toFixed(digits));
  const present = baselines.filter((b) => byName[b] !== undefined);
  const lines = [
    `| configuration | ${unit} (median) | min–max | ${present.map((b) => `× ${b}`).join(' | ')} | ${latency ? 'latency p50 / p99 (ms) | ' : ''}proxy CPU µs/req | peak RSS (MiB) | core ${PROXY_CORE} busy: proxy / all | core ${LOAD_CORE} busy | limited by | clean runs | other processes (max) | errors: non-2xx / socket / upstream 401 |`,
    `|---|--:|--:|${present.map(() => '--:|').join('')}${latency ? '--:|' : ''}--:|--:|--:|--:|---|--:|--:|--:|`,
  ];
  for (const { config } of results) {
    const s = byName[config.name];
    const flag = `${s.errors > 0 ? ' ⚠ errors' : ''}${s.noisy ? ' ⚠ noisy' : ''}`;
    const cpu = config.child ? `${s.cpuMicros.toFixed(1)}` : '–';
    const busy = `${config.child ? pct(s.cpuBusy) : '–'} / ${pct(s.proxyCore)}`;
    const ratios = present.map((b) => ratio(s.median, byName[b].median)).join(' | ');
    const lat = latency ? `${ms(s.p50)} / ${ms(s.p99)} | ` : '';
    lines.push(
      `| ${config.name}${flag} | ${fmt(s.median)} | ${fmt(s.min)}–${fmt(s.max)} | ${ratios} | ${lat}${cpu} | ${config.child ? s.peakRss.toFixed(0) : '–'} | ${busy} | ${pct(s.loadCore)} | ${limit(s)} | ${s.clean}/${s.count} | ${pct(s.foreign)} | ${s.non2xx} / ${s.socketErrors} / ${s.unauthorized} |`,
    );
  }
  return { markdown: lines.join('\n'), byName };
}
