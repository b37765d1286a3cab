import { randomBytes } from 'node:crypto';
import { createApp, type App } from '../app.js';
import { buildConfig } from '../config/load.js';
import { isLoopbackHost, parseListen } from '../config/schema.js';
import { startPartnerApi, type PartnerApi } from './partner-api.js';
import { startTokenServer, type TokenServer } from './token-server.js';

/** Demo token lifetime: short, so a background refresh shows in the log within a minute. */
export const DEMO_TOKEN_SECONDS = 120;

/**
 * Who may use the demo proxy when it listens beyond loopback, as it does in the container image
 * (TOKEN_PROXY_LISTEN=0.0.0.0:8080): loopback and private addresses (RFC 1918, RFC 4193), where a
 * published container port's connections come from, never the internet. Its only token is for a
 * partner on the container's own loopback, and egress stays closed (`egress.default: deny`).
 */
const DEMO_PEERS = ['127.0.0.0/8', '::1/128', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'];

export interface Demo {
  readonly app: App;
  readonly tokenServer: TokenServer;
  readonly partner: PartnerApi;
  readonly proxyUrl: string;
  readonly adminUrl: string;
  close(): Promise<void>;
}

export interface DemoOptions {
  readonly tokenSeconds?: number;
}

/**
 * A self-contained demo on loopback, from production dependencies only: a client-credentials
 * token server (./token-server.ts), a partner API that verifies each token's signature against
 * that server's JWKS (./partner-api.ts), and the proxy between them, which fetches, caches and
 * renews the token. The client secret is made up at start and never printed.
 */
export async function startDemo(
  listen: { proxy: string; admin: string },
  logLevel: string,
  options: DemoOptions = {},
): Promise<Demo> {
  const audience = 'demo-partner';
  const client = { clientId: 'demo-client', clientSecret: randomBytes(24).toString('base64url'), scope: 'demo.read' };
  const tokenServer = await startTokenServer({
    ...client,
    audience,
    tokenSeconds: options.tokenSeconds ?? DEMO_TOKEN_SECONDS,
  });
  const partner = await startPartnerApi({ jwksUrl: tokenServer.jwksUrl, issuer: tokenServer.issuer, audience });
  const host = parseListen(listen.proxy)?.host;
  try {
    const config = buildConfig(
      {
        listen: listen.proxy,
        admin: { listen: listen.admin },
        logLevel,
        ...(host === undefined || isLoopbackHost(host) ? {} : { inbound: { allowCidrs: DEMO_PEERS } }),
        upstreams: [
          {
            name: 'partner',
            target: partner.url,
            pathPrefix: '/partner',
            auth: { type: 'client_credentials', tokenUrl: tokenServer.tokenUrl, ...client },
          },
        ],
      },
      { env: {} },
    );
    const app = createApp(config);
    const { proxy, admin } = await app.listen().catch(async (err: unknown) => {
      await app.close();
      throw err;
    });
    return {
      app,
      tokenServer,
      partner,
      proxyUrl: `http://${proxy.address}:${proxy.port}`,
      adminUrl: `http://${admin.address}:${admin.port}`,
      async close() {
        await app.close();
        await partner.close();
        await tokenServer.close();
      },
    };
  } catch (err) {
    await partner.close();
    await tokenServer.close();
    throw err;
  }
}
