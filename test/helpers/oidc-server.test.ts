import { randomUUID } from 'node:crypto';
import { SignJWT, createLocalJWKSet, decodeJwt, importPKCS8, jwtVerify, type JSONWebKeySet } from 'jose';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testPki } from './certs.js';
import { generateClientKey, issueClientCertificate, startOidcServer, type OidcServer } from './oidc-server.js';

const pki = testPki();
const agent = new Agent({ connect: { ca: pki.ca } });
const clientCert = issueClientCertificate('mtls-client');
const otherCert = issueClientCertificate('someone-else');
const mtlsAgent = new Agent({ connect: { ca: pki.ca, cert: clientCert.certPem, key: clientCert.keyPem } });
const otherMtlsAgent = new Agent({ connect: { ca: pki.ca, cert: otherCert.certPem, key: otherCert.keyPem } });

let server: OidcServer;
let jwtKey: Awaited<ReturnType<typeof generateClientKey>>;
let wrongKey: Awaited<ReturnType<typeof generateClientKey>>;

interface TokenAnswer {
  status: number;
  body: Record<string, unknown>;
}

async function token(
  form: Record<string, string>,
  opts: { basic?: [string, string]; dispatcher?: Agent } = {},
): Promise<TokenAnswer> {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  if (opts.basic !== undefined)
    headers['authorization'] = `Basic ${Buffer.from(`${opts.basic[0]}:${opts.basic[1]}`).toString('base64')}`;
  const res = await request(server.tokenUrl, {
    method: 'POST',
    headers,
    body: new URLSearchParams(form).toString(),
    dispatcher: opts.dispatcher ?? agent,
  });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

async function verifyAccessToken(accessToken: unknown) {
  expect(typeof accessToken).toBe('string');
  const res = await request(server.jwksUrl, { dispatcher: agent });
  expect(res.statusCode).toBe(200);
  const jwks = (await res.body.json()) as JSONWebKeySet;
  const { payload, protectedHeader } = await jwtVerify(accessToken as string, createLocalJWKSet(jwks), {
    issuer: server.issuer,
    audience: server.audience,
    typ: 'at+jwt',
  });
  expect(protectedHeader.alg).toBe('RS256');
  return payload;
}

async function assertion(
  clientId: string,
  privatePem: string,
  kid: string,
  alg: string,
  aud = server.tokenUrl,
): Promise<string> {
  return new SignJWT({})
    .setProtectedHeader({ alg, kid })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(aud)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime('60s')
    .sign(await importPKCS8(privatePem, alg));
}

const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

beforeAll(async () => {
  jwtKey = await generateClientKey('ES256', 'jwt-client-1');
  wrongKey = await generateClientKey('ES256', 'jwt-client-1');
  server = await startOidcServer({
    accessTokenTtlSeconds: 120,
    users: { alice: 'wonderland' },
    clients: [
      {
        clientId: 'cc-basic',
        clientSecret: 'cc-secret',
        authMethod: 'client_secret_basic',
        grantTypes: ['client_credentials'],
        scope: 'read write',
      },
      {
        clientId: 'pw-client',
        clientSecret: 'pw-secret',
        authMethod: 'client_secret_post',
        grantTypes: ['password', 'refresh_token'],
        scope: 'read',
      },
      {
        clientId: 'jwt-client',
        authMethod: 'private_key_jwt',
        jwks: { keys: [jwtKey.publicJwk] },
        grantTypes: ['client_credentials'],
      },
      {
        clientId: 'mtls-client',
        authMethod: 'tls_client_auth',
        tlsSubjectDn: clientCert.subjectDn,
        grantTypes: ['client_credentials'],
      },
    ],
  });
});

afterAll(async () => {
  await server?.stop();
  await Promise.all([agent.close(), mtlsAgent.close(), otherMtlsAgent.close()]);
});

describe('oidc-server (oidc-provider)', () => {
  it('has an https issuer on 127.0.0.1 with a real port', () => {
    expect(server.issuer).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(server.tokenUrl).toBe(`${server.issuer}/token`);
  });

  it('client_credentials with client_secret_basic gives a JWT access token verified against the JWKS', async () => {
    const res = await token({ grant_type: 'client_credentials', scope: 'read' }, { basic: ['cc-basic', 'cc-secret'] });
    expect(res.status).toBe(200);
    expect(res.body['token_type']).toBe('Bearer');
    expect(res.body['expires_in']).toBe(120);
    expect(res.body['refresh_token']).toBeUndefined();
    const claims = await verifyAccessToken(res.body['access_token']);
    expect(claims['client_id']).toBe('cc-basic');
    expect(claims['scope']).toBe('read');
    expect(typeof claims.jti).toBe('string');
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(120);
    expect(server.calls.at(-1)).toMatchObject({
      grantType: 'client_credentials',
      clientId: 'cc-basic',
      authMethod: 'client_secret_basic',
      status: 200,
      error: undefined,
    });
  });

  it('a token signed by another key is refused by the JWKS check', async () => {
    const res = await token({ grant_type: 'client_credentials' }, { basic: ['cc-basic', 'cc-secret'] });
    const forged = await new SignJWT(decodeJwt(res.body['access_token'] as string))
      .setProtectedHeader({ alg: 'RS256', kid: 'oidc-server-rs256', typ: 'at+jwt' })
      .sign(await importPKCS8((await generateClientKey('RS256', 'x')).privatePem, 'RS256'));
    await expect(verifyAccessToken(forged)).rejects.toThrow(/signature/);
  });

  it('a wrong client secret is 401 invalid_client', async () => {
    const res = await token({ grant_type: 'client_credentials' }, { basic: ['cc-basic', 'not-the-secret'] });
    expect(res.status).toBe(401);
    expect(res.body['error']).toBe('invalid_client');
    expect(res.body['access_token']).toBeUndefined();
    expect(server.calls.at(-1)).toMatchObject({
      grantType: 'client_credentials',
      clientId: 'cc-basic',
      status: 401,
      error: 'invalid_client',
    });
  });

  it('password grant gives access and refresh tokens; refresh rotates and reuse of the old one is invalid_grant', async () => {
    const creds = { client_id: 'pw-client', client_secret: 'pw-secret' };
    const first = await token({ grant_type: 'password', username: 'alice', password: 'wonderland', ...creds });
    expect(first.status).toBe(200);
    const claims = await verifyAccessToken(first.body['access_token']);
    expect(claims.sub).toBe('alice');
    expect(claims['client_id']).toBe('pw-client');
    expect(claims['scope']).toBe('read');
    const rt1 = first.body['refresh_token'];
    expect(typeof rt1).toBe('string');

    const second = await token({ grant_type: 'refresh_token', refresh_token: rt1 as string, ...creds });
    expect(second.status).toBe(200);
    const rt2 = second.body['refresh_token'];
    expect(typeof rt2).toBe('string');
    expect(rt2).not.toBe(rt1);
    const claims2 = await verifyAccessToken(second.body['access_token']);
    expect(claims2.sub).toBe('alice');
    expect(claims2['client_id']).toBe('pw-client');
    expect(claims2.jti).not.toBe(claims.jti);

    const reused = await token({ grant_type: 'refresh_token', refresh_token: rt1 as string, ...creds });
    expect(reused.status).toBe(400);
    expect(reused.body['error']).toBe('invalid_grant');
    expect(server.calls.at(-1)?.errorDetail).toBe('refresh token already used');
    expect(server.usedRefreshTokens.slice(-2)).toEqual([rt1, rt1]);
    expect(server.calls.at(-1)).toMatchObject({
      grantType: 'refresh_token',
      clientId: 'pw-client',
      status: 400,
      error: 'invalid_grant',
    });

    // Reuse detection revokes the whole grant: the rotated token is dead too.
    const afterReuse = await token({ grant_type: 'refresh_token', refresh_token: rt2 as string, ...creds });
    expect(afterReuse.status).toBe(400);
    expect(afterReuse.body['error']).toBe('invalid_grant');
  });

  it('an expired refresh token is invalid_grant (refreshTokenTtlSeconds)', async () => {
    const short = await startOidcServer({
      refreshTokenTtlSeconds: 1,
      users: { bob: 'builder' },
      clients: [
        {
          clientId: 'short',
          clientSecret: 's',
          authMethod: 'client_secret_basic',
          grantTypes: ['password', 'refresh_token'],
        },
      ],
    });
    try {
      const post = async (form: Record<string, string>) => {
        const res = await request(short.tokenUrl, {
          method: 'POST',
          headers: {
            'content-type': 'application/x-www-form-urlencoded',
            authorization: `Basic ${Buffer.from('short:s').toString('base64')}`,
          },
          body: new URLSearchParams(form).toString(),
          dispatcher: agent,
        });
        return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
      };
      const first = await post({ grant_type: 'password', username: 'bob', password: 'builder' });
      expect(first.status).toBe(200);
      expect(typeof first.body['refresh_token']).toBe('string');
      await new Promise((r) => setTimeout(r, 2100));
      const late = await post({ grant_type: 'refresh_token', refresh_token: first.body['refresh_token'] as string });
      expect(late.status).toBe(400);
      expect(late.body['error']).toBe('invalid_grant');
      expect(short.calls.map((c) => [c.grantType, c.status])).toEqual([
        ['password', 200],
        ['refresh_token', 400],
      ]);
    } finally {
      await short.stop();
    }
  });

  it('a wrong password is invalid_grant', async () => {
    const res = await token({
      grant_type: 'password',
      username: 'alice',
      password: 'nope',
      client_id: 'pw-client',
      client_secret: 'pw-secret',
    });
    expect(res.status).toBe(400);
    expect(res.body['error']).toBe('invalid_grant');
    expect(server.calls.at(-1)).toMatchObject({
      grantType: 'password',
      clientId: 'pw-client',
      status: 400,
      error: 'invalid_grant',
    });
  });

  it('a grant type the client is not registered for is refused (oidc-provider says invalid_request)', async () => {
    const res = await token(
      { grant_type: 'password', username: 'alice', password: 'wonderland' },
      { basic: ['cc-basic', 'cc-secret'] },
    );
    expect(res.status).toBe(400);
    expect(res.body['error']).toBe('invalid_request');
    expect(res.body['access_token']).toBeUndefined();
  });

  it('private_key_jwt with an ES256 client assertion works; a wrong key is invalid_client', async () => {
    const good = await token({
      grant_type: 'client_credentials',
      client_assertion_type: JWT_BEARER,
      client_assertion: await assertion('jwt-client', jwtKey.privatePem, 'jwt-client-1', 'ES256'),
    });
    expect(good.status).toBe(200);
    expect((await verifyAccessToken(good.body['access_token']))['client_id']).toBe('jwt-client');
    expect(server.calls.at(-1)).toMatchObject({ clientId: 'jwt-client', authMethod: 'private_key_jwt', status: 200 });

    const issuerAud = await token({
      grant_type: 'client_credentials',
      client_assertion_type: JWT_BEARER,
      client_assertion: await assertion('jwt-client', jwtKey.privatePem, 'jwt-client-1', 'ES256', server.issuer),
    });
    expect(issuerAud.status).toBe(200);

    const bad = await token({
      grant_type: 'client_credentials',
      client_assertion_type: JWT_BEARER,
      client_assertion: await assertion('jwt-client', wrongKey.privatePem, 'jwt-client-1', 'ES256'),
    });
    expect(bad.status).toBe(401);
    expect(bad.body['error']).toBe('invalid_client');
    expect(server.calls.at(-1)?.errorDetail).toMatch(/signature verification failed/);
    expect(server.calls.at(-1)).toMatchObject({ clientId: 'jwt-client', status: 401, error: 'invalid_client' });
  });

  it('tls_client_auth with the issued client certificate works; without one, or with another subject, it is invalid_client', async () => {
    expect(clientCert.subjectDn).toBe('CN=mtls-client');
    const good = await token({ grant_type: 'client_credentials', client_id: 'mtls-client' }, { dispatcher: mtlsAgent });
    expect(good.status).toBe(200);
    const claims = await verifyAccessToken(good.body['access_token']);
    expect(claims['client_id']).toBe('mtls-client');
    expect(claims['cnf']).toBeUndefined();
    expect(server.calls.at(-1)).toMatchObject({ clientId: 'mtls-client', authMethod: 'tls_client_auth', status: 200 });

    const noCert = await token({ grant_type: 'client_credentials', client_id: 'mtls-client' });
    expect(noCert.status).toBe(401);
    expect(noCert.body['error']).toBe('invalid_client');
    expect(server.calls.at(-1)).toMatchObject({
      clientId: 'mtls-client',
      status: 401,
      errorDetail: 'client certificate was not provided',
    });

    const otherSubject = await token(
      { grant_type: 'client_credentials', client_id: 'mtls-client' },
      { dispatcher: otherMtlsAgent },
    );
    expect(otherSubject.status).toBe(401);
    expect(otherSubject.body['error']).toBe('invalid_client');
    expect(server.calls.at(-1)?.errorDetail).toBe('certificate subject value does not match the registered one');
  });
});
