import { HostList } from './host-pattern.js';

export interface EgressDecision {
  readonly allowed: boolean;
  /** Which setting decided, for the refusal body and logs. */
  readonly rule: string;
}

export interface EgressSettings {
  readonly default: 'deny' | 'allow';
  readonly allow: readonly string[];
  readonly connectPorts: readonly number[];
}

/**
 * What happens to traffic for hosts no upstream serves. Allowed traffic is forwarded or tunnelled
 * plainly, never with a token. CONNECT tunnels are further limited to `connectPorts` unless an
 * allow entry names the port itself.
 */
export class EgressPolicy {
  readonly #allow: HostList;
  readonly #default: 'deny' | 'allow';
  readonly #connectPorts: ReadonlySet<number>;

  constructor(settings: EgressSettings) {
    const list = HostList.parse(settings.allow);
    if (Array.isArray(list)) throw new Error(list.join('; ')); // validated with the config
    this.#allow = list;
    this.#default = settings.default;
    this.#connectPorts = new Set(settings.connectPorts);
  }

  decide(host: string, port: number, kind: 'connect' | 'http'): EgressDecision {
    const portOk = kind === 'http' ? () => true : (p: number) => this.#connectPorts.has(p);
    if (this.#allow.allows(host, port, portOk)) return { allowed: true, rule: 'egress.allow' };
    if (kind === 'connect' && this.#allow.allows(host, port, () => true)) return { allowed: false, rule: 'egress.connectPorts' };
    if (this.#default === 'allow') {
      return portOk(port) ? { allowed: true, rule: 'egress.default: allow' } : { allowed: false, rule: 'egress.connectPorts' };
    }
    return { allowed: false, rule: 'egress.default: deny' };
  }
}
