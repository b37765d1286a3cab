import { X509Certificate, createPrivateKey } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import type { InboundJwtSettings } from '../inbound/jwt-validator.js';
import type { AddressList } from '../proxy/host-pattern.js';
import { targetCertificate } from './certificate-binding.js';
import { readPrivateKeyFile, readSecretFile, readText } from './files.js';
import { parseTenantSource, type TenantSource } from './tenant-source.js';
import { redisNodes } from './redis-schema.js';
import {
  resolveAuth,
  resolveAuthDpop,
  resolveMtls,
  resolveSharedAuth,
  tenantAuth,
  type Mtls,
  type ResolvedAuth,
  type SharedAuth,
} from './resolve-auth.js';
import type { RedisConnection } from '../tokens/redis-connection.js';
import { configSchema, crossFieldProblems, type ParsedConfig, type ParsedUpstream } from './schema.js';

export type { ResolvedAuth, SharedAuth, Mtls } from './resolve-auth.js';

interface UpstreamSettings extends Omit<ParsedUpstream, 'ca' | 'auth' | 'mtls' | 'tenants'> {
  /** PEM text of the extra CA bundle, read at load time. */
  readonly ca: string | undefined;
  readonly mtls: Mtls | undefined;
}

export type UpstreamConfig = UpstreamSettings &
  (
    | { readonly auth: ResolvedAuth; readonly tenants: undefined }
    | {
        /** What the tenants share; the credentials are in each tenant's auth. */
        readonly auth: SharedAuth;
        /** Per-tenant auth (the upstream's with each tenant's credentials). */
        readonly tenants: { readonly from: TenantSource; readonly auth: Readonly<Record<string, ResolvedAuth>> };
      }
  );

export interface ProxyUser {
  readonly name: string;
  readonly password: string;
}

export interface RedisSettings {
  /** One server, Sentinel or Cluster, with the CA read at load time. */
  readonly connection: RedisConnection;
  readonly keyPrefix: string;
  /** base64 keys: the primary seals, all open. */
  readonly encryptionKey: string;
  readonly previousEncryptionKeys: readonly string[];
  readonly lockTimeoutMs: number;
  readonly refreshTokenTtlSeconds: number;
}

export interface Config extends Omit<ParsedConfig, 'upstreams' | 'mitm' | 'inbound' | 'tokenCache'> {
  readonly tokenCache: {
    readonly maxEntries: number;
    readonly refreshBeforeExpirySeconds: number;
    readonly redis: RedisSettings | undefined;
  };
  readonly upstreams: readonly UpstreamConfig[];
  /** PEM text of the interception CA, read at load time. */
  readonly mitm:
    { readonly caCertPem: string; readonly caKeyPem: string; readonly leafValidityDays: number } | undefined;
  readonly inbound: {
    /** Validation settings of caller JWTs (gateway mode), with the CA file read. */
    readonly jwt: InboundJwtSettings | undefined;
    /** Parsed with the configuration. */
    readonly allowCidrs: AddressList | undefined;
    readonly proxyAuth: { readonly users: readonly ProxyUser[] } | undefined;
    readonly allowAnyone: boolean;
  };
}

/** Settings given on the command line or through TOKEN_PROXY_* variables; they win over the file. */
export interface ConfigOverrides {
  listen?: string | undefined;
  adminListen?: string | undefined;
  logLevel?: string | undefined;
}

type Env = Readonly<Record<string, string | undefined>>;

/** `upstreams[0].auth.tokenUrl`, the way a person writes a path into the file. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(root)' : out;
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g;

/** Replaces `${VAR}` in every string of the document; each unset variable is a problem naming its path. */
function substituteEnv(node: unknown, env: Env, path: PropertyKey[], problems: Map<string, string>): unknown {
  if (typeof node === 'string') {
    return node.replace(ENV_REF, (_whole, name: string) => {
      const value = env[name];
      if (value === undefined) {
        problems.set(formatPath(path), `${formatPath(path)}: environment variable ${name} is not set`);
        return '';
      }
      return value;
    });
  }
  if (Array.isArray(node)) return node.map((item, i) => substituteEnv(item, env, [...path, i], problems));
  if (node !== null && typeof node === 'object') {
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(node)) out[key] = substituteEnv(value, env, [...path, key], problems);
    return out;
  }
  return node;
}

