import { UnsecuredJWT } from 'jose';
import pino from 'pino';
import { Writable } from 'node:stream';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { TokenError } from '../../src/errors.js';
import { bindTokenMetrics, createMetrics } from '../../src/metrics.js';
import type { Grant } from '../../src/oauth/grant.js';
import { parseTokenResponse, type TokenResponse } from '../../src/oauth/token-endpoint.js';
import { boundCertificates, certificateMismatch } from '../../src/tokens/certificate-binding.js';
import { MemoryTokenStore } from '../../src/tokens/memory-store.js';
import { TokenProvider, type ProviderGrant } from '../../src/tokens/provider.js';
import { TokenCache } from '../../src/tokens/token-cache.js';

/** RFC 8705 §3 binding checks: what a token says it is bound to, and the provider never caching a mismatch. */

const CERT_A = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa';
const CERT_B = 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb';

/** A JWT access token with these claims (unsigned: the proxy reads, it never verifies). */
function jwt(claims: Record<string, unknown>): string {
  return new UnsecuredJWT(claims).setExpirationTime('5m').encode();
}

describe('boundCertificates', () => {
  it.each([
    ['an opaque token states nothing', 'opaque-token', undefined, []],
    ['a JWT without cnf states nothing', jwt({ sub: 'x' }), undefined, []],
    ['a JWT with cnf.jkt (DPoP) names no certificate', jwt({ cnf: { jkt: 'k' } }), undefined, []],
    ['a JWT names its certificate in cnf.x5t#S256', jwt({ cnf: { 'x5t#S256': CERT_A } }), undefined, [CERT_A]],
    ['the token response states it for an opaque token', 'opaque-token', CERT_A, [CERT_A]],
    ['both are kept, to be checked each', jwt({ cnf: { 'x5t#S256': CERT_B } }), CERT_A, [CERT_A, CERT_B]],
    [
      'a cnf.x5t#S256 that is not a string names no certificate at all',
      jwt({ cnf: { 'x5t#S256': 1 } }),
      undefined,
      ['1'],
    ],
    ['a token that merely looks like a JWT states nothing', 'a.b.c', undefined, []],
  ])('%s', (_title, token, stated, expected) => {
    expect(boundCertificates(token, stated)).toEqual(expected);
  });
});

describe('certificateMismatch', () => {
  it('lets an unbound token go anywhere, and a bound one only with its own certificate', () => {
    expect(certificateMismatch([], undefined)).toBeUndefined();
    expect(certificateMismatch([], CERT_B)).toBeUndefined();
    expect(certificateMismatch([CERT_A], CERT_A)).toBeUndefined();
    expect(certificateMismatch([CERT_A, CERT_A], CERT_A)).toBeUndefined();
  });

  it('refuses a bound token for a target presented another certificate, or none, naming both', () => {
    const other = certificateMismatch([CERT_A], CERT_B);
    expect(other).toBeInstanceOf(TokenError);
    expect([other?.reason, other?.permanent]).toEqual(['certificate_mismatch', true]);
    expect(other?.message).toBe(
      `token is bound to client certificate x5t#S256=${CERT_A} (RFC 8705 §3) but the target is presented certificate x5t#S256=${CERT_B}: not sent`,
    );
    expect(certificateMismatch([CERT_A], undefined)?.message).toContain(
      'the target is presented no client certificate',
    );
    expect(certificateMismatch([CERT_B, CERT_A], CERT_B)?.reason).toBe('certificate_mismatch');
  });
});

describe('the token response', () => {
  it('keeps the cnf.x5t#S256 a token endpoint states beside the token (RFC 8705 §3.1)', () => {
    const body = JSON.stringify({ access_token: 'opaque', token_type: 'Bearer', cnf: { 'x5t#S256': CERT_A } });
    expect(parseTokenResponse(200, {}, body, Date.now()).certificateThumbprint).toBe(CERT_A);
    const plain = JSON.stringify({ access_token: 'opaque', token_type: 'Bearer' });
    expect(parseTokenResponse(200, {}, plain, Date.now())).not.toHaveProperty('certificateThumbprint');
  });
});

/** A token endpoint that answers from a list, counting its calls. */
function scriptedGrant(answers: TokenResponse[]): { grant: Grant; calls: () => number } {
  let calls = 0;
  return {
    grant: {
      obtain: () => {
        calls += 1;
        const next = answers.shift();
        return next === undefined ? Promise.reject(new Error('no more answers')) : Promise.resolve(next);
      },
      refresh: undefined,
    },
    calls: () => calls,
  };
}

