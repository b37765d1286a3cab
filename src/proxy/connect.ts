import type { IncomingMessage } from 'node:http';
import { connect as tcpConnect, type LookupFunction } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { ProxyError } from '../errors.js';
import type { CertificateAuthority } from '../mitm/certificate-authority.js';
import { clientNotAllowed, proxyUser } from './admit.js';
import { parseConnectAuthority } from './request-target.js';
import { closeWhenIdle, detach } from './detached.js';
import type { ProxyContext, Routing, Tunnel } from './context.js';

/** RFC 9110 §9.3.6: any 2xx means the tunnel is open. */
const ESTABLISHED = 'HTTP/1.1 200 Connection Established\r\n\r\n';
/** First byte of a TLS record carrying a handshake (RFC 8446 §5.1, ContentType handshake = 22). */
const TLS_HANDSHAKE = 0x16;

/** Whether a tunnel opened by `client` with `credentials` would still be let in by `routing`. */
function stillAdmitted(client: string | undefined, credentials: string | undefined) {
  return (routing: Routing): boolean =>
    routing.guard.clientAllowed(client) && routing.guard.authenticate(credentials) !== undefined;
}

/**
 * CONNECT: a tunnel to an upstream host is opened towards the proxy itself, which reads the
 * requests inside (TLS terminated with a certificate from the interception CA, or plain HTTP such
 * as undici's ProxyAgent sends for http:// URLs) so the token can be injected. A host no upstream
 * serves gets a blind TCP tunnel only when the egress policy allows it; nothing is injected there.
 */
export function handleConnect(ctx: ProxyContext, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  socket.on('error', () => undefined); // a client that vanishes mid-tunnel is not our error
  const r = ctx.routing;
  const clientAddress = req.socket.remoteAddress;
  const credentials = req.headers['proxy-authorization'];
  let readmit = stillAdmitted(clientAddress, credentials);
  detach(ctx, socket, (routing) => readmit(routing));
  const refuse = (err: ProxyError): void => void ctx.answers.errorOnSocket(socket, err, 'CONNECT');
  if (!r.guard.clientAllowed(clientAddress)) {
    refuse(clientNotAllowed());
    return;
  }
  const user = proxyUser(ctx, credentials, clientAddress);
  if (user instanceof ProxyError) {
    refuse(user);
    return;
  }
  const authority = parseConnectAuthority(req.url ?? '');
  if (authority === null) {
    refuse(new ProxyError('bad_request', 'CONNECT needs host:port'));
    return;
  }
  const { host, port } = authority;
  const upstream = r.forward.route(host, port);
  if (upstream !== undefined) {
    if (r.interception === undefined && port !== 80) {
      refuse(
        new ProxyError(
          'interception_not_configured',
          `${host}:${port} is served by upstream ${upstream.name}, but a token cannot be injected into a TLS tunnel without TLS interception: configure mitm, or call http://${host}/ through the proxy instead`,
          { upstream: upstream.name },
        ),
      );
      return;
    }
    // The requests inside are each admitted under the configuration in force (admit()): a
    // reload answers the next one 407 rather than cutting the tunnel.
    readmit = () => true;
    socket.write(ESTABLISHED);
    if (head.length > 0) socket.unshift(head);
    // Until the first byte, no HTTP server timeout watches the tunnel: a client has as long as it has for its headers.
    closeWhenIdle(socket, ctx.limits.headersTimeoutSeconds);
    openInnerConnection(ctx, r.interception, socket, {
      host,
      port,
      clientAddress,
      user,
      credentials,
      admittedBy: r,
    });
    return;
  }
  const decision = r.egress.decide(host, port, 'connect');
  if (!decision.allowed) {
    refuse(
      new ProxyError('egress_denied', `CONNECT to ${host}:${port} is not allowed`, {
        host,
        port: String(port),
        rule: decision.rule,
      }),
    );
    return;
  }
  closeWhenIdle(socket, ctx.limits.tunnelIdleTimeoutSeconds);
  blindTunnel(ctx, refuse, socket, head, host, port, r.egress.lookupFor(port));
}

type Refuse = (err: ProxyError) => void;

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
    // The handshake has as long as request headers have: a client that stalls it after its
    // first byte (or trickles it) is cut off; the HTTP server's timeouts apply only after it.
    const deadline = setTimeout(() => socket.destroy(), ctx.limits.headersTimeoutSeconds * 1000);
    deadline.unref();
    tls.once('secure', () => clearTimeout(deadline));
    socket.once('close', () => clearTimeout(deadline));
    ctx.tunnels.set(tls, { ...t, proto: 'https' });
    ctx.adopt(tls);
  });
}

function blindTunnel(
  ctx: ProxyContext,
  refuse: Refuse,
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
