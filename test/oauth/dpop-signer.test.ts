import { createHash, generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EmbeddedJWK, calculateJwkThumbprint, decodeProtectedHeader, jwtVerify, type JWK } from 'jose';
import { describe, expect, it } from 'vitest';
import { resolveDpop, type DpopAlg } from '../../src/config/dpop.js';
import { buildConfig } from '../../src/config/load.js';
import { summary } from '../../src/config/summary.js';
import { DpopSigner, htuOf } from '../../src/oauth/dpop-signer.js';
import { challengeError, asksForDpopNonce, tokenNotAtFault } from '../../src/proxy/bearer-challenge.js';
import { addProof, dpopNonceOf } from '../../src/proxy/dpop-request.js';

const NOW = Date.UTC(2026, 0, 1, 12, 0, 0);

function signer(alg: DpopAlg): DpopSigner {
  const problems: string[] = [];
  const key = resolveDpop({ alg }, 'dpop', '/', problems);
  expect(problems).toEqual([]);
  return new DpopSigner(key as NonNullable<typeof key>, () => NOW);
}

const raw = (pairs: [string, string][]) => pairs.flat().map((s) => Buffer.from(s, 'latin1'));

describe('DPoP proofs (RFC 9449 §4.2)', () => {
  for (const alg of ['ES256', 'PS256', 'EdDSA'] as const) {
    it(`signs a ${alg} proof that jose verifies with the embedded public key`, async () => {
      const s = signer(alg);
      const ath = createHash('sha256').update('the-token').digest('base64url');
      const proof = s.proof('POST', 'https://api.example', 'https://api.example/v1/orders', ath);
      const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, {
        typ: 'dpop+jwt',
        algorithms: [alg],
        currentDate: new Date(NOW),
      });
      expect(protectedHeader.alg).toBe(alg);
      expect(Object.keys(protectedHeader.jwk ?? {}).sort()).not.toContain('d');
      expect(await calculateJwkThumbprint(protectedHeader.jwk as JWK)).toBe(s.thumbprint);
      expect(payload.jti).toMatch(/^[0-9a-f-]{36}$/);
      expect(payload).toEqual({
        jti: payload.jti,
        htm: 'POST',
        htu: 'https://api.example/v1/orders',
        iat: NOW / 1000,
        ath,
      });
    });
  }

  it('gives every proof its own jti', () => {
    const s = signer('ES256');
    const jtis = new Set(
      Array.from({ length: 50 }, () => {
        const proof = s.proof('GET', 'https://a', 'https://a/');
        return (JSON.parse(Buffer.from(proof.split('.')[1] as string, 'base64url').toString()) as { jti: string }).jti;
      }),
    );
    expect(jtis.size).toBe(50);
  });

  it("carries the latest nonce of the proof's origin, and only of that origin", () => {
    const s = signer('ES256');
    const payload = (proof: string) =>
      JSON.parse(Buffer.from(proof.split('.')[1] as string, 'base64url').toString()) as { nonce?: string };
    expect(s.rememberNonce('https://a', 'n-1')).toBe(true);
    expect(s.rememberNonce('https://a', 'n-2')).toBe(true);
    expect(payload(s.proof('GET', 'https://a', 'https://a/x')).nonce).toBe('n-2');
    expect(payload(s.proof('GET', 'https://b', 'https://b/x')).nonce).toBeUndefined();
  });

  it('ignores a DPoP-Nonce that is not a valid nonce (RFC 9449 §8.1 NQCHAR)', () => {
    const s = signer('ES256');
    for (const bad of ['', 'a"b', 'a\\b', 'a b', 'x'.repeat(513), 'é'])
      expect(s.rememberNonce('https://a', bad)).toBe(false);
    expect(s.nonce('https://a')).toBeUndefined();
  });

  it('binds a token once: DPoP authorization and ath = base64url(SHA-256(token))', () => {
    const s = signer('ES256');
    const token = { value: 'abc.def.ghi' };
    const bound = s.binding(token);
    expect(bound).toEqual({
      authorization: 'DPoP abc.def.ghi',
      ath: createHash('sha256').update('abc.def.ghi').digest('base64url'),
    });
    expect(s.binding(token)).toBe(bound);
  });

  it.each([
    ['https://a', '/v1/x?y=1', 'https://a/v1/x'],
    ['https://a:8443', '/v1/x#frag', 'https://a:8443/v1/x'],
    ['https://a', '/v1/x?q#f', 'https://a/v1/x'],
    ['https://a', '/', 'https://a/'],
  ])('htu of %s + %s is %s', (origin, path, htu) => {
    expect(htuOf(origin, path)).toBe(htu);
  });

  it("replaces a client's own DPoP header with the proxy's one proof", () => {
    const s = signer('ES256');
    const headers = ['accept', '*/*', 'DPoP', 'client-proof', 'dpop', 'another', 'authorization', 'DPoP t'];
    addProof(headers, s, 'GET', 'https://a', '/x?y', 'ath');
    const proofs = headers.filter((_, i) => i % 2 === 0 && headers[i]?.toLowerCase() === 'dpop');
    expect(proofs).toHaveLength(1);
    const proof = headers[headers.length - 1] as string;
    expect(decodeProtectedHeader(proof).typ).toBe('dpop+jwt');
    expect(headers.slice(0, 4)).toEqual(['accept', '*/*', 'authorization', 'DPoP t']);
  });
});

