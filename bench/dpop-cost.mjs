#!/usr/bin/env node
// The cost of DPoP (RFC 9449) per request to a DPoP upstream, measured on token-proxy's own
// code (dist/): what sendWithProof adds to a request of a bearer upstream is one cached binding
// lookup (the `DPoP <token>` value and its `ath`, made once per token), and one proof: a UUID, a
// small JSON payload, base64url and one signature. Reports µs per proof for each algorithm, for
// token-proxy's DpopSigner (node:crypto directly, header encoded once) and, for comparison, for
// jose's SignJWT with the same key and claims (what a straightforward implementation would do).
// A short microbenchmark, single-threaded: run it on an otherwise idle machine.
//   npm run bench:dpop [-- --ms 1000]     (prints a table and JSON)
import { createHash, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { SignJWT, importPKCS8 } from 'jose';
import { resolveDpop } from '../dist/config/dpop.js';
import { DpopSigner } from '../dist/oauth/dpop-signer.js';
import { addProof } from '../dist/proxy/dpop-request.js';
import { upstreamRequestHeaders } from '../dist/proxy/headers.js';

const i = process.argv.indexOf('--ms');
const MS = i === -1 ? 1000 : Number(process.argv[i + 1]);

/** Runs `fn` (sync or async) for about MS ms after a warm-up; µs per call. */
async function measure(fn) {
  const until = (ms) => performance.now() + ms;
  for (let end = until(MS / 4); performance.now() < end;) await fn();
  let n = 0;
  const start = performance.now();
  for (let end = until(MS); performance.now() < end; n++) await fn();
  return ((performance.now() - start) * 1000) / n;
}

const token = { value: 'eyJhbGciOiJSUzI1NiJ9.' + 'x'.repeat(700) + '.sig' };
const raw = ['Host', 'proxy.local', 'Accept', 'application/json', 'User-Agent', 'bench/1'];
const forwarded = { clientAddress: '127.0.0.1', proto: 'http', requestId: 'r-1' };
const results = {};

// The bearer baseline: the headers of one request as send() builds them.
results.bearerHeadersUs = await measure(() => upstreamRequestHeaders(raw, forwarded, `Bearer ${token.value}`));

for (const alg of ['ES256', 'PS256', 'EdDSA']) {
  const key = resolveDpop({ alg }, 'dpop', '.', []);
  const signer = new DpopSigner(key, () => Date.now());
  signer.rememberNonce('https://api.partner.example', 'n'.repeat(43));
  const proxyProof = await measure(() =>
    signer.proof('GET', 'https://api.partner.example', 'https://api.partner.example/v1/orders', 'a'.repeat(43)),
  );
  const perRequest = await measure(() => {
    const bound = signer.binding(token);
    const headers = upstreamRequestHeaders(raw, forwarded, bound.authorization);
    return addProof(headers, signer, 'GET', 'https://api.partner.example', '/v1/orders?page=2', bound.ath);
  });
  const joseKey = await importPKCS8(key.privateKeyPem, alg);
  const ath = createHash('sha256').update(token.value).digest('base64url');
  const joseProof = await measure(() =>
    new SignJWT({ htm: 'GET', htu: 'https://api.partner.example/v1/orders', ath, nonce: 'n'.repeat(43) })
      .setProtectedHeader({ typ: 'dpop+jwt', alg, jwk: key.publicJwk })
      .setJti(randomUUID())
      .setIssuedAt()
      .sign(joseKey),
  );
  results[alg] = {
    proofUs: +proxyProof.toFixed(2),
    perRequestUs: +perRequest.toFixed(2),
    addedPerRequestUs: +(perRequest - results.bearerHeadersUs).toFixed(2),
    joseSignJwtUs: +joseProof.toFixed(2),
  };
}
results.bearerHeadersUs = +results.bearerHeadersUs.toFixed(2);

process.stdout.write(
  [
    `node ${process.version}, ${MS} ms per measurement`,
    `bearer request headers: ${results.bearerHeadersUs} µs`,
    'alg     proof (µs)   DPoP request headers (µs)   added per request (µs)   jose SignJWT (µs)',
    ...['ES256', 'PS256', 'EdDSA'].map((alg) => {
      const r = results[alg];
      return `${alg.padEnd(8)}${String(r.proofUs).padStart(10)}${String(r.perRequestUs).padStart(28)}${String(r.addedPerRequestUs).padStart(25)}${String(r.joseSignJwtUs).padStart(20)}`;
    }),
    JSON.stringify(results),
    '',
  ].join('\n'),
);
