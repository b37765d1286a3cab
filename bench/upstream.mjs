// The partner API of the benchmark: a small JSON answer to anything, but only with a bearer token
// the benchmark's token server signed and that has not expired by this process's clock (401
// otherwise). Plain HTTP on PORT; also HTTPS on HTTPS_PORT when TLS_CERT and TLS_KEY (PEM file
// paths) are set. Started by run.mjs with an IPC channel; every message { id, op } is answered
// with { id, result }:
// - op 'stats': the counters since the last ask;
// - op 'revoke': the token seen last is rejected from then on (a partner revoking a token: the
//   forced 401 storm); answered with { revoked: how many tokens are revoked so far }.
import { Buffer } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import process from 'node:process';
import { importJWK, jwtVerify } from 'jose';

const key = await importJWK(JSON.parse(process.env.BENCH_JWK), 'RS256');
// Authorization values whose signature was checked once, with their expiry (epoch ms): the hot
// path is one Map lookup and one clock read, so the upstream stays cheap and costs every
// configuration the same.
const verified = new Map();
const revoked = new Set();
let lastSeen;
const body = Buffer.from(
  JSON.stringify({ ok: true, service: 'bench-upstream', message: 'hello from the partner', id: 12345678 }),
);
const fresh = () => ({ ok: 0, unauthorized: 0, expired: 0, revoked: 0, bodyBytes: 0, connections: 0, rejected: [] });
let stats = fresh();

/** The token's expiry in ms when its signature is good; 'expired' or undefined otherwise. */
async function verify(authorization) {
  if (authorization?.startsWith('Bearer ') !== true) return undefined;
  try {
    const { payload } = await jwtVerify(authorization.slice(7), key, { clockTolerance: 0 });
    const exp = typeof payload.exp === 'number' ? payload.exp * 1000 : Infinity;
    verified.set(authorization, exp);
    return exp;
  } catch (err) {
    return err?.code === 'ERR_JWT_EXPIRED' ? 'expired' : undefined;
  }
}

function answer(req, res, verdict) {
  if (verdict === 'ok') stats.ok += 1;
  else {
    stats.unauthorized += 1;
    if (verdict === 'expired') stats.expired += 1;
    if (verdict === 'revoked') stats.revoked += 1;
    // A few samples of what was rejected, for the benchmark's warnings (never a whole token).
    if (stats.rejected.length < 3) {
      const a = req.headers.authorization;
      stats.rejected.push({
        verdict,
        method: req.method,
        url: req.url,
        authorization: a === undefined ? 'none' : `${a.slice(0, 12)}… (${a.length} chars)`,
        userAgent: req.headers['user-agent'],
        via: req.headers.via,
      });
    }
  }
  // Read the whole request body (the POST scenario) before answering, as a real API would.
  req.on('data', (chunk) => (stats.bodyBytes += chunk.length));
  req.on('end', () => {
    res.writeHead(verdict === 'ok' ? 200 : 401, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  });
}

/** Expiry is checked on every request against this process's clock: an expired token is counted. */
const judge = (authorization, exp) => (revoked.has(authorization) ? 'revoked' : Date.now() >= exp ? 'expired' : 'ok');

function handler(req, res) {
  const authorization = req.headers.authorization;
  lastSeen = authorization;
  const exp = verified.get(authorization);
  if (exp !== undefined) answer(req, res, judge(authorization, exp));
  else
    void verify(authorization).then((v) =>
      answer(req, res, v === undefined ? 'bad' : v === 'expired' ? 'expired' : judge(authorization, v)),
    );
}

// Proxies keep their pooled connections open between rounds; never close them under them.
const server = createServer(handler);
server.keepAliveTimeout = 120_000;
server.on('connection', () => (stats.connections += 1)); // new connections (the cold-cache burst opens many)
server.listen(Number(process.env.PORT), '127.0.0.1');
if (process.env.HTTPS_PORT && process.env.TLS_CERT && process.env.TLS_KEY) {
  const tls = createTlsServer(
    { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) },
    handler,
  );
  tls.keepAliveTimeout = 120_000;
  tls.on('secureConnection', () => (stats.connections += 1));
  tls.listen(Number(process.env.HTTPS_PORT), '127.0.0.1');
}

process.on('message', (msg) => {
  if (msg?.op === 'stats') {
    process.send({ id: msg.id, result: stats });
    stats = fresh();
  } else if (msg?.op === 'revoke') {
    if (lastSeen !== undefined) revoked.add(lastSeen);
    process.send({ id: msg.id, result: { revoked: revoked.size } });
  }
});
process.on('disconnect', () => process.exit(0)); // the benchmark went away: so do we
