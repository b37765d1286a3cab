import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Span, Tracing } from '../tracing/tracing.js';
import type { ProxyContext } from './context.js';
import { CLIENT_LEFT } from './respond.js';

/**
 * The SERVER span of a plain request (reverse, forward, or inside a CONNECT tunnel), ended when
 * its response closes, with its status, or 499 when the client left before an answer began.
 * Called only when tracing is on.
 */
export function requestSpan(tracing: Tracing, ctx: ProxyContext, req: IncomingMessage, res: ServerResponse): Span {
  const route = ctx.tunnels.has(req.socket) ? 'tunnel' : req.url?.charCodeAt(0) === 47 ? 'reverse' : 'forward';
  const span = tracing.request(req, route);
  // An unsampled request's span records nothing: ending it would do nothing either.
  if (!span.isRecording()) return span;
  tracing.bind(res, span);
  res.on('close', () => {
    const finished = res.writableFinished;
    tracing.endRequest(
      res,
      res.headersSent ? res.statusCode : CLIENT_LEFT,
      finished ? undefined : res.headersSent ? 'response_incomplete' : 'client_left',
    );
  });
  return span;
}
