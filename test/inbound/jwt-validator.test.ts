import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { base64url, exportSPKI, generateKeyPair, importJWK, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { InboundJwtValidator, type InboundJwtSettings, type Validation } from '../../src/inbound/jwt-validator.js';
import { testPki } from '../helpers/certs.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * The validator against a real issuer (oauth2-mock-server over HTTPS with the test CA): tokens
 * are signed by it and the keys come from its JWKS endpoint. Time moves through the injected
 * clock (and, where jose's own JWKS timers matter, a faked Date), never by sleeping.
 */

const AUDIENCE = 'token-proxy';
const REALM_ONLY = 'Bearer realm="token-proxy"';

interface TokenOptions {
  readonly kid?: string;
  readonly expiresIn?: number;
  /** Claims set (or, when undefined, removed) over the issuer's defaults and `aud`. */
  readonly claims?: Record<string, unknown>;
  readonly withoutKid?: boolean;
  /** JOSE `typ` header (RFC 7515 §4.1.9); null removes it. The issuer's default is `JWT`. */
  readonly typ?: string | null;
}

/** A caller token signed by the issuer: iss, iat, nbf (now - 10 s), exp, aud = token-proxy. */
async function issue(ts: TokenServer, options: TokenOptions = {}): Promise<string> {
  return ts.server.issuer.buildToken({
    kid: options.kid ?? firstKid(ts),
    expiresIn: options.expiresIn ?? 3600,
    scopesOrTransform: (header, payload) => {
      payload['aud'] = AUDIENCE;
      for (const [name, value] of Object.entries(options.claims ?? {})) {
        if (value === undefined) Reflect.deleteProperty(payload, name);
        else payload[name] = value;
      }
      if (options.withoutKid === true) Reflect.deleteProperty(header, 'kid');
      if (options.typ === null) Reflect.deleteProperty(header, 'typ');
      else if (options.typ !== undefined) header['typ'] = options.typ;
    },
  });
}

const kids = new WeakMap<TokenServer, string>();
function firstKid(ts: TokenServer): string {
  const kid = kids.get(ts);
  if (kid === undefined) throw new Error('issuer not set up');
  return kid;
}

const servers: TokenServer[] = [];
/** An issuer with one RS256 key; stopped after the test unless `shared` (the caller stops it). */
async function issuerServer(shared = false): Promise<TokenServer & { jwksFetches(): number }> {
  const ts = await startTokenServer();
  if (!shared) servers.push(ts);
  const first = ts.server.issuer.keys.get();
  if (first === undefined) throw new Error('issuer has no key');
  kids.set(ts, first.kid);
  // oauth2-mock-server answers GET /jwks with keys.toJSON(): count the JWKS fetches.
  const spy = vi.spyOn(ts.server.issuer.keys, 'toJSON');
  return Object.assign(ts, { jwksFetches: () => spy.mock.calls.length });
}

function settingsFor(ts: TokenServer, overrides: Partial<InboundJwtSettings> = {}): InboundJwtSettings {
  return {
    jwksUrl: ts.jwksUrl,
    issuer: ts.url,
    audience: AUDIENCE,
    algorithms: ['RS256'],
    clockSkewSeconds: 30,
    requiredClaims: {},
    forwardClaims: {},
    ca: testPki().ca,
    ...overrides,
  };
}

/** A clock the test moves; starts at the real time, as the issuer's tokens do. */
function testClock(): { now: () => number; set(ms: number): void; readonly start: number } {
  const start = Date.now();
  let current = start;
  return { now: () => current, set: (ms) => void (current = ms), start };
}

function expectFailure(v: Validation, result: string, status: number, description: string | RegExp): void {
  expect(v.ok).toBe(false);
  if (v.ok) return;
  expect(v.result).toBe(result);
  expect(v.status).toBe(status);
  if (typeof description === 'string') expect(v.description).toBe(description);
  else expect(v.description).toMatch(description);
  if (result !== 'missing' && status === 401) {
    expect(v.wwwAuthenticate).toBe(
      `Bearer realm="token-proxy", error="invalid_token", error_description="${v.description}"`,
    );
  } else {
    expect(v.wwwAuthenticate).toBe(REALM_ONLY);
  }
}

function b64json(value: unknown): string {
  return base64url.encode(JSON.stringify(value));
}

const validators: InboundJwtValidator[] = [];
function validator(settings: InboundJwtSettings, now?: () => number): InboundJwtValidator {
  const v = new InboundJwtValidator(settings, now === undefined ? {} : { now });
  validators.push(v);
  return v;
}

afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(validators.splice(0).map((v) => v.close()));
  await Promise.all(
    servers
      .splice(0)
      .filter((ts) => ts.server.listening)
      .map((ts) => ts.stop()),
  );
});

