import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

/**
 * The gateway-mode rules of the configuration (issue 19, finding 10): which headers a validated
 * claim may travel in, the token type a caller must present, and where a tenant may come from
 * once callers are identified by their JWT.
 */
const jwt = (extra: Record<string, unknown> = {}) => ({
  jwksUrl: 'https://idp.example/jwks',
  issuer: 'https://idp.example/',
  audience: 'token-proxy',
  ...extra,
});

const upstream = (extra: Record<string, unknown> = {}) => ({
  name: 'partner',
  target: 'https://api.partner.example',
  pathPrefix: '/partner',
  auth: {
    type: 'client_credentials',
    tokenUrl: 'https://auth.partner.example/oauth/token',
    clientId: 'c',
    clientSecret: 's',
  },
  ...extra,
});

function problems(doc: unknown): readonly string[] {
  try {
    buildConfig(doc, { env: {} });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('inbound.jwt.forwardClaims', () => {
  // RFC 9110 §7.6.1 hop-by-hop fields, fields the proxy sets itself, body framing, credentials.
  const refused = [
    'Host',
    'Authorization',
    'authorization',
    'Content-Length',
    'Transfer-Encoding',
    'Proxy-Authorization',
    'Cookie',
    'Connection',
    'Keep-Alive',
    'Proxy-Connection',
    'TE',
    'Trailer',
    'Upgrade',
    'Proxy-Authenticate',
    'X-Forwarded-For',
    'X-Request-Id',
  ];

  it.each(refused)('refuses a claim forwarded in %s, naming the header and the claim', (header) => {
    const found = problems({ upstreams: [upstream()], inbound: { jwt: jwt({ forwardClaims: { sub: header } }) } });
    expect(found).toHaveLength(1);
    expect(found[0]).toMatch(
      new RegExp(`^inbound\\.jwt\\.forwardClaims\\.sub: a claim cannot be forwarded in ${header}: `),
    );
  });

  it('names every refused header at once and accepts the others', () => {
    const found = problems({
      upstreams: [upstream()],
      inbound: {
        jwt: jwt({
          forwardClaims: { sub: 'X-Caller-Sub', client_id: 'Authorization', email: 'Cookie', tid: 'X-Tenant' },
        }),
      },
    });
    expect(found.map((p) => p.split(':')[0])).toEqual([
      'inbound.jwt.forwardClaims.client_id',
      'inbound.jwt.forwardClaims.email',
    ]);
    const config = buildConfig(
      { upstreams: [upstream()], inbound: { jwt: jwt({ forwardClaims: { sub: 'X-Caller-Sub', tid: 'X-Tenant' } }) } },
      { env: {} },
    );
    expect(config.inbound.jwt?.forwardClaims).toEqual({ sub: 'X-Caller-Sub', tid: 'X-Tenant' });
  });
});

describe('inbound.jwt.requiredTyp', () => {
  it('is passed on to the validator as written, and unset by default', () => {
    const typed = buildConfig(
      { upstreams: [upstream()], inbound: { jwt: jwt({ requiredTyp: 'at+jwt' }) } },
      { env: {} },
    );
    expect(typed.inbound.jwt?.requiredTyp).toBe('at+jwt');
    const prefixed = buildConfig(
      { upstreams: [upstream()], inbound: { jwt: jwt({ requiredTyp: 'application/at+jwt' }) } },
      { env: {} },
    );
    expect(prefixed.inbound.jwt?.requiredTyp).toBe('application/at+jwt');
    const plain = buildConfig({ upstreams: [upstream()], inbound: { jwt: jwt() } }, { env: {} });
    expect(plain.inbound.jwt?.requiredTyp).toBeUndefined();
  });

  it('refuses an empty value or one that is not a media type', () => {
    expect(problems({ upstreams: [upstream()], inbound: { jwt: jwt({ requiredTyp: '' }) } })).toEqual([
      expect.stringMatching(/^inbound\.jwt\.requiredTyp: /),
    ]);
    expect(problems({ upstreams: [upstream()], inbound: { jwt: jwt({ requiredTyp: 'at+jwt, JWT' }) } })).toEqual([
      expect.stringMatching(/^inbound\.jwt\.requiredTyp: /),
    ]);
  });
});

describe('tenants.from with inbound.jwt', () => {
  const tenants = (from: string) => ({
    tenants: { from, credentials: { 'app-a': { clientId: 'a', clientSecret: 'sa' } } },
  });

  it('refuses header:<Name> when callers are identified by their JWT, and says to use jwtClaim:', () => {
    expect(problems({ upstreams: [upstream(tenants('header:X-Tenant'))], inbound: { jwt: jwt() } })).toEqual([
      'upstreams[0].tenants.from: header:X-Tenant lets a caller name any tenant in a request header, whatever its validated JWT says: with inbound.jwt, use jwtClaim:<claim> (e.g. jwtClaim:client_id)',
    ]);
  });

  it('accepts jwtClaim: with inbound.jwt, and header: without it (a trusted gateway sets the header)', () => {
    expect(problems({ upstreams: [upstream(tenants('jwtClaim:client_id'))], inbound: { jwt: jwt() } })).toEqual([]);
    expect(problems({ upstreams: [upstream(tenants('header:X-Tenant'))] })).toEqual([]);
  });
});
