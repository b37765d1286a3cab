#!/usr/bin/env node
// `npm run bench [-- --quick]` (issue 8, first part: reverse mode). Measures token-proxy against
// what users would deploy instead, in one run on loopback, as ratios: small GET req/s and
// 1 MiB POST MB/s. The proxy under test is pinned to core 0; wrk, the upstream, the token server
// and this script share core 1, so each proxy gets one whole core and the same load generator.
// Full mode also writes BENCHMARKS.md at the repo root; --quick (about a minute) only prints.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { cpus, tmpdir, release } from 'node:os';
import { dirname, join } from 'node:path';
import process from 'node:process';
import { clearTimeout, setTimeout } from 'node:timers';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { OAuth2Server } from 'oauth2-mock-server';
import { fetch } from 'undici';

const QUICK = process.argv.includes('--quick');
const PLAN = QUICK
  ? { warmupSeconds: 1, get: { rounds: 3, seconds: 3 }, post: { rounds: 1, seconds: 2 }, spareSeconds: 15 }
  : { warmupSeconds: 2, get: { rounds: 5, seconds: 10 }, post: { rounds: 3, seconds: 3 }, spareSeconds: 40 };
/** A run in which processes this benchmark did not start used more than this share of a core. */
const DISTURBED = 0.1;
const GET_CONNECTIONS = 50;
const POST_CONNECTIONS = 10; // 1 MiB bodies: fewer, bigger requests; 10 keep the pipe full
const POST_BYTES = 1024 * 1024;
const TOKEN_CHARS = 800; // issue 8: every configuration injects an 800-byte bearer token
const PROXY_CORE = '0';
const LOAD_CORE = '1';
const HOST = '127.0.0.1'; // loopback only, always
const CLK_TCK = 100; // /proc/<pid>/stat times are in ticks (getconf CLK_TCK; 100 on Linux)

// Progress and warnings go to stderr, the tables to stdout.
const say = (line) => process.stderr.write(`${line}\n`);
const print = (text) => process.stdout.write(`${text}\n`);

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const work = mkdtempSync(join(tmpdir(), 'token-proxy-bench-'));
const children = [];

// ---------------------------------------------------------------- processes

/** Starts a command pinned to `core`, in its own process group so stopAll() also gets its children. */
function start(name, core, command, args, { env = {}, ipc = false } = {}) {
  const log = join(work, `${name.replace(/\W+/g, '-')}.log`);
  const fd = openSync(log, 'a');
  const child = spawn('taskset', ['-c', core, command, ...args], {
    cwd: ROOT,
    detached: true,
    env: { ...process.env, ...env },
    stdio: ['ignore', fd, fd, ...(ipc ? ['ipc'] : [])],
  });
  closeSync(fd);
  child.label = name;
  child.log = log;
  child.exited = false;
  child.on('exit', () => (child.exited = true));
  children.push(child);
  return child;
}

function logTail(child) {
  try {
    return readFileSync(child.log, 'utf8').split('\n').slice(-15).join('\n');
  } catch {
    return '';
  }
}

/** SIGTERM to every process group, then SIGKILL to whatever is left after 3 s. */
async function stopAll() {
  const alive = children.filter((c) => !c.exited);
  for (const c of alive) signalGroup(c, 'SIGTERM');
  await Promise.race([Promise.all(alive.map((c) => (c.exited ? null : once(c, 'exit')))), delay(3000)]);
  for (const c of children) signalGroup(c, 'SIGKILL'); // also a group whose leader exited first (nginx workers)
  children.length = 0;
}

function signalGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // ESRCH: the group is gone already
  }
}

