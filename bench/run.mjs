#!/usr/bin/env node
// `npm run bench` (issue 8). Measures token-proxy against what users would deploy instead, in one
// run on loopback, as ratios: small GET req/s (reverse and forward mode, access log on and off,
// against nginx, node-http-proxy, bare undici and Squid) and 1 MiB POST MB/s with wrk; CONNECT +
// TLS interception against mitmproxy, added latency at a fixed rate and at one connection, a
// cold-cache burst, 5 s tokens with a 401 storm (bench/load-client.mjs: undici), and the memory
// of 100,000 cached tokens (bench/token-memory.mjs); then checks the targets of issue 8.
// The proxy under test is pinned to core 0; wrk, the Node load client, the upstream, the token
// server and this script share core 1, so each proxy gets one whole core and the same load.
//
// A full run (every scenario, no --quick; about 13 minutes) writes BENCHMARKS.md at the repo root,
// with CPU profiles of token-proxy (small GET, CONNECT) that say where the time goes. Options:
//   --quick               short runs of everything (about 2 minutes), printed only: the check
//                         before committing a hot-path change
//   --scenarios a,b       a subset of get, post, connect, latency, cold, refresh, memory (printed only)
//   --profile             the CPU profiles in a quick or partial run too
//   --rate N              the fixed rate of the latency scenario (default 5000; quick 2000)
//   --write FILE          write the document from any run (relative to the repo root)
//   --keep                keep the work directory (logs, configs, CPU profiles, flame graphs)
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { setTimeout } from 'node:timers';
import { randomUUID } from 'node:crypto';
import { OAuth2Server } from 'oauth2-mock-server';
import { fetch, ProxyAgent } from 'undici';
import {
  DISTURBED,
  HOST,
  LOAD_CORE,
  PROXY_CORE,
  ROOT,
  cpuBetween,
  shippedNodeFlags,
  freePort,
  hasCommand,
  logTail,
  oneLine,
  pairedRatio,
  pairedText,
  pct,
  print,
  rounds,
  rpc,
  runPinned,
  sample,
  say,
  spare,
  start,
  stop,
  stopAll,
  table,
  target,
  version,
  waitForPort,
  waitForQuiet,
  work,
} from './lib.mjs';
import {
  coldScenario,
  connectScenario,
  latencyScenario,
  memoryScenario,
  profileScenario,
  refreshScenario,
} from './scenarios.mjs';

// ---------------------------------------------------------------- options

const argValue = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1) return process.argv[i + 1];
  return process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
};
const QUICK = process.argv.includes('--quick');
const SCENARIOS = ['get', 'post', 'connect', 'latency', 'cold', 'refresh', 'memory'];
const chosen =
  argValue('scenarios')
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean) ?? SCENARIOS;
for (const s of chosen) {
  if (!SCENARIOS.includes(s)) {
    say(`unknown scenario "${s}": choose from ${SCENARIOS.join(', ')}`);
    process.exit(2);
  }
}
const ALL = SCENARIOS.every((s) => chosen.includes(s));
const want = (s) => chosen.includes(s);
// A full run of everything writes BENCHMARKS.md, which explains any missed target with a profile.
const PROFILE = process.argv.includes('--profile') || (!QUICK && ALL);
// Where the report goes as a document: BENCHMARKS.md after a full run of everything; --write <file>
// writes it from any run (to check the document without replacing the real one).
const WRITE = argValue('write') ?? (!QUICK && ALL ? 'BENCHMARKS.md' : undefined);
const KEEP = process.argv.includes('--keep'); // keep the work directory (logs, configs, CPU profiles, flame graphs)

const QUICK_PLAN = {
  warmupSeconds: 1,
  get: { rounds: 3, seconds: 2 },
  post: { rounds: 1, seconds: 2 },
  connect: { rounds: 1, seconds: 2, warmupSeconds: 1 },
  latency: { rate: 2000, rounds: 1, seconds: 2, warmupSeconds: 1, oneConnection: { rounds: 1, seconds: 1 } },
  cold: { rounds: 1 },
  refresh: { seconds: 8, rate: 1000, stormAt: 6 },
  profileSeconds: 4,
  spareSeconds: 10,
};
const FULL_PLAN = {
  warmupSeconds: 2,
  get: { rounds: 5, seconds: 10 },
  post: { rounds: 3, seconds: 3 },
  connect: { rounds: 3, seconds: 10, warmupSeconds: 2 },
  latency: { rate: 5000, rounds: 3, seconds: 5, warmupSeconds: 2, oneConnection: { rounds: 3, seconds: 3 } },
  cold: { rounds: 3 },
  refresh: { seconds: 60, rate: 2000, stormAt: 50 },
  profileSeconds: 10,
  spareSeconds: 60,
};
const PLAN = QUICK ? QUICK_PLAN : FULL_PLAN;
if (argValue('rate') !== undefined) PLAN.latency.rate = Number(argValue('rate'));
spare.seconds = PLAN.spareSeconds;
spare.budget = PLAN.spareSeconds;

const GET_CONNECTIONS = 50;
const POST_CONNECTIONS = 10; // 1 MiB bodies: fewer, bigger requests; 10 keep the pipe full
const POST_BYTES = 1024 * 1024;
const TOKEN_CHARS = 800; // issue 8: every configuration injects an 800-byte bearer token
const FORWARD_HOST = 'api.bench.example'; // forward mode and CONNECT: a name that never resolves
const COLD_TOKEN_DELAY_MS = 50;
const SHORT_TOKEN_SECONDS = 5;
const node = process.execPath;

// ---------------------------------------------------------------- tools

