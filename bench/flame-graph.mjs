#!/usr/bin/env node
// A V8 CPU profile (node --cpu-prof) as a flame graph in SVG (Brendan Gregg's layout: one box per
// call path, as wide as its time including callees, callers below callees), coloured by area as
// bench/cpu-profile.mjs names them, with each box's function, place and time in its tooltip.
// Used by run.mjs next to the "where the time goes" tables; also on its own:
//   node bench/flame-graph.mjs <file.cpuprofile> [title] > flame.svg
// (The npm packages that draw flame graphs read perf or DTrace output, or an older profile format.)
import { readFileSync } from 'node:fs';
import process from 'node:process';
import { area } from './cpu-profile.mjs';

const WIDTH = 1200;
const FRAME = 16;
const TOP = 60; // title and legend (two rows)
const FONT = 11;
const CHAR = FONT * 0.6; // a monospace character's width
/** Boxes narrower than this are not drawn (their time still widens their callers). */
const MIN_WIDTH = 0.5;

const COLOURS = {
  'token-proxy (dist/)': '#e8743b',
  'undici (upstream client)': '#6c8ebf',
  'node:http (server side)': '#9673a6',
  'node:net (sockets)': '#b85450',
  'node streams': '#d6a26a',
  'socket writes (native, syscalls)': '#c0392b',
  'file writes (native, e.g. logs to stdout)': '#a93226',
  'garbage collection': '#7f8c8d',
  'timers, microtasks, async hooks': '#82b366',
  'pino (logging)': '#2e86c1',
  'prom-client (metrics)': '#17a589',
  'regular expressions': '#d4ac0d',
  'node:crypto / tls': '#8e44ad',
};
const OTHER = '#bdbdbd';

const escape = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/**
 * The SVG text. `window` ({ fromUs, toUs } on the profile's clock, as summarizeProfile takes)
 * keeps only the samples taken in it; idle samples are left out.
 */
export function flameGraphSvg(profile, { title = 'CPU flame graph', window } = {}) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  const deltas = profile.timeDeltas ?? [];
  const from = window?.fromUs ?? profile.startTime;
  const to = window?.toUs ?? profile.endTime;
  let t = profile.startTime;
  for (let i = 0; i < profile.samples.length; i += 1) {
    t += deltas[i] ?? 0;
    if (t < from || t > to) continue;
    const us = i + 1 < deltas.length ? deltas[i + 1] : 0;
    self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + us);
  }
  const root = profile.nodes[0];
  // Time of each node with its callees, idle left out.
  const total = new Map();
  const sum = (node) => {
    if (node.callFrame.functionName === '(idle)') return 0;
    let us = self.get(node.id) ?? 0;
    for (const child of node.children ?? []) us += sum(byId.get(child));
    total.set(node.id, us);
    return us;
  };
  const busyUs = sum(root);
  const scale = busyUs > 0 ? WIDTH / busyUs : 0;
  const boxes = [];
  let depth = 0;
  const place = (node, x, level) => {
    const us = total.get(node.id) ?? 0;
    const w = us * scale;
    if (w < MIN_WIDTH) return;
    depth = Math.max(depth, level);
    boxes.push({ node, x, w, level, us });
    let cx = x;
    for (const child of node.children ?? []) {
      const c = byId.get(child);
      place(c, cx, level + 1);
      cx += (total.get(c.id) ?? 0) * scale;
    }
  };
  place(root, 0, 0);
  const height = TOP + (depth + 1) * FRAME + 8;
  const areasSeen = new Set();
  const rects = boxes.map(({ node, x, w, level, us }) => {
    const { functionName, url, lineNumber } = node.callFrame;
    const name = node === root ? 'all' : functionName || '(anonymous)';
    const where =
      url === ''
        ? ''
        : ` ${url.replace(/^.*\/node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dist/')}:${lineNumber + 1}`;
    const kind = node === root ? undefined : area(functionName, url);
    if (kind !== undefined) areasSeen.add(kind);
    const y = height - 8 - (level + 1) * FRAME;
    const label = `${name}${where} (${(us / 1000).toFixed(1)} ms, ${((us / busyUs) * 100).toFixed(2)}%)`;
    const fits = Math.floor((w - 4) / CHAR);
    const text =
      fits < 3
        ? ''
        : `<text x="${(x + 2).toFixed(1)}" y="${y + FRAME - 4}">${escape(name.length <= fits ? name : `${name.slice(0, fits - 1)}…`)}</text>`;
    return `<g><title>${escape(label)}${kind === undefined ? '' : ` · ${escape(kind)}`}</title><rect x="${x.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${FRAME - 1}" fill="${kind === undefined ? '#e0e0e0' : (COLOURS[kind] ?? OTHER)}"/>${text}</g>`;
  });
  // The legend names the coloured areas seen, then "other" for the rest, in rows that fit.
  const named = [...areasSeen].filter((kind) => kind in COLOURS).sort();
  if (named.length < areasSeen.size) named.push('other');
  let lx = 8;
  let ly = 30;
  const legend = named.map((kind) => {
    const name = kind.replace(/ \(.*\)$/, '');
    const w = 24 + name.length * CHAR;
    if (lx + w > WIDTH) [lx, ly] = [8, ly + 14];
    const item = `<rect x="${lx}" y="${ly}" width="10" height="10" fill="${COLOURS[kind] ?? OTHER}"/><text x="${lx + 14}" y="${ly + 9}">${escape(name)}</text>`;
    lx += w;
    return item;
  });
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="monospace" font-size="${FONT}">
<rect width="100%" height="100%" fill="#fdfdf8"/>
<text x="${WIDTH / 2}" y="18" text-anchor="middle" font-size="14">${escape(title)} (${(busyUs / 1000).toFixed(0)} ms busy; hover a box for its time)</text>
${legend.join('\n')}
${rects.join('\n')}
</svg>
`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node bench/flame-graph.mjs <file.cpuprofile> [title] > flame.svg\n');
    process.exit(2);
  }
  process.stdout.write(flameGraphSvg(JSON.parse(readFileSync(file, 'utf8')), { title: process.argv[3] }));
}
