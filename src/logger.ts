import { pino, type DestinationStream, type LogFn, type Logger } from 'pino';
import { BufferedStdout } from './buffered-stdout.js';

/**
 * One access-log line. Every field is one the proxy constructs itself: never a header value, and
 * never the path or query (they can carry credentials, e.g. `?access_token=` per RFC 6750 §2.3,
 * that a key-based redaction could not see inside a string). The token appears as its fingerprint.
 */
export interface AccessLogEntry {
  readonly requestId: string;
  readonly method: string | undefined;
  readonly upstream: string;
  readonly tenant: string | undefined;
  readonly status: number;
  readonly durationMs: number;
  readonly retried: boolean;
  /** The token's fingerprint, never the token. */
  readonly token: string | undefined;
}

/** Writes one access-log line (`event: "request"`, at info). */
export type AccessLog = (entry: AccessLogEntry) => void;

const REDACT_PATHS = [
  'authorization',
  '*.authorization',
  'headers.authorization',
  'headers["proxy-authorization"]',
  'clientSecret',
  '*.clientSecret',
  'accessToken',
  '*.accessToken',
  'refreshToken',
  '*.refreshToken',
  'password',
  '*.password',
];

/**
 * The same text as pino.stdTimeFunctions.isoTime (`,"time":"2025-01-31T12:00:00.123Z"`) without
 * formatting a Date per line: the part up to the second is built once a second. At thousands of
 * access-log lines a second, toISOString was a visible share of the log's cost.
 */
export function cachedIsoTime(now: () => number = Date.now): () => string {
  let second = Number.NaN;
  let head = '';
  return () => {
    const t = now();
    const s = Math.floor(t / 1000);
    if (s !== second) {
      second = s;
      head = `,"time":"${new Date(s * 1000).toISOString().slice(0, -4)}`; // up to and including the '.'
    }
    const ms = t - s * 1000;
    return `${head}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
  };
}

/**
 * Standard output, shared by every logger of the process (two writers on one descriptor could
 * interleave partial lines), written in batches (see BufferedStdout), so an access line costs a
 * string append rather than a write call each. Lines other than access lines are written at once
 * (see createLogger); a timer writes a quiet proxy's access lines within a second; the CLI calls
 * flushLogs() after draining, so a SIGTERM loses no line.
 */
let stdout: BufferedStdout | undefined;

/** How long flushLogs() waits for standard output to take the last lines (a stuck pipe must not block exit). */
const FLUSH_TIMEOUT_MS = 2_000;

/**
 * Writes out every line logged to standard output so far and waits until it is written (bounded).
 * Nothing to do for a caller-supplied destination: it is not buffered here.
 */
export async function flushLogs(): Promise<void> {
  const out = stdout;
  if (out === undefined) return;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, FLUSH_TIMEOUT_MS).unref();
    out.flush(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Access logs of loggers made by createLogger (see accessLogFor). */
const accessLogs = new WeakMap<Logger, AccessLog>();

/**
 * JSON logs through pino. The code never passes a token, secret or Authorization header to a
 * log call (tokens appear as fingerprints); the redaction list is a second line of defence.
 * Without `destination`, logs go to standard output through a buffer (see `stdout`).
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const dest: DestinationStream = destination ?? (stdout ??= new BufferedStdout());
  const buffered = destination === undefined ? stdout : undefined;
  const timestamp = cachedIsoTime();
  const logger = pino(
    {
      level,
      base: { service: 'token-proxy' },
      timestamp,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      // Start-up, token, error and shutdown lines are rare and an operator (or a supervisor
      // waiting for "listening") wants them now: write the buffer out after each.
      ...(buffered !== undefined
        ? {
            hooks: {
              logMethod(this: Logger, args: Parameters<LogFn>, method: LogFn) {
                method.apply(this, args);
                buffered.flush();
              },
            },
          }
        : {}),
    },
    dest,
  );
  // The access line goes straight to the destination, without pino's redaction pass and generic
  // serialiser: it holds only AccessLogEntry's fields, none of which is on the redaction list, so
  // redacting changed no byte of it, and the two passes cost a tenth of a proxied request's CPU
  // time. The line is byte for byte what pino writes for the same entry (test/logger.test.ts).
  accessLogs.set(logger, (entry) => dest.write(accessLine(timestamp, entry)));
  return logger;
}

/**
 * Characters JSON.stringify writes as they are (it escapes `"`, `\`, controls and lone surrogates):
 * the usual values (request ids, methods, upstream and tenant names, fingerprints) are made of them
 * and need no escaping pass.
 */
const NEEDS_NO_ESCAPE = /^[\w.:-]*$/;

/** A string field as JSON, left out when undefined (as JSON.stringify and pino do). */
function stringField(name: string, value: string | undefined): string {
  if (value === undefined) return '';
  return NEEDS_NO_ESCAPE.test(value) ? `,"${name}":"${value}"` : `,"${name}":${JSON.stringify(value)}`;
}

/** `{"level":30,"time":…,"service":"token-proxy","event":"request",…,"msg":"request"}` and a newline. */
function accessLine(time: () => string, e: AccessLogEntry): string {
  return (
    `{"level":30${time()},"service":"token-proxy","event":"request"${stringField('requestId', e.requestId)}${stringField('method', e.method)}` +
    `${stringField('upstream', e.upstream)}${stringField('tenant', e.tenant)},"status":${e.status},"durationMs":${e.durationMs},"retried":${e.retried}` +
    `${stringField('token', e.token)},"msg":"request"}\n`
  );
}

/**
 * The access log that goes with `logger`: the fast one for a logger from createLogger, else one
 * line through `logger` itself (with whatever redaction it has). Undefined when access logs are
 * off (`enabled` false, the config's `accessLog`) or the logger's level leaves out info lines.
 */
export function accessLogFor(logger: Logger, enabled = true): AccessLog | undefined {
  if (!enabled || !logger.isLevelEnabled('info')) return undefined;
  const known = accessLogs.get(logger);
  if (known !== undefined) return known;
  const child = logger.child({ event: 'request' });
  return (entry) => child.info(entry, 'request');
}
