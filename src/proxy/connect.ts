import type { IncomingMessage } from 'node:http';
import { connect as tcpConnect, type LookupFunction } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { ProxyError, errorResponseBytes } from '../errors.js';
import type { CertificateAuthority } from '../mitm/certificate-authority.js';
import { parseConnectAuthority } from './request-target.js';
import { answerAndClose, closeWhenIdle, detach } from './detached.js';
import type { ProxyContext, Tunnel } from './context.js';

/** RFC 9110 §9.3.6: any 2xx means the tunnel is open. */
const ESTABLISHED = 'HTTP/1.1 200 Connection Established\r\n\r\n';
/** First byte of a TLS record carrying a handshake (RFC 8446 §5.1, ContentType handshake = 22). */
const TLS_HANDSHAKE = 0x16;

function refuse(socket: Duplex, err: ProxyError): void {
  answerAndClose(socket, errorResponseBytes(err));
}

/**
 * CONNECT: a tunnel to an upstream host is opened towards the proxy itself, which reads the
 * requests inside (TLS terminated with a certificate from the interception CA, or plain HTTP such
 * as undici's ProxyAgent sends for http:// URLs) so the token can be injected. A host no upstream
 * serves gets a blind TCP tunnel only when the egress policy allows it; nothing is injected there.
 */
export function handleConnect(ctx: ProxyContext, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  socket.on('error', () => undefined); // a client that vanishes mid-tunnel is not our error
  detach(ctx, socket);
  const r = ctx.routing;
  const user = r.guard.authenticate(req.headers['proxy-authorization']);
  if (user === undefined) {
    refuse(socket, new ProxyError('proxy_auth_required', 'proxy credentials missing or wrong'));
    return;
  }
  const authority = parseConnectAuthority(req.url ?? '');
  if (authority === null) {
    refuse(socket, new ProxyError('bad_request', 'CONNECT needs host:port'));
    return;
  }
  const { host, port } = authority;
  const upstream = r.forward.route(host, port);
  const clientAddress = req.socket.remoteAddress;
  if (upstream !== undefined) {
    if (r.interception === undefined && port !== 80) {
      refuse(
        socket,
        new ProxyError(
          'interception_not_configured',
          `${host}:${port} is served by upstream ${upstream.name}, but a token cannot be injected into a TLS tunnel without TLS interception: configure mitm, or call http://${host}/ through the proxy instead`,
          { upstream: upstream.name },
        ),
      );
      return;
    }
    socket.write(ESTABLISHED);
    if (head.length > 0) socket.unshift(head);
    // Until the first byte, no HTTP server timeout watches the tunnel: a client has as long as it has for its headers.
    closeWhenIdle(socket, ctx.limits.headersTimeoutSeconds);
    openInnerConnection(ctx, r.interception, socket, {
      host,
      port,
      clientAddress,
      user,
      credentials: req.headers['proxy-authorization'],
      admittedBy: r,
    });
    return;
  }
  const decision = r.egress.decide(host, port, 'connect');
  if (!decision.allowed) {
    refuse(
      socket,
      new ProxyError('egress_denied', `CONNECT to ${host}:${port} is not allowed`, {
        host,
        port: String(port),
        rule: decision.rule,
      }),
    );
    return;
  }
  closeWhenIdle(socket, ctx.limits.tunnelIdleTimeoutSeconds);
  blindTunnel(ctx, socket, head, host, port, r.egress.lookup);
}

/**
 * Looks at the first byte the client sends inside the tunnel: a TLS handshake is terminated with
 * an interception certificate for the CONNECT host; anything else is read as plain HTTP.
 */
function openInnerConnection(
  ctx: ProxyContext,
  interception: CertificateAuthority | undefined,
  socket: Duplex,
  t: Omit<Tunnel, 'proto'>,
): void {
  socket.once('readable', () => {
    const first = socket.read(1) as Buffer | null;
    if (first === null) {
      socket.once('readable', () => openInnerConnection(ctx, interception, socket, t));
      return;
    }
    socket.unshift(first);
    closeWhenIdle(socket, 0); // from here the HTTP server's own timeouts apply to what the tunnel carries
    if (first[0] !== TLS_HANDSHAKE) {
      ctx.tunnels.set(socket, { ...t, proto: 'http' });
      ctx.adopt(socket);
      return;
    }
    if (interception === undefined) {
      socket.destroy(); // TLS to port 80 without interception: nothing we can read
      return;
    }
    let secureContext;
    try {
      secureContext = interception.secureContextFor(t.host);
    } catch (err) {
      ctx.logger.warn(
        { event: 'interception_failed', host: t.host, err: (err as Error).message },
        'cannot issue an interception certificate',
      );
      socket.destroy();
      return;
    }
    const tls = new TLSSocket(socket, { isServer: true, secureContext, ALPNProtocols: ['http/1.1'] });
    tls.on('error', () => socket.destroy());
    ctx.tunnels.set(tls, { ...t, proto: 'https' });
    ctx.adopt(tls);
  });
}

function blindTunnel(
  ctx: ProxyContext,
  socket: Duplex,
  head: Buffer,
  host: string,
  port: number,
  lookup: LookupFunction,
): void {
  const remote = tcpConnect({ host, port, lookup });
  let established = false;
  remote.once('connect', () => {
    established = true;
    socket.write(ESTABLISHED);
    if (head.length > 0) remote.write(head);
    remote.pipe(socket);
    socket.pipe(remote);
  });
  remote.once('error', (err) => {
    if (!established) {
      const denied = (err as NodeJS.ErrnoException).code === 'ERR_EGRESS_DENIED';
      refuse(
        socket,
        new ProxyError(
          denied ? 'egress_denied' : 'upstream_unreachable',
          denied ? err.message : `cannot reach ${host}:${port}: ${err.message}`,
          { host, port: String(port) },
        ),
      );
    } else {
      socket.destroy();
    }
    ctx.logger.info({ event: 'tunnel_failed', host, port, err: err.message }, 'egress tunnel failed');
  });
  socket.once('close', () => remote.destroy());
  remote.once('close', () => socket.destroy());
}
