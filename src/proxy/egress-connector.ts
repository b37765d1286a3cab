import { buildConnector } from 'undici';
import type { EgressPolicy } from './egress.js';

/**
 * The connector of the egress dispatcher: names resolve through the policy's lookup for the
 * destination port (net.connect hands a lookup no port, and the guard of the proxy's own
 * listeners depends on it). One connector per port, built on first use.
 */
export function egressConnector(policy: EgressPolicy): buildConnector.connector {
  const byPort = new Map<number, buildConnector.connector>();
  return (options, callback) => {
    const given = Number(options.port); // '' for the scheme's default port
    const port = given > 0 ? given : options.protocol === 'https:' ? 443 : 80;
    let connector = byPort.get(port);
    if (connector === undefined) {
      connector = buildConnector({ lookup: policy.lookupFor(port) });
      byPort.set(port, connector);
    }
    connector(options, callback);
  };
}
