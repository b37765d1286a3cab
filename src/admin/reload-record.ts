import type { ReloadInfo } from './status.js';

/** How a reload ended: `failed` is a reload that threw past its checks (a bug, logged as config_reload_failed). */
export const RELOAD_OUTCOMES = ['success', 'rejected', 'failed'] as const;
export type ReloadOutcome = (typeof RELOAD_OUTCOMES)[number];

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
  record(outcome: ReloadOutcome, at: number): void {
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
