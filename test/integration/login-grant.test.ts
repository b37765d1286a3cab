import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPartnerApi, type PartnerApi } from '../../src/demo/partner-api.js';
import type { Token } from '../../src/tokens/token.js';
import { startLoginApiServer, type LoginApiCall, type LoginApiServer } from '../helpers/login-api-server.js';
import { nextToken, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { FASTEST_BACKOFF, offsetClock } from '../helpers/time.js';

const USERNAME = 'alice';
const PASSWORD = 'login-password-6b0e93';
/** The proxy's clock, shared with the login API: real time plus an offset a test advances instead of sleeping. */
const clock = offsetClock();
/** Tokens live 300 s; the proxy refreshes from exp - 60 s and stops using them at exp - 30 s. */
const INTO_REFRESH_WINDOW_MS = 250_000;
const client = new Agent();
let login: LoginApiServer;
let partner: PartnerApi;
let proxy: RunningProxy | undefined;

async function startWith(auth: Record<string, unknown> = {}): Promise<RunningProxy> {
  proxy = await startProxy(
    {
      tokenCache: { refreshBeforeExpirySeconds: 60 },
      upstreams: [
        {
          name: 'partner',
          target: partner.url,
          pathPrefix: '/partner',
          tokenWaitTimeoutSeconds: 1,
          auth: {
            type: 'login',
            loginUrl: login.loginUrl,
            refreshUrl: login.refreshUrl,
            username: USERNAME,
            password: PASSWORD,
            requestTimeoutSeconds: 0.5,
            ...auth,
          },
        },
      ],
    },
    { clock, backoff: FASTEST_BACKOFF },
  );
  return proxy;
}

async function get(path = '/partner/x') {
  const res = await client.request({ origin: (proxy as RunningProxy).url, path, method: 'GET' });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    text,
    json: () => JSON.parse(text) as Record<string, unknown>,
  };
}

/** Moves the clock into the refresh window, sends a request (which starts the background renewal) and waits for it. */
async function renewInBackground(advanceMs = INTO_REFRESH_WINDOW_MS): Promise<Token> {
  const renewed = nextToken(proxy as RunningProxy);
  clock.offsetMs += advanceMs;
  expect((await get()).status).toBe(200);
  return renewed;
}

const bodyOf = (call: LoginApiCall | undefined) => call?.body as Record<string, unknown> | undefined;
const summary = (calls: readonly LoginApiCall[]) => calls.map((c) => `${c.path} ${c.status}`);

beforeAll(async () => {
  login = await startLoginApiServer({ username: USERNAME, password: PASSWORD, now: clock.now });
  partner = await startPartnerApi({ jwksUrl: login.jwksUrl, issuer: login.issuer });
});

afterAll(async () => {
  await partner.close();
  await login.stop();
  await client.close();
});