/** wrk, nginx and taskset are needed; squid, mitmproxy and openssl add rows. Debian packages, installed when missing (root only). */
function ensureTools() {
  const need = { wrk: 'wrk', nginx: 'nginx', taskset: 'util-linux' };
  const optional = {};
  if (want('get')) optional.squid = 'squid';
  if (want('connect')) Object.assign(optional, { mitmdump: 'mitmproxy', openssl: 'openssl' });
  const missing = (tools) => Object.keys(tools).filter((t) => !hasCommand(t));
  const install = (packages) => {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    try {
      execFileSync('apt-get', ['install', '-y', ...packages], { stdio: 'ignore', env });
    } catch {
      execFileSync('apt-get', ['update'], { stdio: 'ignore' });
      execFileSync('apt-get', ['install', '-y', ...packages], { stdio: 'ignore', env });
    }
  };
  const required = missing(need);
  if (required.length > 0) {
    const packages = required.map((t) => need[t]);
    if (process.getuid?.() !== 0)
      throw new Error(`missing ${required.join(', ')}: run  sudo apt-get install -y ${packages.join(' ')}`);
    say(`installing ${packages.join(' ')} (Debian packages)...`);
    install(packages);
  }
  const extra = missing(optional);
  if (extra.length > 0 && process.getuid?.() === 0) {
    const packages = extra.map((t) => optional[t]);
    say(`installing ${packages.join(' ')} (Debian packages, for comparison rows)...`);
    try {
      install(packages);
    } catch (err) {
      say(`warning: could not install ${packages.join(' ')} (${err.message.split('\n')[0]}): those rows are skipped`);
    }
  }
  const skipped = missing(optional);
  for (const t of skipped) say(`note: ${t} is not installed (apt-get install -y ${optional[t]}): its rows are skipped`);
  return { squid: hasCommand('squid'), mitmproxy: hasCommand('mitmdump'), openssl: hasCommand('openssl') };
}

// ---------------------------------------------------------------- token server

/**
 * The real OAuth2 server the tests use (plain http: allowed on loopback), issuing ~800-byte JWTs
 * with a random jti (so every token differs). Its own port issues 1-hour tokens; tokenListener()
 * adds ports onto the same server (same keys, so the upstream trusts them all) with another
 * lifetime or a delay, and records when each token was issued.
 */
async function startTokenServer() {
  const server = new OAuth2Server();
  await server.issuer.keys.generate('RS256');
  await server.start(await freePort(), HOST);
  const url = `http://${HOST}:${server.address().port}`;
  server.issuer.url = url;
  const main = { lifetime: 3600, delayMs: 0, issued: [] };
  const ts = { server, url, tokenUrl: `${url}/token`, padChars: 300, requests: 0, main };
  server.service.on('beforeTokenSigning', (token, req) => {
    const profile = req.benchProfile ?? main;
    token.payload.exp = Math.floor(Date.now() / 1000) + profile.lifetime;
    token.payload.jti = randomUUID();
    token.payload.pad = 'x'.repeat(ts.padChars); // a claim that brings the JWT to TOKEN_CHARS
  });
  server.service.on('beforeResponse', (res, req) => {
    const profile = req.benchProfile ?? main;
    ts.requests += 1;
    if (res.statusCode !== 200) return;
    res.body.expires_in = profile.lifetime;
    profile.issued.push(Date.now());
  });
  return ts;
}

