import fc from 'fast-check';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { accessLogFor, cachedIsoTime, createLogger, type AccessLogEntry } from '../src/logger.js';

function sink() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n'))
        if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { stream, lines };
}

/**
 * Each entry written once by the access log and once by pino itself through the same logger: the
 * two raw lines of each, with the time field left out (the two calls may fall in different ms).
 */
async function fastAndPinoLines(
  entries: readonly AccessLogEntry[],
): Promise<{ count: number; pairs: [string, string][] }> {
  const raw: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      raw.push(chunk.toString('utf8'));
      done();
    },
  });
  const logger = createLogger('info', stream);
  for (const c of entries) {
    accessLogFor(logger)?.(c);
    logger.info({ event: 'request', ...c }, 'request');
  }
  await new Promise((resolve) => setImmediate(resolve));
  const withoutTime = (line: string) => line.replace(/,"time":"[^"]+"/, '');
  const pairs = entries.map((_, i): [string, string] => [
    withoutTime(raw[2 * i] as string),
    withoutTime(raw[2 * i + 1] as string),
  ]);
  return { count: raw.length, pairs };
}

const entry: AccessLogEntry = {
  requestId: 'abc-123',
  method: 'GET',
  upstream: 'partner',
  tenant: 'acme',
  status: 200,
  durationMs: 1.5,
  retried: false,
  token: 'AbCdEf012345',
};

afterEach(() => {
  vi.useRealTimers();
});

describe('cachedIsoTime', () => {
  it('writes the same text as pino isoTime, across milliseconds, seconds and years', () => {
    let now = 0;
    const time = cachedIsoTime(() => now);
    vi.useFakeTimers();
    for (const t of [
      0, 7, 42, 999, 1_000, 1_001, 59_999, 60_000, 1_767_225_599_999, 1_767_225_600_000, 1_767_225_600_050,
      1_767_225_599_998,
    ]) {
      now = t;
      vi.setSystemTime(t);
      expect(time()).toBe(pino.stdTimeFunctions.isoTime());
    }
  });
});

describe('access log', () => {
  it('writes the entry as one line with the fields the redacting logger would write, in the same order', async () => {
    const { stream, lines } = sink();
    const logger = createLogger('info', stream);
    accessLogFor(logger)?.(entry);
    logger.info({ event: 'request', ...entry }, 'request');
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines).toHaveLength(2);
    const [fast, redacting] = lines as [Record<string, unknown>, Record<string, unknown>];
    expect(Object.keys(fast)).toEqual(Object.keys(redacting));
    expect({ ...fast, time: undefined }).toEqual({ ...redacting, time: undefined });
    expect(fast).toMatchObject({ level: 30, service: 'token-proxy', event: 'request', msg: 'request', ...entry });
  });

  it('writes the same bytes as pino would, for awkward values and absent fields too', async () => {
    const cases: AccessLogEntry[] = [
      entry,
      {
        ...entry,
        tenant: 'quote " backslash \\ newline \n tab \t nul \u0000 é 😀',
        retried: true,
        status: 502,
        durationMs: 12_345.6,
      },
      {
        requestId: 'r',
        method: undefined,
        upstream: 'u',
        tenant: undefined,
        status: 401,
        durationMs: 0,
        retried: false,
        token: undefined,
      },
    ];
    const { count, pairs } = await fastAndPinoLines(cases);
    expect(count).toBe(2 * cases.length);
    for (const [fast, viaPino] of pairs) {
      expect(fast.endsWith('\n')).toBe(true);
      expect(fast).toBe(viaPino);
    }
  });

  it('writes the same bytes as pino for any string in any field (500 generated entries)', async () => {
    // Plain words (the fast path), anything at all (lone surrogates included) and words with one
    // character JSON must escape, so both paths are taken.
    const text = fc.oneof(
      fc.stringMatching(/^[\w.:-]{0,40}$/),
      fc.string({ unit: 'binary', maxLength: 20 }),
      fc
        .tuple(
          fc.stringMatching(/^[\w-]{0,8}$/),
          fc.constantFrom('"', '\\', '\n', '\u0000', '\u001f', 'é', '\ud800', ' '),
        )
        .map(([w, c]) => `${w}${c}${w}`),
    );
    const entries = fc.sample(
      fc.record({
        requestId: text,
        method: fc.option(text, { nil: undefined }),
        upstream: text,
        tenant: fc.option(text, { nil: undefined }),
        token: fc.option(text, { nil: undefined }),
      }),
      { numRuns: 500, seed: 8 },
    );
    const cases = entries.map((e): AccessLogEntry => ({
      requestId: e.requestId,
      method: e.method,
      upstream: e.upstream,
      tenant: e.tenant,
      status: 200,
      durationMs: 1.5,
      retried: false,
      token: e.token,
    }));
    const plain = entries.filter((e) => /^[\w.:-]*$/.test(e.requestId)).length;
    expect(plain).toBeGreaterThan(100);
    expect(plain).toBeLessThan(400);
    const { count, pairs } = await fastAndPinoLines(cases);
    expect(count).toBe(2 * entries.length);
    for (const [fast, viaPino] of pairs) expect(fast).toBe(viaPino);
  });

  it('goes through the logger itself, redaction included, for a logger made elsewhere', async () => {
    const { stream, lines } = sink();
    const logger = pino({ redact: ['token'] }, stream);
    accessLogFor(logger)?.(entry);
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines).toEqual([
      expect.objectContaining({ event: 'request', requestId: 'abc-123', token: '[Redacted]', msg: 'request' }),
    ]);
  });
});
