// The benchmark's Node load generator, for what wrk cannot do: CONNECT tunnels (undici
// ProxyAgent, TLS inside with the proxy's CA trusted), a fixed request rate, bursts of
// simultaneous requests, and per-request timestamps. run.mjs starts it pinned to the load core
// with an IPC channel and sends it { id, op, ... }; it answers { id, result } or { id, error }.
//
// Targets: { origin, path, method?, headers?, ca?, proxy? }. With `proxy` every connection is a
// CONNECT tunnel through that proxy (kept alive, one per concurrent request), TLS inside it
// trusting `ca`; without, a keep-alive pool straight to `origin` (`ca` for https origins).
//
// Ops:
// - closed { target, concurrency, seconds, key? }: `concurrency` loops, each sending its next
//   request when the last answer is in, for `seconds`; req/s and latency percentiles.
// - rate { target, rate, seconds, connections, warmupSeconds?, key?, samplesFile? }: an open-loop
//   schedule of `rate` requests per second (request i is due at t0 + i/rate, sent then whatever
//   came before, and its latency counts from when it was due, so a slow server cannot hide
//   queueing: no coordinated omission). The first warmupSeconds of the schedule are sent but not
//   recorded (new connections, JIT). With samplesFile, writes (due time in epoch ms, latency ms,
//   status) per recorded request as Float64 triplets.
// - burst { target, count, key? }: `count` requests at the same moment over `count` connections
//   (with a key, a burst to a path the proxy answers itself opens them for the measured bursts).
// - close { key }: closes a kept dispatcher (a `key` keeps connections across ops).
import { Buffer } from 'node:buffer';
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { setTimeout } from 'node:timers';
import { setTimeout as delay } from 'node:timers/promises';
import { Pool, ProxyAgent } from 'undici';

const kept = new Map();

function makeDispatcher(target, connections) {
  if (target.proxy !== undefined) {
    return new ProxyAgent({
      uri: target.proxy,
      connections,
      requestTls: target.ca === undefined ? undefined : { ca: target.ca },
    });
  }
  return new Pool(target.origin, {
    connections,
    pipelining: 1,
    keepAliveTimeout: 120_000,
    keepAliveMaxTimeout: 120_000,
    connect: target.ca === undefined ? undefined : { ca: target.ca },
  });
}

/** A kept dispatcher (same key: same connections), or a new one closed after the op. */
function dispatcherFor(msg, connections) {
  if (msg.key === undefined) return { d: makeDispatcher(msg.target, connections), done: (d) => d.close() };
  let d = kept.get(msg.key);
  if (d === undefined) kept.set(msg.key, (d = makeDispatcher(msg.target, connections)));
  return { d, done: async () => undefined };
}

async function send(d, target, path = target.path) {
  const { statusCode, body } = await d.request({
    origin: target.origin,
    path,
    method: target.method ?? 'GET',
    headers: target.headers,
  });
  await body.dump();
  return statusCode;
}

function percentiles(latencies, n) {
  const s = Float64Array.from(latencies.subarray(0, n)).sort();
  const at = (q) => (n === 0 ? NaN : s[Math.min(n - 1, Math.ceil(q * n) - 1)]);
  let sum = 0;
  for (let i = 0; i < n; i += 1) sum += s[i];
  return {
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    p999: at(0.999),
    max: n === 0 ? NaN : s[n - 1],
    mean: n === 0 ? NaN : sum / n,
  };
}

class Tally {
  constructor(size) {
    this.latency = new Float64Array(size);
    this.n = 0;
    this.non2xx = 0;
    this.errors = 0;
    this.firstError = undefined;
    this.statuses = {};
  }

  ok(ms, status) {
    if (this.n === this.latency.length) {
      const bigger = new Float64Array(this.latency.length * 2);
      bigger.set(this.latency);
      this.latency = bigger;
    }
    this.latency[this.n++] = ms;
    if (status < 200 || status > 299) this.non2xx += 1;
    this.statuses[status] = (this.statuses[status] ?? 0) + 1;
  }

  fail(err) {
    this.errors += 1;
    this.firstError ??= `${err.code ?? ''} ${err.message}`.trim();
  }