beforeEach(() => {
  clock.offsetMs = 0;
  login.reset();
  partner.seen.length = 0;
  partner.revoked.clear();
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

describe('login grant: log in, then renew with rotated refresh tokens', () => {
  it('logs in once on the first request and the partner sees the login access token', async () => {
    await startWith();
    const first = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    expect((await first).value).toBe(login.issuedAccessTokens[0]);
    expect((await get()).status).toBe(200);
    expect(summary(login.calls)).toEqual(['/auth/login 200']);
    expect(login.calls[0]?.body).toEqual({ username: USERNAME, password: PASSWORD });
    expect(partner.seen.map((s) => s.token)).toEqual([login.issuedAccessTokens[0], login.issuedAccessTokens[0]]);
    expect(partner.seen.map((s) => s.status)).toEqual([200, 200]);
    expect(partner.seen[0]?.claims?.sub).toBe(USERNAME);
  });

  it('renews through /auth/refresh with the newest refresh token, ten cycles in a row', async () => {
    await startWith();
    expect((await get()).status).toBe(200);
    for (let cycle = 1; cycle <= 10; cycle++) {
      const renewed = await renewInBackground();
      expect(renewed.value).toBe(login.issuedAccessTokens[cycle]);
      expect((await get()).status).toBe(200);
      expect(partner.seen.at(-1)?.token).toBe(login.issuedAccessTokens[cycle]);
    }
    expect(login.calls).toHaveLength(11);
    expect(summary(login.calls)).toEqual(['/auth/login 200', ...Array<string>(10).fill('/auth/refresh 200')]);
    for (let i = 1; i < login.calls.length; i++) {
      // Each refresh presented exactly the refresh token the previous answer handed out.
      expect(bodyOf(login.calls[i])).toEqual({ refresh_token: login.calls[i - 1]?.issued?.refreshToken });
    }
    expect(login.calls.filter((c) => c.status === 401)).toHaveLength(0);
    expect(partner.seen).toHaveLength(21);
    expect(partner.seen.every((s) => s.status === 200)).toBe(true);
  });

  it('logs in again when the refresh token was revoked, then keeps refreshing with the new one', async () => {
    await startWith();
    expect((await get()).status).toBe(200);
    const firstRefresh = login.issuedRefreshTokens[0];
    login.revokeAll();
    const renewed = await renewInBackground();
    expect(summary(login.calls)).toEqual(['/auth/login 200', '/auth/refresh 401', '/auth/login 200']);
    expect(bodyOf(login.calls[1])).toEqual({ refresh_token: firstRefresh });
    expect(login.calls[1]?.response).toEqual({ message: 'refresh token revoked' });
    expect(renewed.value).toBe(login.issuedAccessTokens[1]);
    expect((await get()).status).toBe(200);
    expect(partner.seen.at(-1)?.token).toBe(login.issuedAccessTokens[1]);
    // The second login's refresh token is the one used next.
    await renewInBackground();
    expect(summary(login.calls).slice(3)).toEqual(['/auth/refresh 200']);
    expect(bodyOf(login.calls[3])).toEqual({ refresh_token: login.calls[2]?.issued?.refreshToken });
  });

  it('logs in again when the refresh token has expired', async () => {
    login.refreshTtlSeconds = 200; // gone before the access token enters its refresh window
    await startWith();
    expect((await get()).status).toBe(200);
    const renewed = await renewInBackground();
    expect(summary(login.calls)).toEqual(['/auth/login 200', '/auth/refresh 401', '/auth/login 200']);
    expect(renewed.value).toBe(login.issuedAccessTokens[1]);
    expect((await get()).status).toBe(200);
    expect(partner.seen.at(-1)?.token).toBe(login.issuedAccessTokens[1]);
  });

  it('renews through the refresh token once and replays once when the partner answers 401', async () => {
    await startWith();
    expect((await get()).status).toBe(200);
    partner.revoked.add(login.issuedAccessTokens[0] as string);
    const replayed = await get('/partner/after-401');
    expect(replayed.status).toBe(200);
    expect(replayed.json()).toMatchObject({ ok: true, path: '/after-401' });
    expect(summary(login.calls)).toEqual(['/auth/login 200', '/auth/refresh 200']);
    expect(bodyOf(login.calls[1])).toEqual({ refresh_token: login.issuedRefreshTokens[0] });
    expect(partner.seen.map((s) => [s.token, s.status])).toEqual([
      [login.issuedAccessTokens[0], 200],
      [login.issuedAccessTokens[0], 401],
      [login.issuedAccessTokens[1], 200],
    ]);
  });
});

describe('login grant: the 401 policy', () => {
  it('a token revoked twice within one second, its refresh token revoked each time: refresh, then log in again, both times, and no 401 reaches the client', async () => {
    await startWith();
    expect((await get()).status).toBe(200);
    for (const round of [0, 1]) {
      login.revokeAll(); // the refresh tokens the login API issued so far
      partner.revoked.add(login.issuedAccessTokens.at(-1) as string);
      expect((await get(`/partner/round${round}`)).status).toBe(200);
    }
    expect(summary(login.calls)).toEqual([
      '/auth/login 200',
      '/auth/refresh 401',
      '/auth/login 200',
      '/auth/refresh 401',
      '/auth/login 200',
    ]);
    expect(partner.seen.map((s) => s.status)).toEqual([200, 401, 200, 401, 200]);
  });
});

describe('login grant failures answer 502 token_unavailable', () => {
  it('reports a failed login (wrong password) as invalid_client with the partner message', async () => {
    await startWith({ password: 'not-the-password' });
    const res = await get();
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.json()).toMatchObject({
      error: 'token_unavailable',
      upstream: 'partner',
      reason: 'invalid_client',
      description: 'invalid credentials',
    });
    expect(res.text).not.toContain('not-the-password');
    expect(summary(login.calls)).toEqual(['/auth/login 401']);
    expect(partner.seen).toHaveLength(0);
  });

  it('keeps the configured API key header out of the 502 body and the logs when the login API quotes it back', async () => {
    login.apiKey = 'the-current-key';
    await startWith({ headers: { 'x-api-key': 'partner-key-1-retired' } });
    const res = await get();
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({
      error: 'token_unavailable',
      reason: 'invalid_client',
      description: 'invalid API key [redacted]',
    });
    expect(summary(login.calls)).toEqual(['/auth/login 401']);
    expect(login.calls[0]?.response).toEqual({ message: 'invalid API key partner-key-1-retired' }); // what the API did say
    expect((proxy as RunningProxy).logs.join('\n')).not.toContain('partner-key-1-retired');
    expect((proxy as RunningProxy).logs.join('\n')).toContain('invalid API key [redacted]');
  });

  it('reports a 403 (IP allow-list) as forbidden with the message, and does not call again within the backoff', async () => {
    login.forbidIp = true;
    await startWith();
    const first = await get();
    expect(first.status).toBe(502);
    expect(first.json()).toMatchObject({
      error: 'token_unavailable',
      reason: 'forbidden',
      description: 'IP 127.0.0.1 is not in the allow-list',
    });
    const second = await get();
    expect(second.status).toBe(502);
    expect(second.json()).toMatchObject({ reason: 'forbidden', description: 'IP 127.0.0.1 is not in the allow-list' });
    expect(summary(login.calls)).toEqual(['/auth/login 403']);
    expect(partner.seen).toHaveLength(0);
    // Past the backoff window (5 s for permanent failures) the proxy tries again, once.
    login.forbidIp = false;
    clock.offsetMs += 6_000;
    expect((await get()).status).toBe(200);
    expect(summary(login.calls)).toEqual(['/auth/login 403', '/auth/login 200']);
  });
});

describe('login grant expiry and configurable shapes', () => {
  it('takes the expiry from access_expires_at (ISO-8601)', async () => {
    await startWith();
    const first = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    const token = await first;
    const iso = (login.calls[0]?.response as { data: { access_expires_at: string } }).data.access_expires_at;
    expect(iso).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(token.expiresAt).toBe(Date.parse(iso));
    expect(token.usableUntil).toBe(Date.parse(iso) - 30_000);
  });

  it('uses access_expires_at when it is earlier than the JWT exp', async () => {
    login.accessTtlSeconds = 300;
    login.statedTtlSeconds = 120;
    await startWith();
    const first = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    const token = await first;
    const call = login.calls[0];
    const iso = (call?.response as { data: { access_expires_at: string } }).data.access_expires_at;
    expect(token.expiresAt).toBe(Date.parse(iso));
    expect(token.expiresAt).toBe((call?.issued?.jwtExp ?? 0) * 1000 - 180_000);
  });

  it('uses the JWT exp when it is earlier than access_expires_at', async () => {
    login.accessTtlSeconds = 300;
    login.statedTtlSeconds = 900;
    await startWith();
    const first = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    const token = await first;
    const call = login.calls[0];
    const iso = (call?.response as { data: { access_expires_at: string } }).data.access_expires_at;
    expect(token.expiresAt).toBe((call?.issued?.jwtExp ?? 0) * 1000);
    expect(token.expiresAt).toBe(Date.parse(iso) - 600_000);
  });

  it('reads a flat answer through responseFields, with the expiry in epoch seconds', async () => {
    login.shape = 'flat-epoch';
    login.statedTtlSeconds = 200; // earlier than the JWT exp, so the epoch field decides
    await startWith({ responseFields: { accessToken: 'token', refreshToken: 'renew', expiresAt: 'exp' } });
    const first = nextToken(proxy as RunningProxy);
    expect((await get()).status).toBe(200);
    const token = await first;
    const answer = login.calls[0]?.response as { token: string; renew: string; exp: number };
    expect(Object.keys(answer).sort()).toEqual(['exp', 'renew', 'token']);
    expect(token.value).toBe(answer.token);
    expect(token.expiresAt).toBe(answer.exp * 1000);
    expect(partner.seen[0]?.token).toBe(answer.token);
    // The refresh token came from `renew`: the renewal presents it.
    const renewed = await renewInBackground(150_000); // refresh window opens at exp - 60 s
    expect(summary(login.calls)).toEqual(['/auth/login 200', '/auth/refresh 200']);
    expect(bodyOf(login.calls[1])).toEqual({ refresh_token: answer.renew });
    expect(renewed.value).toBe((login.calls[1]?.response as { token: string }).token);
  });

  it('sends the configured loginBody template and headers', async () => {
    login.loginFields = { username: 'user', password: 'secret' };
    await startWith({
      loginBody: { user: '{{username}}', secret: '{{password}}', grant: 'api' },
      headers: { 'x-api-key': 'partner-key-1' },
    });
    expect((await get()).status).toBe(200);
    expect(summary(login.calls)).toEqual(['/auth/login 200']);
    expect(login.calls[0]?.body).toEqual({ user: USERNAME, secret: PASSWORD, grant: 'api' });
    expect(login.calls[0]?.headers['x-api-key']).toBe('partner-key-1');
    expect(login.calls[0]?.headers['content-type']).toBe('application/json');
    expect(partner.seen[0]?.token).toBe(login.issuedAccessTokens[0]);
  });
});
