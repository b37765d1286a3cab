import { once } from 'node:events';
import { createServer } from 'node:https';
import { connect, type AddressInfo } from 'node:net';
import { createRemoteJWKSet, customFetch, jwtVerify } from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startScriptedServer } from '../helpers/scripted-server.js';
import { eventually } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const pki = testPki();
let tokenServer: TokenServer;
let proxy: RunningProxy;
let wsUrl: string;
const handshakes: { token: string | undefined; clientId: unknown }[] = [];
let close: () => void;
let partnerPort: number;
/** Upgrade requests the partner received (any protocol). */
let partnerUpgrades = 0;
/** Ordinary requests the partner received, with the token's client. */
const partnerRequests: {
  url: string | undefined;
  upgrade: string | undefined;
  http2Settings: string | string[] | undefined;
  clientId: unknown;
}[] = [];

beforeAll(async () => {
  tokenServer = await startTokenServer();
  const jwksAgent = new Agent({ connect: { ca: pki.ca } });
  const jwks = createRemoteJWKSet(new URL(tokenServer.jwksUrl), {
    [customFetch]: (url, init) => undiciFetch(url, { ...(init as object), dispatcher: jwksAgent }),
  });
  // Ordinary requests (an ignored upgrade offer ends up here): verified like the handshakes.
  const server = createServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    const auth = req.headers.authorization;
    jwtVerify(auth?.slice('Bearer '.length) ?? '', jwks).then(
      ({ payload }) => {
        partnerRequests.push({
          url: req.url,
          upgrade: req.headers.upgrade,
          http2Settings: req.headers['http2-settings'],
          clientId: payload['client_id'],
        });
        res.end(`plain answer for ${String(payload['client_id'])}`);
      },
      () => res.writeHead(401).end(),
    );
  });
  server.on('upgrade', () => (partnerUpgrades += 1));
  // A partner WebSocket endpoint that verifies the bearer token on the handshake.
  const wss = new WebSocketServer({
    server,
    verifyClient: (info, done) => {
      const auth = info.req.headers.authorization;
      const token = auth?.startsWith('Bearer ') ? auth.slice(7) : undefined;
      if (token === undefined) {
        done(false, 401, 'no token');
        return;
      }
      if (info.req.url === '/forbidden') {
        done(false, 403, 'not for you');
        return;
      }
      jwtVerify(token, jwks).then(
        ({ payload }) => {
          handshakes.push({ token, clientId: payload['client_id'] });
          done(true);
        },
        () => done(false, 401, 'bad token'),
      );
    },
  });
  wss.on('connection', (socket, req) => {
    const clientId = handshakes.find((h) => `Bearer ${h.token}` === req.headers.authorization)?.clientId;
    // binaryType 'nodebuffer' (the default): each message comes as one Buffer.
    socket.on('message', (data) => socket.send(`${String(clientId)}:${(data as Buffer).toString()}`));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  partnerPort = port;
  close = () => {
    wss.close();
    server.close();
    void jwksAgent.close();
  };
  proxy = await startProxy({
    upstreams: [
      {
        name: 'realtime',
        target: `https://127.0.0.1:${port}`,
        pathPrefix: '/realtime',
        ca: pki.caFile,
        auth: {
          type: 'client_credentials',
          tokenUrl: tokenServer.tokenUrl,
          clientId: 'ws-client',
          clientSecret: 'ws-secret',
        },
      },
    ],
  });
  wsUrl = `${proxy.url.replace('http:', 'ws:')}/realtime/echo`;
});

afterAll(async () => {
  await proxy.close();
  close();
  await tokenServer.stop();
});

