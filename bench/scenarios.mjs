// The scenarios of issue 8 beyond wrk's small GET and POST tables, called by run.mjs with its
// environment (`env`: plan, token server, upstream, load client, config helpers). Each returns
// { sections, targets, checks, details, commands } for the report.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';
import { setTimeout as delay } from 'node:timers/promises';
import { fetch } from 'undici';
import { diffMarkdown, profileDiff, profileMarkdown, summarizeProfile } from './cpu-profile.mjs';
import { flameGraphSvg } from './flame-graph.mjs';
import {
  DISTURBED,
  HOST,
  LOAD_CORE,
  PROXY_CORE,
  ROOT,
  cpuBetween,
  freePort,
  int,
  logTail,
  oneLine,
  median,
  ms,
  pairedRatio,
  pairedText,
  pct,
  percentile,
  ratio,
  rounds,
  runPinned,
  sample,
  say,
  start,
  stop,
  table,
  target,
  waitForPort,
  work,
} from './lib.mjs';

const node = process.execPath;

/** A Node load-client run against one configuration, with the proxy's CPU time and the upstream's counters. */
async function measureNode(env, config, msg) {
  const before = sample();
  const r = await env.load(msg, ((msg.seconds ?? 10) + 60) * 1000);
  const cpu = cpuBetween(before, sample(), config.child?.pid);
  if (config.child?.exited) throw new Error(`${config.name} died under load:\n${logTail(config.child)}`);
  const seen = await env.upstream.stats();
  if (seen.unauthorized > seen.revoked)
    say(
      `  warning: the upstream rejected ${seen.unauthorized} request(s) during ${config.name}: ${JSON.stringify(seen.rejected)}`,
    );
  // CPU per request over everything sent (a fixed-rate run's warm-up included).
  const all = r.all ?? { requests: r.requests, seconds: r.seconds };
  return {
    rps: r.rps,
    requests: r.requests,
    non2xx: r.non2xx,
    socketErrors: r.errors,
    firstError: r.firstError,
    latencyMs: r.latencyMs,
    maxSendLagMs: r.maxSendLagMs,
    ...cpu,
    cpuBusy: cpu.proxyCpu / all.seconds,
    cpuMicrosPerRequest: (cpu.proxyCpu / all.requests) * 1e6,
    unauthorized: seen.unauthorized,
    expired: seen.expired,
  };
}

