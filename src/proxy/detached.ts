import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ProxyContext } from './context.js';

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
  if (!(socket instanceof Socket)) return; // every client socket is one (TLSSocket included)
  if (seconds === 0) socket.setTimeout(0);
  else socket.setTimeout(seconds * 1000, () => socket.destroy());
}

/**
 * Sends a whole answer, then closes the socket both ways: the HTTP server keeps reading
 * half-closed sockets, and on one it let go of, no timeout of its own is left to close it.
 */
export function answerAndClose(socket: Duplex, answer: string): void {
  socket.end(answer, () => socket.destroy());
}
