import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { ProxyError, errorBody, statusFor } from '../errors.js';
import { forward } from './forwarder.js';
import type { ReverseRouter } from './router.js';

function reject(res: ServerResponse, err: ProxyError): void {
  const body = errorBody(err);
  res.writeHead(statusFor(err), { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** The proxy listener: origin-form requests are routed by path prefix (reverse mode). */
export function createProxyServer(router: ReverseRouter, logger: Logger): Server {
  const server = createServer({ keepAliveTimeout: 65_000 }, (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? '/';
    const route = url.charCodeAt(0) === 47 ? router.route(url) : undefined;
    if (route === null) {
      req.resume();
      reject(res, new ProxyError('bad_request', 'path segments "." and ".." are not allowed'));
      return;
    }
    if (route === undefined) {
      req.resume();
      reject(res, new ProxyError('no_route', 'no upstream is configured for this path'));
      return;
    }
    forward(req, res, route.upstream, route.path).catch((err: unknown) => {
      // forward() answers every error it expects; this is the last line of defence.
      logger.error({ event: 'internal_error', err: (err as Error).message }, 'unexpected error while forwarding');
      if (!res.headersSent) reject(res, new ProxyError('upstream_unreachable', 'internal error'));
      else res.destroy();
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    // Malformed request line or headers: answer 400 (431 for oversized headers) and close.
    if (!socket.writable) return;
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const body = JSON.stringify({ error: 'bad_request', message: status === 431 ? 'request headers too large' : 'malformed request' });
    socket.end(`HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
  });
  return server;
}
