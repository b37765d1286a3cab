import { z } from 'zod';
import { MAX_TIMER_SECONDS, TIMER_LIMIT_MESSAGE } from './defaults.js';

/**
 * Protecting the partner (and the proxy), per upstream: a concurrency gate with a bounded FIFO
 * queue and a token-bucket rate, a circuit breaker, retries of connection failures and respect
 * for the partner's Retry-After. All off by default: an upstream without any of them is
 * forwarded exactly as before (see src/proxy/partner-guard.ts).
 */
const seconds = z.number().positive().max(MAX_TIMER_SECONDS, TIMER_LIMIT_MESSAGE);

export const upstreamLimitsSchema = z
  .strictObject({
    maxConcurrentRequests: z
      .number()
      .int()
      .positive()
      .optional()
      .describe(
        'requests in flight to the target at once (default: maxConnections); more wait in the queue. Above maxConnections the excess waits in the connection pool',
      ),
    maxQueuedRequests: z
      .number()
      .int()
      .min(0)
      .optional()
      .describe(
        'requests waiting for a slot or a rate token (default: the upstream maxQueuedRequests); past it 503 overloaded (or rate_limited) with Retry-After',
      ),
    requestsPerSecond: z
      .number()
      .positive()
      .optional()
      .describe('token bucket rate towards the target; a request over it waits in the queue for a token'),
    burst: z
      .number()
      .int()
      .positive()
      .optional()
      .describe(
        'token bucket size: requests that may go at once after a quiet time (default: requestsPerSecond, at least 1)',
      ),
    queueTimeoutSeconds: seconds
      .optional()
      .describe('longest wait in the queue (default: the upstream timeoutSeconds); then 503 queue_timeout'),
  })
  .superRefine((limits, ctx) => {
    if (limits.burst !== undefined && limits.requestsPerSecond === undefined)
      ctx.addIssue({
        code: 'custom',
        path: ['burst'],
        message: 'burst needs requestsPerSecond (the rate it refills at)',
      });
  })
  .describe('protects the partner: at most maxConcurrentRequests in flight, a FIFO queue, an optional rate');

export const circuitBreakerSchema = z
  .strictObject({
    consecutiveFailures: z
      .number()
      .int()
      .positive()
      .default(5)
      .describe(
        'consecutive failed requests (connection failures, timeouts, 502/503/504 from the target) that open it',
      ),
    openSeconds: seconds
      .default(30)
      .describe('how long it stays open (503 circuit_open, no connection tried); then one probe request decides'),
  })
  .describe('stops sending to a target that keeps failing');

export const retrySchema = z
  .strictObject({
    connectionFailures: z
      .number()
      .int()
      .min(0)
      .max(10)
      .default(0)
      .describe(
        'extra attempts after a connection failure before any response (refused, reset, connect timeout); idempotent methods with a replayable body only (RFC 9110 §9.2.2)',
      ),
  })
  .describe('retries of failed connections');

/** The keys added to every upstream's schema (src/config/schema.ts). */
export const protectionKeys = {
  limits: upstreamLimitsSchema.optional(),
  circuitBreaker: circuitBreakerSchema.optional(),
  retry: retrySchema.optional(),
  respectRetryAfter: z
    .boolean()
    .default(false)
    .describe(
      "after the target's 429 or 503 with Retry-After, answer new requests 503 upstream_retry_after until then (at most 1 h) instead of sending them",
    ),
};