describe('WebSocket through the proxy', () => {
  it('injects the token on the handshake and relays frames both ways', async () => {
    const ws = new WebSocket(wsUrl, { headers: { authorization: 'Bearer caller-own-token' } });
    await once(ws, 'open');
    const replies: string[] = [];
    ws.on('message', (data) => replies.push((data as Buffer).toString()));
    ws.send('one');
    ws.send('two');
    await new Promise<void>((resolve) => ws.on('message', () => replies.length === 2 && resolve()));
    expect(replies).toEqual(['ws-client:one', 'ws-client:two']);
    expect(handshakes.at(-1)?.token).toBe(tokenServer.issued[0]); // not the caller's own token
    ws.close();
    await once(ws, 'close');
  });

  it('passes a refused handshake back as an ordinary response, status untouched', async () => {
    const ws = new WebSocket(wsUrl.replace(/\/echo$/, '/forbidden'));
    const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number }];
    expect(res.statusCode).toBe(403);
  });

  it('never switches to another protocol: an h2c offer is ignored and the request answered over HTTP/1.1, one with a body refused', async () => {
    const { port } = new URL(proxy.url);
    const ask = async (request: string) => {
      const socket = connect({ host: '127.0.0.1', port: Number(port) });
      socket.write(request);
      let answer = '';
      socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
      await once(socket, 'close'); // the proxy ends the connection after the answer
      return answer;
    };
    const upgradesBefore = partnerUpgrades;
    // What Java's HttpClient and curl --http2 send for an http:// GET (RFC 9113 §3.1 deprecates it).
    const offer = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n';
    const plain = await ask(`GET /realtime/plain HTTP/1.1\r\nHost: 127.0.0.1\r\n${offer}\r\n`);
    expect(plain).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(plain).toMatch(/\r\nconnection: close\r\n/i);
    expect(plain).not.toMatch(/\r\nupgrade:/i);
    expect(plain.split('\r\n\r\n')[1]).toBe('plain answer for ws-client');
    expect(partnerUpgrades).toBe(upgradesBefore); // the partner saw an ordinary request
    expect(partnerRequests.at(-1)).toMatchObject({
      url: '/plain',
      upgrade: undefined,
      http2Settings: undefined,
      clientId: 'ws-client',
    });
    const withBody = await ask(
      `POST /realtime/plain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n${offer}\r\n{}`,
    );
    expect(withBody).toMatch(/^HTTP\/1\.1 400 /);
    expect(withBody).toContain('a request with a body cannot offer a protocol upgrade here');
    expect(partnerRequests).toHaveLength(1);
  });

  it('refuses an upgrade for a path no upstream serves', async () => {
    const ws = new WebSocket(`${proxy.url.replace('http:', 'ws:')}/nowhere`);
    const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number }];
    expect(res.statusCode).toBe(404);
  });

  it('opens nothing upstream for a client that left while its token was fetched, and logs it as 499', async () => {
    let release = (): void => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    // A token endpoint that answers only when told: the client leaves before it does.
    const tokenEndpoint = await startScriptedServer((_req, res) => {
      void held.then(() =>
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ access_token: 'late-token', token_type: 'Bearer', expires_in: 300 })),
      );
    });
    const late = await startProxy({
      upstreams: [
        {
          name: 'late',
          target: `https://127.0.0.1:${partnerPort}`,
          pathPrefix: '/late',
          ca: pki.caFile,
          auth: {
            type: 'client_credentials',
            tokenUrl: `${tokenEndpoint.url}/token`,
            clientId: 'late',
            clientSecret: 'late-secret',
          },
        },
      ],
    });
    try {
      const upgradesBefore = partnerUpgrades;
      const socket = connect({ host: '127.0.0.1', port: Number(new URL(late.url).port) });
      socket.write(
        'GET /late/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
          'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
      await eventually(() => tokenEndpoint.hits === 1, { timeoutMs: 10_000, what: 'the token request' });
      socket.destroy();
      await once(socket, 'close');
      release();
      await eventually(() => late.logs.some((l) => l.includes('"event":"request"') && l.includes('"status":499')), {
        timeoutMs: 10_000,
        what: 'the 499 access line',
      });
      expect(partnerUpgrades).toBe(upgradesBefore);
    } finally {
      release();
      await late.close();
      await tokenEndpoint.close();
    }
  });
});
