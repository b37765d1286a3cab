import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { ProxyError } from '../errors.js';
import type { ReplayBudget } from './replay-budget.js';

/**
 * A request body as the forwarder sees it. A `buffered` body (or none) can be sent twice, so a
 * request that meets a 401 can be replayed; a `streamed` one goes through once, untouched.
 */
export type RequestBody =
  | { readonly kind: 'none' }
  /** `data.length` bytes are reserved in the replay budget until the request is done. */
  | { readonly kind: 'buffered'; readonly data: Buffer }
  | { readonly kind: 'streamed'; readonly stream: Readable };

const NONE: RequestBody = { kind: 'none' };

/**
 * Decides before sending whether the body can be replayed: bodies of known size up to `limit`
 * are read into memory; larger ones stream at once. A chunked body is read up to the limit and,
 * if it goes on, streamed with what was read so far in front (undici RetryHandler's rule: a
 * body already partly sent is never replayed). Bytes held count against `budget`: when it is
 * spent, bodies stream as over-limit ones do.
 */
export function readRequestBody(
  req: IncomingMessage,
  limit: number,
  maxBytes: number,
  budget: ReplayBudget,
): RequestBody | Promise<RequestBody> {
  const length = req.headers['content-length'];
  const chunked = req.headers['transfer-encoding'] !== undefined;
  // Answered synchronously when no reading is needed: most requests (GETs) take no extra tick.
  if (!chunked && (length === undefined || length === '0')) {
    if (length === '0') req.resume();
    return NONE;
  }
  if (!chunked && Number(length) > maxBytes) throw tooLarge(maxBytes);
  if (!chunked && Number(length) > limit) return { kind: 'streamed', stream: req };
  return bufferUpTo(req, limit, maxBytes, budget);
}

async function bufferUpTo(
  req: IncomingMessage,
  limit: number,
  maxBytes: number,
  budget: ReplayBudget,
): Promise<RequestBody> {
  const chunks: Buffer[] = [];
  let size = 0;
  let reserved = 0;
  const iterator = req[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  try {
    for (;;) {
      const next = await iterator.next().catch((err: unknown) => {
        throw new ProxyError('bad_request', 'request body was cut off by the client', {}, { cause: err });
      });
      if (next.done) break;
      chunks.push(next.value);
      size += next.value.length;
      if (size > maxBytes) throw tooLarge(maxBytes);
      if (size > limit || !budget.reserve(next.value.length)) {
        budget.release(reserved);
        reserved = 0;
        return {
          kind: 'streamed',
          stream: Readable.from(continueWith(chunks, iterator, size, maxBytes), { objectMode: false }),
        };
      }
      reserved += next.value.length;
    }
  } catch (err) {
    budget.release(reserved);
    throw err;
  }
  return { kind: 'buffered', data: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size) };
}

function tooLarge(maxBytes: number): ProxyError {
  return new ProxyError('body_too_large', `request body larger than ${maxBytes} bytes (limits.maxRequestBodyBytes)`);
}

/** The rest of a chunked body after what was read, still counted against the limit. */
async function* continueWith(
  head: Buffer[],
  rest: AsyncIterator<Buffer>,
  read: number,
  maxBytes: number,
): AsyncGenerator<Buffer> {
  yield* head;
  let size = read;
  for (;;) {
    const next = await rest.next();
    if (next.done) return;
    size += next.value.length;
    if (size > maxBytes) throw tooLarge(maxBytes);
    yield next.value;
  }
}
