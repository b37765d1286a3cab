import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createRemoteJWKSet, customFetch, jwtVerify, type JWTPayload } from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';

/** What the partner saw of one request. */
export interface SeenRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingMessage['headers'];
  /** The bearer token presented (undefined when none). */
  readonly token: string | undefined;
  readonly claims: JWTPayload | undefined;
  readonly bodyBytes: number;
  readonly bodySha256: string;
  readonly status: number;
  /** The client's port: tells the connections a proxy used apart. */
  readonly remotePort: number | undefined;
  /** RFC 8705 §3.1 `x5t#S256` of the client certificate presented on the connection, if any. */
  readonly clientCertificate: string | undefined;
}

export interface ScriptedAnswer {
  readonly status: number;
  readonly headers?: Record<string, string | string[]>;
  readonly body?: string | Buffer;
  /** Answer only after this long (a slow partner). */
  readonly delayMs?: number;
}

export interface PartnerApi {
  readonly url: string;
  readonly seen: SeenRequest[];
  /** Tokens (by value) that this partner now answers with 401, as if revoked. */
  readonly revoked: Set<string>;
  /** Runs after the token is verified; an answer it returns replaces the normal one. */
  script: ((req: SeenRequest) => ScriptedAnswer | undefined) | undefined;
  close(): Promise<void>;
}

export interface PartnerOptions {
  readonly jwksUrl: string;
  readonly issuer?: string;
  /** The `aud` claim a token must carry for this partner (RFC 9068 §4); unchecked when absent. */
  readonly audience?: string;
  readonly tls?: {
    readonly key: string;
    readonly cert: string;
    /** Require client certificates signed by this CA (mTLS). */ readonly clientCa?: string;
  };
  /** CA that signed the issuer's certificate, when its JWKS is served over https. */
  readonly issuerCa?: string;
  readonly host?: string;
  readonly port?: number;
  /**
   * RFC 8705 §3: accept only certificate-bound tokens, presented over a connection with the very
   * certificate they are bound to (`cnf.x5t#S256`); any other answers 401 invalid_token.
   */
  readonly certificateBound?: boolean;
}

/** RFC 8705 §3.1: base64url SHA-256 of the DER certificate the client presented on this connection. */
function presentedThumbprint(req: IncomingMessage): string | undefined {
  const socket = req.socket as Partial<TLSSocket>;
  const raw = socket.getPeerCertificate?.().raw;
  return raw === undefined ? undefined : createHash('sha256').update(raw).digest('base64url');
}

/** RFC 8705 §3: a bound token's `cnf.x5t#S256` must name the certificate it came with. */
function bindingProblem(claims: JWTPayload, presented: string | undefined): string | undefined {
  const cnf = claims['cnf'];
  const bound = cnf !== null && typeof cnf === 'object' ? (cnf as Record<string, unknown>)['x5t#S256'] : undefined;
  if (typeof bound !== 'string') return 'token is not certificate-bound';
  if (presented === undefined) return 'no client certificate presented';
  return bound === presented ? undefined : 'token is bound to another certificate';
}

function send(res: ServerResponse, answer: ScriptedAnswer): void {
  res.writeHead(answer.status, answer.headers ?? {});
  res.end(answer.body ?? '');
}

/**
 * A partner API that checks each bearer token's signature against the issuer's JWKS, the way a
 * real resource server does (RFC 6750 §3.1 error answers). Paths `/status/NNN` answer with that
 * status, which shows that such answers (a 403 above all) pass the proxy untouched.
 */
