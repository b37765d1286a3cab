import type { Dispatcher } from 'undici';
import type { LoginSettings } from '../config/resolve-auth.js';
import { TokenError, type TokenFailureReason } from '../errors.js';
import type { Grant } from './grant.js';
import {
  describe,
  parseExpiresIn,
  parseJson,
  parseRetryAfter,
  postForText,
  type TokenResponse,
} from './token-endpoint.js';

/** `data.access_token` → obj.data.access_token. */
export function pick(obj: unknown, path: string): unknown {
  let node = obj;
  for (const key of path.split('.')) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

/** A `{{name}}` placeholder of a body template. */
const PLACEHOLDER = /\{\{(\w+)\}\}/g;

/** Names of fields and headers that carry credentials: API keys, tokens, secrets, signatures, passwords. */
export const CREDENTIAL_NAME = /key|token|secret|auth|pass|sig|credential|session|cookie/i;

/** Fills `{{username}}`-style placeholders in every string of a JSON template. */
export function fillTemplate(template: unknown, values: Readonly<Record<string, string>>): unknown {
  if (typeof template === 'string')
    return template.replace(PLACEHOLDER, (whole, name: string) => values[name] ?? whole);
  if (Array.isArray(template)) return template.map((t) => fillTemplate(t, values));
  if (template !== null && typeof template === 'object') {
    return Object.fromEntries(Object.entries(template).map(([k, v]) => [k, fillTemplate(v, values)]));
  }
  return template;
}

/**
 * The secrets written into a body template itself (`client_secret: ${SECRET}`, an API key):
 * every value under a field named like a credential, at any depth, without its placeholders
 * (their values, the password say, are secrets of their own).
 */
export function templateSecrets(template: unknown, underCredential = false): string[] {
  if (typeof template === 'string')
    return underCredential ? template.split(PLACEHOLDER).filter((piece, i) => i % 2 === 0 && piece !== '') : [];
  if (typeof template === 'number') return underCredential ? [String(template)] : [];
  if (Array.isArray(template)) return template.flatMap((t) => templateSecrets(t, underCredential));
  if (template !== null && typeof template === 'object')
    return Object.entries(template).flatMap(([k, v]) => templateSecrets(v, underCredential || CREDENTIAL_NAME.test(k)));
  return [];
}

/** Numbers this large are already milliseconds: 1e12 ms is 2001, 1e12 s is year 33658. */
const EPOCH_MS_THRESHOLD = 1e12;

/** ISO-8601 text, or epoch seconds (number or numeric text; milliseconds are recognised); epoch ms. */
export function parseExpiresAt(value: unknown): number | undefined {
  const n = parseExpiresIn(value);
  if (n !== undefined) return n >= EPOCH_MS_THRESHOLD ? n : n * 1000;
  if (typeof value !== 'string') return undefined;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? undefined : ms;
}

function partnerMessage(body: unknown): string | undefined {
  for (const key of ['message', 'error_description', 'detail', 'error']) {
    const text = describe(pick(body, key));
    if (text !== undefined && text !== '') return text;
  }
  return undefined;
}

function reasonFor(status: number, refreshing: boolean): TokenFailureReason {
  if (status === 401) return refreshing ? 'invalid_grant' : 'invalid_client'; // a used or expired refresh token / wrong login
  if (status === 403) return 'forbidden'; // e.g. an IP allow-list: no retry can fix it
  if (status === 429) return 'rate_limited';
  if (status >= 500) return 'server_error';
  if (status === 400 || status === 422) return refreshing ? 'invalid_grant' : 'invalid_request';
  return 'bad_response';
}

/**
 * A partner's own JSON login API (the common `POST /auth/login` → `{"data":{"access_token",
 * "refresh_token","access_expires_at"}}` shape): login with username and password, renew with the
 * refresh token, which the partner revokes on use. Field locations are configurable.
 */
export function loginApiGrant(auth: LoginSettings, dispatcher: Dispatcher, now: () => number): Grant {
  const fields = auth.responseFields;

  async function post(url: string, body: unknown, refreshing: boolean): Promise<TokenResponse> {
    const what = `${refreshing ? 'refresh' : 'login'} API`;
    const headersOut = { ...auth.headers, 'content-type': 'application/json', accept: 'application/json' };
    const { status, headers, text } = await postForText(
      dispatcher,
      new URL(url),
      headersOut,
      JSON.stringify(body),
      auth.requestTimeoutSeconds * 1000,
      what,
    );
    const json = parseJson(text);
    if (status < 200 || status >= 300) {
      const description = partnerMessage(json);
      const retryAfterSeconds = parseRetryAfter(headers['retry-after'], now());
      throw new TokenError(reasonFor(status, refreshing), `${what} answered ${status}`, {
        status,
        ...(description === undefined ? {} : { description }),
        ...(retryAfterSeconds === undefined ? {} : { retryAfterSeconds }),
      });
    }
    const accessToken = pick(json, fields.accessToken);
    if (typeof accessToken !== 'string' || accessToken === '') {
      throw new TokenError('bad_response', `${what} answer has no string at ${fields.accessToken}`, { status });
    }
    const refreshToken = fields.refreshToken === undefined ? undefined : pick(json, fields.refreshToken);
    const expiresAt = fields.expiresAt === undefined ? undefined : parseExpiresAt(pick(json, fields.expiresAt));
    const expiresIn = fields.expiresIn === undefined ? undefined : parseExpiresIn(pick(json, fields.expiresIn));
    return {
      accessToken,
      expiresIn,
      expiresAt,
      scope: undefined,
      refreshToken: typeof refreshToken === 'string' && refreshToken !== '' ? refreshToken : undefined,
    };
  }

  const secrets = { username: auth.username, password: auth.password };
  const refreshUrl = auth.refreshUrl;
  return {
    obtain: () => post(auth.loginUrl, fillTemplate(auth.loginBody, secrets), false),
    refresh:
      refreshUrl === undefined
        ? undefined
        : (refreshToken) => post(refreshUrl, fillTemplate(auth.refreshBody, { refreshToken }), true),
  };
}
