import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os';
import { canonicalIp } from './ip-literal.js';

type Interfaces = NodeJS.Dict<NetworkInterfaceInfo[]>;

/**
 * Where the process's own listeners (proxy and admin) can be reached: the addresses actually
 * bound, on the ports actually bound. A listener on the unspecified address (`0.0.0.0`, `::`)
 * answers on every local interface address, the pod's own IP among them, so each of those is
 * listed. Filled in after listen and shared by every configuration generation: a reload changes
 * the egress rules, not what the process listens on.
 */
export class SelfAddresses {
  /** Port → canonical addresses a listener answers on there. */
  readonly #byPort = new Map<number, { addresses: Set<string>; allLoopback: boolean }>();

  /**
   * `bound` is `server.address()` after listen. Interface addresses are read now: a pod keeps
   * its addresses for its life, and reading them per request would cost a system call each.
   */
  add(bound: { readonly address: string; readonly port: number }, interfaces: Interfaces = networkInterfaces()): void {
    const entry = this.#byPort.get(bound.port) ?? { addresses: new Set<string>(), allLoopback: false };
    const address = canonicalIp(bound.address) ?? bound.address;
    entry.addresses.add(address);
    if (address === '0.0.0.0' || address === '::') {
      // The whole of 127.0.0.0/8 is local on Linux, though an interface lists 127.0.0.1 only.
      entry.allLoopback = true;
      for (const infos of Object.values(interfaces))
        for (const info of infos ?? []) {
          const local = canonicalIp(info.address);
          if (local !== undefined) entry.addresses.add(local);
        }
    }
    this.#byPort.set(bound.port, entry);
  }

  /** Whether a canonical address and port reach one of the process's own listeners. */
  covers(address: string, port: number): boolean {
    const entry = this.#byPort.get(port);
    if (entry === undefined) return false;
    return entry.addresses.has(address) || (entry.allLoopback && (address.startsWith('127.') || address === '::1'));
  }
}
