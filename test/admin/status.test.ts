import { describe, expect, it } from 'vitest';
import { ReloadRecord } from '../../src/admin/reload-record.js';
import { escapeHtml, renderStatusPage } from '../../src/admin/status-page.js';
import { buildStatus, type StatusSources } from '../../src/admin/status.js';
import { upstreamTokens } from '../../src/admin/upstream-tokens.js';
import type { TokenProviderStatus } from '../../src/tokens/provider.js';

const NOW = Date.UTC(2026, 11, 8, 2, 0, 0);

function sources(over: Partial<StatusSources> = {}): StatusSources {
  return {
    now: () => NOW,
    upstreams: () => [
      {
        name: 'partner',
        tokenSource: 'upstream',
        tokens: [
          {
            upstream: 'partner',
            state: 'valid',
            expiresInSeconds: 287,
            lastRefreshAt: NOW - 13_000,
            lastRefreshDurationMs: 42,
          },
        ],
      },
      {
        name: 'multi',
        tokenSource: 'tenants',
        tokens: [
          {
            upstream: 'multi',
            tenant: 'a',
            state: 'failing',
            lastError: 'invalid_client',
            lastFailureReason: 'invalid_client',
            lastFailureAt: NOW - 2_000,
          },
        ],
      },
      { name: 'exchange', tokenSource: 'per_caller', tokens: [] },
    ],
    sharedCacheUp: () => undefined,
    ...over,
  };
}

describe('buildStatus', () => {
  it('lists every upstream and tenant with every key present, absent values as null, times as ISO text', () => {
    expect(buildStatus(sources({ configFile: '/etc/token-proxy.yaml' }))).toEqual({
      generatedAt: '2026-12-08T02:00:00.000Z',
      sharedCache: 'not_configured',
      config: {
        file: '/etc/token-proxy.yaml',
        lastReloadAt: null,
        lastReloadOutcome: null,
        lastReloadTrigger: null,
        lastSuccessfulReloadAt: null,
      },
      upstreams: [
        {
          name: 'partner',
          breaker: 'not_configured',
          tokenSource: 'upstream',
          tokens: [
            {
              tenant: null,
              state: 'valid',
              expiresInSeconds: 287,
              lastRefreshAt: '2026-12-08T01:59:47.000Z',
              lastRefreshDurationMs: 42,
              lastFailureReason: null,
              lastFailureAt: null,
            },
          ],
        },
        {
          name: 'multi',
          breaker: 'not_configured',
          tokenSource: 'tenants',
          tokens: [
            {
              tenant: 'a',
              state: 'failing',
              expiresInSeconds: null,
              lastRefreshAt: null,
              lastRefreshDurationMs: null,
              lastFailureReason: 'invalid_client',
              lastFailureAt: '2026-12-08T01:59:58.000Z',
            },
          ],
        },
        { name: 'exchange', breaker: 'not_configured', tokenSource: 'per_caller', tokens: [] },
      ],
    });
  });

  it('takes breaker states, the shared cache and the reload from its hooks', () => {
    const report = buildStatus(
      sources({
        sharedCacheUp: () => false,
        configFile: '/ignored/when/the/reloader/names/one.yaml',
        breakerState: (u) => (u === 'partner' ? 'open' : u === 'multi' ? 'half_open' : undefined),
        reload: () => ({
          file: '/run/config/token-proxy.yaml',
          lastAttemptAt: NOW - 5_000,
          lastSuccessAt: NOW - 60_000,
          lastOutcome: 'rejected',
          lastTrigger: '/run/secrets/partner/client-secret',
        }),
      }),
    );
    expect(report.sharedCache).toBe('down');
    expect(report.upstreams.map((u) => u.breaker)).toEqual(['open', 'half_open', 'not_configured']);
    expect(report.config).toEqual({
      file: '/run/config/token-proxy.yaml',
      lastReloadAt: '2026-12-08T01:59:55.000Z',
      lastReloadOutcome: 'rejected',
      lastReloadTrigger: '/run/secrets/partner/client-secret',
      lastSuccessfulReloadAt: '2026-12-08T01:59:00.000Z',
    });
    expect(buildStatus(sources({ sharedCacheUp: () => true })).sharedCache).toBe('up');
  });

  it('copies named fields only: anything else a status object carries stays off the report', () => {
    const leaky = {
      upstream: 'partner',
      state: 'valid',
      expiresInSeconds: 10,
      token: 'eyJ-secret-token',
      assertion: { file: '/var/run/secrets/token', sub: 'system:serviceaccount:x' },
    } as unknown as TokenProviderStatus;
    const report = buildStatus(
      sources({ upstreams: () => [{ name: 'partner', tokenSource: 'upstream', tokens: [leaky] }] }),
    );
    const text = JSON.stringify(report) + renderStatusPage(report);
    expect(text).not.toContain('eyJ-secret-token');
    expect(text).not.toContain('serviceaccount');
    expect(text).not.toContain('/var/run/secrets/token');
  });
});