/** Runs a pinned command to completion and returns its stdout. */
async function runPinned(name, core, command, args) {
  const child = start(name, core, command, args);
  const [code] = await once(child, 'exit');
  children.splice(children.indexOf(child), 1);
  const out = readFileSync(child.log, 'utf8');
  rmSync(child.log);
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${code}):\n${out}`);
  return out;
}

async function freePort() {
  const server = createServer().listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function waitForPort(port, child) {
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
    out[m[1]] = { tasks, busy: tasks + irq + softirq + steal, total: tasks + idle + iowait + irq + softirq + steal };
  }
  return out;
}

const sample = () => ({ groups: ticksByGroup(), own: ownTicks(), cores: coreTicks() });

/**
 * What happened on the machine between two samples, in shares of one core: how busy each core
 * was, how much the proxy under test used, and how much went to processes this benchmark did not
 * start (another build or test run on the machine: such a run is "disturbed").
 */
function cpuBetween(before, after, proxyPgid) {
  const d = (core, field) => after.cores[core][field] - before.cores[core][field];
  const coreTotal = Math.max(1, d(PROXY_CORE, 'total'));
  const groupDelta = (pgid) => (after.groups.get(pgid) ?? 0) - (before.groups.get(pgid) ?? 0);
  const ours = after.own - before.own + children.reduce((sum, c) => sum + groupDelta(c.pid), 0);
  const tasks = Object.keys(after.cores).reduce((sum, core) => sum + d(core, 'tasks'), 0);
  return {
    proxyCore: d(PROXY_CORE, 'busy') / coreTotal,
    loadCore: d(LOAD_CORE, 'busy') / Math.max(1, d(LOAD_CORE, 'total')),
    proxyCpu: proxyPgid ? groupDelta(proxyPgid) / CLK_TCK : NaN,
    foreign: Math.max(0, tasks - ours) / coreTotal,
  };
}

function peakRssMiB(pid) {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** First line a tool prints about its version: nginx -v writes to stderr, wrk -v exits 1. */
function version(command, args) {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`.trim().split('\n')[0];
}