describe('InboundJwtValidator against a real issuer', () => {
  let ts: Awaited<ReturnType<typeof issuerServer>>;
  beforeAll(async () => {
    ts = await issuerServer(true);
  });
  afterAll(async () => {
    await ts.stop();
  });

  it('accepts a valid token, returns its claims and builds only safe forward headers', async () => {
    const v = validator(
      settingsFor(ts, {
        requiredClaims: { scope: 'partner.read' },
        forwardClaims: {
          sub: 'X-Caller-Sub',
          client_id: 'X-Caller-Client',
          roles: 'X-Caller-Roles',
          evil: 'X-Evil',
          ctl: 'X-Ctl',
          obj: 'X-Obj',
          absent: 'X-Absent',
        },
      }),
    );
    const token = await issue(ts, {
      claims: {
        sub: 'caller-1',
        client_id: 'app-7',
        scope: 'a partner.read b',
        roles: ['reader', 'auditor'],
        evil: 'x\r\nX-Injected: 1',
        ctl: 'a\u0000b',
        obj: { a: 1 },
      },
    });
    const result = await v.validate(`Bearer ${token}`);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.claims.sub).toBe('caller-1');
    expect(result.claims.iss).toBe(ts.url);
    expect(result.claims.aud).toBe(AUDIENCE);
    expect(result.claims['scope']).toBe('a partner.read b');
    expect(result.forwardHeaders).toEqual([
      ['X-Caller-Sub', 'caller-1'],
      ['X-Caller-Client', 'app-7'],
      ['X-Caller-Roles', 'reader auditor'],
    ]);
    // The caller's token is nowhere in what the validator hands back.
    const signature = token.split('.')[2] ?? 'missing';
    expect(JSON.stringify(result)).not.toContain(signature);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    expect((await v.validate(`bearer ${token}`)).ok).toBe(true);
  });

  it('answers an expired token with expired, and tolerates the configured skew', async () => {
    const v = validator(settingsFor(ts));
    expectFailure(await v.validate(`Bearer ${await issue(ts, { expiresIn: -120 })}`), 'expired', 401, 'token expired');
    // Ten seconds past exp is inside the 30 s skew (RFC 7519 §4.1.4 "small leeway").
    expect((await v.validate(`Bearer ${await issue(ts, { expiresIn: -10 })}`)).ok).toBe(true);
    const strict = validator(settingsFor(ts, { clockSkewSeconds: 0 }));
    expectFailure(
      await strict.validate(`Bearer ${await issue(ts, { expiresIn: -10 })}`),
      'expired',
      401,
      'token expired',
    );
  });

  it('refuses a token without exp', async () => {
    const v = validator(settingsFor(ts));
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { exp: undefined } })}`),
      'bad_claims',
      401,
      'missing exp claim',
    );
  });

  it('answers a token that is not yet valid (nbf in the future) with bad_claims', async () => {
    const v = validator(settingsFor(ts));
    const nbf = Math.floor(Date.now() / 1000) + 600;
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { nbf } })}`),
      'bad_claims',
      401,
      'token not yet valid',
    );
  });

  it('answers a wrong or missing audience with bad_claims', async () => {
    const v = validator(settingsFor(ts));
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { aud: 'another-service' } })}`),
      'bad_claims',
      401,
      'unexpected audience',
    );
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { aud: undefined } })}`),
      'bad_claims',
      401,
      'missing aud claim',
    );
    // An audience list matches when any configured audience is in the token's aud.
    const list = validator(settingsFor(ts, { audience: ['other', AUDIENCE] }));
    expect((await list.validate(`Bearer ${await issue(ts, { claims: { aud: ['x', AUDIENCE] } })}`)).ok).toBe(true);
  });

  it('answers a wrong issuer with bad_claims', async () => {
    const v = validator(settingsFor(ts));
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { iss: 'https://evil.example' } })}`),
      'bad_claims',
      401,
      'unexpected issuer',
    );
  });

  it('refuses alg none before fetching any key', async () => {
    const v = validator(settingsFor(ts));
    const before = ts.jwksFetches();
    const now = Math.floor(Date.now() / 1000);
    const unsigned = `${b64json({ alg: 'none', typ: 'JWT' })}.${b64json({ iss: ts.url, aud: AUDIENCE, sub: 'mallory', exp: now + 600 })}.`;
    expectFailure(await v.validate(`Bearer ${unsigned}`), 'bad_signature', 401, 'algorithm not allowed');
    expect(ts.jwksFetches()).toBe(before);
  });

  it('refuses HS256 signed with the issuer public key (RS/HS confusion), as PEM and as JWK bytes', async () => {
    const v = validator(settingsFor(ts));
    const kid = firstKid(ts);
    const jwk = ts.server.issuer.keys.get(kid);
    if (jwk === undefined) throw new Error('no key');
    const publicJwk = { kty: jwk.kty, n: jwk['n'], e: jwk['e'], kid, alg: 'RS256' };
    const pem = await exportSPKI(
      (await importJWK(publicJwk, 'RS256', { extractable: true })) as Parameters<typeof exportSPKI>[0],
    );
    expect(pem).toContain('BEGIN PUBLIC KEY');
    const now = Math.floor(Date.now() / 1000);
    for (const secret of [pem, JSON.stringify(publicJwk)]) {
      const forged = await new SignJWT({ sub: 'mallory' })
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT', kid })
        .setIssuer(ts.url)
        .setAudience(AUDIENCE)
        .setExpirationTime(now + 600)
        .sign(new TextEncoder().encode(secret));
      expectFailure(await v.validate(`Bearer ${forged}`), 'bad_signature', 401, 'algorithm not allowed');
    }
  });

  it('refuses a token signed by a key that is not in the JWKS, even with a known kid', async () => {
    const v = validator(settingsFor(ts));
    const { privateKey } = await generateKeyPair('RS256');
    const now = Math.floor(Date.now() / 1000);
    const forged = await new SignJWT({ sub: 'mallory' })
      .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: firstKid(ts) })
      .setIssuer(ts.url)
      .setAudience(AUDIENCE)
      .setExpirationTime(now + 600)
      .sign(privateKey);
    expectFailure(await v.validate(`Bearer ${forged}`), 'bad_signature', 401, 'invalid signature');
    // A real token with its signature swapped for the forged one fails the same way.
    const real = await issue(ts);
    const spliced = `${real.split('.').slice(0, 2).join('.')}.${forged.split('.')[2] ?? ''}`;
    expectFailure(await v.validate(`Bearer ${spliced}`), 'bad_signature', 401, 'invalid signature');
  });

  it('answers garbage and malformed bearer values with bad_signature, without echoing them', async () => {
    const v = validator(settingsFor(ts));
    for (const value of ['Bearer not-a-jwt', 'Bearer a.b.c', 'Bearer "quoted\\"token".x.y', 'Bearer two words']) {
      const r = await v.validate(value);
      expectFailure(r, 'bad_signature', 401, 'malformed token');
      if (!r.ok) expect(r.wwwAuthenticate).not.toMatch(/not-a-jwt|quoted|words|a\.b\.c/);
    }
  });

  it('checks required claims: equal, a word of a space-separated string, or an array member', async () => {
    const v = validator(settingsFor(ts, { requiredClaims: { scope: 'partner.read', groups: 'admins' } }));
    const ok = await v.validate(
      `Bearer ${await issue(ts, { claims: { scope: 'a partner.read b', groups: ['users', 'admins'] } })}`,
    );
    expect(ok.ok).toBe(true);
    expect(
      (await v.validate(`Bearer ${await issue(ts, { claims: { scope: 'partner.read', groups: 'admins' } })}`)).ok,
    ).toBe(true);
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { groups: ['admins'] } })}`),
      'bad_claims',
      401,
      'required claim scope not satisfied',
    );
    // A substring is not a word.
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { scope: 'partner.readonly', groups: ['admins'] } })}`),
      'bad_claims',
      401,
      'required claim scope not satisfied',
    );
    expectFailure(
      await v.validate(`Bearer ${await issue(ts, { claims: { scope: 'partner.read', groups: ['users'] } })}`),
      'bad_claims',
      401,
      'required claim groups not satisfied',
    );
  });

  it('answers a missing or non-Bearer Authorization header with missing and no error code (RFC 6750 §3.1)', async () => {
    const v = validator(settingsFor(ts));
    const before = ts.jwksFetches();
    for (const value of [undefined, '', '   ', 'Bearer', 'Bearer   ', 'Basic dXNlcjpwYXNz', 'Bearerx abc']) {
      const r = await v.validate(value);
      expectFailure(r, 'missing', 401, 'no bearer token');
      if (!r.ok) expect(r.wwwAuthenticate).not.toContain('error=');
    }
    expect(ts.jwksFetches()).toBe(before);
  });

  it('with requiredTyp at+jwt, answers an ID token (typ JWT) or a token without typ with bad_type, and accepts at+jwt in any spelling', async () => {
    const v = validator(settingsFor(ts, { requiredTyp: 'at+jwt' }));
    // RFC 9068 §2.1/§4, RFC 8725 §3.11: an ID token of the same issuer and audience is no access token.
    const idToken = await issue(ts, { claims: { sub: 'caller-1', nonce: 'n-1' } });
    expectFailure(await v.validate(`Bearer ${idToken}`), 'bad_type', 401, 'token type not accepted (typ)');
    expectFailure(await v.validate(`Bearer ${await issue(ts, { typ: null })}`), 'bad_type', 401, /typ/);
    expectFailure(await v.validate(`Bearer ${await issue(ts, { typ: 'id+jwt' })}`), 'bad_type', 401, /typ/);
    // RFC 7515 §4.1.9: "application/" may be left out, and media types compare case-insensitively.
    for (const typ of ['at+jwt', 'AT+JWT', 'application/at+jwt', 'Application/At+Jwt']) {
      const result = await v.validate(`Bearer ${await issue(ts, { typ, claims: { sub: typ } })}`);
      expect([typ, result.ok]).toEqual([typ, true]);
    }
    // The same check against a setting written with the media type prefix.
    const prefixed = validator(settingsFor(ts, { requiredTyp: 'application/at+jwt' }));
    expect((await prefixed.validate(`Bearer ${await issue(ts, { typ: 'at+jwt' })}`)).ok).toBe(true);
    expectFailure(await prefixed.validate(`Bearer ${idToken}`), 'bad_type', 401, /typ/);
    // Without the setting, the ID token passes as before (typ is not checked).
    expect((await validator(settingsFor(ts)).validate(`Bearer ${idToken}`)).ok).toBe(true);
  });

  it('checks the signature before the type: a forged at+jwt token is bad_signature', async () => {
    const v = validator(settingsFor(ts, { requiredTyp: 'at+jwt' }));
    const { privateKey } = await generateKeyPair('RS256');
    const forged = await new SignJWT({ aud: AUDIENCE, iss: ts.url })
      .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: firstKid(ts) })
      .setExpirationTime('5m')
      .sign(privateKey);
    expectFailure(await v.validate(`Bearer ${forged}`), 'bad_signature', 401, 'invalid signature');
  });

  it('answers a burst of the same token on a cold validator with a single JWKS fetch', async () => {
    const v = validator(settingsFor(ts));
    const token = await issue(ts);
    const before = ts.jwksFetches();
    const results = await Promise.all(Array.from({ length: 20 }, () => v.validate(`Bearer ${token}`)));
    expect(results.every((r) => r.ok)).toBe(true);
    expect(ts.jwksFetches()).toBe(before + 1);
  });

  it('accepts ES256 when configured, and refuses RS256 then', async () => {
    const es = await ts.server.issuer.keys.generate('ES256');
    const v = validator(settingsFor(ts, { algorithms: ['ES256'] }));
    expect((await v.validate(`Bearer ${await issue(ts, { kid: es.kid })}`)).ok).toBe(true);
    expectFailure(await v.validate(`Bearer ${await issue(ts)}`), 'bad_signature', 401, 'algorithm not allowed');
  });
});

describe('key rotation and the refetch cooldown', () => {
  it('refetches the JWKS on an unknown kid once the cooldown has passed, and not before', async () => {
    const ts = await issuerServer();
    try {
      vi.useFakeTimers({ toFake: ['Date'] });
      const v = validator(settingsFor(ts));
      expect((await v.validate(`Bearer ${await issue(ts)}`)).ok).toBe(true);
      expect(ts.jwksFetches()).toBe(1);

      // The issuer rotates: a new key, published in its JWKS, signs new tokens.
      const rotated = await ts.server.issuer.keys.generate('RS256');
      const fresh = await issue(ts, { kid: rotated.kid });

      // Within the 30 s cooldown an unknown kid does not reach the IdP, however many arrive.
      vi.setSystemTime(Date.now() + 1_000);
      expectFailure(await v.validate(`Bearer ${fresh}`), 'bad_signature', 401, 'no matching signing key');
      const body = b64json({ iss: ts.url, aud: AUDIENCE, exp: Math.floor(Date.now() / 1000) + 600 });
      const flood = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          v.validate(`Bearer ${b64json({ alg: 'RS256', kid: `bogus-${i}` })}.${body}.c2ln`),
        ),
      );
      expect(flood.every((r) => !r.ok && r.result === 'bad_signature')).toBe(true);
      expect(ts.jwksFetches()).toBe(1);

      // After the cooldown the unknown kid triggers one refetch, and the new key is accepted.
      vi.setSystemTime(Date.now() + 30_000);
      expect((await v.validate(`Bearer ${fresh}`)).ok).toBe(true);
      expect(ts.jwksFetches()).toBe(2);

      // With two RS256 keys published, a token without kid is tried against both.
      expect((await v.validate(`Bearer ${await issue(ts, { kid: rotated.kid, withoutKid: true })}`)).ok).toBe(true);
      expect((await v.validate(`Bearer ${await issue(ts, { withoutKid: true })}`)).ok).toBe(true);
      const { privateKey } = await generateKeyPair('RS256');
      const foreign = await new SignJWT({})
        .setProtectedHeader({ alg: 'RS256' })
        .setIssuer(ts.url)
        .setAudience(AUDIENCE)
        .setExpirationTime(Math.floor(Date.now() / 1000) + 600)
        .sign(privateKey);
      expectFailure(await v.validate(`Bearer ${foreign}`), 'bad_signature', 401, 'invalid signature');
    } finally {
      vi.useRealTimers();
    }
  });

  it('with a zero cooldown accepts a rotated key at once', async () => {
    const ts = await issuerServer();
    const v = validator(settingsFor(ts, { jwksCooldownMs: 0 }));
    expect((await v.validate(`Bearer ${await issue(ts)}`)).ok).toBe(true);
    const rotated = await ts.server.issuer.keys.generate('RS256');
    expect((await v.validate(`Bearer ${await issue(ts, { kid: rotated.kid })}`)).ok).toBe(true);
    expect(ts.jwksFetches()).toBe(2);
  });
});

describe('JWKS endpoint failures and the validation cache', () => {
  it('answers 503 jwks_error when the JWKS endpoint is down, while cached validations still pass', async () => {
    const ts = await issuerServer();
    const clock = testClock();
    const warm = validator(settingsFor(ts), clock.now);
    const token = await issue(ts, { claims: { sub: 'cached-caller' } });
    const other = await issue(ts, { claims: { sub: 'new-caller' } });
    expect((await warm.validate(`Bearer ${token}`)).ok).toBe(true);
    await ts.stop();

    const cold = validator(settingsFor(ts), clock.now);
    expectFailure(await cold.validate(`Bearer ${token}`), 'jwks_error', 503, 'JWKS endpoint unreachable');
    // Eleven minutes on, jose's copy of the keys is stale too (10 min): only the validation
    // cache can still vouch for the token, and a token it has not seen gets the 503.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 11 * 60_000);
    clock.set(clock.start + 60_000);
    const cached = await warm.validate(`Bearer ${token}`);
    expect(cached.ok).toBe(true);
    if (cached.ok) expect(cached.claims.sub).toBe('cached-caller');
    expectFailure(await warm.validate(`Bearer ${other}`), 'jwks_error', 503, 'JWKS endpoint unreachable');
  });

  it('serves cached validations until min(exp, 300 s) and never an expired token', async () => {
    const ts = await issuerServer();
    const clock = testClock();
    const v = validator(settingsFor(ts), clock.now);
    const short = await issue(ts, { expiresIn: 120 });
    const long = await issue(ts, { expiresIn: 3600 });
    const shortExpMs =
      (JSON.parse(Buffer.from(short.split('.')[1] ?? '', 'base64url').toString()) as { exp: number }).exp * 1000;
    expect((await v.validate(`Bearer ${short}`)).ok).toBe(true);
    expect((await v.validate(`Bearer ${long}`)).ok).toBe(true);

    // From here on every verification that is not served from the cache needs the JWKS again
    // (jose's key cache is stale past 10 minutes) and the JWKS endpoint is down.
    await ts.stop();
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 11 * 60_000);

    clock.set(shortExpMs - 1);
    expect((await v.validate(`Bearer ${short}`)).ok).toBe(true);
    clock.set(shortExpMs);
    expectFailure(await v.validate(`Bearer ${short}`), 'jwks_error', 503, 'JWKS endpoint unreachable');

    clock.set(clock.start + 299_999);
    expect((await v.validate(`Bearer ${long}`)).ok).toBe(true);
    clock.set(clock.start + 300_000);
    expectFailure(await v.validate(`Bearer ${long}`), 'jwks_error', 503, 'JWKS endpoint unreachable');
  });

  it('re-verifies a cached token once past exp and answers expired', async () => {
    const ts = await issuerServer();
    const clock = testClock();
    const v = validator(settingsFor(ts), clock.now);
    const token = await issue(ts, { expiresIn: 60 });
    expect((await v.validate(`Bearer ${token}`)).ok).toBe(true);
    clock.set(clock.start + 60_000 + 31_000); // past exp and the 30 s skew
    expectFailure(await v.validate(`Bearer ${token}`), 'expired', 401, 'token expired');
    expect(ts.jwksFetches()).toBe(1);
  });

  it('answers non-200, non-JSON and malformed key sets with jwks_error', async () => {
    const ts = await issuerServer();
    const token = await issue(ts);
    await ts.stop();
    const answers: Record<string, [number, string]> = {
      '/status': [500, '{"keys":[]}'],
      '/text': [200, 'not json'],
      '/shape': [200, '{"keys":"nope"}'],
    };
    const server: Server = createServer((req, res) => {
      const [status, body] = answers[req.url ?? ''] ?? [404, ''];
      res.writeHead(status, { 'content-type': 'application/json' }).end(body);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const expected: [string, string][] = [
        ['/status', 'JWKS endpoint answered with an error status'],
        ['/text', 'JWKS response is not JSON'],
        ['/shape', 'JWKS response is not a valid key set'],
      ];
      for (const [path, description] of expected) {
        const v = validator(settingsFor(ts, { jwksUrl: `${base}${path}`, ca: undefined }));
        expectFailure(await v.validate(`Bearer ${token}`), 'jwks_error', 503, description);
      }
    } finally {
      server.close();
      server.closeAllConnections();
    }
  });
});

describe('settings', () => {
  const base: InboundJwtSettings = {
    jwksUrl: 'https://idp.example/jwks',
    issuer: 'https://idp.example/',
    audience: AUDIENCE,
    algorithms: ['RS256'],
    clockSkewSeconds: 30,
    requiredClaims: {},
    forwardClaims: {},
    ca: undefined,
  };
  const construct = (overrides: Record<string, unknown>) => () =>
    new InboundJwtValidator({ ...base, ...overrides }).close();

  it('refuses symmetric algorithms and none', () => {
    expect(construct({ algorithms: ['HS256'] })).toThrow(/HS256 is not accepted: symmetric/);
    expect(construct({ algorithms: ['none'] })).toThrow(/"none" is never accepted/);
    expect(construct({ algorithms: ['RS256', 'HS512'] })).toThrow(/HS512 is not accepted/);
    expect(construct({ algorithms: ['NONE'] })).toThrow(/"none" is never accepted/);
    expect(construct({ algorithms: [] })).toThrow(/at least one algorithm/);
    expect(construct({ algorithms: ['RS1'] })).toThrow(/RS1 is not supported/);
  });

  it('refuses a claim forwarded in a header the proxy sets, that frames the body, carries credentials or is hop-by-hop', () => {
    for (const header of [
      'Authorization',
      'host',
      'Content-Length',
      'Transfer-Encoding',
      'Cookie',
      'Connection',
      'TE',
      'X-Forwarded-For',
    ])
      expect(construct({ forwardClaims: { sub: header } })).toThrow(
        `forwardClaims.sub: a claim cannot be forwarded in ${header}`,
      );
    expect(construct({ forwardClaims: { sub: 'X-Caller-Sub' } })).not.toThrow();
  });

  it('refuses an empty or malformed requiredTyp', () => {
    expect(construct({ requiredTyp: '' })).toThrow(/requiredTyp/);
    expect(construct({ requiredTyp: 'at+jwt; q=1' })).toThrow(/requiredTyp/);
    expect(construct({ requiredTyp: 'at+jwt' })).not.toThrow();
  });

  it('refuses a plain-http JWKS URL off loopback, bad header names and empty values', () => {
    expect(construct({ jwksUrl: 'http://idp.example/jwks' })).toThrow(/must be https/);
    expect(construct({ jwksUrl: 'not a url' })).toThrow(/not a URL/);
    expect(construct({ forwardClaims: { sub: 'X Caller' } })).toThrow(/not a valid header name/);
    expect(construct({ requiredClaims: { scope: '' } })).toThrow(/requiredClaims.scope/);
    expect(construct({ audience: [] })).toThrow(/audience must be set/);
    expect(construct({ clockSkewSeconds: -1 })).toThrow(/clockSkewSeconds/);
    expect(construct({ jwksUrl: 'http://127.0.0.1:1/jwks' })).not.toThrow();
    expect(construct({})).not.toThrow();
  });
});