describe('upstreamTokens', () => {
  const source = (upstream: string, tenant?: string) => ({
    upstream,
    status: (): TokenProviderStatus => ({ upstream, ...(tenant === undefined ? {} : { tenant }), state: 'none' }),
  });

  it('groups sources under their upstream in config order and names token exchange per caller', () => {
    const listed = upstreamTokens(
      [{ name: 'exchange' }, { name: 'multi', tenants: {} }, { name: 'partner' }],
      [source('partner'), source('multi', 'a'), source('multi', 'b')],
    );
    expect(listed.map((u) => [u.name, u.tokenSource, u.tokens.map((t) => t.tenant ?? '-')])).toEqual([
      ['exchange', 'per_caller', []],
      ['multi', 'tenants', ['a', 'b']],
      ['partner', 'upstream', ['-']],
    ]);
  });
});

describe('ReloadRecord', () => {
  it('counts the start as a reload, then records each outcome; a rejection keeps the last success', () => {
    const record = new ReloadRecord('/etc/tp.yaml', 1_000);
    expect(record.info()).toEqual({
      file: '/etc/tp.yaml',
      lastAttemptAt: 1_000,
      lastSuccessAt: 1_000,
      lastOutcome: 'start',
    });
    record.record('success', 2_000);
    record.record('rejected', 3_000);
    expect(record.info()).toEqual({
      file: '/etc/tp.yaml',
      lastAttemptAt: 3_000,
      lastSuccessAt: 2_000,
      lastOutcome: 'rejected',
    });
  });

  it('keeps what triggered the last reload, and the problems of a rejected one until a reload succeeds', () => {
    const record = new ReloadRecord('/etc/tp.yaml', 1_000);
    const problems = ['upstreams[0].auth.clientSecretFile: cannot read /s/secret (ENOENT)'];
    record.record('rejected', 2_000, { trigger: '/s/secret', problems });
    expect(record.info()).toMatchObject({ lastOutcome: 'rejected', lastTrigger: '/s/secret', lastProblems: problems });
    record.record('success', 3_000, { trigger: 'SIGHUP' });
    expect(record.info()).toEqual({
      file: '/etc/tp.yaml',
      lastAttemptAt: 3_000,
      lastSuccessAt: 3_000,
      lastOutcome: 'success',
      lastTrigger: 'SIGHUP',
    });
  });
});

describe('renderStatusPage', () => {
  it('shows one row per upstream token source, with the values of the report', () => {
    const html = renderStatusPage(buildStatus(sources({ breakerState: () => 'closed' })));
    expect(html).toContain('<title>token-proxy status</title>');
    expect(html.match(/<tr data-upstream=/g)).toHaveLength(3);
    expect(html).toContain('<tr data-upstream="multi" data-tenant="a">');
    expect(html).toContain('<td data-field="expiresIn">287 s</td>');
    expect(html).toContain('<td data-field="lastRefreshDuration">42 ms</td>');
    expect(html).toContain(
      '<td data-field="lastRefreshAt"><time datetime="2026-12-08T01:59:47.000Z">2026-12-08T01:59:47.000Z</time> <span class="ago">(13 s ago)</span></td>',
    );
    expect(html).toContain('<td data-field="lastFailureReason">invalid_client</td>');
    expect(html).toContain('<td data-field="state" class="state per_caller">per caller</td>');
    expect(html).toContain('<td data-field="breaker" class="breaker closed">closed</td>');
    expect(html).not.toMatch(/<script|<link|src=|href=/i);
  });

  it('escapes every value: an upstream, tenant, reason, outcome or file with markup shows as text', () => {
    const evil = '<script>alert("x")</script>&\'';
    const escaped = '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;';
    const html = renderStatusPage(
      buildStatus({
        now: () => NOW,
        sharedCacheUp: () => true,
        configFile: evil,
        reload: () => ({ lastOutcome: evil, lastTrigger: evil }),
        breakerState: () => evil as 'open',
        upstreams: () => [
          {
            name: evil,
            tokenSource: 'tenants',
            tokens: [{ upstream: evil, tenant: evil, state: 'failing', lastFailureReason: evil, lastFailureAt: NOW }],
          },
        ],
      }),
    );
    expect(html).not.toContain('<script');
    expect(html).not.toContain('"x"');
    // upstream (attribute and cell), tenant (attribute and cell), reason, breaker (class and cell), file, outcome, trigger
    expect(html.split(escaped).length - 1).toBe(10);
  });

  it('escapes the five characters HTML gives meaning, and nothing else', () => {
    expect(escapeHtml(`a&b<c>d"e'f é/=`)).toBe('a&amp;b&lt;c&gt;d&quot;e&#39;f é/=');
  });
});