/** wrk and nginx are Debian packages; install them when missing (root only), or say how. */
function ensureTools() {
  const missing = ['wrk', 'nginx', 'taskset'].filter((t) => {
    try {
      execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length === 0) return;
  const packages = missing.map((t) => (t === 'taskset' ? 'util-linux' : t));
  if (process.getuid?.() !== 0) throw new Error(`missing ${missing.join(', ')}: run  sudo apt-get install -y ${packages.join(' ')}`);
  say(`installing ${packages.join(' ')} (Debian packages)...`);
  execFileSync('apt-get', ['update'], { stdio: 'ignore' });
  execFileSync('apt-get', ['install', '-y', ...packages], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

/**
 * Others share this machine (a test run, a build). Waits, in 1 s samples, until processes this
 * benchmark did not start use under DISTURBED of a core; spends at most what is left of
 * PLAN.spareSeconds, which also pays for measuring disturbed runs again, so the run stays bounded.
 */
const spare = { seconds: PLAN.spareSeconds };
async function waitForQuiet() {
  while (spare.seconds > 0) {
    const before = sample();
    await delay(1000);
    spare.seconds -= 1;
    if (cpuBetween(before, sample()).foreign <= DISTURBED) return true;
  }
  return false;
}

// ---------------------------------------------------------------- token server

/** The real OAuth2 server the tests use (plain http: allowed on loopback), issuing ~800-byte JWTs. */
async function startTokenServer() {
  const server = new OAuth2Server();
  await server.issuer.keys.generate('RS256');
  await server.start(await freePort(), HOST);
  const url = `http://${HOST}:${server.address().port}`;
  server.issuer.url = url;
  const ts = { server, url, tokenUrl: `${url}/token`, padChars: 300, requests: 0 };
  server.service.on('beforeTokenSigning', (token) => {
    token.payload.exp = Math.floor(Date.now() / 1000) + 3600; // no refresh during the run
    token.payload.pad = 'x'.repeat(ts.padChars); // a claim that brings the JWT to TOKEN_CHARS
  });
  server.service.on('beforeResponse', (res) => {
    ts.requests += 1;
    if (res.statusCode === 200) res.body.expires_in = 3600;
  });
  return ts;
}

async function fetchToken(tokenUrl) {
  const res = await fetch(tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials&client_id=bench-client&client_secret=bench-secret',
  });
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
  return (await res.json()).access_token;
}

/** Adjusts the padding claim until the JWT is TOKEN_CHARS long (base64url: 4 chars per 3 bytes). */
async function calibratedToken(ts) {
  let token = await fetchToken(ts.tokenUrl);
  for (let i = 0; i < 5 && Math.abs(token.length - TOKEN_CHARS) > 2; i += 1) {
    ts.padChars += Math.round(((TOKEN_CHARS - token.length) * 3) / 4);
    token = await fetchToken(ts.tokenUrl);
  }
  return token;
}

// ---------------------------------------------------------------- configurations

function nginxConfig(port, upstreamPort, authorization) {
  const dir = join(work, 'nginx');
  mkdirSync(dir, { recursive: true });
  const conf = `# Generated by bench/run.mjs: what an ops team would deploy, one worker.
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  # The default (1000) would make nginx alone reconnect during the run; the Node servers never do.
  keepalive_requests 1000000;
  upstream partner {
    server ${HOST}:${upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen ${HOST}:${port};
    client_max_body_size 2m;
    location / {
      proxy_pass http://partner;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "${authorization}";
      # Stream request bodies like the Node proxies do, instead of spooling them to a temp file.
      proxy_request_buffering off;
    }
  }
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  return { dir, file: join(dir, 'nginx.conf'), text: conf.replace(authorization, 'Bearer <token>') };
}

function tokenProxyConfig(name, port, adminPort, upstreamUrl, tokenUrl, retryBodyLimitBytes) {
  const yaml = `# Generated by bench/run.mjs
listen: ${HOST}:${port}
admin:
  listen: ${HOST}:${adminPort}   # /metrics is served: metrics stay on, as in production
logLevel: warn
shutdownTimeoutSeconds: 1
upstreams:
  - name: bench
    target: ${upstreamUrl}
    pathPrefix: /bench
    retryBodyLimitBytes: ${retryBodyLimitBytes}
    auth:
      type: client_credentials
      tokenUrl: ${tokenUrl}
      clientId: bench-client
      clientSecret: bench-secret
`;
  const file = join(work, `${name}.yaml`);
  writeFileSync(file, yaml);
  return { file, text: yaml };
}

// ---------------------------------------------------------------- load

function parseWrk(out) {
  const num = (re) => Number(re.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    requests: num(/(\d+) requests in/),
    non2xx: num(/Non-2xx or 3xx responses:\s+(\d+)/),
    socketErrors: sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
  };
}

function wrkArgs(config, seconds, connections, script) {
  return [
    '-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s',
    ...(config.clientAuthorization ? ['-H', `Authorization: ${config.clientAuthorization}`] : []),
    ...(script ? ['-s', script] : []),
    config.url,
  ];
}

/** One wrk run against one configuration, with the proxy's CPU time and the upstream's counters. */
async function measure(config, seconds, connections, script, upstream) {
  const before = sample();
  const out = await runPinned('wrk', LOAD_CORE, 'wrk', wrkArgs(config, seconds, connections, script));
  const cpu = cpuBetween(before, sample(), config.child?.pid);
  if (config.child?.exited) throw new Error(`${config.name} died under load:\n${logTail(config.child)}`);
  const seen = await upstream.stats();
  const r = parseWrk(out);
  return { ...r, ...cpu, cpuBusy: cpu.proxyCpu / seconds, cpuMicrosPerRequest: (cpu.proxyCpu / r.requests) * 1e6, unauthorized: seen.unauthorized };
}

// ---------------------------------------------------------------- report

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const int = (x) => Math.round(x).toLocaleString('en-US');
const ratio = (x, y) => (y > 0 ? `${(x / y).toFixed(2)}×` : '–');

function summarize(allRuns, scale) {
  // Runs disturbed by other processes are left out while at least half the runs are clean.
  const clean = allRuns.filter((r) => r.foreign <= DISTURBED);
  const runs = clean.length * 2 >= allRuns.length ? clean : allRuns;
  const values = runs.map((r) => r.rps * scale);
  // Errors count in every run, disturbed or not.
  const errors = allRuns.reduce((a, r) => a + r.non2xx + r.socketErrors + r.unauthorized, 0);
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
    non2xx: allRuns.reduce((a, r) => a + r.non2xx, 0),
    socketErrors: allRuns.reduce((a, r) => a + r.socketErrors, 0),
    unauthorized: allRuns.reduce((a, r) => a + r.unauthorized, 0),
    errors,
  };
}

/** Which core ran out: a ratio against a configuration limited by the load core understates its headroom. */
function limit(s) {
  const full = 0.95;
  if (s.proxyCore >= full && s.loadCore >= full) return 'both cores';
  if (s.proxyCore >= full) return 'proxy core';
  if (s.loadCore >= full) return 'load core';
  return 'neither (waits)';
}

function table(results, unit, scale, digits) {
  const byName = Object.fromEntries(results.map((r) => [r.config.name, summarize(r.runs, scale)]));
  const direct = byName.direct.median;
  const nginx = byName.nginx.median;
  const fmt = (x) => (digits === 0 ? int(x) : x.toFixed(digits));
  const lines = [
    `| configuration | ${unit} (median) | min–max | × direct | × nginx | proxy CPU µs/req | core ${PROXY_CORE} busy: proxy / all | core ${LOAD_CORE} busy | limited by | clean runs | other processes (max) | errors: non-2xx / socket / upstream 401 |`,
    '|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|',
  ];
  for (const { config } of results) {
    const s = byName[config.name];
    const flag = `${s.errors > 0 ? ' ⚠ errors' : ''}${s.noisy ? ' ⚠ noisy' : ''}`;
    const cpu = config.child ? `${s.cpuMicros.toFixed(1)}` : '–';
    const pct = (x) => `${Math.round(x * 100)}%`;
    const busy = `${config.child ? pct(s.cpuBusy) : '–'} / ${pct(s.proxyCore)}`;
    lines.push(
      `| ${config.name}${flag} | ${fmt(s.median)} | ${fmt(s.min)}–${fmt(s.max)} | ${ratio(s.median, direct)} | ${ratio(s.median, nginx)} | ${cpu} | ${busy} | ${pct(s.loadCore)} | ${limit(s)} | ${s.clean}/${s.count} | ${pct(s.foreign)} | ${s.non2xx} / ${s.socketErrors} / ${s.unauthorized} |`,
    );
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------- main

async function main() {
  ensureTools();
  // This script hosts the token server; it belongs with the load generator, off the proxy's core.
  execFileSync('taskset', ['-a', '-cp', LOAD_CORE, String(process.pid)], { stdio: 'ignore' });
  if (cpus().length < 2) throw new Error('needs 2 cores: the proxy on core 0, load and upstream on core 1');

  // Anything else running skews every number: say so, in the output and in BENCHMARKS.md.
  const quiet = await waitForQuiet();
  if (!quiet) say(`warning: other processes keep the machine busy; numbers will be noisy`);

  const ts = await startTokenServer();
  const token = await calibratedToken(ts);
  const authorization = `Bearer ${token}`;
  say(`token server ${ts.url}: issues ${token.length}-character JWTs`);

  const upstreamPort = await freePort();
  const upstreamUrl = `http://${HOST}:${upstreamPort}`;
  const upChild = start('upstream', LOAD_CORE, process.execPath, ['bench/upstream.mjs'], {
    env: { PORT: String(upstreamPort), BENCH_JWK: JSON.stringify(ts.server.issuer.keys.toJSON()[0]) },
    ipc: true,
  });
  const upstream = {
    stats: () =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`upstream did not answer 'stats':\n${logTail(upChild)}`)), 5000);
        upChild.once('message', (msg) => {
          clearTimeout(timer);
          resolve(msg);
        });
        upChild.send('stats');
      }),
  };
  await waitForPort(upstreamPort, upChild);

  // The comparison points and token-proxy, all on the proxy core, all idle until their turn.
  const ports = {};
  for (const name of ['nginx', 'httpProxy', 'undici', 'tp', 'tpAdmin', 'tpNoBuf', 'tpNoBufAdmin']) ports[name] = await freePort();
  const staticEnv = (port) => ({ PORT: String(port), TARGET: upstreamUrl, AUTHORIZATION: authorization });
  const nginx = nginxConfig(ports.nginx, upstreamPort, authorization);
  const tp = tokenProxyConfig('token-proxy', ports.tp, ports.tpAdmin, upstreamUrl, ts.tokenUrl, POST_BYTES);
  const tpNoBuf = tokenProxyConfig('token-proxy-no-buffer', ports.tpNoBuf, ports.tpNoBufAdmin, upstreamUrl, ts.tokenUrl, 0);
  const node = process.execPath;
  const configs = [
    { name: 'direct', url: `${upstreamUrl}/hello`, clientAuthorization: authorization, port: upstreamPort, command: '(wrk straight to the upstream, sending the token itself)' },
    { name: 'nginx', url: `http://${HOST}:${ports.nginx}/hello`, port: ports.nginx, start: () => start('nginx', PROXY_CORE, 'nginx', ['-p', nginx.dir, '-c', nginx.file, '-e', join(nginx.dir, 'error.log')]), command: 'nginx -p <dir> -c <dir>/nginx.conf (config below)' },
    { name: 'node-http-proxy', url: `http://${HOST}:${ports.httpProxy}/hello`, port: ports.httpProxy, start: () => start('http-proxy', PROXY_CORE, node, ['bench/proxies/http-proxy.mjs'], { env: staticEnv(ports.httpProxy) }), command: 'node bench/proxies/http-proxy.mjs' },
    { name: 'undici dispatch()', url: `http://${HOST}:${ports.undici}/hello`, port: ports.undici, start: () => start('undici', PROXY_CORE, node, ['bench/proxies/undici-dispatch.mjs'], { env: staticEnv(ports.undici) }), command: 'node bench/proxies/undici-dispatch.mjs' },
    { name: 'token-proxy', url: `http://${HOST}:${ports.tp}/bench/hello`, port: ports.tp, start: () => start('token-proxy', PROXY_CORE, node, ['dist/cli.js', 'serve', '--config', tp.file]), command: 'node dist/cli.js serve --config <generated yaml> (replay buffer 1 MiB, the default)', admin: ports.tpAdmin },
    { name: 'token-proxy, no replay buffer', postOnly: true, url: `http://${HOST}:${ports.tpNoBuf}/bench/hello`, port: ports.tpNoBuf, start: () => start('token-proxy-no-buffer', PROXY_CORE, node, ['dist/cli.js', 'serve', '--config', tpNoBuf.file]), command: 'same, retryBodyLimitBytes: 0 (1 MiB bodies stream through)', admin: ports.tpNoBufAdmin },
  ];
  for (const c of configs) c.child = c.start?.();
  for (const c of configs) await waitForPort(c.port, c.child);

  // One request through each, so a broken configuration fails here rather than in a table.
  for (const c of configs) {
    const res = await fetch(c.url, { headers: c.clientAuthorization ? { authorization: c.clientAuthorization } : {} });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`${c.name}: sanity request answered ${res.status}${c.child ? `\n${logTail(c.child)}` : ''}`);
  }
  await upstream.stats(); // reset the counters

  const getConfigs = configs.filter((c) => !c.postOnly);
  const total = PLAN.warmupSeconds * getConfigs.length + configs.length + PLAN.get.rounds * PLAN.get.seconds * getConfigs.length + PLAN.post.rounds * PLAN.post.seconds * configs.length;
  say(`${QUICK ? 'quick' : 'full'} run: ${total} s of load, plus at most ${spare.seconds} s if other processes get in the way`);

  // Warm-up (JIT, connection pools, token cache), not recorded.
  for (const c of getConfigs) await measure(c, PLAN.warmupSeconds, GET_CONNECTIONS, undefined, upstream);

  // Rounds alternate configurations and rotate their order, so drift (thermal, noisy neighbours)
  // spreads over all of them instead of biasing whichever ran last.
  async function rounds(list, plan, connections, script) {
    const results = list.map((config) => ({ config, runs: [] }));
    for (let r = 0; r < plan.rounds; r += 1) {
      for (let i = 0; i < results.length; i += 1) {
        const entry = results[(i + r) % results.length];
        let run = await measure(entry.config, plan.seconds, connections, script, upstream);
        // Another process took a real share of a core: once it is gone, measure again (bounded).
        while (run.foreign > DISTURBED && spare.seconds >= plan.seconds) {
          say(`  (${entry.config.name}: other processes used ${Math.round(run.foreign * 100)}% of a core; measuring again)`);
          spare.seconds -= plan.seconds;
          if (!(await waitForQuiet())) break;
          run = await measure(entry.config, plan.seconds, connections, script, upstream);
        }
        entry.runs.push(run);
        say(`  round ${r + 1}/${plan.rounds} ${entry.config.name}: ${int(run.rps)} req/s${run.non2xx + run.socketErrors + run.unauthorized > 0 ? ' (errors)' : ''}`);
      }
    }
    return results;
  }
  say(`small GET, ${GET_CONNECTIONS} connections, ${PLAN.get.rounds} rounds of ${PLAN.get.seconds}s`);
  const getResults = await rounds(getConfigs, PLAN.get, GET_CONNECTIONS);
  const rssAfterGet = Object.fromEntries(configs.filter((c) => c.admin).map((c) => [c.name, peakRssMiB(c.child.pid)]));

  const postScript = join(work, 'post-1mib.lua');
  writeFileSync(postScript, `wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/octet-stream"\nwrk.body = string.rep("x", ${POST_BYTES})\n`);
  say(`1 MiB POST, ${POST_CONNECTIONS} connections, ${PLAN.post.rounds} rounds of ${PLAN.post.seconds}s`);
  // Another warm-up: the body-streaming paths are still cold (and one token-proxy saw no GET load).
  for (const c of configs) await measure(c, 1, POST_CONNECTIONS, postScript, upstream);
  const postResults = await rounds(configs, PLAN.post, POST_CONNECTIONS, postScript);

  // Sanity: token-proxy should have asked for one token per instance, whatever the load.
  const tokenLines = [];
  for (const c of configs.filter((x) => x.admin)) {
    const metrics = await (await fetch(`http://${HOST}:${c.admin}/metrics`)).text();
    const refreshes = metrics.split('\n').filter((l) => l.startsWith('token_proxy_token_refreshes_total{'));
    tokenLines.push(`- ${c.name}: peak RSS ${rssAfterGet[c.name].toFixed(0)} MiB after the GET rounds, ${peakRssMiB(c.child.pid).toFixed(0)} MiB after the POST rounds; ${refreshes.join(', ') || 'no token_proxy_token_refreshes_total'}`);
  }
  tokenLines.push(`- token endpoint answered ${ts.requests} requests in all (token calibration and the static token included)`);

  const getTable = table(getResults, 'req/s', 1, 0);
  const postTable = table(postResults, 'MB/s', POST_BYTES / 1e6, 0);
  const disturbed = [...getResults, ...postResults].flatMap((r) => r.runs).filter((r) => r.foreign > DISTURBED).length;
  tokenLines.push(`- other processes on the machine: ${quiet ? 'quiet at the start' : 'busy at the start'}; ${disturbed} recorded run(s) disturbed (over ${DISTURBED * 100}% of a core), ${PLAN.spareSeconds - spare.seconds} s of the ${PLAN.spareSeconds} s spare spent waiting or measuring again`);
  const placement = `proxy under test: \`taskset -c ${PROXY_CORE}\`; wrk, upstream, token server and bench/run.mjs: \`taskset -c ${LOAD_CORE}\``;
  const report = `## Small GET, keep-alive, ${GET_CONNECTIONS} connections (${PLAN.get.rounds} rounds × ${PLAN.get.seconds}s, alternating)

${getTable}

## 1 MiB POST, ${POST_CONNECTIONS} connections (${PLAN.post.rounds} round${PLAN.post.rounds > 1 ? 's' : ''} × ${PLAN.post.seconds}s)

MB/s = requests/s × 1 MiB request body, in 10^6 bytes.

${postTable}

Checks:
${tokenLines.join('\n')}
`;
  print(`\n${report}`);
  print(`Core placement: ${placement}`);
  if (QUICK) return;

  const cpuModel = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const versions = [
    `- node ${process.version}, token-proxy ${JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version} (this checkout, dist/)`,
    `- ${version('nginx', ['-v'])}`,
    `- ${version('wrk', ['-v'])}`,
    `- undici ${JSON.parse(readFileSync(join(ROOT, 'node_modules/undici/package.json'), 'utf8')).version}, http-proxy ${JSON.parse(readFileSync(join(ROOT, 'node_modules/http-proxy/package.json'), 'utf8')).version}, oauth2-mock-server ${JSON.parse(readFileSync(join(ROOT, 'node_modules/oauth2-mock-server/package.json'), 'utf8')).version}`,
  ];
  const wrkGet = `taskset -c ${LOAD_CORE} wrk ${wrkArgs({ url: '<url>' }, PLAN.get.seconds, GET_CONNECTIONS).join(' ')}`;
  const wrkPost = `taskset -c ${LOAD_CORE} wrk ${wrkArgs({ url: '<url>' }, PLAN.post.seconds, POST_CONNECTIONS, 'post-1mib.lua').join(' ')}`;
  const doc = `# Benchmarks

Generated by \`npm run bench\` (bench/run.mjs) on ${new Date().toISOString().slice(0, 10)}; issue 8, reverse mode only so far.
Compare ratios within one run and one core placement, never absolute numbers across machines.
${disturbed > 0 ? `
> **Noisy run:** other processes used over ${DISTURBED * 100}% of a core during ${disturbed} of the recorded runs
> (see "clean runs" and "other processes"). Rows marked ⚠ noisy are not to be trusted; run
> \`npm run bench\` again on an idle machine.
` : ''}
Reproduce: \`npm run bench\` (about 6 minutes, writes this file) or \`npm run bench -- --quick\`
(about a minute, prints the tables only: a check before committing a hot-path change).

## Machine

- ${cpus().length} cores (\`nproc --all\`: ${version('nproc', ['--all'])}), ${cpuModel}, Linux ${release()}
${versions.join('\n')}
- Core placement: ${placement}.

## Setup

Everything on 127.0.0.1. The upstream (bench/upstream.mjs, node:http) answers a small (~100-byte) JSON body
and checks the bearer: the JWT signature once per distinct token, then a set lookup; anything else
gets 401 (the "upstream 401" column). The token server is oauth2-mock-server issuing
${token.length}-character RS256 JWTs (a padding claim), valid one hour. Every configuration sends the
same kind of token: the comparison points a static header with a token fetched at start,
token-proxy the one it fetched and cached itself; "direct" is wrk sending it.

| configuration | command (pinned with \`taskset -c ${PROXY_CORE}\`) |
|---|---|
${configs.map((c) => `| ${c.name} | ${c.command} |`).join('\n')}

Load: \`${wrkGet}\` (small GET; token-proxy URLs are under \`/bench\`, its path prefix), and
\`${wrkPost}\`. "direct" adds \`-H 'Authorization: Bearer <token>'\`. A warm-up of
${PLAN.warmupSeconds}s per configuration precedes the rounds. "proxy CPU µs/req" is the CPU time of
the proxy's process group (from /proc) over the run, divided by the requests wrk completed; "proxy
core busy: proxy / all" is that CPU time over the run's wall time, then everything core ${PROXY_CORE} did
(from /proc/stat: kernel network work and any other process included); "core ${LOAD_CORE} busy" is the load
core (wrk and upstream). The core at 95% or more is the one that limits the configuration ("limited by"); a configuration
limited by the load core could go faster than its ratio says. "other processes" is the most CPU
(in shares of one core) that processes this benchmark did not start took during any one of the
configuration's runs; a run where they took over ${DISTURBED * 100}% is measured again once they are gone, within ${PLAN.spareSeconds} s spare per
benchmark run. Medians, spreads and CPU figures come from the clean runs ("clean runs") while
at least half are clean; otherwise from all runs, and the row is marked ⚠ noisy.
A configuration with non-2xx answers, socket errors or upstream 401s is marked ⚠.

${report}
<details><summary>nginx.conf</summary>

\`\`\`nginx
${nginx.text}\`\`\`
</details>

<details><summary>token-proxy config</summary>

\`\`\`yaml
${tp.text}\`\`\`
</details>
`;
  writeFileSync(join(ROOT, 'BENCHMARKS.md'), doc.replaceAll(work, '<tmp>'));
  say('wrote BENCHMARKS.md');
}

let failed = false;
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    say(`${signal}: stopping everything the benchmark started`);
    void stopAll().finally(() => {
      rmSync(work, { recursive: true, force: true });
      process.exit(130);
    });
  });
}
try {
  await main();
} catch (err) {
  failed = true;
  say(`bench failed: ${err.stack ?? err}\nlogs kept in ${work}`);
  process.exitCode = 1;
} finally {
  await stopAll();
  if (!failed) rmSync(work, { recursive: true, force: true });
  process.exit(); // the token server and keep-alive sockets would otherwise hold the loop open
}
