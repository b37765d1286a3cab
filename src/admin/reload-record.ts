import type { ReloadInfo } from './status.js';

/** How a reload ended: `failed` is a reload that threw past its checks (a bug, logged as config_reload_failed). */
export const RELOAD_OUTCOMES = ['success', 'rejected', 'failed'] as const;
export type ReloadOutcome = (typeof RELOAD_OUTCOMES)[number];

/** What a reload was asked by and, when it did not take effect, why: paths and messages, never content. */
export interface ReloadDetail {
  readonly trigger?: string | undefined;
  readonly problems?: readonly string[] | undefined;
}

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

  /**
   * A reload through App.reload: `success`, or `rejected` when the running config stays. `trigger`
   * and `problems` (of a rejection) replace the last ones; a success clears the problems.
   */
  record(outcome: ReloadOutcome, at: number, detail: ReloadDetail = {}): void {
    const { lastProblems: _previous, lastTrigger: _trigger, ...rest } = this.#info;
    this.#info = {
      ...rest,
      lastAttemptAt: at,
      ...(outcome === 'success' ? { lastSuccessAt: at } : {}),
      lastOutcome: outcome,
      ...(detail.trigger === undefined ? {} : { lastTrigger: detail.trigger }),
      ...(outcome === 'success' || detail.problems === undefined ? {} : { lastProblems: [...detail.problems] }),
    };
  }

  info(): ReloadInfo {
    return this.#info;
  }
}
