import { describe, expect, it } from 'vitest';
import { TokenError } from '../../src/errors.js';
import { clientSecretBasic, clientSecretPost } from '../../src/oauth/client-auth.js';
import { parseRetryAfter, parseTokenResponse } from '../../src/oauth/token-endpoint.js';

const NOW = Date.parse('2026-11-23T10:00:00Z');

function failure(status: number, body: string, headers: Record<string, string> = {}): TokenError {
  try {
    parseTokenResponse(status, headers, body, NOW);
  } catch (err) {
    if (err instanceof TokenError) return err;
    throw err;
  }
  throw new Error('expected a TokenError');
}

describe('token endpoint responses (RFC 6749 §5.1, §5.2)', () => {
  it('reads access_token, expires_in (number or numeric string), scope and refresh_token', () => {
    expect(
      parseTokenResponse(
        200,
        {},
        '{"access_token":"a","token_type":"Bearer","expires_in":300,"scope":"s","refresh_token":"r"}',
        NOW,
      ),
    ).toEqual({
      accessToken: 'a',
      expiresIn: 300,
      scope: 's',
      refreshToken: 'r',
    });
    expect(
      parseTokenResponse(200, {}, '{"access_token":"a","token_type":"bearer","expires_in":"300"}', NOW).expiresIn,
    ).toBe(300);
  });

  it('maps each RFC 6749 error code to the same reason, and as permanent', () => {
    for (const code of [
      'invalid_client',
      'invalid_grant',
      'invalid_scope',
      'unsupported_grant_type',
      'invalid_request',
      'unauthorized_client',
    ]) {
      const err = failure(400, JSON.stringify({ error: code, error_description: 'why' }));
      expect([err.reason, err.permanent, err.description]).toEqual([code, true, 'why']);
    }
  });

  it('classifies by status when the body says nothing usable', () => {
    expect(failure(401, '').reason).toBe('invalid_client');
    expect(failure(403, '<html>IP not allowed</html>').reason).toBe('forbidden');
    expect(failure(429, '', { 'retry-after': '7' })).toMatchObject({
      reason: 'rate_limited',
      retryAfterSeconds: 7,
      permanent: false,
    });
    expect(failure(503, '{"error":"invalid_client"}')).toMatchObject({ reason: 'server_error', permanent: false });
    expect(failure(302, '').reason).toBe('bad_response');
  });

  it('rejects HTML, truncated JSON, a missing access_token and non-bearer token types as bad_response', () => {
    expect(failure(200, '<html>login</html>').reason).toBe('bad_response');
    expect(failure(200, '{"access_token":"abc"').reason).toBe('bad_response');
    expect(failure(200, '{"token_type":"Bearer"}').reason).toBe('bad_response');
    expect(failure(200, '{"access_token":"a","token_type":"mac"}').reason).toBe('bad_response');
  });

  it('keeps partner error descriptions short and on one line', () => {
    const err = failure(
      400,
      JSON.stringify({ error: 'invalid_scope', error_description: `line one\nline two ${'x'.repeat(500)}` }),
    );
    expect(err.description).toMatch(/^line one line two x+$/); // whole, so secrets in it can be cut out first
    const shown = err.withoutSecrets(['line two']);
    expect(shown.description).toMatch(/^line one \[redacted\] x+…$/);
    expect(shown.description?.length).toBeLessThanOrEqual(201);
  });

  it('parses Retry-After as seconds or as an HTTP date', () => {
    expect(parseRetryAfter('120', NOW)).toBe(120);
    expect(parseRetryAfter(new Date(NOW + 30_000).toUTCString(), NOW)).toBe(30);
    expect(parseRetryAfter('soon', NOW)).toBeUndefined();
    expect(parseRetryAfter(undefined, NOW)).toBeUndefined();
  });
});

describe('client authentication (RFC 6749 §2.3.1)', () => {
  it('form-urlencodes id and secret before Basic encoding', async () => {
    const parts = { headers: {} as Record<string, string>, body: new URLSearchParams() };
    await clientSecretBasic('my client', 'p@ss:w%rd')(parts);
    expect(Buffer.from((parts.headers['authorization'] ?? '').slice(6), 'base64').toString()).toBe(
      'my+client:p%40ss%3Aw%25rd',
    );
    expect(parts.body.toString()).toBe('');
  });

  it('puts credentials in the body for client_secret_post', async () => {
    const parts = {
      headers: {} as Record<string, string>,
      body: new URLSearchParams({ grant_type: 'client_credentials' }),
    };
    await clientSecretPost('id', 's&cret')(parts);
    expect(parts.body.toString()).toBe('grant_type=client_credentials&client_id=id&client_secret=s%26cret');
    expect(parts.headers).toEqual({});
  });
});
