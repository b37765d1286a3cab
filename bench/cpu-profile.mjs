#!/usr/bin/env node
// Where a V8 CPU profile (node --cpu-prof) spends its time: self time per function and per area
// (token-proxy's own code, undici, node:http, pino, prom-client, GC, native code), idle left out.
// Used by run.mjs for the "where the time goes" section; also on its own:
//   node bench/cpu-profile.mjs <file.cpuprofile> [top]
import { readFileSync } from 'node:fs';
import process from 'node:process';

const LOGGING =
  /\/node_modules\/(pino|pino-std-serializers|sonic-boom|fast-redact|@pinojs\/redact|thread-stream|quick-format-unescaped|on-exit-leak-free|atomic-sleep|safe-stable-stringify|fast-safe-stringify)\//;
const METRICS = /\/node_modules\/(prom-client|tdigest|bintrees)\//;

/** The area a function belongs to, from its script URL. */
export function area(functionName, url) {
  if (functionName === '(garbage collector)') return 'garbage collection';
  if (functionName === '(program)') return 'V8/native outside any JS function (parser, libuv, syscalls)';
  if (url === '') {
    // Native code called from JS: socket writes (the syscalls that deliver on loopback), file
    // writes (a log to stdout), regular expressions, and the rest.
    if (/^(writev|writeLatin1String|writeUtf8String|writeAsciiString|writeUcs2String|writeBuffer)$/.test(functionName))
      return 'socket writes (native, syscalls)';
    if (/^(writeString|writeSync|fsync)$/.test(functionName)) return 'file writes (native, e.g. logs to stdout)';
    if (functionName.startsWith('RegExp:')) return 'regular expressions';
    return 'other native functions (bindings, builtins)';
  }
  // undici parses HTTP with llhttp built to WebAssembly; nothing else in the proxy runs wasm.
  if (url.includes('/node_modules/undici/') || url.startsWith('wasm://')) return 'undici (upstream client)';
  if (LOGGING.test(url)) return 'pino (logging)';
  if (METRICS.test(url)) return 'prom-client (metrics)';
  if (url.includes('/node_modules/')) return `dependency ${/\/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1]}`;
  if (url.includes('/dist/')) return 'token-proxy (dist/)';
  if (url.startsWith('node:')) {
    const m = url.slice(5).replace(/^internal\//, '');
    if (/^(modules\/|vm|bootstrap\/)/.test(m)) return 'start-up (module loading)';
    if (/^(_http_|http|https)/.test(m)) return 'node:http (server side)';
    if (/^(net|stream_base_commons|tcp_wrap|dgram|dns)/.test(m)) return 'node:net (sockets)';
    if (/^(streams\/|stream|webstreams)/.test(m)) return 'node streams';
    if (/^(timers|process\/task_queues|async_hooks|process\/promises)/.test(m))
      return 'timers, microtasks, async hooks';
    if (/^(crypto|tls|_tls)/.test(m)) return 'node:crypto / tls';
    return 'other node core';
  }
  return 'other';
}

/**
 * Self time by function and by area, in ms and in shares of the busy (non-idle) time. With
 * `window` ({ fromUs, toUs }, on the profile's clock: CLOCK_MONOTONIC in µs, which is what
 * process.hrtime.bigint() / 1000n reads in any process), only the samples taken in it count.
 */
export function summarizeProfile(profile, top = 15, window = undefined) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  // Sample i is taken at startTime + timeDeltas[0..i] and lasts until the next one.
  const deltas = profile.timeDeltas ?? [];
  const from = window?.fromUs ?? profile.startTime;
  const to = window?.toUs ?? profile.endTime;
  const total = (Math.min(to, profile.endTime) - Math.max(from, profile.startTime)) / 1000;
  let t = profile.startTime;
  for (let i = 0; i < profile.samples.length; i += 1) {
    t += deltas[i] ?? 0;
    if (t < from || t > to) continue;
    const us = i + 1 < deltas.length ? deltas[i + 1] : 0;
    const id = profile.samples[i];
    self.set(id, (self.get(id) ?? 0) + us / 1000);
  }
  const fns = new Map();
  const areas = new Map();
  let idle = 0;
  for (const [id, msSelf] of self) {
    const { functionName, url, lineNumber } = byId.get(id).callFrame;
    if (functionName === '(idle)') {
      idle += msSelf;
      continue;
    }
    const where =
      url === ''
        ? ''
        : `${url.replace(/^.*\/node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dist/')}:${lineNumber + 1}`;
    const key = `${functionName || '(anonymous)'} ${where}`;
    const fn = fns.get(key) ?? { name: functionName || '(anonymous)', where, area: area(functionName, url), ms: 0 };
    fn.ms += msSelf;
    fns.set(key, fn);
    const a = area(functionName, url);
    areas.set(a, (areas.get(a) ?? 0) + msSelf);
  }
  const busy = [...fns.values()].reduce((s, f) => s + f.ms, 0);
  const all = [...fns.values()].sort((a, b) => b.ms - a.ms).map((f) => ({ ...f, share: f.ms / busy }));
  return {
    totalMs: total,
    busyMs: busy,
    idleMs: idle,
    all,
    functions: all.slice(0, top),
    areas: [...areas.entries()]
      .map(([name, msArea]) => ({ name, ms: msArea, share: msArea / busy }))
      .sort((a, b) => b.ms - a.ms),
  };
}

