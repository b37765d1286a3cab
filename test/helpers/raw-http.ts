import { connect, type Socket } from 'node:net';

/** One HTTP/1.1 answer as read off a raw socket. */
export interface RawResponse {
  /** 0 when no status line arrived. */
  readonly status: number;
  /** Header names in lower case; repeated fields joined with ", ". */
  readonly headers: Record<string, string>;
  readonly body: string;
  /** Everything the socket delivered, as latin1 text. */
  readonly raw: string;
  /** Whether the proxy closed the connection (within `closeWaitMs` after the answer). */
  readonly closed: boolean;
}

function parseHead(head: string): { status: number; headers: Record<string, string> } {
  const lines = head.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  return { status: m ? Number(m[1]) : 0, headers };
}

/** Whether `raw` holds one complete response (by Content-Length or chunked framing). */
function complete(raw: string): boolean {
  const end = raw.indexOf('\r\n\r\n');
  if (end === -1) return false;
  const { headers } = parseHead(raw.slice(0, end));
  const body = raw.slice(end + 4);
  if (headers['content-length'] !== undefined)
    return Buffer.byteLength(body, 'latin1') >= Number(headers['content-length']);
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) return /(^|\r\n)0\r\n\r\n$/.test(body);
  return false; // read until close
}

export interface RawOptions {
  /** Give up waiting for an answer after this long. */
  readonly timeoutMs?: number;
  /** After a complete answer, wait this long to see whether the proxy closes the connection. */
  readonly closeWaitMs?: number;
}

/**
 * Writes `bytes` on a fresh TCP connection and reads one answer: the way to send what no HTTP
 * client library would (bad request lines, NUL bytes, obs-fold, CL+TE).
 */
export function rawRequest(port: number, bytes: string | Buffer, options: RawOptions = {}): Promise<RawResponse> {
  const { timeoutMs = 5_000, closeWaitMs = 150 } = options;
  return new Promise((resolve) => {
    const socket: Socket = connect(port, '127.0.0.1');
    let raw = '';
    let closed = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const end = raw.indexOf('\r\n\r\n');
      const { status, headers } = parseHead(end === -1 ? raw : raw.slice(0, end));
      resolve({ status, headers, body: end === -1 ? '' : raw.slice(end + 4), raw, closed });
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on('error', () => undefined); // a reset after the answer is fine: we read what came
    socket.on('data', (chunk: Buffer) => {
      raw += chunk.toString('latin1');
      if (complete(raw)) setTimeout(finish, closeWaitMs);
    });
    socket.on('close', () => {
      closed = true;
      finish();
    });
    socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  });
}