async function metricLines(adminPort, prefix) {
  const text = await (await fetch(`http://${HOST}:${adminPort}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith(prefix));
}
const metricSum = (lines) => lines.reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);

/** A token-proxy instance for one scenario, started on the proxy core, ready when its ports answer. */
async function tokenProxy(env, name, upstreams, extra = {}, startOptions = {}) {
  const port = await freePort();
  const adminPort = await freePort();
  const cfg = env.tokenProxyConfig(name, { port, adminPort, upstreams, ...extra });
  const child = env.startTokenProxy(name, cfg, startOptions);
  await waitForPort(port, child);
  await waitForPort(adminPort, child);
  return { port, adminPort, child, cfg, origin: `http://${HOST}:${port}` };
}

// ---------------------------------------------------------------- CONNECT + TLS interception

export async function connectScenario(env) {
  const { PLAN, pki, tools, ts, authorization, upstreamHttpsPort, FORWARD_HOST, GET_CONNECTIONS } = env;
  const what = 'CONNECT + TLS interception with keep-alive: ≥ 20× mitmproxy';
  if (!pki)
    return {
      sections: ['## CONNECT + TLS interception\n\nSkipped: openssl is not installed.'],
      targets: [target(what, 'not measured (no openssl)', undefined)],
    };
  const caDir = join(work, 'mitm-ca');
  execFileSync(node, ['dist/cli.js', 'ca', 'init', '--out', caDir], { cwd: ROOT, stdio: 'ignore' });
  const setup = {
    upstreams: [
      {
        name: 'bench-tls',
        target: `https://${HOST}:${upstreamHttpsPort}`,
        hosts: [FORWARD_HOST],
        ca: pki.caFile,
        tokenUrl: ts.tokenUrl,
      },
    ],
    extra: { mitm: { caCert: join(caDir, 'ca.pem'), caKey: join(caDir, 'ca-key.pem') } },
    ca: readFileSync(join(caDir, 'ca.pem'), 'utf8'),
  };
  env.mitmSetup = setup; // the profile takes the same configuration again
  const tp = await tokenProxy(env, 'token-proxy-mitm', setup.upstreams, setup.extra);
  const mitmArgs = (port, confdir) => [
    '-q',
    '--listen-host',
    HOST,
    '--listen-port',
    String(port),
    '-s',
    'bench/proxies/mitm-addon.py',
    '--set',
    `confdir=${confdir}`,
    '--set',
    'ssl_insecure=false',
    '--set',
    `ssl_verify_upstream_trusted_ca=${pki.caFile}`,
  ];
  let mitm;
  let mitmProblem = tools.mitmproxy ? undefined : 'mitmproxy is not installed (`apt-get install -y mitmproxy`)';
  if (tools.mitmproxy) {
    const port = await freePort();
    const confdir = join(work, 'mitmproxy');
    const child = start('mitmproxy', PROXY_CORE, 'mitmdump', mitmArgs(port, confdir), {
      env: { AUTHORIZATION: authorization, UPSTREAM_HOST: HOST, UPSTREAM_PORT: String(upstreamHttpsPort) },
    });
    try {
      await waitForPort(port, child);
      const caFile = join(confdir, 'mitmproxy-ca-cert.pem');
      for (let i = 0; i < 100 && !existsSync(caFile); i += 1) await delay(50);
      mitm = { port, child, ca: readFileSync(caFile, 'utf8') };
    } catch (err) {
      mitmProblem = `mitmproxy did not start here (${oneLine(err.message)})`;
      say(`warning: ${mitmProblem}: its row is left out`);
      await stop(child);
    }
  }
  const path = '/hello';
  const configs = [
    {
      name: 'direct (HTTPS)',
      target: { origin: `https://${HOST}:${upstreamHttpsPort}`, path, ca: pki.ca, headers: { authorization } },
    },
    {
      name: 'token-proxy, CONNECT + mitm',
      child: tp.child,
      target: { proxy: tp.origin, origin: `https://${FORWARD_HOST}`, path, ca: setup.ca },
    },
    ...(mitm
      ? [
          {
            name: 'mitmproxy',
            child: mitm.child,
            target: { proxy: `http://${HOST}:${mitm.port}`, origin: `https://${FORWARD_HOST}`, path, ca: mitm.ca },
          },
        ]
      : []),
  ];
  const run = (c, seconds) =>
    measureNode(env, c, { op: 'closed', key: c.name, target: c.target, concurrency: GET_CONNECTIONS, seconds });
  say(
    `CONNECT + TLS interception, ${GET_CONNECTIONS} tunnels kept alive (Node load client), ${PLAN.connect.rounds} round(s) of ${PLAN.connect.seconds}s`,
  );
  // Warm-up: opens the tunnels (TLS handshakes, the one interception certificate), and checks each configuration works.
  for (const c of [...configs]) {
    const w = await run(c, PLAN.connect.warmupSeconds);
    if (w.requests > 0 && w.non2xx + w.socketErrors + w.unauthorized === 0) continue;
    const problem = `warm-up failed (${w.requests} answers, ${w.non2xx} non-2xx, ${w.socketErrors} errors${w.firstError ? `: ${w.firstError}` : ''}, ${w.unauthorized} upstream 401)`;
    if (c.name !== 'mitmproxy') throw new Error(`${c.name}: ${problem}${c.child ? `\n${logTail(c.child)}` : ''}`);
    mitmProblem = `mitmproxy: ${problem}`;
    say(`warning: ${mitmProblem}: its row is left out\n${logTail(c.child)}`);
    await env.load({ op: 'close', key: c.name });
    await stop(c.child);
    configs.splice(configs.indexOf(c), 1);
    mitm = undefined;
  }
  const results = await rounds(configs, PLAN.connect, run);
  for (const c of configs) await env.load({ op: 'close', key: c.name });
  const t = table(results, { unit: 'req/s', baselines: ['direct (HTTPS)', 'mitmproxy'], latency: true });
  await stop(tp.child);
  if (mitm) await stop(mitm.child);

  const targets = [
    mitm
      ? ((p) => target(what, `${pairedText(p)} mitmproxy`, p.ratio >= 20, { noisy: p.noisy }))(
          pairedRatio(results, 'token-proxy, CONNECT + mitm', 'mitmproxy'),
        )
      : target(what, `not measured: ${mitmProblem}`, undefined),
  ];
  const sections = [
    `## CONNECT + TLS interception, keep-alive (${PLAN.connect.rounds} round${PLAN.connect.rounds > 1 ? 's' : ''} × ${PLAN.connect.seconds}s, alternating)

The Node load client (bench/load-client.mjs: undici \`ProxyAgent\`, \`requestTls: { ca }\`) keeps ${GET_CONNECTIONS} requests in
flight, each on its own CONNECT tunnel to \`${FORWARD_HOST}:443\`, kept alive; inside, TLS with the proxy's
interception certificate (the client trusts the proxy's CA), then GET ${path}. The proxies reach the upstream over
HTTPS (node:https; a throwaway CA they trust: token-proxy through \`ca\`, mitmproxy through
\`ssl_verify_upstream_trusted_ca\`). "direct (HTTPS)" is the same client straight to the upstream over TLS. One
interception certificate is minted for the one host during the warm-up (${PLAN.connect.warmupSeconds}s per configuration), then reused.
Latency is per request, as the client sees it.${mitm ? '' : `\n\n${mitmProblem}: its row is left out.`}

${t.markdown}`,
  ];
  const commands = [
    [
      'token-proxy, CONNECT + mitm',
      'node dist/cli.js serve --config <yaml> (`hosts`, `ca`, `mitm` from `token-proxy ca init`)',
    ],
    ...(mitm
      ? [
          [
            'mitmproxy',
            `mitmdump ${mitmArgs('<port>', '<confdir>').join(' ')} (addon: static Authorization header; server connections to the upstream)`,
          ],
        ]
      : []),
  ];
  return {
    sections,
    targets,
    commands,
    details: [
      `<details><summary>token-proxy config (CONNECT + mitm)</summary>\n\n\`\`\`yaml\n${tp.cfg.text}\`\`\`\n</details>`,
    ],
  };
}

// ---------------------------------------------------------------- latency: fixed rate, one connection

export async function latencyScenario(env) {
  const { PLAN, ts, upstreamUrl, upstreamPort, authorization } = env;
  const nginxPort = await freePort();
  const nginx = env.nginxConfig(nginxPort, upstreamPort, authorization);
  const nginxChild = start('nginx-latency', PROXY_CORE, 'nginx', [
    '-p',
    nginx.dir,
    '-c',
    nginx.file,
    '-e',
    join(nginx.dir, 'error.log'),
  ]);
  await waitForPort(nginxPort, nginxChild);
  const tp = await tokenProxy(env, 'token-proxy-latency', [
    { name: 'bench', target: upstreamUrl, pathPrefix: '/bench', tokenUrl: ts.tokenUrl },
  ]);
  const configs = [
    {
      name: 'direct',
      url: `${upstreamUrl}/hello`,
      clientAuthorization: authorization,
      target: { origin: upstreamUrl, path: '/hello', headers: { authorization } },
    },
    {
      name: 'nginx',
      child: nginxChild,
      url: `http://${HOST}:${nginxPort}/hello`,
      target: { origin: `http://${HOST}:${nginxPort}`, path: '/hello' },
    },
    {
      name: 'token-proxy',
      child: tp.child,
      url: `${tp.origin}/bench/hello`,
      target: { origin: tp.origin, path: '/bench/hello' },
    },
  ];
  const { rate, seconds } = PLAN.latency;
  const connections = 64;
  const fixedRounds = PLAN.latency.rounds;
  say(
    `fixed rate: ${int(rate)} req/s, ${fixedRounds} round(s) of ${seconds}s each (open loop, Node load client), then one connection (wrk -c1)`,
  );
  // A new process first gets a few seconds at full speed: in its first seconds under load it
  // stalls for tens of ms at times (most likely its JIT, whose threads share the pinned core).
  // Then each run starts with a warm-up at the same rate, same schedule and connections, not recorded.
  for (const c of configs)
    await measureNode(env, c, {
      op: 'closed',
      target: c.target,
      concurrency: env.GET_CONNECTIONS,
      seconds: PLAN.latency.warmupSeconds * 2,
    });
  const warmupSeconds = PLAN.latency.warmupSeconds;
  const fixed = await rounds(configs, { rounds: fixedRounds, seconds }, (c, sec) =>
    measureNode(env, c, { op: 'rate', target: c.target, rate, seconds: sec, warmupSeconds, connections }),
  );
  const one = await rounds(configs, PLAN.latency.oneConnection, (c, sec) => env.measureWrk(c, sec, 1, undefined, true));
  await stop(tp.child);
  await stop(nginxChild);

  // Per configuration, the median over the rounds of each figure: one stall of 100 ms (another
  // process taking the core for a moment) moves a 10 s run's p99, not the median of three.
  const med = (runs, get) => median(runs.map(get));
  const byName = Object.fromEntries(
    fixed.map(({ config, runs }) => {
      const clean = runs.filter((x) => x.foreign <= DISTURBED);
      const use = clean.length * 2 >= runs.length ? clean : runs;
      const l = Object.fromEntries(
        ['p50', 'p90', 'p99', 'p999', 'max'].map((q) => [q, med(use, (x) => x.latencyMs[q])]),
      );
      return [
        config.name,
        {
          latencyMs: l,
          rps: med(use, (x) => x.rps),
          maxSendLagMs: Math.max(...runs.map((x) => x.maxSendLagMs)),
          cpuMicrosPerRequest: med(use, (x) => x.cpuMicrosPerRequest),
          cpuBusy: med(use, (x) => x.cpuBusy),
          proxyCore: med(use, (x) => x.proxyCore),
          foreign: Math.max(...runs.map((x) => x.foreign)),
          noisy: use !== clean,
          clean: clean.length,
          count: runs.length,
          non2xx: runs.reduce((a, x) => a + x.non2xx, 0),
          socketErrors: runs.reduce((a, x) => a + x.socketErrors, 0),
          unauthorized: runs.reduce((a, x) => a + x.unauthorized, 0),
        },
      ];
    }),
  );
  const d = byName.direct.latencyMs;
  const lines = [
    `| configuration | achieved req/s | p50 (ms) | p90 | p99 | p99.9 | max | added p50 over direct | added p99 over direct | client behind schedule (max ms) | proxy CPU µs/req | core ${PROXY_CORE} busy: proxy / all | clean runs | other processes (max) | errors: non-2xx / socket / upstream 401 |`,
    '|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
  ];
  for (const { config } of fixed) {
    const r = byName[config.name];
    const l = r.latencyMs;
    const added = (q) => (config.name === 'direct' ? '–' : `${ms(l[q] - d[q], 3)} ms`);
    lines.push(
      `| ${config.name}${r.noisy ? ' ⚠ noisy' : ''} | ${int(r.rps)} | ${ms(l.p50, 3)} | ${ms(l.p90, 3)} | ${ms(l.p99, 3)} | ${ms(l.p999, 3)} | ${ms(l.max, 1)} | ${added('p50')} | ${added('p99')} | ${ms(r.maxSendLagMs, 1)} | ${config.child ? r.cpuMicrosPerRequest.toFixed(1) : '–'} | ${config.child ? pct(r.cpuBusy) : '–'} / ${pct(r.proxyCore)} | ${r.clean}/${r.count} | ${pct(r.foreign)} | ${r.non2xx} / ${r.socketErrors} / ${r.unauthorized} |`,
    );
  }
  const oneBy = Object.fromEntries(
    one.map((r) => [
      r.config.name,
      {
        rps: median(r.runs.map((x) => x.rps)),
        p50: median(r.runs.map((x) => x.latencyMs.p50)),
        p99: median(r.runs.map((x) => x.latencyMs.p99)),
        noisy: r.runs.filter((x) => x.foreign > DISTURBED).length * 2 > r.runs.length,
        errors: r.runs.reduce((a, x) => a + x.non2xx + x.socketErrors + x.unauthorized, 0),
      },
    ]),
  );
  const perRequest = (name) => 1e6 / oneBy[name].rps;
  const oneLines = [
    '| configuration | req/s (median) | µs per request (1 / rate) | added µs over direct | added µs over nginx | wrk p50 / p99 (ms) | errors |',
    '|---|--:|--:|--:|--:|--:|--:|',
    ...configs.map((c) => {
      const o = oneBy[c.name];
      const over = (b) => (c.name === b || c.name === 'direct' ? '–' : (perRequest(c.name) - perRequest(b)).toFixed(0));
      return `| ${c.name}${o.noisy ? ' ⚠ noisy' : ''} | ${int(o.rps)} | ${perRequest(c.name).toFixed(0)} | ${over('direct')} | ${over('nginx')} | ${ms(o.p50, 3)} / ${ms(o.p99, 3)} | ${o.errors} |`;
    }),
  ];
  const tpL = byName['token-proxy'].latencyMs;
  const fixedNoisy = byName['token-proxy'].noisy || byName.direct.noisy;
  const behind = Math.max(...Object.values(byName).map((r) => r.maxSendLagMs));
  const note =
    behind > 5 ? `the load client fell ${ms(behind, 0)} ms behind its schedule: latencies include its own delay` : '';
  const oneAdded = perRequest('token-proxy') - perRequest('direct');
  const targets = [
    target(
      `added latency at a fixed ${int(rate)} req/s: p50 ≤ 0.3 ms over direct`,
      `${ms(tpL.p50 - d.p50, 3)} ms`,
      tpL.p50 - d.p50 <= 0.3,
      { noisy: fixedNoisy, note: `${rate === 5000 ? '' : 'issue 8 says 5,000 req/s; '}${note}`.replace(/; $/, '') },
    ),
    target(
      `added latency at a fixed ${int(rate)} req/s: p99 ≤ 1.5 ms over direct`,
      `${ms(tpL.p99 - d.p99, 3)} ms`,
      tpL.p99 - d.p99 <= 1.5,
      { noisy: fixedNoisy, note },
    ),
    target('added latency at one connection: ≤ 120 µs per request', `${oneAdded.toFixed(0)} µs`, oneAdded <= 120, {
      noisy: oneBy['token-proxy'].noisy || oneBy.direct.noisy,
      note: `nginx adds ${(perRequest('nginx') - perRequest('direct')).toFixed(0)} µs in the same placement: each hop crosses cores and wakes the other one`,
    }),
  ];
  const sections = [
    `## Added latency: a fixed ${int(rate)} req/s (${fixedRounds} round${fixedRounds > 1 ? 's' : ''} × ${seconds}s), and one connection

Fixed rate: the Node load client sends on an open-loop schedule (request i due at t0 + i/rate, up to ${connections}
connections) and counts each latency from when the request was due, so queueing behind a slow answer is not hidden
(what wrk2 does; Debian's wrk has no \`-R\`). Each process first gets ${PLAN.latency.warmupSeconds * 2}s of closed-loop load (${env.GET_CONNECTIONS}
connections): a new Node process stalls for tens of ms at times in its first seconds under load (its JIT, whose
compiler threads share the pinned core, most likely), which says nothing about its steady state. Each run's first ${PLAN.latency.warmupSeconds}s (same schedule, same connections) are not recorded either; the percentiles are over
the ${int(rate * seconds)} requests after it, then the median over ${fixedRounds} round${fixedRounds > 1 ? 's' : ''} (alternating). The client's own delays
(its event loop, timers) are in every row alike, "direct" included ("client behind schedule": how late it sent, at most).

${lines.join('\n')}

One connection: \`wrk -t1 -c1 -d${PLAN.latency.oneConnection.seconds}s --latency\`, ${PLAN.latency.oneConnection.rounds} round(s), median; a request's time is 1 / the request rate.
With the proxy on the other core, every request crosses cores twice and wakes an idle core each time, which any
proxy pays in this placement: "added over nginx" is what token-proxy costs beyond that.

${oneLines.join('\n')}`,
  ];
  return { sections, targets };
}

// ---------------------------------------------------------------- cold cache

export async function coldScenario(env) {
  const { PLAN, ts, upstreamUrl, COLD_TOKEN_DELAY_MS } = env;
  const count = 1000;
  const listener = await env.tokenListener(ts, { lifetime: 3600, delayMs: COLD_TOKEN_DELAY_MS });
  say(
    `cold cache: ${count} simultaneous requests on a fresh token-proxy, token endpoint ${COLD_TOKEN_DELAY_MS} ms late; ${PLAN.cold.rounds} round(s)`,
  );
  // "fresh process" is the target's scenario. "warmed process" tells the token wait apart from a
  // new process's own warm-up (JIT, first requests): the same, but the process first serves two
  // bursts on another upstream (same target, a token from the prompt endpoint).
  const variants = [
    { name: 'fresh process', warmPaths: [], upstreams: [] },
    {
      name: 'warmed process',
      warmPaths: ['/warm/hello', '/warm/hello'],
      upstreams: [{ name: 'warm', target: upstreamUrl, pathPrefix: '/warm', tokenUrl: ts.tokenUrl }],
    },
  ];
  const runs = [];
  for (let i = 0; i < PLAN.cold.rounds; i += 1) {
    for (const v of variants) {
      const tp = await tokenProxy(env, `token-proxy-cold-${i + 1}`, [
        { name: 'bench', target: upstreamUrl, pathPrefix: '/bench', tokenUrl: listener.tokenUrl },
        ...v.upstreams,
      ]);
      const key = `cold-${i}`;
      const burst = (path) => env.load({ op: 'burst', key, target: { origin: tp.origin, path }, count });
      const before = sample();
      // The connections are opened first by a burst the proxy answers itself (404, no route: no
      // token involved), so the cold and the warm burst both run on open connections.
      await burst('/not-routed');
      for (const path of v.warmPaths) await burst(path);
      await env.upstream.stats();
      const issuedBefore = listener.issued.length;
      const durationsBefore = listener.durations.length;
      const cold = await burst('/bench/hello');
      const coldUpstream = await env.upstream.stats();
      const warm = await burst('/bench/hello');
      const warmUpstream = await env.upstream.stats();
      const cpu = cpuBetween(before, sample(), tp.child.pid);
      await env.load({ op: 'close', key });
      const refreshes = metricSum(
        (await metricLines(tp.adminPort, 'token_proxy_token_refreshes_total{')).filter((l) =>
          l.includes('upstream="bench"'),
        ),
      );
      await stop(tp.child);
      const endpoint = median(listener.durations.slice(durationsBefore));
      runs.push({
        round: i + 1,
        variant: v.name,
        cold,
        warm,
        coldUpstream,
        warmUpstream,
        tokenRequests: listener.issued.length - issuedBefore,
        refreshes,
        endpoint,
        foreign: cpu.foreign,
        diff: cold.latencyMs.p99 - warm.latencyMs.p99,
      });
      say(
        `  round ${i + 1}, ${v.name}: cold p99 ${ms(cold.latencyMs.p99, 1)} ms, warm p99 ${ms(warm.latencyMs.p99, 1)} ms, ${listener.issued.length - issuedBefore} token request(s)`,
      );
    }
  }
  await listener.close();
  const lines = [
    '| round | process | token requests (endpoint / proxy metric) | token endpoint latency (ms) | cold: 2xx of 1,000 | cold p50 / p99 / max (ms) | warm: 2xx of 1,000 | warm p50 / p99 / max (ms) | cold p99 − warm p99 (ms) | client connections | new upstream connections: cold / warm | other processes |',
    '|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...runs.map((r) => {
      const ok = (b) => b.requests - b.non2xx;
      const l = (b) => `${ms(b.latencyMs.p50, 1)} / ${ms(b.latencyMs.p99, 1)} / ${ms(b.latencyMs.max, 1)}`;
      return `| ${r.round}${r.foreign > DISTURBED ? ' ⚠ noisy' : ''} | ${r.variant} | ${r.tokenRequests} / ${r.refreshes} | ${ms(r.endpoint, 1)} | ${ok(r.cold)}${r.cold.errors ? ` (${r.cold.errors} errors: ${r.cold.firstError})` : ''} | ${l(r.cold)} | ${ok(r.warm)} | ${l(r.warm)} | ${ms(r.diff, 1)} | ${r.cold.connections ?? '–'} | ${r.coldUpstream.connections} / ${r.warmUpstream.connections} | ${pct(r.foreign)} |`;
    }),
  ];
  const fresh = runs.filter((r) => r.variant === 'fresh process');
  const warmed = runs.filter((r) => r.variant === 'warmed process');
  const allComplete = runs.every(
    (r) =>
      r.cold.requests === count &&
      r.cold.non2xx === 0 &&
      r.cold.errors === 0 &&
      r.warm.requests === count &&
      r.warm.non2xx === 0 &&
      r.coldUpstream.unauthorized + r.warmUpstream.unauthorized === 0,
  );
  const oneToken = runs.every((r) => r.tokenRequests === 1 && r.refreshes === 1);
  const diff = median(fresh.map((r) => r.diff));
  const endpoint = median(fresh.map((r) => r.endpoint));
  const noisy = fresh.filter((r) => r.foreign > DISTURBED).length * 2 > fresh.length;
  const targets = [
    target(
      'cold cache, 1,000 simultaneous requests: exactly 1 token request',
      runs.map((r) => r.tokenRequests).join(', '),
      oneToken,
    ),
    target(
      'cold cache: every request completes',
      allComplete ? `${count} of ${count} answered 200, every burst` : 'some failed (see the table)',
      allComplete,
    ),
    target(
      'cold cache: cold p99 − warm p99 ≤ token endpoint latency + 10 ms',
      `${ms(diff, 1)} ms (endpoint ${ms(endpoint, 1)} ms; a warmed process: ${ms(median(warmed.map((r) => r.diff)), 1)} ms)`,
      diff <= endpoint + 10,
      { noisy },
    ),
  ];
  const sections = [
    `## Cold cache: ${count} simultaneous requests on a fresh token-proxy (${PLAN.cold.rounds} round${PLAN.cold.rounds > 1 ? 's' : ''})

A new token-proxy process per row; its token endpoint answers ${COLD_TOKEN_DELAY_MS} ms late (the token server behind a
delaying listener; "token endpoint latency" is its median answer time, delay included). The Node load client opens
${count} connections first (a burst to a path without a route, which the proxy answers itself), then sends ${count}
requests at the same moment (cold: no token yet), then the same burst again (warm: token cached). Latency counts
from the moment the burst starts. The target is about the "fresh process" rows; a "warmed process" first serves two
bursts on another upstream (same target, a token from the prompt endpoint), so its cold burst pays for the token
and the new upstream connections but not for the process's own warm-up (JIT).

${lines.join('\n')}`,
  ];
  return { sections, targets };
}

