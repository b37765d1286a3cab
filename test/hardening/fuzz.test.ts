import { isIP } from 'node:net';
import fc from 'fast-check';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { downstreamResponseHeaders, upstreamRequestHeaders, type ForwardedInfo } from '../../src/proxy/headers.js';
import { parseAbsoluteForm, urlHost } from '../../src/proxy/request-target.js';
import { ReverseRouter } from '../../src/proxy/router.js';
import { testPki } from '../helpers/certs.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

/**
 * Property-based tests (fast-check) of request routing and header handling (issue 7). Bounded:
 * a fixed number of runs each, the whole file in a few seconds, so it runs in CI with `npm test`.
 * A failure prints the smallest counterexample and the seed to replay it.
 */

// RFC 9110 §7.6.1: the spec the header functions must meet, written out independently of them.
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];
const SET_BY_PROXY = ['host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id'];

/** Percent-decodes every %XX (malformed escapes stay as they are). */
function percentDecode(s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

const pathOf = (target: string) => (target.includes('?') ? target.slice(0, target.indexOf('?')) : target);

describe('reverse routing never leaves the prefix', () => {
  const up = (name: string, basePath: string) => ({ name, basePath });
  const router = new ReverseRouter([
    { prefix: '/partner', upstream: up('partner', '/api/v1') },
    { prefix: '/partner/v2', upstream: up('nested', '') },
    { prefix: '/r', upstream: up('root', '/base') },
  ]);
  /** Path-ish pieces that matter for escapes, mixed with plain characters. */
  const piece = fc.oneof(
    fc.constantFrom(
      '/',
      '.',
      '..',
      '%2e',
      '%2E',
      '%2f',
      '%2F',
      '%5c',
      '\\',
      '%',
      '%25',
      '?',
      '#',
      ';',
      'a',
      'v2',
      '%00',
      '~',
      '%2e%2e',
      '..;',
    ),
    fc.string({ unit: fc.constantFrom(...'abc.%/?=&-_~2eEfF'.split('')), maxLength: 6 }),
  );
  const rest = fc.array(piece, { maxLength: 12 }).map((parts) => parts.join(''));
  const prefix = fc.constantFrom('/partner', '/partner/v2', '/r');

  it('maps every path under a prefix to the upstream base path, with no ".." segment after percent-decoding', () => {
    fc.assert(
      fc.property(prefix, rest, (p, r) => {
        const url = `${p}${r}`;
        const route = router.route(url);
        if (route === null || route === undefined) return;
        const base = route.upstream.basePath;
        expect(route.path.startsWith(`${base}/`)).toBe(true);
        const segments = percentDecode(pathOf(route.path)).split('/');
        expect(segments, `${url} -> ${route.path}`).not.toContain('..');
      }),
      // Known shapes first, every run: an encoded slash next to dots.
      {
        numRuns: 1000,
        examples: [
          ['/partner', '/..%2fadmin'],
          ['/partner', '/%2e%2e%2fadmin'],
          ['/r', '/a/..%2F..%2Fetc'],
        ],
      },
    );
  });

  it('maps no path outside the base path as a WHATWG URL parser reads it ("\\" as "/", "#" ending the path)', () => {
    fc.assert(
      fc.property(prefix, rest, (p, r) => {
        const route = router.route(`${p}${r}`);
        if (route === null || route === undefined) return;
        // Appended to an origin (not resolved against it): a path starting with "//" stays a path.
        const resolved = new URL(`http://partner.invalid${route.path}`).pathname;
        expect(resolved.startsWith(`${route.upstream.basePath}/`), `${p}${r} -> ${route.path} -> ${resolved}`).toBe(
          true,
        );
      }),
      {
        numRuns: 1000,
        examples: [
          ['/partner', '/..\\admin'],
          ['/r', '/..\\..\\x'],
          ['/partner/v2', '//'],
          ['/partner', '/%2e%2e#'],
          ['/partner', '/..#x'],
        ],
      },
    );
  });

  it('keeps the rest of the path exactly as sent (no decoding, no normalisation), after the longest prefix', () => {
    const prefixes = ['/partner/v2', '/partner', '/r'];
    fc.assert(
      fc.property(prefix, rest, (p, r) => {
        const url = `${p}${r}`;
        const route = router.route(url);
        const matched = prefixes.find((pre) => url.startsWith(pre) && /^($|[/?])/.test(url.slice(pre.length)));
        expect(route === undefined).toBe(matched === undefined);
        if (route === null || route === undefined || matched === undefined) return;
        const tail = url.slice(matched.length);
        expect(route.path).toBe(route.upstream.basePath + (tail === '' || tail.startsWith('?') ? `/${tail}` : tail));
      }),
      { numRuns: 500 },
    );
  });
});

describe('absolute-form targets', () => {
  const hostChar = fc.constantFrom(...'abcxyz019.-:[]@/%? \t#\\_'.split(''));
  const numericPart = fc.oneof(
    fc.nat({ max: 4_294_967_295 }).map(String),
    fc.nat({ max: 255 }).map((n) => `0x${n.toString(16)}`),
    fc.nat({ max: 255 }).map((n) => `0${n.toString(8)}`),
    fc.constant('0x'),
  );
  const numericHost = fc.array(numericPart, { minLength: 1, maxLength: 4 }).map((parts) => parts.join('.'));
  const authority = fc.oneof(
    fc.string({ unit: hostChar, maxLength: 24 }),
    numericHost,
    fc
      .tuple(
        fc.constantFrom('api.partner.example', '[::1]', '127.0.0.1', 'user@host', 'a%2eb'),
        fc.constantFrom('', ':80', ':8443', ':0', ':99999', ':x'),
      )
      .map(([h, p]) => h + p),
  );
  const target = fc
    .tuple(
      fc.constantFrom('http://', 'HTTP://', 'https://', 'http:/'),
      authority,
      fc.constantFrom('', '/', '/x?y', '?q', '/a@b', '#f'),
    )
    .map(([s, a, p]) => s + a + p);

  it('never returns a host containing "@", "/", white space or "%"', () => {
    fc.assert(
      fc.property(fc.oneof(target, fc.string({ maxLength: 40 })), (t) => {
        const parsed = parseAbsoluteForm(t);
        if (parsed === null) return;
        expect(parsed.host).not.toMatch(/[@/%\s]/);
        expect(parsed.port).toBeGreaterThanOrEqual(1);
        expect(parsed.port).toBeLessThanOrEqual(65_535);
        expect(parsed.path.startsWith('/')).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });

  it('hands the egress policy the host that undici will connect to: a name a URL parser reads as an IP address is that IP', () => {
    fc.assert(
      fc.property(target, (t) => {
        const parsed = parseAbsoluteForm(t);
        if (parsed === null) return;
        // undici parses the passthrough origin with the WHATWG URL parser, then connects to its hostname.
        let canonical: string;
        try {
          canonical = new URL(`http://${urlHost(parsed.host)}:${parsed.port}`).hostname.replace(/^\[|\]$/g, '');
        } catch {
          return; // undici refuses the origin: nothing is connected to
        }
        if (isIP(canonical) !== 0)
          expect(isIP(parsed.host), `${t}: the policy sees "${parsed.host}", undici connects to ${canonical}`).not.toBe(
            0,
          );
      }),
      { numRuns: 1000, examples: [['http://127.1/'], ['http://2130706433/'], ['http://0x/']] },
    );
  });
});

describe('request headers towards the target', () => {
  const names = fc.oneof(
    fc.constantFrom(
      'Host',
      'host',
      'Connection',
      'connection',
      'Keep-Alive',
      'Proxy-Connection',
      'Proxy-Authorization',
      'Proxy-Authenticate',
      'TE',
      'Trailer',
      'Transfer-Encoding',
      'Upgrade',
      'Authorization',
      'AUTHORIZATION',
      'authorization',
      'X-Forwarded-For',
      'x-forwarded-proto',
      'X-Forwarded-Host',
      'X-Request-Id',
      'Accept',
      'Cookie',
      'X-Hop',
      'x-hop',
      'Content-Type',
    ),
    fc.stringMatching(/^[A-Za-z][A-Za-z0-9!#$&'*+.^_`|~-]{0,12}$/),
  );
  const visible = fc.string({
    unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
    maxLength: 20,
  });
  const header = fc.oneof(
    fc.tuple(names, visible),
    // Connection naming other fields, hop-by-hop or not.
    fc.tuple(
      fc.constant('Connection'),
      fc.array(names, { maxLength: 3 }).map((n) => n.join(', ')),
    ),
  );
  const raw = fc.array(header, { maxLength: 16 }).map((pairs) => pairs.flat());
  const token = fc.option(
    fc.string({ minLength: 1, maxLength: 20 }).map((t) => `Bearer ${t}`),
    { nil: undefined },
  );
  const fwd: ForwardedInfo = { clientAddress: '10.9.8.7', proto: 'https', requestId: 'req-1' };

  const lowerNames = (flat: readonly string[]) => flat.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
  const pairs = (flat: readonly string[]) =>
    flat.flatMap((v, i) => (i % 2 === 0 ? [[v, flat[i + 1] as string] as const] : []));
  const connectionNamed = (flat: readonly string[]) =>
    new Set(
      pairs(flat)
        .filter(([n]) => n.toLowerCase() === 'connection')
        .flatMap(([, v]) =>
          v
            .split(',')
            .map((s) => s.trim().toLowerCase())
            .filter((s) => s !== ''),
        ),
    );

  it('never forwards a hop-by-hop field, and has exactly one Authorization, the token, when a token is given', () => {
    fc.assert(
      fc.property(raw, token, (input, auth) => {
        const out = upstreamRequestHeaders(input, fwd, auth);
        expect(out.length % 2).toBe(0);
        const outNames = lowerNames(out);
        for (const name of HOP_BY_HOP) expect(outNames).not.toContain(name);
        const authorizations = pairs(out).filter(([n]) => n.toLowerCase() === 'authorization');
        if (auth !== undefined) {
          expect(authorizations).toEqual([['authorization', auth]]);
        } else {
          // Egress passthrough: the client's own Authorization is the client's business, unchanged.
          const named = connectionNamed(input);
          const clientOwn = named.has('authorization')
            ? []
            : pairs(input).filter(([n]) => n.toLowerCase() === 'authorization');
          expect(authorizations).toEqual(clientOwn);
        }
        // The proxy's own fields appear exactly once each.
        for (const name of ['x-forwarded-for', 'x-forwarded-proto', 'x-request-id'])
          expect(outNames.filter((n) => n === name)).toHaveLength(1);
        expect(outNames.filter((n) => n === 'host')).toHaveLength(0);
      }),
      { numRuns: 500 },
    );
  });

  it('passes every other client field through unchanged and in order', () => {
    fc.assert(
      fc.property(raw, token, (input, auth) => {
        const out = upstreamRequestHeaders(input, fwd, auth);
        const named = connectionNamed(input);
        const kept = pairs(input).filter(([n]) => {
          const l = n.toLowerCase();
          return (
            !HOP_BY_HOP.includes(l) &&
            !SET_BY_PROXY.includes(l) &&
            !named.has(l) &&
            !(auth !== undefined && l === 'authorization')
          );
        });
        expect(pairs(out).slice(0, kept.length)).toEqual(kept);
        // After them only the fields the proxy sets itself.
        const added = lowerNames(out).slice(kept.length);
        for (const name of added)
          expect([
            'x-forwarded-for',
            'x-forwarded-proto',
            'x-forwarded-host',
            'x-request-id',
            'authorization',
          ]).toContain(name);
        const priorFor = pairs(input)
          .filter(([n]) => n.toLowerCase() === 'x-forwarded-for')
          .map(([, v]) => v);
        expect(pairs(out).find(([n]) => n === 'x-forwarded-for')?.[1]).toBe(
          [...priorFor, fwd.clientAddress].join(', '),
        );
      }),
      { numRuns: 500 },
    );
  });
});

describe('response headers towards the client', () => {
  const name = fc.oneof(
    fc.constantFrom(
      'Connection',
      'Keep-Alive',
      'Transfer-Encoding',
      'Upgrade',
      'Proxy-Authenticate',
      'Trailer',
      'TE',
      'Set-Cookie',
      'Content-Type',
      'X-Hop',
      'WWW-Authenticate',
      'Location',
    ),
    fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,10}$/),
  );
  const value = fc.string({
    unit: fc.integer({ min: 0x20, max: 0xff }).map((c) => String.fromCharCode(c)),
    maxLength: 16,
  });
  const header = fc.oneof(
    fc.tuple(name, value),
    fc.tuple(
      fc.constant('Connection'),
      fc.array(name, { maxLength: 3 }).map((n) => n.join(',')),
    ),
  );

  it('preserves every non-hop-by-hop pair, repeated ones included, in order', () => {
    fc.assert(
      fc.property(fc.array(header, { maxLength: 16 }), (list) => {
        const raw = list.flat().map((s) => Buffer.from(s, 'latin1'));
        const named = new Set(
          list
            .filter(([n]) => n.toLowerCase() === 'connection')
            .flatMap(([, v]) => v.split(',').map((s) => s.trim().toLowerCase())),
        );
        const expected = list
          .filter(([n]) => !HOP_BY_HOP.includes(n.toLowerCase()) && !named.has(n.toLowerCase()))
          .flat();
        expect(downstreamResponseHeaders(raw)).toEqual(expected);
      }),
      { numRuns: 500 },
    );
  });
});

describe('a live proxy under random valid requests', () => {
  const pki = testPki();
  let tokenServer: TokenServer;
  let partner: PartnerApi;
  let proxy: RunningProxy;
  const client = new Agent({ connections: 8 });

  beforeAll(async () => {
    tokenServer = await startTokenServer();
    partner = await startVerifyingPartner(tokenServer);
    const auth = {
      type: 'client_credentials',
      tokenUrl: tokenServer.tokenUrl,
      clientId: 'fuzz-client',
      clientSecret: 'fuzz-secret',
    };
    proxy = await startProxy({
      upstreams: [
        { name: 'partner', target: `${partner.url}/api`, pathPrefix: '/partner', ca: pki.caFile, auth },
        { name: 'plain', target: partner.url, pathPrefix: '/plain', ca: pki.caFile, auth },
      ],
      accessLog: false,
    });
  });

  afterAll(async () => {
    await proxy.close();
    await partner.close();
    await tokenServer.stop();
    await client.close();
  });

  // RFC 3986 pchar: unreserved, pct-encoded, sub-delims, ":" and "@".
  const pchar = fc.oneof(
    fc.constantFrom(..."abcXYZ0189-._~!$&'()*+,;=:@".split('')),
    fc.nat({ max: 255 }).map((n) => `%${n.toString(16).padStart(2, '0')}`),
  );
  const segment = fc.oneof(
    fc.string({ unit: pchar, maxLength: 8 }),
    fc.constantFrom('status/200', 'status/404', 'status/500', 'status/503', '.', '..', '%2e%2e'),
  );
  const path = fc
    .tuple(
      fc.constantFrom('/partner', '/plain', '/partner/v2', '/nothing', '/', '/plainer'),
      fc.array(segment, { maxLength: 5 }),
      fc.option(fc.string({ unit: pchar, maxLength: 10 }), { nil: undefined }),
    )
    .map(([p, segs, q]) =>
      `${p}${segs.map((s) => `/${s}`).join('')}${q === undefined ? '' : `?${q}`}`.replace(/^\/\//, '/'),
    );
  const headerName = fc.oneof(
    fc.stringMatching(/^[A-Za-z][A-Za-z0-9!#$&'*+.^_`|~-]{0,12}$/),
    fc.constantFrom('authorization', 'proxy-authorization', 'x-forwarded-for', 'x-request-id', 'cookie', 'accept'),
  );
  const headerValue = fc.string({
    unit: fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)),
    maxLength: 30,
  });
  const forbidden = new Set([
    'connection',
    'keep-alive',
    'transfer-encoding',
    'upgrade',
    'expect',
    'host',
    'content-length',
    'te',
    'proxy-connection',
    'trailer',
  ]);
  const headers = fc
    .dictionary(headerName, headerValue, { maxKeys: 6 })
    .map((h) => Object.fromEntries(Object.entries(h).filter(([k]) => !forbidden.has(k.toLowerCase()))));
  const method = fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS');

  it('answers 5xx only when the partner did, and stays up', async () => {
    await fc.assert(
      fc.asyncProperty(method, path, headers, fc.uint8Array({ maxLength: 256 }), async (m, p, h, body) => {
        const res = await client.request({
          origin: proxy.url,
          path: p,
          method: m,
          headers: h,
          body: m === 'GET' || m === 'HEAD' ? null : Buffer.from(body),
        });
        await res.body.dump();
        if (res.statusCode >= 500) {
          // The partner's own 5xx carry its marker; the proxy's would carry Proxy-Status.
          expect(res.headers['x-partner-reason'], `${m} ${p} -> ${res.statusCode}`).toBe('scripted');
          expect(res.headers['proxy-status']).toBeUndefined();
        }
      }),
      { numRuns: 150 },
    );
    const good = await client.request({ origin: proxy.url, path: '/partner/after-fuzz', method: 'GET' });
    expect(good.statusCode).toBe(200);
    expect(await good.body.json()).toMatchObject({ path: '/api/after-fuzz', client: 'fuzz-client' });
    expect(proxy.logs.filter((l) => /"level":(50|60)/.test(l) || l.includes('"event":"internal_error"'))).toEqual([]);
  });
});
