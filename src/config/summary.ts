import type { Config, ResolvedAuth, SharedAuth } from './load.js';

/**
 * One line about an auth block: grant, endpoint, client and how it authenticates. Never a secret.
 * What an upstream's tenants share names no client or user: each tenant's line does.
 */
export function describeAuth(a: ResolvedAuth | SharedAuth): string {
  if (a.type === 'login') {
    return `grant login at ${a.loginUrl}${a.refreshUrl === undefined ? '' : `, refresh at ${a.refreshUrl}`}, user ${'username' in a ? a.username : 'per tenant'}${a.mtls === undefined ? '' : ', client certificate'}`;
  }
  const extra = [
    'username' in a ? `user ${a.username}` : undefined,
    a.scope === undefined ? undefined : `scope "${a.scope}"`,
    a.audience === undefined ? undefined : `audience ${a.audience}`,
    a.type === 'token_exchange' ? "subject: the caller's token" : undefined,
    a.mtls === undefined ? undefined : 'client certificate',
    a.type === 'jwt_bearer' && a.assertionFile !== undefined ? `assertion from ${a.assertionFile}` : undefined,
    a.dpop === undefined ? undefined : `DPoP ${a.dpop.alg}${a.dpop.generated ? ' with a key generated at start' : ''}`,
  ].filter((x) => x !== undefined);
  // The jwt-bearer grant may name no client at all (the assertion is the credential).
  const client = !('clientId' in a)
    ? 'client per tenant'
    : a.clientId === undefined
      ? 'no client'
      : `client ${a.clientId}`;
  const how = a.clientAssertionFile === undefined ? a.clientAuth : `${a.clientAuth} from ${a.clientAssertionFile}`;
  return `grant ${a.type} at ${a.tokenUrl}, ${client} (${how})${extra.length > 0 ? `, ${extra.join(', ')}` : ''}`;
}

/** What `token-proxy check` prints: everything a config sets up, and no secret. */
export function summary(config: Config): string {
  const lines = [`listen ${config.listen}, admin ${config.admin.listen}, log level ${config.logLevel}`];
  for (const u of config.upstreams) {
    const routes = [u.pathPrefix, ...(u.hosts ?? []).map((h) => h.text)].filter((r) => r !== undefined).join(', ');
    lines.push(
      `upstream ${u.name}: ${routes} -> ${u.target}${u.ca === undefined ? '' : ' (extra CA)'}${u.mtls === undefined ? '' : ' (client certificate)'}`,
    );
    lines.push(`  ${describeAuth(u.auth)}`);
    if (u.tenants !== undefined) {
      lines.push(`  tenants from ${u.tenants.from.text}:`);
      for (const [name, auth] of Object.entries(u.tenants.auth)) lines.push(`    ${name}: ${describeAuth(auth)}`);
    }
  }
  lines.push(`TLS interception: ${config.mitm === undefined ? 'off (CONNECT to upstream hosts is refused)' : 'on'}`);
  const e = config.egress;
  lines.push(
    `egress: default ${e.default}, allow [${e.allow.entries.join(', ')}], CONNECT ports [${e.connectPorts.join(', ')}]`,
  );
  const i = config.inbound;
  lines.push(
    `inbound: ${i.allowCidrs === undefined ? 'any address' : `from ${i.allowCidrs.entries.join(', ')}`}, ` +
      `${i.proxyAuth === undefined ? 'no proxy credentials' : `proxy users ${i.proxyAuth.users.map((u) => u.name).join(', ')}`}`,
  );
  return lines.join('\n');
}