// ---------------------------------------------------------------- 5 s tokens and a 401 storm

export async function refreshScenario(env) {
  const { PLAN, ts, upstreamUrl, SHORT_TOKEN_SECONDS } = env;
  const { seconds, rate, stormAt } = PLAN.refresh;
  const listener = await env.tokenListener(ts, { lifetime: SHORT_TOKEN_SECONDS });
  const tp = await tokenProxy(env, 'token-proxy-short-tokens', [
    { name: 'bench', target: upstreamUrl, pathPrefix: '/bench', tokenUrl: listener.tokenUrl },
  ]);
  const targetSpec = { origin: tp.origin, path: '/bench/hello' };
  say(`5 s tokens: ${int(rate)} req/s for ${seconds}s, the upstream revokes the current token at ${stormAt}s`);
  // The first token, and the same warm-up as in the latency scenario (JIT: see there).
  await env.load({
    op: 'closed',
    target: targetSpec,
    concurrency: env.GET_CONNECTIONS,
    seconds: PLAN.latency.warmupSeconds * 2,
  });
  await env.upstream.stats();
  const samplesFile = join(work, 'refresh-samples.bin');
  const issuedBefore = listener.issued.length;
  const before = sample();
  const running = env.load(
    { op: 'rate', target: targetSpec, rate, seconds, warmupSeconds: 1, connections: 64, samplesFile },
    (seconds + 90) * 1000,
  );
  await delay((1 + stormAt) * 1000);
  const stormStart = Date.now();
  await env.upstream.revoke();
  const r = await running;
  const cpu = cpuBetween(before, sample(), tp.child.pid);
  const seen = await env.upstream.stats();
  const retries = await metricLines(tp.adminPort, 'token_proxy_unauthorized_retries_total{');
  const refreshes = await metricLines(tp.adminPort, 'token_proxy_token_refreshes_total{');
  await stop(tp.child);
  await listener.close();

  // Per request: when it was due (epoch ms), its latency (ms), its status (0: no answer).
  const bytes = readFileSync(samplesFile);
  const raw = new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  const n = raw.length / 3;
  const first = raw[0];
  const issued = listener.issued.slice(issuedBefore);
  const stormEnd = stormStart + 1000;
  const moments = issued.filter((t) => t < stormStart - 250 || t > stormEnd + 250);
  const near = (w0) => moments.some((t) => w0 < t + 250 && w0 + 100 > t - 250); // the 100 ms window overlaps ±250 ms of a refresh
  const groups = { refresh: [], steady: [], storm: [] };
  let stormFailed = 0;
  for (let i = 0; i < n; i += 1) {
    const due = raw[i * 3];
    const latency = raw[i * 3 + 1];
    const status = raw[i * 3 + 2];
    const ok = status >= 200 && status < 300;
    const w0 = first + Math.floor((due - first) / 100) * 100;
    const inStorm = w0 < stormEnd && w0 + 100 > stormStart;
    if (!ok && inStorm) stormFailed += 1;
    (inStorm ? groups.storm : near(w0) ? groups.refresh : groups.steady).push(latency);
  }
  for (const g of Object.values(groups)) g.sort((a, b) => a - b);
  const p = (g, q) => percentile(g, q);
  const refreshP99 = p(groups.refresh, 0.99);
  const steadyP99 = p(groups.steady, 0.99);
  const noisy = cpu.foreign > DISTURBED;
  const recovered = metricSum(retries.filter((l) => l.includes('recovered')));
  const lines = [
    '| | |',
    '|---|--:|',
    `| load | ${int(rate)} req/s scheduled for ${seconds}s: ${int(r.requests + r.errors)} requests, ${int(r.rps)} req/s achieved |`,
    `| client: non-2xx / no answer | ${r.non2xx} / ${r.errors}${r.firstError ? ` (${r.firstError})` : ''} |`,
    `| tokens issued during the run (${SHORT_TOKEN_SECONDS} s lifetime) | ${issued.length} (one every ${(seconds / Math.max(1, issued.length)).toFixed(1)} s); proxy metric: ${refreshes.map((l) => l.replace(/^token_proxy_token_refreshes_total/, '')).join(', ')} |`,
    `| upstream: expired tokens received | ${seen.expired} |`,
    `| upstream: 401s to the revoked token (the storm) | ${seen.revoked}; proxy replays after a 401: ${retries.map((l) => l.replace(/^token_proxy_unauthorized_retries_total/, '')).join(', ') || 'none'} |`,
    `| p99 in 100 ms windows within ±250 ms of a refresh (${moments.length} refreshes, ${int(groups.refresh.length)} requests) | ${ms(refreshP99, 3)} ms (p50 ${ms(p(groups.refresh, 0.5), 3)}) |`,
    `| p99 elsewhere (${int(groups.steady.length)} requests) | ${ms(steadyP99, 3)} ms (p50 ${ms(p(groups.steady, 0.5), 3)}) |`,
    `| ratio | ${ratio(refreshP99, steadyP99)} |`,
    `| the storm second (${int(groups.storm.length)} requests): failed / p99 / max | ${stormFailed} / ${ms(p(groups.storm, 0.99), 3)} ms / ${ms(p(groups.storm, 1), 1)} ms |`,
    `| proxy CPU µs/req; other processes | ${((cpu.proxyCpu / r.requests) * 1e6).toFixed(1)}; ${pct(cpu.foreign)}${noisy ? ' ⚠ noisy' : ''} |`,
  ];
  const targets = [
    target(
      `${seconds} s with ${SHORT_TOKEN_SECONDS} s tokens: zero non-2xx answers`,
      `${r.non2xx} non-2xx, ${r.errors} without answer`,
      r.non2xx === 0 && r.errors === 0,
    ),
    target(
      `${seconds} s with ${SHORT_TOKEN_SECONDS} s tokens: zero expired tokens reaching the upstream`,
      String(seen.expired),
      seen.expired === 0,
    ),
    target(
      'p99 during refresh moments ≤ 1.2× p99 elsewhere',
      `${ratio(refreshP99, steadyP99)} (${ms(refreshP99, 2)} / ${ms(steadyP99, 2)} ms)`,
      refreshP99 <= 1.2 * steadyP99,
      { noisy, note: moments.length === 0 ? 'no refresh moment' : '' },
    ),
    target(
      'forced 401 storm: zero failed client requests',
      `${stormFailed} failed; ${seen.revoked} upstream 401s replayed (${recovered} recovered)`,
      stormFailed === 0 && seen.revoked > 0,
    ),
  ];
  const sections = [
    `## ${seconds} s of steady load with ${SHORT_TOKEN_SECONDS} s tokens, then a forced 401 storm

A fresh token-proxy whose token endpoint issues tokens living ${SHORT_TOKEN_SECONDS} s (\`expires_in\` ${SHORT_TOKEN_SECONDS}, JWT \`exp\` to match), under
${int(rate)} req/s on the Node load client's open-loop schedule, after ${PLAN.latency.warmupSeconds * 2}s of closed-loop warm-up and a first second at that rate that is not
recorded (as in the latency scenario). The upstream checks every token's \`exp\` against its own
clock. Refresh moments are when the token server issued a token; requests are grouped in 100 ms windows (by
when they were due), and a window within ±250 ms of a refresh moment counts as "during a refresh". At ${stormAt} s the
upstream starts rejecting the token it saw last (a revocation, by IPC): every request carrying it gets a 401,
which the proxy must absorb by renewing and replaying once; the second after the revocation is reported apart.

${lines.join('\n')}`,
  ];
  return { sections, targets };
}

