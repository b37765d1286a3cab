import type { ReloadInfo } from './status.js';

/** What the status page shows of the last configuration load until a reloader reports its own. */
export class ReloadRecord {
  #info: ReloadInfo;

  /** The configuration loaded at start counts as a reload of outcome `start`. */
  constructor(file: string | undefined, startedAt: number) {
    this.#info = {
      ...(file === undefined ? {} : { file }),
      lastAttemptAt: startedAt,
      lastSuccessAt: startedAt,
      lastOutcome: 'start',
    };
  }

  /** A reload through App.reload: `success`, or `rejected` when the running config stays. */
  record(outcome: 'success' | 'rejected', at: number): void {
    this.#info = {
      ...this.#info,
      lastAttemptAt: at,
      ...(outcome === 'success' ? { lastSuccessAt: at } : {}),
      lastOutcome: outcome,
    };
  }

  info(): ReloadInfo {
    return this.#info;
  }
}
