import type { Logger } from 'pino';
import type { Config } from '../config/load.js';
import { recordingReads } from '../config/files.js';
import { ConfigError } from '../errors.js';
import { FileWatch } from './file-watch.js';

/** What a reload acts on: the running app (src/app.ts App). */
export interface Reloadable {
  readonly logger: Logger;
  reload(next: Config, trigger?: string): Promise<string[]>;
  /** A new configuration that could not be loaded: counted and shown as a rejected reload. */
  reloadRejected(problems: readonly string[], trigger: string): void;
}

export interface ConfigReloaderOptions {
  /** Loads the configuration file anew (with the command line's overrides); throws ConfigError. */
  readonly load: () => Config;
  /** Quiet time after a file event before a reload (Kubernetes writes a rotation in several steps). */
  readonly debounceMs?: number;
  /** How often the files are compared without an event (see FileWatch). */
  readonly rescanMs?: number;
}

export const DEFAULT_DEBOUNCE_MS = 500;
export const DEFAULT_RESCAN_MS = 30_000;

/**
 * Reloads the configuration, on SIGHUP and when the config file or any file it references changes
 * (unless the config says `watch: false`): the same load, checks and swap either way. A bad new
 * file is rejected with every problem logged and the running configuration stays; the files the
 * failed load read (a missing one among them) stay watched, so fixing them reloads.
 */
export class ConfigReloader {
  readonly #app: Reloadable;
  readonly #options: Required<ConfigReloaderOptions>;
  #watch: FileWatch | undefined;
  /** Every file the configuration in force was loaded from. */
  #files: ReadonlySet<string>;

  /** `files`: what loading the running configuration read (recordingReads); `watching`: its `watch` setting. */
  constructor(app: Reloadable, files: ReadonlySet<string>, watching: boolean, options: ConfigReloaderOptions) {
    this.#app = app;
    this.#options = { debounceMs: DEFAULT_DEBOUNCE_MS, rescanMs: DEFAULT_RESCAN_MS, ...options };
    this.#files = files;
    this.#setWatching(watching, files);
  }

  /** The files watched now (none with `watch: false`). */
  get watched(): readonly string[] {
    return this.#watch?.files ?? [];
  }

  /** Loads the file anew and swaps it in; `trigger` names what asked (SIGHUP, or the changed files). */
  async reload(trigger: string): Promise<void> {
    const app = this.#app;
    app.logger.info({ event: 'config_reload_triggered', trigger }, `configuration reload triggered by ${trigger}`);
    const read = new Set<string>();
    let next: Config;
    try {
      next = recordingReads(read, this.#options.load);
    } catch (err) {
      const problems = err instanceof ConfigError ? err.problems : [(err as Error).message];
      app.reloadRejected(problems, trigger);
      app.logger.error(
        { event: 'config_reload_rejected', trigger, problems },
        'new configuration rejected: the running one stays',
      );
      // Still watched: the running configuration's files, and whatever the failed load looked for.
      this.#watch?.watch(new Set([...this.#files, ...read]));
      return;
    }
    // The new content is the baseline from now on, before the swap (which waits for the old
    // configuration's requests to drain): a change made meanwhile is a change again.
    this.#setWatching(next.watch, read);
    // App.reload swaps synchronously and then waits for the old configuration to drain, so a
    // later reload can be swapped in and finish first: the files in force are the ones of the last
    // reload called, not of the last one to settle. Its checks throw before the swap.
    const running = this.#files;
    this.#files = read;
    try {
      await app.reload(next, trigger);
    } catch (err) {
      if (this.#files === read) this.#files = running;
      this.#watch?.watch(new Set([...this.#files, ...read]));
      // A configuration the running listeners rule out was logged as rejected by the app.
      if (!(err instanceof ConfigError))
        app.logger.error({ event: 'config_reload_failed', err: (err as Error).message }, 'reload failed');
    }
  }

  close(): void {
    this.#watch?.close();
    this.#watch = undefined;
  }

  #setWatching(on: boolean, files: ReadonlySet<string>): void {
    if (!on) {
      this.close();
      return;
    }
    if (this.#watch !== undefined) {
      this.#watch.watch(files);
      return;
    }
    this.#watch = new FileWatch(files, {
      debounceMs: this.#options.debounceMs,
      rescanMs: this.#options.rescanMs,
      onChange: (changed) => void this.reload(changed.join(', ')),
    });
  }
}