// ---------------------------------------------------------------- memory of cached tenant tokens

export async function memoryScenario(env) {
  const count = 100_000;
  const out = await runPinned('token-memory', LOAD_CORE, node, [
    '--expose-gc',
    'bench/token-memory.mjs',
    '--count',
    String(count),
    '--chars',
    String(env.TOKEN_CHARS),
  ]);
  const m = JSON.parse(out.trim().split('\n').at(-1));
  const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;
  const added = (g) => g.heapBytes + g.externalBytes;
  const lines = [
    '| state | heap growth | outside the heap | together | per token | heap committed | RSS growth |',
    '|---|--:|--:|--:|--:|--:|--:|',
    `| ${int(m.count)} tokens stored | ${mb(m.stored.heapBytes)} | ${mb(m.stored.externalBytes)} | ${mb(added(m.stored))} | ${int(added(m.stored) / m.count)} bytes | ${mb(m.stored.heapCommittedBytes)} | ${mb(m.stored.rssBytes)} |`,
    `| after each was sent once | ${mb(m.afterUse.heapBytes)} | ${mb(m.afterUse.externalBytes)} | ${mb(added(m.afterUse))} | ${int(added(m.afterUse) / m.count)} bytes | ${mb(m.afterUse.heapCommittedBytes)} | ${mb(m.afterUse.rssBytes)} |`,
  ];
  const worst = Math.max(added(m.stored), added(m.afterUse));
  return {
    sections: [
      `## Memory: ${int(count)} cached tenant tokens

\`node --expose-gc bench/token-memory.mjs\`: makes ${int(count)} tenants' cache keys as the proxy does at start-up
(\`cacheKey\` of upstream, tenant and credentials; each tenant's \`TokenSource\` holds its key from then on, cached
token or not: ${mb(m.keys.heapBytes)}, ${int(m.keys.heapBytes / m.count)} bytes a tenant, not counted below). Then creates token-proxy's
\`TokenCache\` (dist/; its fixed-size arrays count) and fills it with ${int(count)} \`Token\` objects of ${m.tokenChars}-character
tokens, and measures what that added after full GCs, on the V8 heap and outside it (lru-cache's typed arrays); then
writes each token's \`Authorization\` value once, as a request does, and measures again (a \`Bearer \` + token string
that V8 built as a concatenation would keep a flat second copy of the token once written; the proxy builds it flat,
so the two figures should agree). The floor: the 807-character header string alone is 824 bytes. Not included: a
\`TokenSource\` per tenant, its metric label values and credentials (made at start-up for every configured tenant).
Peak RSS of the proxies under load is in the tables above.

${lines.join('\n')}`,
    ],
    targets: [
      target(
        '100,000 cached tenant tokens add ≤ 100 MB',
        `${mb(added(m.stored))} stored, ${mb(added(m.afterUse))} once each was sent`,
        worst <= 100e6,
      ),
    ],
  };
}

