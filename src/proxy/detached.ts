import type { Duplex } from 'node:stream';
import type { ProxyContext } from './server.js';

/** Keeps `socket` in ctx.detached (sockets shutdown closes itself) until it closes. */
export function detach(ctx: ProxyContext, socket: Duplex): void {
  ctx.detached.add(socket);
  socket.once('close', () => ctx.detached.delete(socket));
}

/**
 * Closes `socket` once nothing has gone either way for `seconds` (a net.Socket's timeout counts
 * reads and writes); 0 turns it off.
 */
export function closeWhenIdle(socket: Duplex, seconds: number): void {
  const s = socket as Duplex & { setTimeout?: (ms: number, onIdle?: () => void) => unknown };
  if (seconds === 0) s.setTimeout?.(0);
  else s.setTimeout?.(seconds * 1000, () => socket.destroy());
}

/**
 * Sends a whole answer on a socket the HTTP server let go of, then closes it both ways: the
 * server keeps reading half-closed sockets, and no timeout of its own watches this one any more.
 */
export function answerAndClose(socket: Duplex, answer: string): void {
  socket.end(answer, () => socket.destroy());
}
