import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import {
  OAuth2Server,
  type MutableResponse,
  type MutableToken,
  type TokenRequestIncomingMessage,
} from 'oauth2-mock-server';
import { testPki } from './certs.js';

export interface TokenRequestSeen {
  readonly grantType: string;
  readonly body: Record<string, string>;
  readonly authorization: string | undefined;
}

export interface TokenServer {
  readonly url: string;
  readonly tokenUrl: string;
  readonly jwksUrl: string;
  readonly requests: TokenRequestSeen[];
  /** Issued access tokens, in order. */
  readonly issued: string[];
  readonly server: OAuth2Server;
  /** Replaces the next answers (until cleared) with a scripted one: status, body, headers. */
  respondWith(answer: ((res: MutableResponse, req: IncomingMessage) => void) | undefined): void;
  /** Lifetime of tokens issued from now on (expires_in and JWT exp). */
  lifetimeSeconds: number;
  stop(): Promise<void>;
}

function basicClientId(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  if (h?.startsWith('Basic ') !== true) return undefined;
  return decodeURIComponent(Buffer.from(h.slice(6), 'base64').toString('utf8').split(':')[0] ?? '');
}

/**
 * A real OAuth2 server (oauth2-mock-server) over HTTPS with the test CA. Each token gets a
 * unique `jti` and the caller's `client_id`, so the partner can tell tokens and clients apart.
 */
export async function startTokenServer(options: { tls?: boolean } = {}): Promise<TokenServer> {
  const pki = testPki();
  const server = options.tls === false ? new OAuth2Server() : new OAuth2Server(pki.keyFile, pki.certFile);
  await server.issuer.keys.generate('RS256');
  await server.start(0, '127.0.0.1');
  const url = `${options.tls === false ? 'http' : 'https'}://127.0.0.1:${server.address().port}`;
  server.issuer.url = url;
  let scripted: ((res: MutableResponse, req: IncomingMessage) => void) | undefined;
  const ts: TokenServer = {
    url,
    tokenUrl: `${url}/token`,
    jwksUrl: `${url}/jwks`,
    requests: [],
    issued: [],
    server,
    lifetimeSeconds: 300,
    respondWith(answer) {
      scripted = answer;
    },
    stop: () => server.stop(),
  };
  server.service.on('beforeTokenSigning', (token: MutableToken, req: TokenRequestIncomingMessage) => {
    token.payload['jti'] = randomUUID();
    token.payload['client_id'] = basicClientId(req) ?? req.body['client_id'];
    token.payload.exp = Math.floor(Date.now() / 1000) + ts.lifetimeSeconds;
  });
  server.service.on('beforeResponse', (res: MutableResponse, req: TokenRequestIncomingMessage) => {
    ts.requests.push({
      grantType: String(req.body['grant_type']),
      body: { ...req.body } as Record<string, string>,
      authorization: req.headers.authorization,
    });
    if (res.statusCode === 200) {
      (res.body as Record<string, unknown>)['expires_in'] = ts.lifetimeSeconds;
    }
    if (scripted !== undefined) {
      scripted(res, req);
      return;
    }
    ts.issued.push(String((res.body as Record<string, unknown>)['access_token']));
  });
  return ts;
}