function issuesToProblems(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((issue) => `${formatPath(issue.path)}: ${issue.message}`);
}

/** A PEM CA bundle named in the config, read now so a bad file fails `check`, not the first request. */
function readCaBundle(file: string | undefined, baseDir: string, path: string, problems: string[]): string | undefined {
  if (file === undefined) return undefined;
  const pem = readText(resolve(baseDir, file), path, problems);
  if (pem !== undefined && !pem.includes('-----BEGIN CERTIFICATE-----'))
    problems.push(`${path}: ${file} holds no PEM certificate`);
  return pem;
}

function resolveUpstream(u: ParsedUpstream, i: number, baseDir: string, problems: string[]): UpstreamConfig {
  const at = `upstreams[${i}]`;
  const ca = readCaBundle(u.ca, baseDir, `${at}.ca`, problems);
  const own = resolveMtls(u.mtls, `${at}.mtls`, baseDir, problems);
  // The target's certificate: its own, or the one certificate-bound tokens need (RFC 8705 §3).
  const targetMtls = (tokenMtls: Mtls | undefined) =>
    targetCertificate(own, tokenMtls, u.auth.certificateBoundTokens, at, problems);
  // Once per upstream: its tenants' tokens are all bound to the one key (one proof signer).
  const dpop = resolveAuthDpop(u.auth, `${at}.auth`, baseDir, problems);
  if (u.tenants === undefined) {
    const auth = resolveAuth(u.auth, `${at}.auth`, baseDir, problems, dpop);
    return { ...u, ca, mtls: targetMtls(auth.mtls), auth, tenants: undefined };
  }
  const byName: Record<string, ResolvedAuth> = {};
  for (const [name, override] of Object.entries(u.tenants.credentials)) {
    const resolved = tenantAuth(u.auth, override, `${at}.tenants.credentials.${name}`, baseDir, problems, dpop);
    if (resolved !== undefined) byName[name] = resolved;
  }
  const auth = resolveSharedAuth(u.auth, `${at}.auth`, baseDir, problems, dpop);
  const tenants = { from: parseTenantSource(u.tenants.from), auth: byName };
  return { ...u, ca, mtls: targetMtls(auth.mtls), auth, tenants };
}

function resolveRedis(
  redis: ParsedConfig['tokenCache']['redis'],
  baseDir: string,
  problems: string[],
): RedisSettings | undefined {
  if (redis === undefined) return undefined;
  const { encryptionKeyFile, encryptionKey, url, sentinel, cluster, ca, ...rest } = redis;
  const key =
    encryptionKey ??
    readSecretFile(encryptionKeyFile ?? '', baseDir, 'tokenCache.redis.encryptionKeyFile', problems) ??
    '';
  const check = (value: string, path: string) => {
    const bytes = Buffer.from(value, 'base64').length;
    if (bytes !== 32)
      problems.push(`${path}: must be 32 bytes in base64 (openssl rand -base64 32), got ${bytes} bytes`);
  };
  if (key !== '') check(key, 'tokenCache.redis.encryptionKey');
  rest.previousEncryptionKeys.forEach((k, i) => check(k, `tokenCache.redis.previousEncryptionKeys[${i}]`));
  const caPem = readCaBundle(ca, baseDir, 'tokenCache.redis.ca', problems);
  const connection = {
    url,
    sentinel: sentinel === undefined ? undefined : { ...sentinel, sentinels: redisNodes(sentinel.sentinels) },
    cluster: cluster === undefined ? undefined : { ...cluster, nodes: redisNodes(cluster.nodes) },
    caPem,
  };
  return { ...rest, encryptionKey: key, connection };
}

