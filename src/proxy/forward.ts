import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { ProxyError } from '../errors.js';
import type { Token } from '../tokens/token.js';
import type { TokenReader } from '../tokens/reader.js';
import type { Admitted } from './admit.js';
import type { ProxyContext } from './context.js';
import { upstreamRequestHeaders } from './headers.js';
import { readRequestBody, type RequestBody } from './request-body.js';
import { CLIENT_LEFT, logAnswer, tokenUnavailable, type RequestRecord } from './respond.js';
import { ResponseRelay } from './response-relay.js';
import { UnauthorizedReplay } from './unauthorized-replay.js';

/** Seconds a client is told to wait when an upstream's queue is full (RFC 9110 §10.2.3). */
const QUEUE_FULL_RETRY_AFTER = '1';

/**
 * Forwards one admitted request: its token (cached, or awaited), its body (held for a replay
 * when small enough and the budget allows), then dispatch through undici with the answer relayed
 * as it comes; a token-bearing request goes through the 401 replay handler.
 *
 * Returns a promise only when it has to wait (for a token or a request body): the usual request,
 * with a cached token and no body, is on its way when this returns, at no promise or tick.
 */
export function forward(
  ctx: ProxyContext,
  req: IncomingMessage,
  res: ServerResponse,
  admitted: Admitted,
): Promise<void> | undefined {
  const { upstream, tokens } = admitted;
  const rec: RequestRecord = {
    req,
    upstream,
    tenant: tokens?.tenant,
    started: performance.now(),
    requestId: requestIdOf(req),
  };
  const exchange: Exchange = { ctx, rec, req, res, admitted };
  const token = tokens?.current();
  if (tokens !== undefined && token === undefined) return forwardOnceObtained(exchange, tokens);
  return sendWith(exchange, token);
}

interface Exchange {
  readonly ctx: ProxyContext;
  readonly rec: RequestRecord;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly admitted: Admitted;
}

async function forwardOnceObtained(x: Exchange, tokens: TokenReader): Promise<void> {
  let token: Token;
  try {
    token = await tokens.obtain();
  } catch (err) {
    x.req.resume();
    answerFailure(x, undefined, tokenUnavailable(x.admitted.upstream, err));
    return;
  }
  await sendWith(x, token);
}

/** Reads the body as the upstream's replay rule says (nothing to wait for without one), then sends. */
function sendWith(x: Exchange, token: Token | undefined): Promise<void> | undefined {
  const u = x.admitted.upstream;
  let read: RequestBody | Promise<RequestBody>;
  try {
    read = readRequestBody(x.req, u.retryBodyLimitBytes, x.ctx.routing.maxRequestBodyBytes, x.ctx.replayBudget);
  } catch (err) {
    refuseBody(x, token, err);
    return undefined;
  }
  if (read instanceof Promise) {
    return read.then(
      (body) => sendWithUsableToken(x, body, token),
      (err: unknown) => refuseBody(x, token, err),
    );
  }
  dispatch(x, read, token);
  return undefined;
}

/**
 * After a body was read into the replay buffer: a slow client may have taken long enough for the
 * token picked at the start to pass its use-by moment, which is never sent; the current one is.
 */
function sendWithUsableToken(x: Exchange, body: RequestBody, token: Token | undefined): Promise<void> | undefined {
  const tokens = x.admitted.tokens;
  if (tokens === undefined || token === undefined || tokens.usable(token)) {
    dispatch(x, body, token);
    return undefined;
  }
  return tokens.obtain().then(
    (current) => dispatch(x, body, current),
    (err: unknown) => {
      release(x, body);
      answerFailure(x, undefined, tokenUnavailable(x.admitted.upstream, err));
    },
  );
}

function refuseBody(x: Exchange, token: Token | undefined, err: unknown): void {
  const refusal = err instanceof ProxyError ? err : new ProxyError('bad_request', 'unreadable request body');
  answerFailure(x, token, refusal);
}

/** An answer of the proxy's own for a request that reached no upstream; 499 when its client has left. */
function answerFailure(x: Exchange, token: Token | undefined, err: ProxyError): void {
  logAnswer(x.rec, x.res.destroyed ? CLIENT_LEFT : x.ctx.answers.error(x.res, err, x.req), token, false);
}

function release(x: Exchange, body: RequestBody): void {
  if (body.kind === 'buffered') x.ctx.replayBudget.release(body.data.length);
}

function dispatch(x: Exchange, body: RequestBody, token: Token | undefined): void {
  const { upstream, target, tokens } = x.admitted;
  if (!upstream.queue.enter()) {
    release(x, body);
    if (body.kind === 'streamed') body.stream.resume();
    answerFailure(
      x,
      token,
      new ProxyError(
        'overloaded',
        `upstream ${upstream.name} has ${upstream.queue.limit} requests in hand already (maxConnections + maxQueuedRequests)`,
        { upstream: upstream.name },
        { headers: { 'retry-after': QUEUE_FULL_RETRY_AFTER } },
      ),
    );
    return;
  }
  const relay = new ResponseRelay(x.rec, x.res, x.ctx.answers, x.ctx.limits.responseIdleTimeoutSeconds * 1000, () => {
    upstream.queue.release();
    release(x, body);
  });
  const req = x.req;
  const send = (current: Token | undefined, handler: Dispatcher.DispatchHandler): void => {
    upstream.dispatcher.dispatch(
      {
        origin: target.origin,
        path: target.path,
        method: req.method ?? 'GET',
        headers: upstreamRequestHeaders(
          req.rawHeaders,
          {
            clientAddress: req.socket.remoteAddress ?? '',
            proto: target.clientProto,
            requestId: x.rec.requestId,
            strip: target.stripHeaders,
            add: target.addHeaders,
          },
          current?.header,
        ),
        body: body.kind === 'none' ? null : body.kind === 'buffered' ? body.data : body.stream,
        headersTimeout: upstream.timeoutMs,
      },
      handler,
    );
  };
  if (tokens === undefined || token === undefined) {
    relay.attempt(undefined, false);
    send(undefined, relay);
    return;
  }
  new UnauthorizedReplay(
    relay,
    {
      tokens,
      upstream: upstream.name,
      path: target.path,
      replayable: body.kind !== 'streamed',
      logger: upstream.logger,
      send,
    },
    token,
  ).start();
}

const SANE_REQUEST_ID = /^[\w.:@/+=-]{1,128}$/;

function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && SANE_REQUEST_ID.test(given) ? given : randomUUID();
}
