// Types for bench/flame-graph.mjs (plain JavaScript, like the rest of bench/), for its test.
export interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas?: number[];
}
export function flameGraphSvg(
  profile: CpuProfile,
  options?: { title?: string; window?: { fromUs?: number; toUs?: number } },
): string;
