// The partner API of the benchmark: a small JSON answer to anything, but only with a bearer token
// the benchmark's token server signed (401 otherwise). Started by run.mjs with an IPC channel:
// the message 'stats' is answered with the counters since the last ask.
import { Buffer } from 'node:buffer';
import { createServer } from 'node:http';
import process from 'node:process';
import { importJWK, jwtVerify } from 'jose';

const key = await importJWK(JSON.parse(process.env.BENCH_JWK), 'RS256');
// Authorization values whose signature was checked once: the hot path is one Set lookup, so the
// upstream stays cheap and costs every configuration the same.
const verified = new Set();
const body = Buffer.from(JSON.stringify({ ok: true, service: 'bench-upstream', message: 'hello from the partner', id: 12345678 }));
let stats = { ok: 0, unauthorized: 0, bodyBytes: 0 };

async function verify(authorization) {
  if (authorization?.startsWith('Bearer ') !== true) return false;
  try {
    await jwtVerify(authorization.slice(7), key);
    verified.add(authorization);
    return true;
  } catch {
    return false;
  }
}

function answer(req, res, ok) {
  if (ok) stats.ok += 1;
  else stats.unauthorized += 1;
  // Read the whole request body (the POST scenario) before answering, as a real API would.
  req.on('data', (chunk) => (stats.bodyBytes += chunk.length));
  req.on('end', () => {
    res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  });
}

const server = createServer((req, res) => {
  const authorization = req.headers.authorization;
  if (verified.has(authorization)) answer(req, res, true);
  else void verify(authorization).then((ok) => answer(req, res, ok));
});
// Proxies keep their pooled connections open between rounds; never close them under them.
server.keepAliveTimeout = 120_000;
server.listen(Number(process.env.PORT), '127.0.0.1');

process.on('message', (msg) => {
  if (msg !== 'stats') return;
  process.send(stats);
  stats = { ok: 0, unauthorized: 0, bodyBytes: 0 };
});
process.on('disconnect', () => process.exit(0)); // the benchmark went away: so do we
