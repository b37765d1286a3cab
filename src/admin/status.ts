import type { TokenProviderStatus, TokenState } from '../tokens/provider.js';

/** A circuit breaker's state (issue 21 part 3). */
export type BreakerState = 'closed' | 'half_open' | 'open';

/** The last configuration (re)load, as a reloader reports it; times are epoch ms. */
export interface ReloadInfo {
  readonly file?: string;
  readonly lastAttemptAt?: number;
  readonly lastSuccessAt?: number;
  /** A stable word (`start`, `success`, `rejected`, ...), never a message: the page shows it as is. */
  readonly lastOutcome?: string;
  /** What asked for the last reload: `SIGHUP`, or the changed files' paths (never their content). */
  readonly lastTrigger?: string;
  /** Why the last reload was rejected or failed, as logged in config_reload_rejected; none after a success. */
  readonly lastProblems?: readonly string[];
}

/** One upstream as the status page lists it. */
export interface UpstreamTokens {
  readonly name: string;
  /** `tenants`: one token source per tenant; `per_caller`: token exchange, one per caller (none listed). */
  readonly tokenSource: 'upstream' | 'tenants' | 'per_caller';
  /** What each token source's status() said: states and times, never a token. */
  readonly tokens: readonly TokenProviderStatus[];
}

/**
 * Everything the status page is built from. Without breakerState() every breaker reads
 * `not_configured`; without reload() the config's reload fields are null. The app supplies a
 * reload() of its own (the start-up load, outcome `start`, then App.reload's outcomes), which
 * AppOptions.statusHooks replaces along with breakerState().
 */
export interface StatusSources {
  /** Epoch ms, the injected clock. */
  now(): number;
  /** The current configuration's upstreams, in the config's order. */
  upstreams(): readonly UpstreamTokens[];
  /** The shared token cache (Redis): true up, false down, undefined when not configured. */
  sharedCacheUp(): boolean | undefined;
  /** The config file the process was started with, when it came from a file. */
  readonly configFile?: string | undefined;
  /** An upstream's breaker; undefined when it has none. */
  breakerState?(upstream: string): BreakerState | undefined;
  /** The last (re)load of the configuration; undefined when none is known. */
  reload?(): ReloadInfo | undefined;
}

/** One token source: an upstream's own, or one tenant's. Absent values are null: every key is always there. */
export interface TokenReport {
  readonly tenant: string | null;
  readonly state: TokenState;
  readonly expiresInSeconds: number | null;
  readonly lastRefreshAt: string | null;
  readonly lastRefreshDurationMs: number | null;
  readonly lastFailureReason: string | null;
  readonly lastFailureAt: string | null;
}

export interface UpstreamReport {
  readonly name: string;
  readonly breaker: BreakerState | 'not_configured';
  readonly tokenSource: UpstreamTokens['tokenSource'];
  readonly tokens: readonly TokenReport[];
}

/** GET /status; the HTML page at GET / is rendered from this same object. */
export interface StatusReport {
  readonly generatedAt: string;
  readonly sharedCache: 'up' | 'down' | 'not_configured';
  readonly config: {
    readonly file: string | null;
    readonly lastReloadAt: string | null;
    readonly lastReloadOutcome: string | null;
    /** What asked for the last reload: `SIGHUP`, or the changed files' paths (never their content). */
    readonly lastReloadTrigger: string | null;
    readonly lastSuccessfulReloadAt: string | null;
  };
  readonly upstreams: readonly UpstreamReport[];
}

function iso(ms: number | undefined): string | null {
  return ms === undefined ? null : new Date(ms).toISOString();
}

/**
 * Picks named fields only: whatever else a status object may carry later never reaches the page
 * by accident (the page must never show a token, secret or assertion).
 */
function tokenReport(s: TokenProviderStatus): TokenReport {
  return {
    tenant: s.tenant ?? null,
    state: s.state,
    expiresInSeconds: s.expiresInSeconds ?? null,
    lastRefreshAt: iso(s.lastRefreshAt),
    lastRefreshDurationMs: s.lastRefreshDurationMs ?? null,
    lastFailureReason: s.lastFailureReason ?? null,
    lastFailureAt: iso(s.lastFailureAt),
  };
}

/** The status report: a pure function of what the sources say now. */
export function buildStatus(sources: StatusSources): StatusReport {
  const up = sources.sharedCacheUp();
  const reload = sources.reload?.();
  return {
    generatedAt: new Date(sources.now()).toISOString(),
    sharedCache: up === undefined ? 'not_configured' : up ? 'up' : 'down',
    config: {
      file: reload?.file ?? sources.configFile ?? null,
      lastReloadAt: iso(reload?.lastAttemptAt),
      lastReloadOutcome: reload?.lastOutcome ?? null,
      lastReloadTrigger: reload?.lastTrigger ?? null,
      lastSuccessfulReloadAt: iso(reload?.lastSuccessAt),
    },
    upstreams: sources.upstreams().map((u) => ({
      name: u.name,
      breaker: sources.breakerState?.(u.name) ?? 'not_configured',
      tokenSource: u.tokenSource,
      tokens: u.tokens.map(tokenReport),
    })),
  };
}