// ---------------------------------------------------------------- where the time goes

/** CLOCK_MONOTONIC in µs: the clock of V8's CPU profiles, in every process. */
const monotonicUs = () => Number(process.hrtime.bigint() / 1000n);

/**
 * Runs one token-proxy with --cpu-prof under `drive(tp, measured)`, then summarizes the profile V8
 * wrote at exit over the measured part only (`measured(fn)` marks it), without start-up and warm-up.
 */
async function profiled(env, name, upstreams, extra, drive, startOptions = {}) {
  const dir = join(work, `cpu-profile-${name}`);
  const tp = await tokenProxy(env, `token-proxy-profiled-${name}`, upstreams, extra, {
    ...startOptions,
    nodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir],
  });
  const window = {};
  let foreign = 0;
  const measured = async (fn) => {
    const before = sample();
    window.fromUs = monotonicUs();
    const result = await fn();
    window.toUs = monotonicUs();
    foreign = cpuBetween(before, sample()).foreign;
    return result;
  };
  const { rps, requests } = await drive(tp, measured);
  await stop(tp.child, 10_000); // SIGTERM: the CLI drains and exits, and V8 writes the profile
  const file = existsSync(dir) ? readdirSync(dir).find((f) => f.endsWith('.cpuprofile')) : undefined;
  if (file === undefined) return undefined;
  const profile = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  return {
    rps,
    requests,
    foreign,
    profile,
    window,
    summary: summarizeProfile(profile, 20, window),
    before: summarizeProfile(profile, 3, { toUs: window.fromUs }),
  };
}

