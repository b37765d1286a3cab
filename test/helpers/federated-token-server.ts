import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import {
  createLocalJWKSet,
  decodeJwt,
  exportJWK,
  generateKeyPair,
  jwtVerify,
  SignJWT,
  type JSONWebKeySet,
  type JWTPayload,
} from 'jose';
import { testPki } from './certs.js';

/**
 * A token endpoint that authenticates clients by an externally issued JWT (RFC 7523 §2.2 with a
 * federated identity: the way cloud platforms accept a Kubernetes service-account token in place
 * of a client secret). oidc-provider cannot express this: its private_key_jwt wants iss = sub =
 * client_id and the client's own keys, not a third party's. So this is a small jose endpoint: the
 * assertion is verified against the workload issuer's JWKS (signature, iss, aud, exp), and its
 * (iss, sub) must be the federated credential registered for the client_id.
 */
export interface FederatedCredential {
  readonly clientId: string;
  /** The workload identity (the assertion's `sub`) this client trusts. */
  readonly subject: string;
  readonly scope?: string;
}

export interface FederatedTokenServerOptions {
  /** The workload issuer whose tokens are trusted: its `iss` and JWKS. */
  readonly trust: { readonly issuer: string; readonly jwks: JSONWebKeySet };
  /** The `aud` the assertion must carry (this server's identity). */
  readonly assertionAudience: string;
  readonly credentials: readonly FederatedCredential[];
  /** The `aud` of the access tokens issued (the partner API's identity). */
  readonly resource?: string;
  readonly accessTokenTtlSeconds?: number;
}

export interface FederatedCall {
  readonly grantType: string;
  readonly clientId: string | undefined;
  /**
   * The claims of the client assertion (or of a jwt-bearer grant's assertion, which this server
   * refuses) as received, decoded before verification; undefined when none came.
   */
  readonly assertion: JWTPayload | undefined;
  readonly status: number;
  readonly error: string | undefined;
}

export interface FederatedTokenServer {
  readonly issuer: string;
  readonly tokenUrl: string;
  readonly jwksUrl: string;
  readonly resource: string;
  readonly calls: FederatedCall[];
  /** Access tokens issued, in order. */
  readonly issued: string[];
  /**
   * When set, failures quote what was sent in their error_description, as careless servers do
   * ("client_assertion eyJ… is not valid"): the proxy must cut it out of its logs and errors.
   */
  echoAssertion: boolean;
  stop(): Promise<void>;
}

const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

function json(res: ServerResponse, status: number, body: Record<string, unknown>): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function claimsOf(assertion: string | null): JWTPayload | undefined {
  if (assertion === null) return undefined;
  try {
    return decodeJwt(assertion);
  } catch {
    return undefined;
  }
}

export async function startFederatedTokenServer(options: FederatedTokenServerOptions): Promise<FederatedTokenServer> {
  const pki = testPki();
  const trusted = createLocalJWKSet(options.trust.jwks);
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const kid = 'federated-rs256';
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' }] };
  const resource = options.resource ?? 'https://api.partner.test/';
  const ttl = options.accessTokenTtlSeconds ?? 300;
  let issuer = '';

  const state: FederatedTokenServer = {
    issuer: '',
    tokenUrl: '',
    jwksUrl: '',
    resource,
    calls: [],
    issued: [],
    echoAssertion: false,
    stop: async () => undefined,
  };

  const token = async (req: IncomingMessage, res: ServerResponse) => {
    const form = await readForm(req);
    const grantType = form.get('grant_type') ?? '';
    const clientId = form.get('client_id') ?? undefined;
    const assertion = form.get('client_assertion');
    const claims = claimsOf(assertion ?? form.get('assertion'));
    const fail = (status: number, error: string, description: string) => {
      state.calls.push({ grantType, clientId, assertion: claims, status, error });
      const quoted = state.echoAssertion ? `received ${form.toString()}: ` : '';
      json(res, status, { error, error_description: `${quoted}${description}` });
    };
    if (grantType !== 'client_credentials') return fail(400, 'unsupported_grant_type', 'client_credentials only');
    if (form.get('client_assertion_type') !== CLIENT_ASSERTION_TYPE || assertion === null)
      return fail(401, 'invalid_client', 'a client_assertion of type jwt-bearer is required');
    let verified: JWTPayload;
    try {
      // RFC 7523 §3: iss, sub, aud and exp are required; the signature is the workload issuer's.
      verified = (
        await jwtVerify(assertion, trusted, {
          issuer: options.trust.issuer,
          audience: options.assertionAudience,
          requiredClaims: ['iss', 'sub', 'aud', 'exp'],
        })
      ).payload;
    } catch (err) {
      return fail(401, 'invalid_client', `client_assertion rejected: ${(err as Error).message}`);
    }
    const credential = options.credentials.find(
      (c) => c.subject === verified.sub && (clientId === undefined || c.clientId === clientId),
    );
    if (credential === undefined) return fail(401, 'invalid_client', `no federated credential for ${verified.sub}`);
    const accessToken = await new SignJWT({ client_id: credential.clientId, scope: credential.scope ?? '' })
      .setProtectedHeader({ alg: 'RS256', kid, typ: 'at+jwt' })
      .setIssuer(issuer)
      .setSubject(String(verified.sub))
      .setAudience(resource)
      .setIssuedAt()
      .setExpirationTime(`${ttl}s`)
      .setJti(randomUUID())
      .sign(privateKey);
    state.calls.push({ grantType, clientId, assertion: verified, status: 200, error: undefined });
    state.issued.push(accessToken);
    json(res, 200, {
      access_token: accessToken,
      token_type: 'Bearer',
      expires_in: ttl,
      ...(credential.scope === undefined ? {} : { scope: credential.scope }),
    });
  };

  const server: Server = createServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const answer =
      req.method === 'POST' && path === '/token'
        ? token(req, res)
        : Promise.resolve(
            req.method === 'GET' && path === '/jwks' ? json(res, 200, jwks) : json(res, 404, { error: 'not_found' }),
          );
    answer.catch(() => json(res, 500, { error: 'server_error' }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  issuer = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return Object.assign(state, {
    issuer,
    tokenUrl: `${issuer}/token`,
    jwksUrl: `${issuer}/jwks`,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  });
}
