import { z } from 'zod';
import { isValidHostname, splitHostPort } from '../proxy/host-pattern.js';
import { MAX_TIMER_SECONDS, TIMER_LIMIT_MESSAGE } from './defaults.js';

/**
 * A Redis node or Sentinel: `host:port` or `[v6]:port`, the port required. The schema checks the
 * text; the loader turns it into this shape once, for the connection code to take as it is.
 */
export function parseRedisNode(text: string): RedisNode | undefined {
  const parts = splitHostPort(text);
  if (parts === null || parts.port === undefined || !isValidHostname(parts.host)) return undefined;
  return { host: parts.host, port: parts.port };
}

/** Node texts the schema accepted, as host and port. */
export function redisNodes(list: readonly string[]): RedisNode[] {
  return list.flatMap((text) => {
    const node = parseRedisNode(text);
    return node === undefined ? [] : [node];
  });
}

export interface RedisNode {
  readonly host: string;
  readonly port: number;
}

const redisNode = z.string().refine((v) => parseRedisNode(v) !== undefined, 'must be host:port, e.g. 10.0.0.1:26379');

/** Credentials and transport for the data nodes, shared by the Sentinel and Cluster forms. */
const nodeAccess = {
  username: z.string().min(1).optional().describe('ACL user of the data nodes'),
  password: z.string().min(1).optional().describe('password of the data nodes; use ${ENV_VAR}'),
  tls: z.boolean().default(false).describe('TLS to every node (certificates verified; a private CA goes in `ca`)'),
};

const sentinelSchema = z
  .strictObject({
    masterName: z.string().min(1).describe('the master group the Sentinels watch (`sentinel monitor <name> ...`)'),
    sentinels: z
      .array(redisNode)
      .min(1)
      .describe('Sentinel addresses, host:port; the client asks them for the current master and follows failovers'),
    db: z.number().int().min(0).default(0),
    ...nodeAccess,
    sentinelUsername: z.string().min(1).optional(),
    sentinelPassword: z.string().min(1).optional().describe('when the Sentinels require AUTH; use ${ENV_VAR}'),
  })
  .describe('Redis Sentinel: the master is found through the Sentinels and followed across failovers');

const clusterSchema = z
  .strictObject({
    nodes: z.array(redisNode).min(1).describe('seed nodes, host:port; the rest of the cluster is discovered from them'),
    ...nodeAccess,
  })
  .describe('Redis Cluster: an entry and its refresh lock share one hash slot, so the atomic scripts work on any node');

export const redisSchema = z
  .strictObject({
    url: z
      .string()
      .regex(/^rediss?:\/\/\S+$/, 'must be a redis:// or rediss:// (TLS) URL')
      .optional()
      .describe('one server: redis://[user:password@]host:6379/0, or rediss:// for TLS'),
    sentinel: sentinelSchema.optional(),
    cluster: clusterSchema.optional(),
    ca: z
      .string()
      .min(1)
      .optional()
      .describe('PEM file of the CA that signed the Redis certificates (with rediss:// or tls: true)'),
    keyPrefix: z
      .string()
      .regex(/^[^{}]*$/, 'must not contain { or }: the keys carry a Redis Cluster hash tag of their own')
      .default('token-proxy:'),
    encryptionKey: z
      .string()
      .min(1)
      .optional()
      .describe('32 random bytes, base64 (openssl rand -base64 32); use ${ENV_VAR}'),
    encryptionKeyFile: z.string().min(1).optional(),
    previousEncryptionKeys: z
      .array(z.string().min(1))
      .default([])
      .describe('older keys, still accepted for reading, while rotating'),
    lockTimeoutMs: z
      .number()
      .int()
      .positive()
      .max(MAX_TIMER_SECONDS * 1000, TIMER_LIMIT_MESSAGE)
      .default(10_000)
      .describe('refresh lock expiry: how soon a crashed lock holder is replaced'),
    refreshTokenTtlSeconds: z
      .number()
      .positive()
      .default(86_400)
      .describe('how long entries with a refresh token live when the server does not say'),
  })
  .superRefine((r, ctx) => {
    if (Number(r.encryptionKey !== undefined) + Number(r.encryptionKeyFile !== undefined) !== 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['encryptionKey'],
        message: 'set exactly one of encryptionKey or encryptionKeyFile: tokens are never stored in Redis unencrypted',
      });
    }
    const forms = [r.url, r.sentinel, r.cluster].filter((f) => f !== undefined).length;
    if (forms !== 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['url'],
        message: 'set exactly one of url (one server), sentinel or cluster',
      });
    }
    const tls = r.url?.startsWith('rediss://') === true || r.sentinel?.tls === true || r.cluster?.tls === true;
    if (r.ca !== undefined && !tls) {
      ctx.addIssue({
        code: 'custom',
        path: ['ca'],
        message: 'a CA only applies to TLS: use a rediss:// url, or tls: true',
      });
    }
  })
  .describe(
    'share tokens between replicas through Redis: one server, Sentinel or Cluster (entries encrypted with AES-256-GCM)',
  );
