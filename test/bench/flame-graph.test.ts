import { describe, expect, it } from 'vitest';
import { type CpuProfile, flameGraphSvg } from '../../bench/flame-graph.mjs';

// root → handler (dist/, token-proxy's own code) → parser (node:http); idle and (program) beside.
// Sample i lasts until sample i + 1 (timeDeltas[i + 1] µs), as V8 records them.
function profile(): CpuProfile {
  const frame = (functionName: string, url = '') => ({ functionName, url, lineNumber: 9 });
  return {
    nodes: [
      { id: 1, callFrame: frame('(root)'), children: [2, 3, 4] },
      { id: 2, callFrame: frame('(idle)') },
      { id: 3, callFrame: frame('(program)') },
      { id: 4, callFrame: frame('handle<T>&', 'file:///srv/app/dist/proxy/forwarder.js'), children: [5] },
      { id: 5, callFrame: frame('parserOnIncoming', 'node:_http_server') },
    ],
    startTime: 0,
    endTime: 9_000,
    samples: [4, 4, 5, 5, 5, 5, 2, 2, 3],
    timeDeltas: [1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000],
  };
}

/** The boxes of the SVG: title text, x, width and fill of each. */
function boxes(svg: string): { title: string; x: number; width: number; fill: string }[] {
  return [
    ...svg.matchAll(
      /<g><title>([^<]*)<\/title><rect x="([\d.]+)" y="\d+" width="([\d.]+)" height="\d+" fill="(#[0-9a-f]{6})"\/>/g,
    ),
  ].map((m) => ({
    title: m[1] ?? '',
    x: Number(m[2]),
    width: Number(m[3]),
    fill: m[4] ?? '',
  }));
}

describe('flame graph of a CPU profile', () => {
  it('draws each call path as wide as its time with its callees, idle left out, coloured by area', () => {
    const drawn = boxes(flameGraphSvg(profile(), { title: 'test' }));
    // Busy: handler 2 ms of its own plus parser 4 ms (the last sample has no duration); idle 2 ms is not drawn.
    expect(drawn.map((b) => [b.title.split(' (')[0], b.x, b.width])).toEqual([
      ['all', 0, 1200],
      ['handle&lt;T&gt;&amp; dist/proxy/forwarder.js:10', 0, 1200],
      ['parserOnIncoming node:_http_server:10', 0, 800],
    ]);
    expect(drawn[1]?.title).toContain('(6.0 ms, 100.00%) · token-proxy (dist/)');
    expect(drawn[2]?.title).toContain('(4.0 ms, 66.67%) · node:http (server side)');
    expect(drawn[1]?.fill).not.toBe(drawn[2]?.fill);
  });

  it('counts only the samples inside the window', () => {
    // From 2.5 ms on: the parser's four samples (taken at 3 to 6 ms), not the handler's own.
    const drawn = boxes(flameGraphSvg(profile(), { window: { fromUs: 2_500, toUs: 9_000 } }));
    expect(drawn.map((b) => [b.title.split(' (')[0], b.width])).toEqual([
      ['all', 1200],
      ['handle&lt;T&gt;&amp; dist/proxy/forwarder.js:10', 1200],
      ['parserOnIncoming node:_http_server:10', 1200],
    ]);
  });
});
