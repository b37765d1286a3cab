import { describe, expect, it } from 'vitest';
import { downstreamResponseHeaders, upstreamRequestHeaders } from '../../src/proxy/headers.js';
import { ReverseRouter } from '../../src/proxy/router.js';

const fwd = { clientAddress: '10.1.2.3', proto: 'http' as const };

describe('request headers towards the target', () => {
  it('drops hop-by-hop fields, fields named in Connection, and the client Authorization; sets the token and X-Forwarded-*', () => {
    const out = upstreamRequestHeaders(
      [
        'Host',
        'proxy.local:8080',
        'Connection',
        'keep-alive, X-Secret-Hop',
        'X-Secret-Hop',
        '1',
        'Keep-Alive',
        'timeout=5',
        'TE',
        'trailers',
        'Transfer-Encoding',
        'chunked',
        'Proxy-Authorization',
        'Basic eA==',
        'Authorization',
        'Basic Y2xpZW50',
        'Accept',
        'application/json',
        'X-Forwarded-For',
        '192.0.2.1',
        'Cookie',
        'a=1',
        'Cookie',
        'b=2',
      ],
      fwd,
      'Bearer tkn',
    );
    expect(out).toEqual([
      'Accept',
      'application/json',
      'Cookie',
      'a=1',
      'Cookie',
      'b=2',
      'x-forwarded-for',
      '192.0.2.1, 10.1.2.3',
      'x-forwarded-proto',
      'http',
      'x-forwarded-host',
      'proxy.local:8080',
      'authorization',
      'Bearer tkn',
    ]);
  });

  it('keeps exactly one Authorization even when the client sent several', () => {
    const out = upstreamRequestHeaders(['authorization', 'a', 'AUTHORIZATION', 'b'], fwd, 'Bearer t');
    expect(out.filter((_, i) => i % 2 === 0 && out[i]?.toLowerCase() === 'authorization')).toHaveLength(1);
  });
});

describe('response headers towards the client', () => {
  it('keeps repeated fields separate and drops hop-by-hop ones', () => {
    const raw = [
      'Set-Cookie',
      'a=1',
      'Set-Cookie',
      'b=2',
      'Connection',
      'close, X-Hop',
      'X-Hop',
      'y',
      'Transfer-Encoding',
      'chunked',
      'Content-Type',
      'text/plain',
    ].map((s) => Buffer.from(s));
    expect(downstreamResponseHeaders(raw)).toEqual([
      'Set-Cookie',
      'a=1',
      'Set-Cookie',
      'b=2',
      'Content-Type',
      'text/plain',
    ]);
  });

  it('drops a field named by a Connection value of one name, wherever the two stand', () => {
    const raw = [
      'X-Late',
      'z',
      'Keep-Alive',
      'timeout=5',
      'CONNECTION',
      ' X-Late ',
      'Connection',
      'keep-alive',
      'Content-Length',
      '2',
    ].map((s) => Buffer.from(s));
    expect(downstreamResponseHeaders(raw)).toEqual(['Content-Length', '2']);
  });
});

describe('reverse routing', () => {
  const up = (name: string, basePath = '') => ({ name, basePath });
  const router = new ReverseRouter([
    { prefix: '/partner', upstream: up('partner') },
    { prefix: '/partner/v2', upstream: up('partner-v2', '/api') },
  ]);

  it('picks the longest prefix at a segment boundary and maps the rest onto the target path', () => {
    expect(router.route('/partner/x?y=1')).toMatchObject({ upstream: { name: 'partner' }, path: '/x?y=1' });
    expect(router.route('/partner')).toMatchObject({ path: '/' });
    expect(router.route('/partner?q')).toMatchObject({ path: '/?q' });
    expect(router.route('/partner/v2/orders')).toMatchObject({ upstream: { name: 'partner-v2' }, path: '/api/orders' });
    expect(router.route('/partnerx')).toBeUndefined();
    expect(router.route('/other')).toBeUndefined();
  });

  it('refuses dot segments, plain or percent-encoded, that could climb out of the prefix', () => {
    for (const path of [
      '/partner/../admin',
      '/partner/%2e%2e/admin',
      '/partner/.%2E/x',
      '/partner/./x',
      '/partner/a/..',
    ]) {
      expect(router.route(path)).toBeNull();
    }
    expect(router.route('/partner/file.v1..json')).toMatchObject({ path: '/file.v1..json' });
  });
});