const answer = (accessToken: string): TokenResponse => ({
  accessToken,
  expiresIn: 300,
  scope: undefined,
  refreshToken: undefined,
});

function providerGrant(grant: Grant, presentedCertificate: string | undefined, logs: string[] = []): ProviderGrant {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(chunk.toString('utf8'));
      done();
    },
  });
  return {
    upstream: 'partner',
    grant,
    lifetime: { refreshBeforeExpiryMs: 60_000, clockSkewMs: 30_000, defaultLifetimeMs: 300_000 },
    waitTimeoutMs: 2_000,
    metrics: bindTokenMetrics(createMetrics(new Registry(), { defaultMetrics: false }), 'partner', undefined),
    logger: pino({ level: 'info' }, sink),
    presentedCertificate,
  };
}

const NO_WAIT = { baseMs: 0, maxMs: 0, maxRetryAfterMs: 0, permanentMinMs: 0, random: () => 0 };

describe('TokenProvider with a certificate towards the target', () => {
  it('never caches or hands out a token bound to another certificate, and logs the mismatch once', async () => {
    const bound = jwt({ cnf: { 'x5t#S256': CERT_A } });
    const scripted = scriptedGrant([answer(bound), answer(bound)]);
    const logs: string[] = [];
    const provider = new TokenProvider(
      { key: 'k', cache: new TokenCache(10), backoff: NO_WAIT },
      providerGrant(scripted.grant, CERT_B, logs),
    );
    for (let i = 0; i < 2; i += 1) {
      const err = await provider.obtain().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TokenError);
      expect((err as TokenError).reason).toBe('certificate_mismatch');
      expect(provider.current()).toBeUndefined();
    }
    expect(scripted.calls()).toBe(2);
    expect(logs.filter((l) => l.includes('"event":"token_certificate_mismatch"'))).toHaveLength(1);
    expect(logs.some((l) => l.includes(bound))).toBe(false);
    expect(provider.status()).toMatchObject({ state: 'failing', lastError: 'certificate_mismatch' });
  });

  it('serves a token bound to the certificate the target is presented', async () => {
    const bound = jwt({ cnf: { 'x5t#S256': CERT_A } });
    const scripted = scriptedGrant([answer(bound)]);
    const provider = new TokenProvider(
      { key: 'k', cache: new TokenCache(10), backoff: NO_WAIT },
      providerGrant(scripted.grant, CERT_A),
    );
    expect((await provider.obtain()).value).toBe(bound);
    expect(provider.current()?.value).toBe(bound);
  });

  it('drops its cached token when a reload presents the target another certificate', async () => {
    const bound = jwt({ cnf: { 'x5t#S256': CERT_A } });
    const scripted = scriptedGrant([answer(bound), answer(bound)]);
    const provider = new TokenProvider(
      { key: 'k', cache: new TokenCache(10), backoff: NO_WAIT },
      providerGrant(scripted.grant, CERT_A),
    );
    await provider.obtain();
    provider.setGrant(providerGrant(scripted.grant, CERT_A));
    expect(provider.current()?.value).toBe(bound); // same certificate: kept
    provider.setGrant(providerGrant(scripted.grant, CERT_B));
    expect(provider.current()).toBeUndefined();
    const err = await provider.obtain().catch((e: unknown) => e);
    expect((err as TokenError).reason).toBe('certificate_mismatch');
    expect(scripted.calls()).toBe(2);
  });

  it("does not adopt a sibling's shared entry bound to another certificate; fetches its own", async () => {
    const store = new MemoryTokenStore({ lockTimeoutMs: 1_000 });
    const sibling = jwt({ cnf: { 'x5t#S256': CERT_A } });
    const lock = await store.tryLock('k');
    if (lock === undefined) throw new Error('no lock');
    const now = Date.now();
    const entry = {
      version: 1,
      accessToken: sibling,
      refreshToken: undefined,
      obtainedAt: now,
      expiresAt: now + 300_000,
    };
    expect(await store.write('k', entry, 300_000, lock)).toBe(true);
    await store.unlock(lock);
    const own = jwt({ cnf: { 'x5t#S256': CERT_B } });
    const scripted = scriptedGrant([answer(own)]);
    const provider = new TokenProvider(
      {
        key: 'k',
        cache: new TokenCache(10),
        backoff: NO_WAIT,
        shared: { store, lockTimeoutMs: 1_000, refreshTokenTtlMs: 60_000 },
      },
      providerGrant(scripted.grant, CERT_B),
    );
    expect((await provider.obtain()).value).toBe(own);
    expect(scripted.calls()).toBe(1);
  });
});
