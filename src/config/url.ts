import { isIP } from 'node:net';
import { z } from 'zod';

export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || (isIP(h) === 4 && h.startsWith('127.'));
}

/**
 * RFC 6749 §3.2 and §10.9: token endpoints and targets carry credentials, so TLS is required;
 * plain http is accepted only on loopback, where nothing crosses a network.
 */
export const secureUrl = z.string().superRefine((value, ctx) => {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    ctx.addIssue({ code: 'custom', message: `not a valid URL: "${value}"` });
    return;
  }
  if (url.protocol === 'https:') return;
  if (url.protocol === 'http:' && isLoopbackHost(url.hostname)) return;
  ctx.addIssue({
    code: 'custom',
    message: 'must be an https:// URL (plain http:// is accepted only for loopback hosts)',
  });
});
