#!/usr/bin/env node
// `npm run soak [-- --minutes N]` (issue 7, "No leaks"): holds the proxy under steady load for a
// bounded time (3 minutes by default) while its tokens rotate every few seconds, samples its
// resident memory every 5 s, and says whether it stayed flat. Not part of `npm test`.
//
// Processes: the proxy runs on its own (node dist/cli.js serve), as in production; the token
// server (oauth2-mock-server, tokens living 5 s), the partner (the demo partner API over TLS,
// checking every token against the issuer's JWKS) and the load live in this script.
//
// Load, at a fixed concurrency (undici; no autocannon here): reverse-mode GETs and 4 KiB POSTs,
// forward-mode absolute-form GETs, and HTTPS through CONNECT with TLS interception (tunnels
// re-opened every 50 requests). Every 15 s the partner revokes the newest token (401, renew,
// replay). Any answer but 200, or any client error, counts as an error.
//
// Verdict: after a warm-up (30 s), the average RSS of the last minute must be within +10% of the
// average of the first minute. Exit code 1 on errors, growth, or a proxy that died.
import { Buffer } from 'node:buffer';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import process from 'node:process';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { OAuth2Server } from 'oauth2-mock-server';
import { Agent, ProxyAgent, request } from 'undici';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const HOST = '127.0.0.1';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : Number(process.argv[i + 1]);
}
const MINUTES = arg('minutes', 3);
const CONCURRENCY = arg('concurrency', 16);
const SAMPLE_SECONDS = 5;
const TOKEN_LIFETIME_SECONDS = 5;
const WARMUP_SECONDS = Math.min(30, (MINUTES * 60) / 5);
const WINDOW_SECONDS = Math.min(60, (MINUTES * 60 - WARMUP_SECONDS) / 2);
const MAX_GROWTH = 0.1;
const KEEP = process.argv.includes('--keep');

const say = (line) => process.stderr.write(`${line}\n`);
const print = (line) => process.stdout.write(`${line}\n`);

if (!Number.isFinite(MINUTES) || MINUTES <= 0) {
  say('usage: node scripts/soak.mjs [--minutes N] [--concurrency C] [--keep]');
  process.exit(2);
}

const work = mkdtempSync(join(tmpdir(), 'token-proxy-soak-'));
let proxyChild;

async function freePort() {
  const server = createServer().listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function openssl(args) {
  execFileSync('openssl', args, { cwd: work, stdio: 'pipe' });
}

/** A CA and a server certificate for 127.0.0.1, so the proxy originates TLS as in production. */
function makePki() {
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
    '/CN=soak CA',
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
    '/CN=127.0.0.1',
  ]);
  writeFileSync(
    join(work, 'server.ext'),
    'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n',
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
  const read = (f) => readFileSync(join(work, f), 'utf8');
  return { caFile: join(work, 'ca.pem'), ca: read('ca.pem'), key: read('server-key.pem'), cert: read('server.pem') };
}

