// Comparison point: the least a Node proxy can do, node:http in front of an undici Pool driven
// through dispatch() (the handler API token-proxy uses), a static bearer header and nothing
// else: no token cache, no metrics, no 401 replay. Env: PORT, TARGET, AUTHORIZATION.
import { createServer } from 'node:http';
import process from 'node:process';
import { URL } from 'node:url';
import { Pool } from 'undici';

const target = new URL(process.env.TARGET);
const authorization = process.env.AUTHORIZATION;
const pool = new Pool(target.origin, { keepAliveTimeout: 30_000 });
// Hop-by-hop fields (undici rejects some of them outright), plus those replaced here.
const DROP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'authorization',
]);

const server = createServer((req, res) => {
  const headers = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) if (!DROP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  headers.push('authorization', authorization);
  const hasBody = (req.headers['content-length'] ?? '0') !== '0' || req.headers['transfer-encoding'] !== undefined;
  pool.dispatch(
    { path: req.url, method: req.method, headers, body: hasBody ? req : null },
    {
      onConnect() {},
      onHeaders(status, rawHeaders, resume, statusText) {
        const out = [];
        for (let i = 0; i < rawHeaders.length; i += 2) {
          const name = rawHeaders[i].toString('latin1');
          if (!DROP.has(name.toLowerCase())) out.push(name, rawHeaders[i + 1].toString('latin1'));
        }
        res.writeHead(status, statusText, out);
        res.on('drain', resume); // backpressure: undici pauses when onData returns false
        return true;
      },
      onData: (chunk) => res.write(chunk),
      onComplete: () => res.end(),
      onError(err) {
        if (res.headersSent) res.destroy(err);
        else res.writeHead(502).end();
      },
    },
  );
});
server.keepAliveTimeout = 120_000;
server.listen(Number(process.env.PORT), '127.0.0.1');