describe('DPoP challenges (RFC 9449 §7.1, §9)', () => {
  it.each([
    ['DPoP error="use_dpop_nonce", error_description="x"', 'dpop', 'use_dpop_nonce'],
    ['Bearer realm="a", DPoP algs="ES256" error=use_dpop_nonce', 'dpop', 'use_dpop_nonce'],
    ['Bearer error="invalid_token", DPoP algs="ES256"', 'dpop', undefined],
    ['Bearer error="invalid_token", DPoP algs="ES256"', 'bearer', 'invalid_token'],
    ['DPoP error_description="error=use_dpop_nonce"', 'dpop', undefined],
  ] as const)('%s: the %s error is %s', (value, scheme, error) => {
    expect(challengeError(value, scheme)).toBe(error);
  });

  it('tells a nonce challenge from a token one, and keeps the token for both nonce and scope challenges', () => {
    const nonce = raw([['WWW-Authenticate', 'DPoP error="use_dpop_nonce"']]);
    const invalid = raw([['www-authenticate', 'DPoP error="invalid_token"']]);
    const scope = raw([['www-authenticate', 'DPoP error="insufficient_scope"']]);
    expect(asksForDpopNonce(nonce)).toBe(true);
    expect(asksForDpopNonce(invalid)).toBe(false);
    expect(asksForDpopNonce(raw([['www-authenticate', 'Bearer error="use_dpop_nonce"']]))).toBe(false);
    expect(tokenNotAtFault(nonce)).toBe(true);
    expect(tokenNotAtFault(scope)).toBe(true);
    expect(tokenNotAtFault(invalid)).toBe(false);
  });

  it('reads the DPoP-Nonce response header whatever its case', () => {
    expect(
      dpopNonceOf(
        raw([
          ['x', 'y'],
          ['DPoP-Nonce', 'n-1'],
        ]),
      ),
    ).toBe('n-1');
    expect(dpopNonceOf(raw([['x', 'y']]))).toBeUndefined();
  });
});

describe('DPoP keys in the configuration', () => {
  it('refuses a key whose type does not fit alg, a P-384 key, a short RSA key and a key others can read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dpop-keys-'));
    const write = (name: string, pem: string) => {
      writeFileSync(join(dir, name), pem, { mode: 0o600 });
      return name;
    };
    const pem = (k: ReturnType<typeof generateKeyPairSync>['privateKey']) =>
      k.export({ type: 'pkcs8', format: 'pem' }) as string;
    const ec = write('ec.pem', pem(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey));
    const p384 = write('p384.pem', pem(generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey));
    const rsa1024 = write('rsa.pem', pem(generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey));
    const open = write('open.pem', pem(generateKeyPairSync('ed25519').privateKey));
    chmodSync(join(dir, open), 0o644);
    const problemsOf = (d: Parameters<typeof resolveDpop>[0]) => {
      const problems: string[] = [];
      resolveDpop(d, 'auth.dpop', dir, problems);
      return problems;
    };
    expect(problemsOf({ key: ec })).toEqual([]);
    expect(problemsOf({ key: ec, alg: 'PS256' })).toEqual([
      `auth.dpop.alg: PS256 cannot be signed with the ES256 key ${ec}`,
    ]);
    expect(problemsOf({ key: p384 })).toEqual([
      `auth.dpop.key: ${p384} must be an EC P-256, RSA or Ed25519 private key`,
    ]);
    expect(problemsOf({ key: rsa1024 })).toEqual([
      `auth.dpop.key: an RSA key needs at least 2048 bits, ${rsa1024} has 1024`,
    ]);
    expect(problemsOf({ key: open })[0]).toMatch(/^auth\.dpop\.key: .*open\.pem is accessible to .*chmod 600/);
  });

  it('infers alg from the key and names the key by its RFC 7638 thumbprint', async () => {
    const problems: string[] = [];
    const key = resolveDpop({ alg: 'EdDSA' }, 'dpop', '/', problems);
    expect(key?.alg).toBe('EdDSA');
    expect(key?.generated).toBe(true);
    expect(key?.thumbprint).toBe(await calculateJwkThumbprint(key?.publicJwk as JWK));
  });

  it('names DPoP and a generated key in the check summary, never the key', () => {
    const config = buildConfig(
      {
        upstreams: [
          {
            name: 'bank',
            target: 'https://api.bank.example',
            pathPrefix: '/bank',
            auth: {
              type: 'client_credentials',
              tokenUrl: 'https://auth.bank.example/token',
              clientId: 'c',
              clientSecret: 's',
              dpop: { alg: 'EdDSA' },
            },
          },
        ],
      },
      { env: {} },
    );
    const text = summary(config);
    expect(text).toContain(
      'grant client_credentials at https://auth.bank.example/token, client c (client_secret_basic), DPoP EdDSA with a key generated at start',
    );
    expect(text).not.toContain('PRIVATE KEY');
  });
});
