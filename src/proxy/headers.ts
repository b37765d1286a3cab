/**
 * Header hygiene, pure functions. RFC 9110 §7.6.1: hop-by-hop fields (and every field named in
 * Connection) apply to one connection only and are never forwarded.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Request fields the proxy sets itself, or has already acted on: `Expect: 100-continue` was
 * answered to the client by this hop (RFC 9110 §10.1.1), and undici refuses to send it anyway.
 */
export const REPLACED_ON_REQUEST: ReadonlySet<string> = new Set([
  'host',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-request-id',
  'expect',
]);

/**
 * Adds the field names a Connection value lists to `named`, and returns it. Names dropped anyway
 * as hop-by-hop (the usual `keep-alive`) need no entry: most messages then allocate no set.
 */
function addConnectionTokens(value: string, named: Set<string> | undefined): Set<string> | undefined {
  for (const part of value.includes(',') ? value.split(',') : [value]) {
    const name = part.trim().toLowerCase();
    if (name !== '' && !HOP_BY_HOP.has(name)) (named ??= new Set()).add(name);
  }
  return named;
}

function connectionTokens(raw: readonly string[]): Set<string> | undefined {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 10 && name.toLowerCase() === 'connection')
      named = addConnectionTokens(raw[i + 1] as string, named);
  }
  return named;
}

export interface ForwardedInfo {
  readonly clientAddress: string;
  readonly proto: 'http' | 'https';
  /** Sent as X-Request-Id in place of whatever the client sent. */
  readonly requestId?: string;
  /** Client headers to drop (lower case): names the proxy fills itself from validated claims. */
  readonly strip?: ReadonlySet<string> | undefined;
  /** Headers to add (validated caller claims). */
  readonly add?: readonly (readonly [string, string])[] | undefined;
  /**
   * With tracing on, the proxy's W3C Trace Context for this attempt: sent in place of the
   * client's `traceparent`/`tracestate` (W3C Trace Context §3: one of each, the proxy's span as
   * the parent). Undefined (tracing off): the client's pass unchanged.
   */
  readonly trace?: { readonly traceparent: string; readonly tracestate: string | undefined } | undefined;
}

/**
 * Builds the flat [name, value, ...] list for the upstream request from the client's raw headers:
 * hop-by-hop and replaced fields dropped, then X-Forwarded-* and the bearer token appended. With
 * a token, the client's own Authorization never reaches the partner; without one (egress
 * passthrough) the client's header is the client's business and passes unchanged.
 */
export function upstreamRequestHeaders(
  raw: readonly string[],
  forwarded: ForwardedInfo,
  authorization: string | undefined,
): string[] {
  const named = connectionTokens(raw);
  const trace = forwarded.trace;
  const out: string[] = [];
  let host: string | undefined;
  let priorFor: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    const lower = name.toLowerCase();
    if (lower === 'host') host ??= value;
    else if (lower === 'x-forwarded-for') priorFor = priorFor === undefined ? value : `${priorFor}, ${value}`;
    if (HOP_BY_HOP.has(lower) || REPLACED_ON_REQUEST.has(lower) || named?.has(lower)) continue;
    if (authorization !== undefined && lower === 'authorization') continue;
    if (forwarded.strip?.has(lower) === true) continue;
    if (trace !== undefined && (lower === 'traceparent' || lower === 'tracestate')) continue;
    out.push(name, value);
  }
  if (forwarded.add !== undefined) for (const [name, value] of forwarded.add) out.push(name, value);
  // RFC 7239 §5.2 semantics, de-facto header: append this hop's client to the chain.
  out.push(
    'x-forwarded-for',
    priorFor === undefined ? forwarded.clientAddress : `${priorFor}, ${forwarded.clientAddress}`,
  );
  out.push('x-forwarded-proto', forwarded.proto);
  if (host !== undefined) out.push('x-forwarded-host', host);
  if (forwarded.requestId !== undefined) out.push('x-request-id', forwarded.requestId);
  if (trace !== undefined) {
    out.push('traceparent', trace.traceparent);
    if (trace.tracestate !== undefined && trace.tracestate !== '') out.push('tracestate', trace.tracestate);
  }
  if (authorization !== undefined) out.push('authorization', authorization);
  return out;
}

/** Response fields from the target, minus hop-by-hop ones; repeated fields (Set-Cookie) stay separate. */
export function downstreamResponseHeaders(raw: readonly Buffer[]): string[] {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as Buffer;
    if (name.length === 10 && name.toString('latin1').toLowerCase() === 'connection')
      named = addConnectionTokens((raw[i + 1] as Buffer).toString('latin1'), named);
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named?.has(lower)) continue;
    out.push(name, (raw[i + 1] as Buffer).toString('latin1'));
  }
  return out;
}