function resolveMitm(mitm: ParsedConfig['mitm'], baseDir: string, problems: string[]): Config['mitm'] {
  if (mitm === undefined) return undefined;
  const caCertPem = readText(resolve(baseDir, mitm.caCert), 'mitm.caCert', problems);
  const caKeyPem = readPrivateKeyFile(resolve(baseDir, mitm.caKey), 'mitm.caKey', problems);
  if (caCertPem === undefined || caKeyPem === undefined) return undefined;
  try {
    const cert = new X509Certificate(caCertPem);
    if (!cert.ca) problems.push(`mitm.caCert: ${mitm.caCert} is not a CA certificate (basicConstraints CA:TRUE)`);
    else if (!cert.checkPrivateKey(createPrivateKey(caKeyPem)))
      problems.push(`mitm.caKey: ${mitm.caKey} does not belong to ${mitm.caCert}`);
  } catch (err) {
    problems.push(`mitm: cannot read the CA certificate or key (${(err as Error).message})`);
  }
  return { caCertPem, caKeyPem, leafValidityDays: mitm.leafValidityDays };
}

function resolveInbound(inbound: ParsedConfig['inbound'], baseDir: string, problems: string[]): Config['inbound'] {
  const users = inbound.proxyAuth?.users.map((u, i) => ({
    name: u.name,
    password:
      u.password ??
      readSecretFile(u.passwordFile ?? '', baseDir, `inbound.proxyAuth.users[${i}].passwordFile`, problems) ??
      '',
  }));
  const jwt =
    inbound.jwt === undefined
      ? undefined
      : {
          ...inbound.jwt,
          ca:
            inbound.jwt.ca === undefined
              ? undefined
              : readText(resolve(baseDir, inbound.jwt.ca), 'inbound.jwt.ca', problems),
        };
  return {
    jwt,
    allowCidrs: inbound.allowCidrs,
    proxyAuth: users === undefined ? undefined : { users },
    allowAnyone: inbound.allowAnyone,
  };
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/**
 * Validates a parsed document (YAML or JSON, already turned into plain data) into a new, frozen
 * Config. Every problem is collected and reported at once, each with its path.
 */
export function buildConfig(
  document: unknown,
  options: { env?: Env; baseDir?: string; overrides?: ConfigOverrides } = {},
): Config {
  const envProblems = new Map<string, string>();
  const substituted = substituteEnv(document ?? {}, options.env ?? process.env, [], envProblems);
  const withOverrides = applyOverrides(substituted, options.overrides ?? {});
  const parsed = configSchema.safeParse(withOverrides);
  const problems = [...envProblems.values()];
  // A value left empty by an unset variable is reported once, as the variable.
  if (!parsed.success)
    problems.push(...issuesToProblems(parsed.error.issues.filter((i) => !envProblems.has(formatPath(i.path)))));
  problems.push(...crossFieldProblems(withOverrides));
  if (!parsed.success || problems.length > 0) throw new ConfigError(problems);
  const baseDir = options.baseDir ?? process.cwd();
  const upstreams = parsed.data.upstreams.map((u, i) => resolveUpstream(u, i, baseDir, problems));
  const mitm = resolveMitm(parsed.data.mitm, baseDir, problems);
  const inbound = resolveInbound(parsed.data.inbound, baseDir, problems);
  const redis = resolveRedis(parsed.data.tokenCache.redis, baseDir, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return deepFreeze({ ...parsed.data, upstreams, mitm, inbound, tokenCache: { ...parsed.data.tokenCache, redis } });
}

function applyOverrides(doc: unknown, o: ConfigOverrides): unknown {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return doc;
  const out: Record<string, unknown> = { ...(doc as Record<string, unknown>) };
  if (o.listen !== undefined) out['listen'] = o.listen;
  if (o.logLevel !== undefined) out['logLevel'] = o.logLevel;
  if (o.adminListen !== undefined) {
    const admin = out['admin'];
    out['admin'] = { ...(admin !== null && typeof admin === 'object' ? admin : {}), listen: o.adminListen };
  }
  return out;
}

/** Reads a YAML or JSON file; relative paths inside it are resolved against its own directory. */
export function loadConfigFile(file: string, options: { env?: Env; overrides?: ConfigOverrides } = {}): Config {
  const problems: string[] = [];
  const text = readText(file, 'config', problems);
  if (text === undefined) throw new ConfigError(problems);
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => `${file}: ${e.message.split('\n')[0] ?? e.code}`));
  }
  return buildConfig(doc.toJS(), { ...options, baseDir: dirname(resolve(file)) });
}