export function profileMarkdown(summary) {
  const p = (x) => `${(x * 100).toFixed(1)}%`;
  // Areas under 0.5% are folded into one line.
  const shown = summary.areas.filter((a) => a.share >= 0.005);
  const rest = summary.areas.filter((a) => a.share < 0.005);
  const restMs = rest.reduce((t, a) => t + a.ms, 0);
  const areas =
    rest.length === 0
      ? shown
      : [
          ...shown,
          {
            name: `${rest.length} more (${rest
              .slice(0, 4)
              .map((a) => a.name.replace(/^dependency /, ''))
              .join(', ')}${rest.length > 4 ? ', …' : ''})`,
            ms: restMs,
            share: restMs / summary.busyMs,
          },
        ];
  return `Busy ${(summary.busyMs / 1000).toFixed(1)} s of ${(summary.totalMs / 1000).toFixed(1)} s (idle left out); shares are of the busy time.

| area | self time | share |
|---|--:|--:|
${areas.map((a) => `| ${a.name} | ${a.ms.toFixed(0)} ms | ${p(a.share)} |`).join('\n')}

| function (self time) | where | area | share |
|---|---|---|--:|
${summary.functions.map((f) => `| \`${f.name}\` | ${f.where || '–'} | ${f.area} | ${p(f.share)} |`).join('\n')}`;
}

/**
 * What one configuration costs per request beyond another, from their profiles: busy µs per
 * request in each, and the functions whose self time per request grew the most.
 */
export function profileDiff(base, baseRequests, other, otherRequests, top = 8) {
  const perRequest = (f, n) => (f.ms * 1000) / n;
  const key = (f) => `${f.name} ${f.where}`;
  const before = new Map(base.all.map((f) => [key(f), perRequest(f, baseRequests)]));
  const grown = other.all
    .map((f) => ({ ...f, us: perRequest(f, otherRequests) - (before.get(key(f)) ?? 0) }))
    .sort((a, b) => b.us - a.us)
    .slice(0, top);
  return { baseUs: (base.busyMs * 1000) / baseRequests, otherUs: (other.busyMs * 1000) / otherRequests, grown };
}

export function diffMarkdown(diff, baseName, otherName) {
  return `Per request, ${otherName} keeps token-proxy busy ${diff.otherUs.toFixed(0)} µs against ${diff.baseUs.toFixed(0)} µs for ${baseName} (${diff.otherUs >= diff.baseUs ? '+' : ''}${(diff.otherUs - diff.baseUs).toFixed(0)} µs). The functions whose self time per request grew most:

| function | where | area | µs per request more |
|---|---|---|--:|
${diff.grown.map((f) => `| \`${f.name}\` | ${f.where || '–'} | ${f.area} | ${f.us.toFixed(1)} |`).join('\n')}`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node bench/cpu-profile.mjs <file.cpuprofile> [top]\n');
    process.exit(2);
  }
  process.stdout.write(
    `${profileMarkdown(summarizeProfile(JSON.parse(readFileSync(file, 'utf8')), Number(process.argv[3] ?? 20)))}\n`,
  );
}