async function startTokenServer() {
  const server = new OAuth2Server();
  await server.issuer.keys.generate('RS256');
  await server.start(await freePort(), HOST);
  const url = `http://${HOST}:${server.address().port}`;
  server.issuer.url = url;
  const ts = { server, url, issued: 0, latest: undefined };
  server.service.on('beforeTokenSigning', (token) => {
    token.payload.exp = Math.floor(Date.now() / 1000) + TOKEN_LIFETIME_SECONDS;
  });
  server.service.on('beforeResponse', (res) => {
    if (res.statusCode !== 200) return;
    res.body.expires_in = TOKEN_LIFETIME_SECONDS;
    ts.issued += 1;
    ts.latest = res.body.access_token;
  });
  return ts;
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

async function scrape(adminPort) {
  const res = await request(`http://${HOST}:${adminPort}/metrics`);
  const text = await res.body.text();
  const value = (re) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : NaN;
  };
  return {
    heapUsed: value(/^nodejs_heap_size_used_bytes (\S+)$/m),
    handles: [...text.matchAll(/^nodejs_active_handles\{[^}]*\} (\S+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0),
  };
}

async function waitForPort(port) {
  for (let i = 0; i < 200; i += 1) {
    if (proxyChild.exitCode !== null) throw new Error(`the proxy exited during start-up:\n${tail()}`);
    const res = await request(`http://${HOST}:${port}/readyz`).catch(() => undefined);
    if (res) {
      await res.body.dump();
      if (res.statusCode === 200) return;
    }
    await delay(50);
  }
  throw new Error(`the proxy did not become ready:\n${tail()}`);
}

function tail() {
  try {
    return readFileSync(join(work, 'proxy.log'), 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '';
  }
}

const mib = (kib) => (kib / 1024).toFixed(1);
const avg = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

async function main() {
  const { startPartnerApi } = await import(join(ROOT, 'dist/demo/partner-api.js'));
  const { createCaFiles } = await import(join(ROOT, 'dist/mitm/certificate-authority.js'));
  const pki = makePki();
  const ts = await startTokenServer();
  const partner = await startPartnerApi({
    jwksUrl: `${ts.url}/jwks`,
    issuer: ts.url,
    tls: { key: pki.key, cert: pki.cert },
  });
  const mitm = await createCaFiles(join(work, 'mitm'));
  const [port, adminPort] = [await freePort(), await freePort()];
  const configFile = join(work, 'token-proxy.yaml');
  // JSON is YAML: the config file as the proxy reads it in production.
  writeFileSync(
    configFile,
    JSON.stringify(
      {
        listen: `${HOST}:${port}`,
        admin: { listen: `${HOST}:${adminPort}` },
        logLevel: 'info', // the access log stays on, as in production
        shutdownTimeoutSeconds: 2,
        upstreams: [
          {
            name: 'partner',
            target: partner.url,
            pathPrefix: '/partner',
            hosts: ['api.partner.example'],
            ca: pki.caFile,
            auth: {
              type: 'client_credentials',
              tokenUrl: `${ts.url}/token`,
              clientId: 'soak-client',
              clientSecret: 'soak-secret',
            },
          },
        ],
        mitm: { caCert: mitm.certFile, caKey: mitm.keyFile },
        egress: { default: 'deny', allow: [] },
      },
      null,
      2,
    ),
  );
  const log = openSync(join(work, 'proxy.log'), 'a');
  proxyChild = spawn(process.execPath, [join(ROOT, 'dist/cli.js'), 'serve', '--config', configFile], {
    cwd: ROOT,
    stdio: ['ignore', log, log],
  });
  closeSync(log);
  await waitForPort(adminPort);
  const mitmCa = readFileSync(mitm.certFile, 'utf8');
  say(
    `soak: ${MINUTES} min, concurrency ${CONCURRENCY}, tokens living ${TOKEN_LIFETIME_SECONDS} s, proxy pid ${proxyChild.pid} (work dir ${work})`,
  );

  const origin = `http://${HOST}:${port}`;
  const client = new Agent({ connections: CONCURRENCY });
  const forward = new ProxyAgent({ uri: origin, proxyTunnel: false });
  const body = Buffer.alloc(4096, 'p');
  const stats = { ok: 0, errors: 0, byKind: {}, firstErrors: [] };
  const fail = (kind, what) => {
    stats.errors += 1;
    if (stats.firstErrors.length < 10) stats.firstErrors.push(`${kind}: ${what}`);
  };
  const kinds = [
    ['reverse GET', async (n) => client.request({ origin, path: `/partner/items?id=${n}`, method: 'GET' })],
    [
      'reverse POST 4 KiB',
      async () =>
        client.request({
          origin,
          path: '/partner/upload',
          method: 'POST',
          body,
          headers: { 'content-type': 'application/octet-stream' },
        }),
    ],
    ['forward GET', async (n) => request(`http://api.partner.example/fwd/${n}`, { dispatcher: forward })],
  ];
  let stop = false;
  async function worker(i) {
    let n = 0;
    const isTunnel = i % 8 === 7; // one worker in eight goes through CONNECT + interception
    let tunnel;
    while (!stop) {
      n += 1;
      let kind;
      let exec;
      if (isTunnel) {
        if (tunnel === undefined || n % 50 === 0) {
          await tunnel?.close();
          tunnel = new ProxyAgent({ uri: origin, requestTls: { ca: mitmCa } });
        }
        const agent = tunnel;
        kind = 'CONNECT + mitm GET';
        exec = () => request(`https://api.partner.example/tls/${n}`, { dispatcher: agent });
      } else {
        [kind, exec] = kinds[(i + n) % kinds.length];
        const run = exec;
        exec = () => run(n);
      }
      try {
        const res = await exec();
        await res.body.dump();
        if (res.statusCode === 200) stats.ok += 1;
        else fail(kind, `status ${res.statusCode}`);
        stats.byKind[kind] = (stats.byKind[kind] ?? 0) + 1;
      } catch (err) {
        fail(kind, err.message);
        await delay(50);
      }
    }
    await tunnel?.close();
  }

  const started = Date.now();
  const end = started + MINUTES * 60_000;
  const workers = Array.from({ length: CONCURRENCY }, (_, i) => worker(i));
  const samples = [];
  let lastOk = 0;
  let lastRevoke = started;
  let revoked = 0;
  say('    t(s)   RSS MiB   heap MiB   req/s   errors   tokens issued');
  while (Date.now() < end) {
    await delay(Math.min(SAMPLE_SECONDS * 1000, end - Date.now()));
    if (proxyChild.exitCode !== null) {
      fail('proxy', `exited with ${proxyChild.exitCode}`);
      break;
    }
    const now = Date.now();
    if (now - lastRevoke >= 15_000 && ts.latest !== undefined) {
      partner.revoked.add(ts.latest); // the partner now answers 401 to the newest token
      revoked += 1;
      lastRevoke = now;
    }
    partner.seen.length = 0; // the partner keeps a record of every request: not ours to grow
    const t = (now - started) / 1000;
    const { heapUsed, handles } = await scrape(adminPort).catch(() => ({ heapUsed: NaN, handles: NaN }));
    const sample = {
      t,
      rss: rssKiB(proxyChild.pid),
      heapUsed,
      handles,
      rps: (stats.ok - lastOk) / ((samples.length === 0 ? t : t - samples.at(-1).t) || 1),
      errors: stats.errors,
      tokens: ts.issued,
    };
    lastOk = stats.ok;
    samples.push(sample);
    say(
      `${t.toFixed(0).padStart(8)} ${mib(sample.rss).padStart(9)} ${(heapUsed / 1048576).toFixed(1).padStart(10)} ${sample.rps.toFixed(0).padStart(7)} ${String(sample.errors).padStart(8)} ${String(sample.tokens).padStart(15)}`,
    );
  }
  stop = true;
  await Promise.all(workers);
  const alive = proxyChild.exitCode === null;
  const finalRss = alive ? rssKiB(proxyChild.pid) : NaN;
  proxyChild.kill('SIGTERM');
  const [code] = alive
    ? await Promise.race([once(proxyChild, 'exit'), delay(5_000).then(() => ['timeout'])])
    : [proxyChild.exitCode];
  await Promise.all([client.close(), forward.close(), partner.close(), ts.server.stop()]);
  const logBytes = statSync(join(work, 'proxy.log')).size;

  // ---------------------------------------------------------------- report
  const totalSeconds = (Date.now() - started) / 1000;
  const first = samples.filter((s) => s.t >= WARMUP_SECONDS && s.t < WARMUP_SECONDS + WINDOW_SECONDS);
  const last = samples.filter((s) => s.t > totalSeconds - WINDOW_SECONDS - 0.5);
  const firstAvg = avg(first.map((s) => s.rss));
  const lastAvg = avg(last.map((s) => s.rss));
  const growth = lastAvg / firstAvg - 1;
  const requests = stats.ok + stats.errors;
  print('');
  print(
    `## token-proxy soak: ${MINUTES} min, ${CONCURRENCY} concurrent clients, tokens living ${TOKEN_LIFETIME_SECONDS} s`,
  );
  print('');
  print('| t (s) | RSS (MiB) | heap used (MiB) | handles | req/s | errors | tokens issued |');
  print('|---:|---:|---:|---:|---:|---:|---:|');
  for (const s of samples) {
    print(
      `| ${s.t.toFixed(0)} | ${mib(s.rss)} | ${(s.heapUsed / 1048576).toFixed(1)} | ${s.handles} | ${s.rps.toFixed(0)} | ${s.errors} | ${s.tokens} |`,
    );
  }
  print('');
  print(
    `requests: ${requests} (${(requests / totalSeconds).toFixed(0)}/s), errors: ${stats.errors}; by kind: ${Object.entries(
      stats.byKind,
    )
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  print(
    `tokens issued: ${ts.issued} (one every ${(totalSeconds / Math.max(1, ts.issued)).toFixed(1)} s), tokens revoked by the partner: ${revoked}`,
  );
  print(
    `RSS: first minute after ${WARMUP_SECONDS} s warm-up ${mib(firstAvg)} MiB (${first.length} samples), last minute ${mib(lastAvg)} MiB (${last.length} samples), growth ${(growth * 100).toFixed(1)}% (limit +${MAX_GROWTH * 100}%); at the end ${mib(finalRss)} MiB`,
  );
  print(`proxy: exit ${code} after SIGTERM; access log ${(logBytes / 1048576).toFixed(0)} MiB`);
  for (const e of stats.firstErrors) print(`  error: ${e}`);
  const problems = [];
  if (stats.errors > 0) problems.push(`${stats.errors} errors`);
  if (!alive) problems.push('the proxy died');
  if (!(growth <= MAX_GROWTH)) problems.push(`RSS grew ${(growth * 100).toFixed(1)}%`);
  if (first.length === 0 || last.length === 0) problems.push('too few samples for a verdict (run longer)');
  print(problems.length === 0 ? 'verdict: PASS (RSS flat, no errors)' : `verdict: FAIL (${problems.join(', ')})`);
  if (!KEEP) rmSync(work, { recursive: true, force: true });
  return problems.length === 0 ? 0 : 1;
}

const cleanup = () => {
  if (proxyChild && proxyChild.exitCode === null) proxyChild.kill('SIGKILL');
};
process.on('SIGINT', () => {
  cleanup();
  process.exit(130);
});
main().then(
  (code) => process.exit(code),
  (err) => {
    say(`soak: ${err.stack ?? err}`);
    cleanup();
    process.exit(1);
  },
);
