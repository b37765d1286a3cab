import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { MutableResponse, MutableToken, TokenRequestIncomingMessage } from 'oauth2-mock-server';
import { createApp, type App } from '../app.js';
import { buildConfig } from '../config/load.js';
import { startPartnerApi, type PartnerApi } from './partner-api.js';

/** Demo token lifetime: short, so a background refresh shows in the log within a minute. */
const DEMO_TOKEN_SECONDS = 120;

export interface Demo {
  readonly app: App;
  readonly partner: PartnerApi;
  readonly proxyUrl: string;
  readonly adminUrl: string;
  close(): Promise<void>;
}

function basicClientId(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (header?.startsWith('Basic ') !== true) return undefined;
  return decodeURIComponent(Buffer.from(header.slice(6), 'base64').toString('utf8').split(':')[0] ?? '');
}

/**
 * A self-contained demo on loopback: a real OAuth2 server (oauth2-mock-server, a development
 * dependency, hence `npm ci` first), a partner API that verifies tokens against its JWKS, and
 * the proxy between them.
 */
export async function startDemo(listen: { proxy: string; admin: string }, logLevel: string): Promise<Demo> {
  const { OAuth2Server } = await import('oauth2-mock-server').catch(() => {
    throw new Error('the demo needs the development dependencies: run `npm ci` in the repository first');
  });
  const issuer = new OAuth2Server();
  await issuer.issuer.keys.generate('RS256');
  await issuer.start(0, '127.0.0.1');
  const issuerUrl = `http://127.0.0.1:${issuer.address().port}`;
  issuer.issuer.url = issuerUrl;
  issuer.service.on('beforeTokenSigning', (token: MutableToken, req: TokenRequestIncomingMessage) => {
    token.payload['jti'] = randomUUID();
    token.payload['client_id'] = basicClientId(req) ?? req.body['client_id'];
    token.payload.exp = Math.floor(Date.now() / 1000) + DEMO_TOKEN_SECONDS;
  });
  issuer.service.on('beforeResponse', (response: MutableResponse) => {
    if (response.statusCode === 200) (response.body as Record<string, unknown>)['expires_in'] = DEMO_TOKEN_SECONDS;
  });
  const partner = await startPartnerApi({ jwksUrl: `${issuerUrl}/jwks`, issuer: issuerUrl });
  const config = buildConfig(
    {
      listen: listen.proxy,
      admin: { listen: listen.admin },
      logLevel,
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          auth: {
            type: 'client_credentials',
            tokenUrl: `${issuerUrl}/token`,
            clientId: 'demo-client',
            clientSecret: 'demo-only-secret',
            scope: 'demo.read',
          },
        },
      ],
    },
    { env: {} },
  );
  const app = createApp(config);
  const { proxy, admin } = await app.listen();
  return {
    app,
    partner,
    proxyUrl: `http://${proxy.address}:${proxy.port}`,
    adminUrl: `http://${admin.address}:${admin.port}`,
    async close() {
      await app.close();
      await partner.close();
      await issuer.stop();
    },
  };
}
