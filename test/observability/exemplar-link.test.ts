import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

interface Target {
  expr: string;
  exemplar?: boolean;
}
interface Panel {
  title: string;
  targets?: Target[];
  panels?: Panel[];
}

const dashboard = JSON.parse(readFileSync('config/grafana/token-proxy.json', 'utf8')) as { panels: Panel[] };
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const datasources = parse(readFileSync('config/grafana/datasources.example.yaml', 'utf8')) as {
  datasources: {
    type: string;
    uid: string;
    jsonData?: { exemplarTraceIdDestinations?: { name: string; datasourceUid: string }[] };
  }[];
};

describe('from a latency spike to its trace (exemplars)', () => {
  it('asks for exemplars on every target of the request and token refresh latency panels', () => {
    for (const title of ['Request latency p50 / p95 / p99', 'Token refresh latency p50 / p95 / p99']) {
      const targets = panels.find((p) => p.title === title)?.targets ?? [];
      expect(targets.length, title).toBe(3);
      for (const t of targets) expect(t.exemplar, `${title}: ${t.expr}`).toBe(true);
    }
  });

  it("links the exemplar label token-proxy writes (trace_id) to the example's trace data source", () => {
    const prometheus = datasources.datasources.find((d) => d.type === 'prometheus');
    const destinations = prometheus?.jsonData?.exemplarTraceIdDestinations ?? [];
    expect(destinations.map((d) => d.name)).toEqual(['trace_id']);
    const traces = datasources.datasources.find((d) => d.uid === destinations[0]?.datasourceUid);
    expect(traces?.type).toBe('tempo');
  });
});
