#!/usr/bin/env node
// The memory cost of cached tenant tokens (issue 8: 100,000 cached tenant tokens add ≤ 100 MB),
// measured directly instead of through a config with 100,000 tenants. First makes each tenant's
// cache key (cacheKey of upstream, tenant and credentials): the proxy makes them at start-up, one
// per configured tenant, and each tenant's TokenSource holds its key whether or not a token is ever
// cached, so they are measured and reported apart. Then fills token-proxy's own TokenCache
// (dist/tokens/token-cache.js, created here: its fixed-size arrays count) with Token objects made
// by dist/tokens/token.js and reports what that added, on the V8 heap and outside it (lru-cache's
// typed arrays), after full GCs. Then writes every token's `Authorization` value once, as a
// request does, and reports the growth again: that is the steady state of a proxy whose tenants
// all made requests (a `Bearer <token>` string built as a concatenation would keep a flat second
// copy of the token once written; the proxy builds it flat, so the two should agree).
// Not included: a TokenSource per tenant, its metrics label values, a tenant's credentials (all
// made at start-up for every configured tenant, cached token or not).
//   node --expose-gc bench/token-memory.mjs [--count 100000] [--chars 800]   (prints JSON)
import { Buffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import process from 'node:process';
import { cacheKey, TokenCache } from '../dist/tokens/token-cache.js';
import { tokenWithTimes } from '../dist/tokens/token.js';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : Number(process.argv[i + 1]);
};
const COUNT = arg('count', 100_000);
const CHARS = arg('chars', 800);
if (typeof globalThis.gc !== 'function') {
  process.stderr.write('run with node --expose-gc\n');
  process.exit(2);
}

function settled() {
  for (let i = 0; i < 4; i += 1) globalThis.gc();
  const m = process.memoryUsage();
  return { heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, rss: m.rss }; // external includes arrayBuffers
}

const policy = { refreshBeforeExpiryMs: 300_000, clockSkewMs: 30_000, defaultLifetimeMs: 300_000 };
const start = settled();
// Made at start-up, one per configured tenant, and held by its TokenSource.
const keys = Array.from({ length: COUNT }, (_, i) =>
  cacheKey('partner', {
    tenant: `tenant-${i}`,
    clientId: `client-${i}`,
    tokenUrl: 'https://auth.partner.example/oauth/token',
    scope: 'orders.read',
  }),
);
const before = settled();
const cache = new TokenCache(COUNT); // tokenCache.maxEntries must be at least the number of tenants
const now = Date.now();
for (const key of keys) {
  // A distinct token of CHARS base64url characters, like a JWT of that size.
  const value = randomBytes(Math.ceil((CHARS * 3) / 4))
    .toString('base64url')
    .slice(0, CHARS);
  cache.set(key, tokenWithTimes(value, undefined, now, now + 3_600_000, policy));
}
const stored = settled();
// Every tenant makes a request: its header value is written to a socket once.
let written = 0;
for (const key of keys) written += Buffer.from(cache.get(key).header, 'latin1').length;
const used = settled();
const growth = (m) => ({
  heapBytes: m.heapUsed - before.heapUsed,
  heapCommittedBytes: m.heapTotal - before.heapTotal,
  externalBytes: m.external - before.external,
  rssBytes: m.rss - before.rss,
});
process.stdout.write(
  `${JSON.stringify({
    count: cache.size,
    tokenChars: CHARS,
    headerBytesWritten: written,
    keys: { heapBytes: before.heapUsed - start.heapUsed, externalBytes: before.external - start.external },
    stored: growth(stored),
    afterUse: growth(used),
  })}\n`,
);
