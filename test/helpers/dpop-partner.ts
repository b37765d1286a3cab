import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import {
  EmbeddedJWK,
  calculateJwkThumbprint,
  createRemoteJWKSet,
  customFetch,
  decodeProtectedHeader,
  jwtVerify,
  type JWTPayload,
} from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';
import { WebSocketServer } from 'ws';
import { testPki } from './certs.js';

/** What the partner made of one request. */
export interface DpopSeen {
  readonly method: string;
  readonly path: string;
  readonly status: number;
  /** Why it was refused ('ok' when it was not): 'use_dpop_nonce', 'htu', 'ath', 'jti_replay', … */
  readonly verdict: string;
  readonly scheme: string | undefined;
  readonly token: string | undefined;
  readonly tokenClaims: JWTPayload | undefined;
  readonly proof: JWTPayload | undefined;
  readonly proofHeader: Record<string, unknown> | undefined;
  readonly proofs: number;
  readonly bodyBytes: number;
}

export interface DpopPartner {
  readonly url: string;
  readonly seen: DpopSeen[];
  /** The nonce proofs must carry now (RFC 9449 §9), when nonces are on. */
  readonly nonce: string;
  /** Changes the nonce without telling anyone: the next request is refused with use_dpop_nonce. */
  rotateNonce(): string;
  /** Tokens (by value) that this partner answers with DPoP error="invalid_token", as if revoked. */
  readonly revoked: Set<string>;
  close(): Promise<void>;
}

export interface DpopPartnerOptions {
  readonly jwksUrl: string;
  readonly issuer: string;
  /** Require the partner's current nonce in every proof (RFC 9449 §9). */
  readonly requireNonce: boolean;
}

/** The acceptable distance of a proof's iat from now (RFC 9449 §11.1 leaves it to the server). */
const IAT_WINDOW_SECONDS = 60;

/**
 * A resource server that checks DPoP the way RFC 9449 §4.3 and §7.1 say, with jose: the access
 * token (a JWT from the OIDC server, checked against its JWKS) under the DPoP scheme; exactly one
 * proof, typ dpop+jwt, signed by the key in its own jwk header; htm, htu (this server's URL
 * without query), iat within a minute, a jti never seen before, ath = SHA-256 of the token, the
 * key's RFC 7638 thumbprint equal to the token's cnf.jkt, and (when on) its current nonce.
 * WebSocket handshakes are judged the same way.
 */
export async function startDpopPartner(options: DpopPartnerOptions): Promise<DpopPartner> {
  const pki = testPki();
  const agent = new Agent({ connect: { ca: pki.ca } });
  const jwks = createRemoteJWKSet(new URL(options.jwksUrl), {
    [customFetch]: (url, init) => undiciFetch(url, { ...(init as object), dispatcher: agent }),
  });
  const seen: DpopSeen[] = [];
  const jtis = new Set<string>();
  const revoked = new Set<string>();
  let nonce = randomBytes(16).toString('base64url');
  let origin = '';

  /** Judges one request (or WebSocket handshake) and records it; the answer's status and headers. */
  const judge = async (
    req: IncomingMessage,
    bodyBytes: number,
  ): Promise<{ status: number; verdict: string; headers: Record<string, string> }> => {
    const path = req.url ?? '/';
    const authorization = req.headers.authorization ?? '';
    const space = authorization.indexOf(' ');
    const scheme = space === -1 ? undefined : authorization.slice(0, space);
    const token = space === -1 ? undefined : authorization.slice(space + 1);
    const proofValues = req.headersDistinct['dpop'] ?? [];
    let tokenClaims: JWTPayload | undefined;
    let proof: JWTPayload | undefined;
    let proofHeader: Record<string, unknown> | undefined;
    const verdict = await (async (): Promise<string> => {
      if (scheme !== 'DPoP' || token === undefined) return 'scheme';
      try {
        tokenClaims = (await jwtVerify(token, jwks, { issuer: options.issuer })).payload;
      } catch {
        return 'invalid_token';
      }
      if (revoked.has(token)) return 'invalid_token';
      if (proofValues.length !== 1) return 'proof_count';
      const value = proofValues[0] as string;
      try {
        proofHeader = decodeProtectedHeader(value);
        proof = (await jwtVerify(value, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256', 'PS256', 'EdDSA'] }))
          .payload;
      } catch {
        return 'signature';
      }
      if (proof['htm'] !== req.method) return 'htm';
      if (proof['htu'] !== `${origin}${path.split('?')[0]}`) return 'htu';
      const iat = proof.iat;
      if (typeof iat !== 'number' || Math.abs(Date.now() / 1000 - iat) > IAT_WINDOW_SECONDS) return 'iat';
      if (typeof proof.jti !== 'string' || jtis.has(proof.jti)) return 'jti_replay';
      jtis.add(proof.jti);
      if (proof['ath'] !== createHash('sha256').update(token).digest('base64url')) return 'ath';
      const cnf = tokenClaims['cnf'] as { jkt?: unknown } | undefined;
      const jkt = await calculateJwkThumbprint(proofHeader['jwk'] as Parameters<typeof calculateJwkThumbprint>[0]);
      if (cnf?.jkt !== jkt) return 'jkt';
      if (options.requireNonce && proof['nonce'] !== nonce) return 'use_dpop_nonce';
      return 'ok';
    })();
    let status = 200;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (verdict === 'use_dpop_nonce') {
      status = 401;
      headers['www-authenticate'] =
        'DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"';
      headers['dpop-nonce'] = nonce;
    } else if (verdict === 'invalid_token') {
      status = 401;
      headers['www-authenticate'] = 'DPoP error="invalid_token", algs="ES256 PS256 EdDSA"';
    } else if (verdict !== 'ok') {
      status = 401;
      headers['www-authenticate'] = `DPoP error="invalid_dpop_proof", error_description="${verdict}"`;
    }
    seen.push({
      method: req.method ?? 'GET',
      path,
      status,
      verdict,
      scheme,
      token,
      tokenClaims,
      proof,
      proofHeader,
      proofs: proofValues.length,
      bodyBytes,
    });
    return { status, verdict, headers };
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let bodyBytes = 0;
    for await (const chunk of req) bodyBytes += (chunk as Buffer).length;
    const { status, verdict, headers } = await judge(req, bodyBytes);
    res.writeHead(status, headers);
    res.end(JSON.stringify({ verdict, path: req.url, bodyBytes }));
  };

  const server = createServer({ key: pki.key, cert: pki.cert }, (req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500).end();
      else res.destroy();
    });
  });
  // WebSocket handshakes are judged like any request; an accepted one echoes each message.
  const wss = new WebSocketServer({
    server,
    verifyClient: (info, done) => {
      judge(info.req, 0).then(
        ({ status, headers }) => (status === 200 ? done(true) : done(false, status, 'refused', headers)),
        () => done(false, 500),
      );
    },
  });
  wss.on('connection', (ws) => ws.on('message', (data: Buffer) => ws.send(`echo ${data.toString()}`)));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: origin,
    seen,
    get nonce() {
      return nonce;
    },
    rotateNonce: () => {
      nonce = randomBytes(16).toString('base64url');
      return nonce;
    },
    revoked,
    close: () =>
      new Promise<void>((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close();
        server.close(() => resolve());
        server.closeAllConnections();
        void agent.close();
      }),
  };
}
