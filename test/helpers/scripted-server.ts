import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A small scripted HTTP server for failure modes a real server will not show (an HTML error
 * page from a token endpoint, a hang, a cut connection). Not a stand-in for the happy path.
 */
export async function startScriptedServer(handle: (req: IncomingMessage, res: ServerResponse) => void) {
  const sockets = new Set<Socket>();
  let hits = 0;
  const server = createServer((req, res) => {
    hits += 1;
    handle(req, res);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get hits() {
      return hits;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