/** Another port of the token server: tokens living `lifetime` seconds, each answer `delayMs` late. */
async function tokenListener(ts, { lifetime, delayMs = 0 }) {
  const profile = { lifetime, delayMs, issued: [], durations: [] };
  const server = createHttpServer((req, res) => {
    req.benchProfile = profile;
    const arrived = performance.now();
    res.on('finish', () => profile.durations.push(performance.now() - arrived)); // the endpoint's latency, delay included
    if (delayMs === 0) ts.server.service.requestHandler(req, res);
    else setTimeout(() => ts.server.service.requestHandler(req, res), delayMs);
  });
  server.listen(0, HOST);
  await once(server, 'listening');
  profile.tokenUrl = `http://${HOST}:${server.address().port}/token`;
  profile.close = () => new Promise((resolve) => server.close(resolve));
  return profile;
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

// ---------------------------------------------------------------- TLS material

/** A throwaway CA and a certificate for the HTTPS upstream (the forward host, localhost and 127.0.0.1). */
function makeUpstreamPki() {
  const dir = join(work, 'pki');
  mkdirSync(dir, { recursive: true });
  const openssl = (args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  openssl([
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca-key.pem',
    '-out',
    'ca.pem',
    '-days',
    '2',
    '-subj',
    '/CN=bench upstream CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  openssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'server-key.pem',
    '-out',
    'server.csr',
    '-subj',
    `/CN=${FORWARD_HOST}`,
  ]);
  writeFileSync(
    join(dir, 'server.ext'),
    `subjectAltName=DNS:${FORWARD_HOST},DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
  );
  openssl([
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca-key.pem',
    '-CAcreateserial',
    '-out',
    'server.pem',
    '-days',
    '2',
    '-extfile',
    'server.ext',
  ]);
  return {
    caFile: join(dir, 'ca.pem'),
    ca: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    certFile: join(dir, 'server.pem'),
    keyFile: join(dir, 'server-key.pem'),
  };
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

/**
 * Squid as a plain forward proxy (absolute-form http://): every request goes to the upstream as
 * its origin server (the benchmark's host name does not resolve), with a static Authorization
 * header added; no cache, no access log. Squid drops root for the `proxy` user, so its directory
 * lives outside the (private) work directory.
 */
function squidConfig(port, upstreamPort, authorization) {
  const dir = mkdtempSync(join(tmpdir(), 'token-proxy-bench-squid-'));
  chmodSync(dir, 0o777);
  const conf = `# Generated by bench/run.mjs: Squid forwarding absolute-form http:// requests, one process (squid -N).
http_port ${HOST}:${port}
pid_filename ${dir}/squid.pid
cache_log ${dir}/cache.log
access_log none
cache_store_log none
cache deny all
cache_mem 0 MB
pinger_enable off
shutdown_lifetime 1 seconds
http_access allow localhost
http_access deny all
cache_peer ${HOST} parent ${upstreamPort} 0 no-query no-digest no-netdb-exchange originserver name=partner
cache_peer_access partner allow all
never_direct allow all
request_header_add Authorization "${authorization}" all
client_persistent_connections on
server_persistent_connections on
`;
  writeFileSync(join(dir, 'squid.conf'), conf);
  return { dir, file: join(dir, 'squid.conf'), text: conf.replace(authorization, 'Bearer <token>') };
}

/**
 * A token-proxy config file. `upstreams`: { name, target, pathPrefix?, hosts?, ca?,
 * retryBodyLimitBytes?, tokenUrl }; the rest as in the config schema.
 */
function tokenProxyConfig(name, { port, adminPort, logLevel = 'info', accessLog = false, upstreams, mitm }) {
  const lines = [
    '# Generated by bench/run.mjs',
    `listen: ${HOST}:${port}`,
    'admin:',
    `  listen: ${HOST}:${adminPort}   # /metrics is served: metrics stay on, as in production`,
    `logLevel: ${logLevel}`,
    `accessLog: ${accessLog}`,
    'shutdownTimeoutSeconds: 1',
    'upstreams:',
  ];
  for (const u of upstreams) {
    lines.push(`  - name: ${u.name}`, `    target: ${u.target}`);
    if (u.pathPrefix) lines.push(`    pathPrefix: ${u.pathPrefix}`);
    if (u.hosts) lines.push(`    hosts: [${u.hosts.join(', ')}]`);
    if (u.ca) lines.push(`    ca: ${u.ca}`);
    if (u.retryBodyLimitBytes !== undefined) lines.push(`    retryBodyLimitBytes: ${u.retryBodyLimitBytes}`);
    lines.push(
      '    auth:',
      '      type: client_credentials',
      `      tokenUrl: ${u.tokenUrl}`,
      '      clientId: bench-client',
      '      clientSecret: bench-secret',
    );
  }
  if (mitm) lines.push('mitm:', `  caCert: ${mitm.caCert}`, `  caKey: ${mitm.caKey}`);
  const yaml = `${lines.join('\n')}\n`;
  const file = join(work, `${name}.yaml`);
  writeFileSync(file, yaml);
  return { file, text: yaml };
}

const SHIPPED_NODE_FLAGS = shippedNodeFlags();

/** token-proxy built from this checkout, pinned to the proxy core, started as the image starts it. */
function startTokenProxy(name, cfg, { stdout, nodeArgs = [] } = {}) {
  return start(
    name,
    PROXY_CORE,
    node,
    [...SHIPPED_NODE_FLAGS, ...nodeArgs, 'dist/cli.js', 'serve', '--config', cfg.file],
    { stdout },
  );
}

// ---------------------------------------------------------------- wrk

function parseWrk(out) {
  const num = (re) => Number(re.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const lat = (q) => {
    const m = new RegExp(`^\\s+${q}%\\s+([\\d.]+)(us|ms|s)\\b`, 'm').exec(out);
    return m ? Number(m[1]) * { us: 1e-3, ms: 1, s: 1e3 }[m[2]] : NaN;
  };
  return {
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    requests: num(/(\d+) requests in/),
    non2xx: num(/Non-2xx or 3xx responses:\s+(\d+)/),
    socketErrors: sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    latencyMs: { p50: lat('50'), p99: lat('99') },
  };
}

function wrkArgs(config, seconds, connections, script, latency = false) {
  return [
    '-t1',
    `-c${connections}`,
    `-d${seconds}s`,
    '--timeout',
    '5s',
    ...(latency ? ['--latency'] : []),
    ...(config.clientAuthorization ? ['-H', `Authorization: ${config.clientAuthorization}`] : []),
    ...(script ? ['-s', script] : []),
    config.url,
  ];
}

// ---------------------------------------------------------------- targets

function targetsTable(targets) {
  const verdict = (t) =>
    t.met === undefined ? 'not measured' : `${t.met ? '✅ met' : '❌ missed'}${t.noisy ? ' (⚠ noisy)' : ''}`;
  return [
    '| target (issue 8) | measured | verdict |',
    '|---|---|---|',
    ...targets.map((t) => `| ${t.what} | ${t.measured}${t.note ? ` (${t.note})` : ''} | ${verdict(t)} |`),
  ].join('\n');
}

// ---------------------------------------------------------------- main

async function main() {
  const tools = ensureTools();
  // This script hosts the token server; it belongs with the load generator, off the proxy's core.
  execFileSync('taskset', ['-a', '-cp', LOAD_CORE, String(process.pid)], { stdio: 'ignore' });
  if (cpus().length < 2) throw new Error('needs 2 cores: the proxy on core 0, load and upstream on core 1');

  // Anything else running skews every number: say so, in the output and in BENCHMARKS.md.
  const quiet = await waitForQuiet();
  if (!quiet) say('warning: other processes keep the machine busy; numbers will be noisy');

  const ts = await startTokenServer();
  const token = await calibratedToken(ts);
  const authorization = `Bearer ${token}`;
  say(`token server ${ts.url}: issues ${token.length}-character JWTs`);

  const pki = want('connect') && tools.openssl ? makeUpstreamPki() : undefined;
  const upstreamPort = await freePort();
  const upstreamHttpsPort = pki ? await freePort() : undefined;
  const upstreamUrl = `http://${HOST}:${upstreamPort}`;
  const upChild = start('upstream', LOAD_CORE, node, ['bench/upstream.mjs'], {
    env: {
      PORT: String(upstreamPort),
      BENCH_JWK: JSON.stringify(ts.server.issuer.keys.toJSON()[0]),
      ...(pki ? { HTTPS_PORT: String(upstreamHttpsPort), TLS_CERT: pki.certFile, TLS_KEY: pki.keyFile } : {}),
    },
    ipc: true,
  });
  const upCall = rpc(upChild);
  const upstream = {
    stats: () => upCall({ op: 'stats' }, 5000),
    revoke: () => upCall({ op: 'revoke' }, 5000),
    child: upChild,
  };
  await waitForPort(upstreamPort, upChild);
  if (pki) await waitForPort(upstreamHttpsPort, upChild);

  // The Node load client: pinned with wrk, the upstream and this script.
  const loadChild = start('load-client', LOAD_CORE, node, ['bench/load-client.mjs'], { ipc: true });
  const load = rpc(loadChild);

  /** One wrk run against one configuration, with the proxy's CPU time and the upstream's counters. */
  async function measureWrk(config, seconds, connections, script, latency = false) {
    const before = sample();
    const out = await runPinned(
      'wrk',
      LOAD_CORE,
      'wrk',
      wrkArgs(config, seconds, connections, config.script ?? script, latency),
    );
    const cpu = cpuBetween(before, sample(), config.child?.pid);
    if (config.child?.exited) throw new Error(`${config.name} died under load:\n${logTail(config.child)}`);
    const seen = await upstream.stats();
    if (seen.unauthorized > seen.revoked)
      say(
        `  warning: the upstream rejected ${seen.unauthorized} request(s) during ${config.name}: ${JSON.stringify(seen.rejected)}`,
      );
    const r = parseWrk(out);
    return {
      ...r,
      ...cpu,
      cpuBusy: cpu.proxyCpu / seconds,
      cpuMicrosPerRequest: (cpu.proxyCpu / r.requests) * 1e6,
      unauthorized: seen.unauthorized,
    };
  }

  const sections = [];
  const targets = [];
  const checks = [];
  const details = [];
  const commands = [];
  const env = {
    measureWrk,
    nginxConfig,
    QUICK,
    PLAN,
    ts,
    token,
    authorization,
    upstream,
    upstreamUrl,
    upstreamPort,
    upstreamHttpsPort,
    pki,
    load,
    loadChild,
    tools,
    tokenListener,
    tokenProxyConfig,
    startTokenProxy,
    wrkArgs,
    parseWrk,
    FORWARD_HOST,
    GET_CONNECTIONS,
    COLD_TOKEN_DELAY_MS,
    SHORT_TOKEN_SECONDS,
    TOKEN_CHARS,
  };
  const seconds = estimateSeconds();
  say(
    `${QUICK ? 'quick' : 'full'} run of ${chosen.join(', ')}${PROFILE ? ' and the CPU profile' : ''}: about ${(seconds / 60).toFixed(1)} min on an idle machine, plus at most ${spare.seconds} s if other processes get in the way`,
  );

  let getResults;
  if (want('get') || want('post')) {
    const r = await wrkScenarios(env, tools);
    getResults = r.getResults;
    sections.push(...r.sections);
    targets.push(...r.targets);
    checks.push(...r.checks);
    details.push(...r.details);
    commands.push(...r.commands);
  }
  for (const [name, run] of [
    ['connect', connectScenario],
    ['latency', latencyScenario],
    ['cold', coldScenario],
    ['refresh', refreshScenario],
    ['memory', memoryScenario],
  ]) {
    if (!want(name)) continue;
    const r = await run(env);
    sections.push(...r.sections);
    targets.push(...(r.targets ?? []));
    checks.push(...(r.checks ?? []));
    details.push(...(r.details ?? []));
    commands.push(...(r.commands ?? []));
  }
  let profile;
  if (PROFILE) {
    // The flame graphs of BENCHMARKS.md go into the repository beside it; any other run's into the work directory.
    const dir = WRITE === 'BENCHMARKS.md' ? join(ROOT, 'bench', 'flame-graphs') : join(work, 'flame-graphs');
    const from = WRITE === undefined ? undefined : dirname(resolve(ROOT, WRITE));
    const flameGraphs = { dir, link: (file) => (from === undefined ? file : relative(from, file)) };
    profile = await profileScenario(env, { missed: targets.filter((t) => t.met === false), flameGraphs });
  }

  checks.push(
    `- token endpoint answered ${ts.requests} requests in all (token calibration and the static token included)`,
  );
  checks.push(
    `- this run took ${(process.uptime() / 60).toFixed(1)} min (estimate for an idle machine: ${(seconds / 60).toFixed(1)} min)`,
  );
  const disturbedRuns = (getResults ?? []).flatMap((r) => r.runs).filter((r) => r.foreign > DISTURBED).length;
  checks.push(
    `- other processes on the machine: ${quiet ? 'quiet at the start' : 'busy at the start'}; ${spare.budget - spare.seconds} s of the ${spare.budget} s spare spent waiting or measuring again`,
  );
  const placement = `proxy under test: \`taskset -c ${PROXY_CORE}\`; wrk, the Node load client, upstream, token server and bench/run.mjs: \`taskset -c ${LOAD_CORE}\``;

  const targetsSection = `## Targets (issue 8)\n\nThroughput ratios here are paired: the median over rounds of the ratio within a round (a round runs its\nconfigurations back to back, so a drift of the machine cancels out); the tables show ratios of medians.\n\n${targetsTable(targets)}`;
  const profileSection = profile ? `\n\n${profile.markdown}` : '';
  const checksSection = `## Checks\n\n${checks.join('\n')}`;
  print(`\n${sections.join('\n\n')}\n\n${targetsSection}${profileSection}\n\n${checksSection}\n`);
  print(`Core placement: ${placement}`);
  const noisyTargets = targets.filter((t) => t.noisy).length;
  if (WRITE === undefined) {
    if (!QUICK) say('BENCHMARKS.md is written by a full run of every scenario only (or --write <file>); not written');
    return;
  }

  const cpuModel = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const pkgVersion = (name) =>
    JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
  const versions = [
    `- node ${process.version}, token-proxy ${JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version} (this checkout, dist/)`,
    `- ${version('nginx', ['-v'])}`,
    `- ${version('wrk', ['-v'])}`,
    ...(tools.squid ? [`- ${version('squid', ['-v'])}`] : ['- squid: not installed (rows skipped)']),
    ...(tools.mitmproxy
      ? [
          `- mitmproxy ${version('mitmdump', ['--version']).replace(/^Mitmproxy:\s*/, '')} (${version('python3', ['--version'])})`,
        ]
      : ['- mitmproxy: not installed (rows skipped)']),
    `- undici ${pkgVersion('undici')}, http-proxy ${pkgVersion('http-proxy')}, oauth2-mock-server ${pkgVersion('oauth2-mock-server')}`,
  ];
  const doc = `# Benchmarks

Generated by \`npm run bench\` (bench/run.mjs) on ${new Date().toISOString().slice(0, 10)}: issue 8.
Compare ratios within one run and one core placement, never absolute numbers across machines.
${
  disturbedRuns > 0 || noisyTargets > 0
    ? `
> **Noisy run:** other processes used over ${DISTURBED * 100}% of a core during ${disturbedRuns} of the recorded small-GET/POST runs
> and ${noisyTargets} target(s) rest on noisy measurements (see "clean runs", "other processes" and ⚠). Such rows are
> not to be trusted; run \`npm run bench\` again on an idle machine.
`
    : ''
}
Reproduce: \`npm run bench\` (about ${Math.round(estimateSeconds(FULL_PLAN, SCENARIOS, true) / 60)} minutes on an idle machine, writes this file) or
\`npm run bench -- --quick\` (about ${Math.round(estimateSeconds(QUICK_PLAN, SCENARIOS, false) / 60)} minutes, prints the tables only: a check before committing a hot-path
change). \`--scenarios ${SCENARIOS.join(',')}\` runs a subset (printed only); \`--profile\` adds the CPU profiles
to a quick run; \`--rate N\` sets the fixed rate. \`npm run bench:post-after-idle\` (about a minute) runs 1 MiB POSTs
after an idle spell with and without the image's Node flags (see "What was tried").
${QUICK || !ALL ? `\n> **Not a full run** (${QUICK ? '--quick' : `--scenarios ${chosen.join(',')}`}): short runs, indicative only.\n` : ''}
## Machine

- ${cpus().length} cores (\`nproc --all\`: ${version('nproc', ['--all'])}), ${cpuModel}, Linux ${release()}
${versions.join('\n')}
- Core placement: ${placement}.

${targetsSection}

${readFileSync(join(ROOT, 'bench', 'what-was-tried.md'), 'utf8').trim()}

## Setup

Everything on 127.0.0.1. The upstream (bench/upstream.mjs, node:http, and node:https for the TLS scenario) answers a small
(~100-byte) JSON body and checks the bearer: the JWT signature once per distinct token, then a map lookup and its
\`exp\` against the upstream's own clock on every request; anything else gets 401 (the "upstream 401" column). The
token server is oauth2-mock-server issuing ${token.length}-character RS256 JWTs (a padding claim), valid one hour unless a
scenario says otherwise. Every configuration sends the same kind of token: the comparison points a static header
with a token fetched at start, token-proxy the one it fetched and cached itself; "direct" is the client sending it.
Load: wrk (Debian) where it can (small GET, POST, one connection), else bench/load-client.mjs (undici; CONNECT
tunnels, fixed rate, bursts). "proxy CPU µs/req" is the CPU time of the proxy's process group (from /proc) over a
run, divided by the requests completed; "peak RSS" is the sum of VmHWM over the proxy's processes after the
scenario; "core ${PROXY_CORE} busy: proxy / all" is the proxy's CPU time over the run's wall time, then everything core ${PROXY_CORE}
did (kernel network work and any other process included); "core ${LOAD_CORE} busy" is the load core. The core at 95% or more
limits the configuration ("limited by"); one limited by the load core could go faster than its ratio says. "other
processes" is the most CPU (in shares of one core) that processes this benchmark did not start took during one of
the configuration's runs, plus the time the host gave other guests (steal), if this is a virtual machine; such a run (over ${DISTURBED * 100}%) is measured again once they are gone, within ${PLAN.spareSeconds} s spare
per benchmark run. Medians, spreads and CPU figures come from the clean runs while at least half are clean;
otherwise from all runs, and the row is marked ⚠ noisy. Rows with non-2xx answers, socket errors or upstream
401s are marked ⚠ errors.

| configuration | command (pinned with \`taskset -c ${PROXY_CORE}\`) |
|---|---|
${commands.map(([name, command]) => `| ${name} | ${command} |`).join('\n')}

${sections.join('\n\n')}${profileSection}

${checksSection}

${details.join('\n\n')}
`;
  writeFileSync(
    resolve(ROOT, WRITE),
    doc.replaceAll(work, '<tmp>').replace(/\/tmp\/token-proxy-bench-squid-\w+/g, '<squid-tmp>'),
  );
  say(`wrote ${WRITE}`);
}

/** Seconds a plan takes on an idle machine: load, plus about a second per process start or tool run. */
function estimateSeconds(plan = PLAN, scenarios = chosen, profile = PROFILE) {
  const has = (name) => scenarios.includes(name);
  let s = 5; // token server, upstream, load client
  if (has('get')) s += 8 * (plan.warmupSeconds + plan.get.rounds * (plan.get.seconds + 0.2)) + 3;
  if (has('post')) s += 6 * (1 + plan.post.rounds * (plan.post.seconds + 0.2)) + 2;
  if (has('connect')) s += 3 * (plan.connect.warmupSeconds + plan.connect.rounds * plan.connect.seconds) + 4;
  if (has('latency'))
    s +=
      3 *
        (2 * plan.latency.warmupSeconds +
          plan.latency.rounds * (plan.latency.warmupSeconds + plan.latency.seconds + 0.3) +
          plan.latency.oneConnection.rounds * (plan.latency.oneConnection.seconds + 0.2)) +
      2;
  if (has('cold')) s += plan.cold.rounds * 2 * 3;
  if (has('refresh')) s += plan.refresh.seconds + 2 * plan.latency.warmupSeconds + 3;
  if (has('memory')) s += 4;
  if (profile)
    s +=
      (1 + (has('get') || has('post') ? 2 : 0) + (has('connect') ? 1 : 0)) *
      (plan.profileSeconds + 2 * plan.latency.warmupSeconds + 2);
  return s;
}

// ---------------------------------------------------------------- small GET and 1 MiB POST (wrk)

async function wrkScenarios(env, tools) {
  const { upstream, upstreamUrl, upstreamPort, authorization, ts } = env;
  const ports = {};
  for (const name of [
    'nginx',
    'squid',
    'httpProxy',
    'undici',
    'tp',
    'tpAdmin',
    'tpLog',
    'tpLogAdmin',
    'tpNoBuf',
    'tpNoBufAdmin',
  ])
    ports[name] = await freePort();
  const staticEnv = (port) => ({ PORT: String(port), TARGET: upstreamUrl, AUTHORIZATION: authorization });
  const nginx = nginxConfig(ports.nginx, upstreamPort, authorization);
  const squid = tools.squid && want('get') ? squidConfig(ports.squid, upstreamPort, authorization) : undefined;
  const bench = (retryBodyLimitBytes) => [
    {
      name: 'bench',
      target: upstreamUrl,
      pathPrefix: '/bench',
      hosts: [FORWARD_HOST],
      retryBodyLimitBytes,
      tokenUrl: ts.tokenUrl,
    },
  ];
  const tp = tokenProxyConfig('token-proxy', {
    port: ports.tp,
    adminPort: ports.tpAdmin,
    upstreams: bench(POST_BYTES),
  });
  const tpLog = tokenProxyConfig('token-proxy-access-log', {
    port: ports.tpLog,
    adminPort: ports.tpLogAdmin,
    accessLog: true,
    upstreams: bench(POST_BYTES),
  });
  const tpNoBuf = tokenProxyConfig('token-proxy-no-buffer', {
    port: ports.tpNoBuf,
    adminPort: ports.tpNoBufAdmin,
    upstreams: bench(0),
  });
  const forwardScript = join(work, 'forward.lua');
  env.forwardScript = forwardScript; // the profiles use it too
  writeFileSync(
    forwardScript,
    `-- absolute-form requests: what an HTTP_PROXY client sends\nwrk.path = "http://${FORWARD_HOST}/hello"\nwrk.headers["Host"] = "${FORWARD_HOST}"\n`,
  );
  const forwardAgent = (port) => new ProxyAgent({ uri: `http://${HOST}:${port}`, proxyTunnel: false });

  const configs = [
    {
      name: 'direct',
      get: true,
      post: true,
      url: `${upstreamUrl}/hello`,
      clientAuthorization: authorization,
      port: upstreamPort,
      command: '(wrk straight to the upstream, sending the token itself)',
    },
    {
      name: 'nginx',
      get: true,
      post: true,
      url: `http://${HOST}:${ports.nginx}/hello`,
      port: ports.nginx,
      start: () =>
        start('nginx', PROXY_CORE, 'nginx', ['-p', nginx.dir, '-c', nginx.file, '-e', join(nginx.dir, 'error.log')]),
      command: 'nginx -p <dir> -c <dir>/nginx.conf (config below)',
    },
    {
      name: 'node-http-proxy',
      get: true,
      post: true,
      url: `http://${HOST}:${ports.httpProxy}/hello`,
      port: ports.httpProxy,
      start: () =>
        start('http-proxy', PROXY_CORE, node, ['bench/proxies/http-proxy.mjs'], { env: staticEnv(ports.httpProxy) }),
      command: 'node bench/proxies/http-proxy.mjs',
    },
    {
      name: 'undici dispatch()',
      get: true,
      post: true,
      url: `http://${HOST}:${ports.undici}/hello`,
      port: ports.undici,
      start: () =>
        start('undici', PROXY_CORE, node, ['bench/proxies/undici-dispatch.mjs'], { env: staticEnv(ports.undici) }),
      command: 'node bench/proxies/undici-dispatch.mjs',
    },
    {
      name: 'token-proxy',
      get: true,
      post: true,
      url: `http://${HOST}:${ports.tp}/bench/hello`,
      port: ports.tp,
      start: () => startTokenProxy('token-proxy', tp),
      command: `node ${SHIPPED_NODE_FLAGS.join(' ')} dist/cli.js serve --config <generated yaml> (the image's node flags; reverse mode; logLevel info, accessLog false; replay buffer 1 MiB, the default)`,
      admin: ports.tpAdmin,
    },
    {
      name: 'token-proxy, forward mode',
      get: true,
      url: `http://${HOST}:${ports.tp}/`,
      script: forwardScript,
      dispatcher: forwardAgent(ports.tp),
      sameAs: 'token-proxy',
      port: ports.tp,
      command: `the same process: absolute-form \`GET http://${FORWARD_HOST}/hello\` (wrk -s forward.lua), routed by \`hosts\``,
    },
    {
      name: 'token-proxy, access log',
      get: true,
      url: `http://${HOST}:${ports.tpLog}/bench/hello`,
      port: ports.tpLog,
      start: () => startTokenProxy('token-proxy-access-log', tpLog, { stdout: '/dev/null' }),
      command: 'same config with accessLog: true (one JSON line per request at info; stdout to /dev/null)',
      admin: ports.tpLogAdmin,
    },
    ...(squid
      ? [
          {
            name: 'squid, forward mode',
            optional: true,
            get: true,
            url: `http://${HOST}:${ports.squid}/`,
            script: forwardScript,
            dispatcher: forwardAgent(ports.squid),
            port: ports.squid,
            start: () => start('squid', PROXY_CORE, 'squid', ['-N', '-f', squid.file]),
            command: `squid -N -f squid.conf (config below; absolute-form like the forward-mode row, static \`request_header_add Authorization\`)`,
          },
        ]
      : []),
    {
      name: 'token-proxy, no replay buffer',
      post: true,
      url: `http://${HOST}:${ports.tpNoBuf}/bench/hello`,
      port: ports.tpNoBuf,
      start: () => startTokenProxy('token-proxy-no-buffer', tpNoBuf),
      command: 'same, retryBodyLimitBytes: 0 (1 MiB bodies stream through)',
      admin: ports.tpNoBufAdmin,
    },
  ].filter((c) => (want('get') && c.get) || (want('post') && c.post));
  for (const c of configs) c.child = c.start?.();
  for (const c of configs) if (c.sameAs) c.child = configs.find((x) => x.name === c.sameAs)?.child;

  // Each must start and answer one request (up to three tries: Squid may refuse the very first
  // while it starts up), so a broken configuration fails here rather than in a table. A broken
  // comparison point that is optional (Squid) is left out with a note instead.
  const checks = [];
  for (const c of [...configs]) {
    let problem;
    try {
      await waitForPort(c.port, c.child);
      let status;
      for (let attempt = 0; attempt < 3 && status !== 200; attempt += 1) {
        const res = await fetch(c.dispatcher ? `http://${FORWARD_HOST}/hello` : c.url, {
          headers: c.clientAuthorization ? { authorization: c.clientAuthorization } : {},
          dispatcher: c.dispatcher,
        });
        await res.arrayBuffer();
        status = res.status;
      }
      if (status !== 200) problem = `sanity request answered ${status}`;
    } catch (err) {
      problem = err.message;
    }
    if (problem === undefined) continue;
    if (!c.optional) throw new Error(`${c.name}: ${problem}${c.child ? `\n${logTail(c.child)}` : ''}`);
    say(`warning: ${c.name} does not work here (${oneLine(problem)}): its row is left out`);
    checks.push(`- ${c.name}: did not work here (${oneLine(problem)}); left out`);
    if (c.child) await stop(c.child);
    configs.splice(configs.indexOf(c), 1);
  }
  await upstream.stats(); // reset the counters

  const measure = env.measureWrk;

  const sections = [];
  const targets = [];
  const commands = configs.map((c) => [c.name, c.command]);
  let getResults;
  if (want('get')) {
    const getConfigs = configs.filter((c) => c.get);
    say(`small GET, ${GET_CONNECTIONS} connections, ${PLAN.get.rounds} rounds of ${PLAN.get.seconds}s`);
    // Warm-up (JIT, connection pools, token cache), not recorded.
    for (const c of getConfigs) await measure(c, PLAN.warmupSeconds, GET_CONNECTIONS);
    getResults = await rounds(getConfigs, PLAN.get, (c, s) => measure(c, s, GET_CONNECTIONS));
    const t = table(getResults, { unit: 'req/s', baselines: ['direct', 'nginx'] });
    sections.push(`## Small GET, keep-alive, ${GET_CONNECTIONS} connections (${PLAN.get.rounds} rounds × ${PLAN.get.seconds}s, alternating)

"forward mode" rows send absolute-form requests (\`GET http://${FORWARD_HOST}/hello\`, as an app with
\`HTTP_PROXY\` does); token-proxy's forward row is the same process as its reverse row, so its CPU and RSS
figures are shared. The access-log row writes one JSON line per request to stdout (/dev/null).

${t.markdown}`);
    const s = t.byName;
    const tpS = s['token-proxy'];
    const pr = (a, b) => pairedRatio(getResults, a, b);
    const vsDirect = pr('token-proxy', 'direct');
    const vsNginx = pr('token-proxy', 'nginx');
    const vsHttpProxy = pr('token-proxy', 'node-http-proxy');
    const forward = pr('token-proxy, forward mode', 'token-proxy');
    const log = pr('token-proxy, access log', 'token-proxy');
    targets.push(
      target('small GET, reverse mode: ≥ 0.45× direct (stretch 0.55×)', pairedText(vsDirect), vsDirect.ratio >= 0.45, {
        noisy: vsDirect.noisy,
        note: vsDirect.ratio >= 0.55 ? 'stretch met' : 'stretch missed',
      }),
      target('small GET, reverse mode: ≥ 0.65× nginx', pairedText(vsNginx), vsNginx.ratio >= 0.65, {
        noisy: vsNginx.noisy,
      }),
      target('small GET, reverse mode: ≥ 2× node-http-proxy', pairedText(vsHttpProxy), vsHttpProxy.ratio >= 2, {
        noisy: vsHttpProxy.noisy,
      }),
      target(
        'forward mode (absolute-form) within 10% of reverse mode',
        `${pairedText(forward)} reverse`,
        forward.ratio >= 0.9,
        { noisy: forward.noisy },
      ),
      target(
        'access log on costs ≤ 10% of throughput',
        `${pairedText(log)} of the throughput without: ${pct(1 - log.ratio)} cost`,
        1 - log.ratio <= 0.1,
        { noisy: log.noisy },
      ),
      target(
        'peak RSS under the small-GET load ≤ 120 MiB',
        `${tpS.peakRss.toFixed(0)} MiB (reverse and forward rows' process)`,
        tpS.peakRss <= 120,
      ),
    );
  }

  if (want('post')) {
    const postConfigs = configs.filter((c) => c.post);
    const postScript = join(work, 'post-1mib.lua');
    writeFileSync(
      postScript,
      `wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/octet-stream"\nwrk.body = string.rep("x", ${POST_BYTES})\n`,
    );
    say(`1 MiB POST, ${POST_CONNECTIONS} connections, ${PLAN.post.rounds} rounds of ${PLAN.post.seconds}s`);
    // Another warm-up: the body-streaming paths are still cold (and one token-proxy saw no GET load).
    for (const c of postConfigs) await measure(c, 1, POST_CONNECTIONS, postScript);
    const postResults = await rounds(
      postConfigs,
      PLAN.post,
      (c, sec) => measure(c, sec, POST_CONNECTIONS, postScript),
      'MB/s',
      POST_BYTES / 1e6,
    );
    const t = table(postResults, { unit: 'MB/s', scale: POST_BYTES / 1e6, baselines: ['direct', 'nginx'] });
    sections.push(`## 1 MiB POST, ${POST_CONNECTIONS} connections (${PLAN.post.rounds} round${PLAN.post.rounds > 1 ? 's' : ''} × ${PLAN.post.seconds}s)

MB/s = requests/s × 1 MiB request body, in 10^6 bytes. "peak RSS" is over the process's life (the small GET included).

${t.markdown}`);
    const post = pairedRatio(postResults, 'token-proxy', 'direct');
    targets.push(
      target('1 MiB POST, replay buffer on: ≥ 0.42× direct MB/s (stretch 0.5×)', pairedText(post), post.ratio >= 0.42, {
        noisy: post.noisy,
        note: post.ratio >= 0.5 ? 'stretch met' : 'stretch missed',
      }),
    );
  }

  // Sanity: token-proxy should have asked for one token per instance, whatever the load.
  for (const c of configs.filter((x) => x.admin)) {
    const metrics = await (await fetch(`http://${HOST}:${c.admin}/metrics`)).text();
    const refreshes = metrics.split('\n').filter((l) => l.startsWith('token_proxy_token_refreshes_total{'));
    checks.push(`- ${c.name}: ${refreshes.join(', ') || 'no token_proxy_token_refreshes_total'}`);
  }
  const details = [
    `<details><summary>nginx.conf</summary>\n\n\`\`\`nginx\n${nginx.text}\`\`\`\n</details>`,
    ...(squid ? [`<details><summary>squid.conf</summary>\n\n\`\`\`\n${squid.text}\`\`\`\n</details>`] : []),
    `<details><summary>token-proxy config (small GET and POST)</summary>\n\n\`\`\`yaml\n${tp.text}\`\`\`\n</details>`,
  ];
  if (!squid && want('get')) checks.push('- squid: not installed, its forward-mode row is skipped');
  // The comparison points are done: free the proxy core for the scenarios that follow.
  for (const c of configs) if (c.start && c.child) await stop(c.child);
  for (const c of configs) c.dispatcher?.close();
  if (squid) rmSync(squid.dir, { recursive: true, force: true });
  const wrkGet = `taskset -c ${LOAD_CORE} wrk ${wrkArgs({ url: '<url>' }, PLAN.get.seconds, GET_CONNECTIONS).join(' ')}`;
  const wrkPost = `taskset -c ${LOAD_CORE} wrk ${wrkArgs({ url: '<url>' }, PLAN.post.seconds, POST_CONNECTIONS, 'post-1mib.lua').join(' ')}`;
  sections.unshift(
    `Load for the two tables below: \`${wrkGet}\` (token-proxy URLs are under \`/bench\`, its path prefix; forward rows add \`-s forward.lua\`) and \`${wrkPost}\`; "direct" adds \`-H 'Authorization: Bearer <token>'\`. A warm-up of ${PLAN.warmupSeconds}s per configuration precedes the rounds.`,
  );
  return { getResults, sections, targets, checks, details, commands };
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
  if (KEEP) say(`work directory kept: ${work}`);
  else if (!failed) rmSync(work, { recursive: true, force: true });
  process.exit(); // the token server and keep-alive sockets would otherwise hold the loop open
}