  summary(seconds) {
    return {
      requests: this.n,
      seconds,
      rps: this.n / seconds,
      non2xx: this.non2xx,
      errors: this.errors,
      firstError: this.firstError,
      statuses: this.statuses,
      latencyMs: percentiles(this.latency, this.n),
    };
  }
}

const ops = {
  async closed(msg) {
    const { d, done } = dispatcherFor(msg, msg.concurrency);
    const tally = new Tally(1 << 16);
    const started = performance.now();
    const end = started + msg.seconds * 1000;
    async function loop() {
      while (performance.now() < end) {
        const t0 = performance.now();
        try {
          const status = await send(d, msg.target);
          tally.ok(performance.now() - t0, status);
        } catch (err) {
          tally.fail(err);
          await delay(10);
        }
      }
    }
    await Promise.all(Array.from({ length: msg.concurrency }, loop));
    const seconds = (performance.now() - started) / 1000;
    await done(d);
    return tally.summary(seconds);
  },

  async rate(msg) {
    const { d, done } = dispatcherFor(msg, msg.connections);
    const skip = Math.round(msg.rate * (msg.warmupSeconds ?? 0)); // sent, not recorded
    const total = skip + Math.max(1, Math.round(msg.rate * msg.seconds));
    const interval = 1000 / msg.rate;
    const due = new Float64Array(total);
    const latency = new Float64Array(total);
    const status = new Float64Array(total);
    const tally = new Tally(total);
    let maxLag = 0;
    let completed = 0;
    let allDone;
    const finished = new Promise((resolve) => (allDone = resolve));
    const t0 = performance.now() + 20;
    const fire = (i) => {
      const at = t0 + i * interval;
      due[i] = performance.timeOrigin + at;
      if (i >= skip) maxLag = Math.max(maxLag, performance.now() - at);
      send(d, msg.target)
        .then(
          (s) => {
            latency[i] = performance.now() - at;
            status[i] = s;
            if (i >= skip) tally.ok(latency[i], s);
          },
          (err) => {
            latency[i] = performance.now() - at;
            status[i] = 0;
            if (i >= skip) tally.fail(err);
          },
        )
        .finally(() => {
          completed += 1;
          if (completed === total) allDone();
        });
    };
    let sent = 0;
    await new Promise((resolve) => {
      const tick = () => {
        const now = performance.now();
        while (sent < total && t0 + sent * interval <= now) fire(sent++);
        if (sent === total) resolve();
        else setTimeout(tick, Math.max(0, Math.min(1, t0 + sent * interval - now)));
      };
      tick();
    });
    await Promise.race([finished, delay(30_000)]);
    const end = performance.now();
    await done(d);
    if (msg.samplesFile !== undefined) {
      const triplets = new Float64Array((total - skip) * 3);
      for (let i = skip; i < total; i += 1) triplets.set([due[i], latency[i], status[i]], (i - skip) * 3);
      writeFileSync(msg.samplesFile, Buffer.from(triplets.buffer));
    }
    // The measured part starts when its first request is due; warm-up included, for CPU per request.
    const measured = tally.summary((end - (t0 + skip * interval)) / 1000);
    return {
      ...measured,
      scheduled: total - skip,
      completed: Math.max(0, completed - skip),
      maxSendLagMs: maxLag,
      all: { requests: completed, seconds: (end - t0) / 1000 },
    };
  },

  async burst(msg) {
    const { d, done } = dispatcherFor(msg, msg.count);
    const tally = new Tally(msg.count);
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: msg.count }, () =>
        send(d, msg.target).then(
          (s) => tally.ok(performance.now() - t0, s),
          (err) => tally.fail(err),
        ),
      ),
    );
    const seconds = (performance.now() - t0) / 1000;
    const connected = d.stats?.connected;
    await done(d);
    return { ...tally.summary(seconds), connections: connected };
  },

  async close(msg) {
    const d = kept.get(msg.key);
    kept.delete(msg.key);
    await d?.close();
    return {};
  },
};

process.on('message', (msg) => {
  ops[msg.op](msg).then(
    (result) => process.send({ id: msg.id, result }),
    (err) => process.send({ id: msg.id, error: err.stack ?? String(err) }),
  );
});
process.on('disconnect', () => process.exit(0));