/**
 * Where the time goes: token-proxy under the small GET (reverse mode, wrk), the same in forward
 * mode and with the access log on (when the small GET ran), and CONNECT + TLS interception (when
 * that ran), each with --cpu-prof: self time by area and by function in the steady state, and
 * what forward mode and the access log cost per request beyond reverse mode. Each profile's
 * steady state is also drawn as a flame graph: `flameGraphs.dir` is where the SVG files go,
 * `flameGraphs.link(file)` how the document refers to one.
 */
export async function profileScenario(env, { missed, flameGraphs }) {
  const { PLAN, ts, upstreamUrl, GET_CONNECTIONS, FORWARD_HOST } = env;
  const seconds = PLAN.profileSeconds;
  const warmup = PLAN.latency.warmupSeconds * 2; // as long as the latency scenario's: the JIT tiers up meanwhile
  const upstreams = [
    { name: 'bench', target: upstreamUrl, pathPrefix: '/bench', hosts: [FORWARD_HOST], tokenUrl: ts.tokenUrl },
  ];
  const smallGet = (path, script) => async (tp, measured) => {
    const config = { name: 'token-proxy (profiled)', child: tp.child, url: `${tp.origin}${path}`, script };
    await env.measureWrk(config, warmup, GET_CONNECTIONS);
    const r = await measured(() => env.measureWrk(config, seconds, GET_CONNECTIONS));
    return { rps: r.rps, requests: r.requests };
  };
  const runs = [
    {
      key: 'reverse',
      title: 'Small GET, reverse mode',
      what: `the small GET (reverse mode, ${GET_CONNECTIONS} connections)`,
      run: () => profiled(env, 'get', upstreams, {}, smallGet('/bench/hello')),
    },
  ];
  if (env.forwardScript !== undefined) {
    runs.push(
      {
        key: 'forward',
        title: 'Small GET, forward mode',
        what: 'the same in forward mode (absolute-form)',
        run: () => profiled(env, 'forward', upstreams, {}, smallGet('/', env.forwardScript)),
      },
      {
        key: 'log',
        title: 'Small GET, reverse mode, access log on',
        what: 'reverse mode with the access log on (stdout to /dev/null)',
        run: () =>
          profiled(env, 'access-log', upstreams, { accessLog: true }, smallGet('/bench/hello'), {
            stdout: '/dev/null',
          }),
      },
    );
  }
  const s = env.mitmSetup;
  if (s !== undefined) {
    runs.push({
      key: 'connect',
      title: 'CONNECT + TLS interception',
      what: `CONNECT + TLS interception (${GET_CONNECTIONS} tunnels)`,
      run: () =>
        profiled(env, 'connect', s.upstreams, s.extra, async (tp, measured) => {
          const msg = {
            op: 'closed',
            key: 'profile',
            target: { proxy: tp.origin, origin: `https://${FORWARD_HOST}`, path: '/hello', ca: s.ca },
            concurrency: GET_CONNECTIONS,
          };
          await env.load({ ...msg, seconds: warmup });
          const r = await measured(() => env.load({ ...msg, seconds }, (seconds + 60) * 1000));
          await env.load({ op: 'close', key: 'profile' });
          return { rps: r.rps, requests: r.requests };
        }),
    });
  }
  for (const r of runs) {
    say(`CPU profile: token-proxy under ${r.what} for ${seconds}s (node --cpu-prof)`);
    r.result = await r.run();
  }
  const done = runs.filter((r) => r.result !== undefined);
  if (done.length === 0)
    return {
      markdown: '## Where the time goes\n\nNo CPU profile was written (the profiled proxy did not exit cleanly).',
    };
  const by = Object.fromEntries(done.map((r) => [r.key, r.result]));
  // One-time costs (start-up, first connections) are left out of the tables; their biggest items, in a line.
  const beforeLine = (p) =>
    `Before the measured part (start-up and warm-up, ${(p.before.busyMs / 1000).toFixed(1)} s busy), the top functions were: ${p.before.functions.map((f) => `\`${f.name}\` (${f.where || f.area}) ${pct(f.share)}`).join(', ')}.`;
  const diffAgainstReverse = (key, name) =>
    by.reverse && by[key]
      ? `\n\n${diffMarkdown(profileDiff(by.reverse.summary, by.reverse.requests, by[key].summary, by[key].requests), 'reverse mode', name)}`
      : '';
  const extra = {
    forward: diffAgainstReverse('forward', 'forward mode'),
    log: diffAgainstReverse('log', 'the access log on'),
  };
  mkdirSync(flameGraphs.dir, { recursive: true });
  for (const r of done) {
    const file = join(flameGraphs.dir, `${r.key}.svg`);
    writeFileSync(
      file,
      flameGraphSvg(r.result.profile, {
        title: `token-proxy: ${r.title}, ${seconds} s of steady load`,
        window: r.result.window,
      }),
    );
    r.flameGraph = flameGraphs.link(file);
  }
  const top = (p) =>
    p.summary.areas
      .slice(0, 4)
      .map((a) => `${a.name} ${pct(a.share)}`)
      .join(', ');
  const under = done
    .map((r) => `under ${r.what}, ${int(r.result.rps)} req/s with the profiler on: ${top(r.result)}`)
    .join('; ');
  const why =
    missed.length === 0
      ? `Every measured target was met; the profiles are a reference for the next change to the hot path. Busiest areas ${under}.`
      : `Missed in this run: ${missed.map((t) => t.what).join('; ')}. Where token-proxy's busy time goes ${under}.`;
  return {
    markdown: `## Where the time goes

${why}

\`node --cpu-prof dist/cli.js serve\`, a ${warmup} s warm-up (its first connections, TLS set-up included), then ${seconds} s of load:
only the samples of those ${seconds} s count (the steady state). Self time, so a function's callees are not in its
share; idle time is left out. \`node bench/cpu-profile.mjs <file.cpuprofile>\` prints a whole profile the same way.
Each profile is also drawn as a flame graph of the same seconds (SVG: a box per call path, as wide as its time with
its callees, coloured by area; hover a box for its time; \`node bench/flame-graph.mjs <file.cpuprofile>\` draws one).

${done.map((r) => `### ${r.title}${r.result.foreign > DISTURBED ? ' ⚠ noisy' : ''}\n\n${r.result.foreign > DISTURBED ? `Other processes took ${pct(r.result.foreign)} of a core during this profile.\n\n` : ''}Flame graph: [${r.flameGraph}](${r.flameGraph})\n\n${profileMarkdown(r.result.summary)}${extra[r.key] ?? ''}\n\n${beforeLine(r.result)}`).join('\n\n')}
`,
  };
}