export async function startPartnerApi(options: PartnerOptions): Promise<PartnerApi> {
  const agent = options.issuerCa === undefined ? undefined : new Agent({ connect: { ca: options.issuerCa } });
  const jwks = createRemoteJWKSet(
    new URL(options.jwksUrl),
    agent === undefined
      ? {}
      : {
          [customFetch]: (url, init) => undiciFetch(url, { ...(init as object), dispatcher: agent }),
        },
  );
  const seen: SeenRequest[] = [];
  const revoked = new Set<string>();
  const api: PartnerApi = {
    url: '',
    seen,
    revoked,
    script: undefined,
    close: async () => undefined,
  };

  const handler = async (req: IncomingMessage, res: ServerResponse) => {
    const hash = createHash('sha256');
    let bodyBytes = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      hash.update(chunk);
      bodyBytes += chunk.length;
    }
    const auth = req.headers.authorization;
    const token = auth?.startsWith('Bearer ') ? auth.slice(7) : undefined;
    let claims: JWTPayload | undefined;
    let answer: ScriptedAnswer | undefined;
    if (token === undefined) {
      answer = {
        status: 401,
        headers: { 'www-authenticate': 'Bearer realm="partner"', 'content-type': 'application/json' },
        body: '{"error":"missing_token"}',
      };
    } else {
      try {
        const expected = {
          ...(options.issuer === undefined ? {} : { issuer: options.issuer }),
          ...(options.audience === undefined ? {} : { audience: options.audience }),
        };
        claims = (await jwtVerify(token, jwks, expected)).payload;
      } catch (err) {
        const description = (err as Error).message.replace(/"/g, "'");
        answer = {
          status: 401,
          headers: {
            'www-authenticate': `Bearer error="invalid_token", error_description="${description}"`,
            'content-type': 'application/json',
          },
          body: JSON.stringify({ error: 'invalid_token' }),
        };
      }
      const unbound =
        answer === undefined && claims !== undefined && options.certificateBound === true
          ? bindingProblem(claims, presentedThumbprint(req))
          : undefined;
      if (unbound !== undefined) {
        answer = {
          status: 401,
          headers: { 'www-authenticate': `Bearer error="invalid_token", error_description="${unbound}"` },
          body: '{"error":"invalid_token"}',
        };
      }
      if (answer === undefined && revoked.has(token)) {
        answer = {
          status: 401,
          headers: { 'www-authenticate': 'Bearer error="invalid_token", error_description="revoked"' },
          body: '{"error":"invalid_token"}',
        };
      }
    }
    const path = req.url ?? '/';
    const record = (status: number): SeenRequest => ({
      method: req.method ?? 'GET',
      path,
      headers: req.headers,
      token,
      claims,
      bodyBytes,
      bodySha256: hash.copy().digest('hex'),
      status,
      remotePort: req.socket.remotePort,
      clientCertificate: presentedThumbprint(req),
    });
    if (answer === undefined) answer = api.script?.(record(0));
    if (answer === undefined) {
      const m = /^\/status\/(\d{3})(?:[/?]|$)/.exec(path);
      if (m !== null) {
        const status = Number(m[1]);
        answer = {
          status,
          headers: {
            'content-type': 'application/json',
            'x-partner-reason': 'scripted',
            'set-cookie': ['a=1; Path=/', 'b=2; Path=/'],
          },
          body: JSON.stringify({
            error: status === 403 ? 'forbidden' : 'status',
            detail: `partner answered ${status}`,
          }),
        };
      } else {
        answer = {
          status: 200,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            ok: true,
            method: req.method,
            path,
            client: claims?.['client_id'] ?? claims?.sub ?? null,
            scope: claims?.['scope'] ?? null,
            bodyBytes,
            bodySha256: record(0).bodySha256,
          }),
        };
      }
    }
    seen.push(record(answer.status));
    if (answer.delayMs !== undefined) await new Promise((resolve) => setTimeout(resolve, answer.delayMs));
    send(res, answer);
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    handler(req, res).catch(() => {
      if (!res.headersSent) send(res, { status: 500, body: 'partner error' });
      else res.destroy();
    });
  };
  const tls = options.tls;
  const server: Server = tls
    ? createHttpsServer(
        {
          key: tls.key,
          cert: tls.cert,
          ...(tls.clientCa === undefined ? {} : { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true }),
        },
        onRequest,
      )
    : createHttpServer(onRequest);
  server.listen(options.port ?? 0, options.host ?? '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  Object.assign(api, {
    url: `${options.tls ? 'https' : 'http'}://${options.host ?? '127.0.0.1'}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        void agent?.close();
      }),
  });
  return api;
}
