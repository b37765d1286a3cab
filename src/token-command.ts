import { decodeJwt, decodeProtectedHeader } from 'jose';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { Config } from './config/load.js';
import { describeAuth } from './config/summary.js';
import { TokenError } from './errors.js';
import type { AssertionInfo } from './oauth/assertion-file.js';
import { createMetrics } from './metrics.js';
import { boundCertificates } from './tokens/certificate-binding.js';
import { TokenCache } from './tokens/token-cache.js';
import { systemClock } from './tokens/clock.js';
import { TokenProviders } from './tokens/provider-registry.js';
import { UpstreamFactory } from './upstreams.js';

export interface TokenCommandOptions {
  readonly upstream: string;
  readonly tenant: string | undefined;
  readonly showToken: boolean;
}

/** A JWT's header and payload, never its signature; undefined for opaque tokens. */
function jwtParts(token: string): { header: unknown; payload: unknown } | undefined {
  try {
    return { header: decodeProtectedHeader(token), payload: decodeJwt(token) };
  } catch {
    return undefined;
  }
}

/** A platform-issued assertion as the next token request would send it: its claims, never its text. */
function assertionLine(a: AssertionInfo): string {
  const claims = [
    a.iss === undefined ? undefined : `iss ${a.iss}`,
    a.sub === undefined ? undefined : `sub ${a.sub}`,
    a.aud === undefined ? undefined : `aud ${a.aud}`,
    a.expiresAt === undefined ? undefined : `expires ${a.expiresAt} (in ${a.expiresInSeconds} s)`,
    a.problem === undefined ? undefined : `NOT USABLE: ${a.problem}`,
  ].filter((x) => x !== undefined);
  return `assertion    ${a.file}: ${claims.join(', ')}`;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/**
 * `token-proxy token UPSTREAM`: obtains a token exactly as the proxy would (same grant, client
 * authentication, CA and certificates) and describes it, for "works in Postman, not in code".
 * Returns the text to print and the exit code.
 */
export async function runTokenCommand(config: Config, o: TokenCommandOptions): Promise<{ text: string; code: number }> {
  const u = config.upstreams.find((x) => x.name === o.upstream);
  if (u === undefined)
    return {
      text: `no upstream named "${o.upstream}" (configured: ${config.upstreams.map((x) => x.name).join(', ')})`,
      code: 1,
    };
  if (u.tenants === undefined && o.tenant !== undefined) return { text: `upstream ${u.name} has no tenants`, code: 1 };
  if (u.tenants !== undefined && (o.tenant === undefined || u.tenants.auth[o.tenant] === undefined)) {
    return { text: `upstream ${u.name} needs --tenant, one of: ${Object.keys(u.tenants.auth).join(', ')}`, code: 1 };
  }
  if (u.auth.type === 'token_exchange')
    return {
      text: `upstream ${u.name}: ${describeAuth(u.auth)}\nexchanges each caller's token (RFC 8693): there is no token to obtain without a caller`,
      code: 1,
    };
  const factory = new UpstreamFactory(
    { ...config, upstreams: [u] },
    {
      metrics: createMetrics(new Registry(), { defaultMetrics: false, tenantLabel: u.tenants !== undefined }),
      clock: systemClock,
      logger: pino({ level: 'silent' }),
      sharedTier: false, // a debugging fetch never touches the fleet's shared entries
      providers: new TokenProviders({
        cache: new TokenCache(10),
        clock: systemClock,
        backoff: { baseMs: 250, maxMs: 1_000, maxRetryAfterMs: 1_000, permanentMinMs: 0, random: Math.random },
      }),
    },
  );
  factory.build();
  const source = factory.sources.get(o.tenant === undefined ? u.name : `${u.name}/${o.tenant}`);
  const auth = o.tenant === undefined ? u.auth : (u.tenants?.auth[o.tenant] ?? u.auth);
  const lines = [`upstream ${u.name}${o.tenant === undefined ? '' : `, tenant ${o.tenant}`}: ${describeAuth(auth)}`];
  const assertion = source?.status().assertion;
  if (assertion !== undefined) lines.push(assertionLine(assertion));
  try {
    const started = performance.now();
    const token = await (source as NonNullable<typeof source>).obtain();
    const now = Date.now();
    lines.push(
      `obtained in ${Math.round(performance.now() - started)} ms`,
      `fingerprint  ${token.fingerprint}`,
      `expires      ${iso(token.expiresAt)} (in ${Math.round((token.expiresAt - now) / 1000)} s)`,
      `used until   ${iso(token.usableUntil)} (clock skew margin)`,
      `refreshed at ${iso(token.refreshAt)} (refresh ahead)`,
      `refresh token ${token.refreshToken === undefined ? 'none' : 'received (kept in memory)'}`,
    );
    // Only a token bound to the target's own certificate gets this far (RFC 8705 §3).
    const [bound] = boundCertificates(token.value, undefined);
    if (bound !== undefined)
      lines.push(`bound to     client certificate x5t#S256=${bound} (RFC 8705), the one the target is presented`);
    const jwt = jwtParts(token.value);
    // RFC 9449 §6.1: a DPoP-bound JWT names the key's thumbprint; only the upstream's own key signs proofs for it.
    const cnf = (jwt?.payload as { cnf?: { jkt?: unknown } } | undefined)?.cnf;
    if (typeof cnf?.jkt === 'string')
      lines.push(`bound to     DPoP key jkt=${cnf.jkt} (RFC 9449), this upstream's proof key`);
    if (jwt === undefined) {
      lines.push('token is opaque (not a JWT): no claims to show');
    } else {
      const scope =
        (jwt.payload as Record<string, unknown>)['scope'] ?? (jwt.payload as Record<string, unknown>)['scp'];
      if (scope !== undefined)
        lines.push(
          `scopes       ${Array.isArray(scope) ? scope.join(' ') : typeof scope === 'string' ? scope : JSON.stringify(scope)}`,
        );
      lines.push(
        `JWT header   ${JSON.stringify(jwt.header)}`,
        `JWT payload  ${JSON.stringify(jwt.payload, null, 2).replace(/\n/g, '\n             ')}`,
      );
    }
    lines.push(o.showToken ? `token        ${token.value}` : 'token        (hidden; --show-token prints it)');
    return { text: lines.join('\n'), code: 0 };
  } catch (err) {
    const e = err instanceof TokenError ? err : new TokenError('bad_response', (err as Error).message);
    lines.push(`FAILED: ${e.reason}${e.status === undefined ? '' : ` (HTTP ${e.status})`}: ${e.message}`);
    if (e.description !== undefined) lines.push(`partner says: ${e.description}`);
    return { text: lines.join('\n'), code: 1 };
  } finally {
    await Promise.all(factory.dispatchers.map((d) => d.close()));
  }
}
