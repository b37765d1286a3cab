import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ProxyContext, Routing } from './context.js';

/**
 * Keeps `socket` in ctx.detached (sockets shutdown closes itself) until it closes, with the check
 * a reload runs on it: `stillAdmitted` says whether the new configuration would let it in.
 */
export function detach(ctx: ProxyContext, socket: Duplex, stillAdmitted: (routing: Routing) => boolean): void {
  ctx.detached.set(socket, stillAdmitted);
  socket.once('close', () => ctx.detached.delete(socket));
}

/**
 * After a reload: blind tunnels and WebSocket connections carry no further request at which to
 * judge them again, so those the new configuration refuses (a client address or proxy user
 * removed) are closed now. Returns how many were closed.
 */
export function readmitDetached(ctx: ProxyContext): number {
  let closed = 0;
  for (const [socket, stillAdmitted] of ctx.detached) {
    if (stillAdmitted(ctx.routing)) continue;
    socket.destroy();
    closed += 1;
  }
  return closed;
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
