import { createHash } from 'node:crypto';
import { readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';

/** What a watched file holds now: a digest of its bytes, or the reason it cannot be read. */
function fingerprint(file: string): string {
  try {
    return createHash('sha256').update(readFileSync(file)).digest('base64');
  } catch (err) {
    return `unreadable:${(err as NodeJS.ErrnoException).code ?? 'error'}`;
  }
}

/** A directory's identity: a directory replaced by a rename has the same path and a new inode. */
function identity(dir: string): string | undefined {
  try {
    const { dev, ino } = statSync(dir);
    return `${dev}:${ino}`;
  } catch {
    return undefined;
  }
}

/** A directory's watcher, and the directory (by identity) it was opened on. */
interface DirWatch {
  readonly watcher: FSWatcher;
  readonly identity: string | undefined;
}

export interface FileWatchOptions {
  /** Quiet time after the last event before the files are compared (a rotation writes several). */
  readonly debounceMs: number;
  /**
   * How often the files are compared even without an event: inotify misses changes on some
   * mounts (NFS, some FUSE volumes) and when a watched directory is itself replaced.
   */
  readonly rescanMs: number;
  /** Called with the files whose content changed (or that appeared or disappeared), in watch order. */
  readonly onChange: (changed: readonly string[]) => void;
}

/**
 * Watches files for a change of content, however it is made: written in place, replaced by a
 * rename (editors, `mv`), or swapped in as Kubernetes updates a mounted Secret or ConfigMap: the
 * files there are symlinks through `..data`, itself a symlink that is atomically renamed to a new
 * timestamped directory. Watching a file's inode misses that swap, so the directories holding the
 * files are watched and every event only prompts a comparison of what each file reads as now
 * (through its symlinks) with what it read as before; a change of content, and nothing else,
 * is reported. Editors' temporary files and unrelated files in the same directory cost one
 * comparison and report nothing.
 */
export class FileWatch {
  readonly #options: FileWatchOptions;
  #seen = new Map<string, string>();
  #watchers = new Map<string, DirWatch>();
  #timer: NodeJS.Timeout | undefined;
  readonly #rescan: NodeJS.Timeout;
  #closed = false;

  constructor(files: Iterable<string>, options: FileWatchOptions) {
    this.#options = options;
    this.watch(files);
    this.#rescan = setInterval(() => this.#compare(), options.rescanMs);
    this.#rescan.unref();
  }

  /** The files watched now. */
  get files(): readonly string[] {
    return [...this.#seen.keys()];
  }

  /**
   * Watches exactly `files` from now on, taking what they hold now as the new baseline (after a
   * reload, successful or not: the same content does not trigger it again).
   */
  watch(files: Iterable<string>): void {
    if (this.#closed) return;
    const next = new Map<string, string>();
    for (const file of files) next.set(file, fingerprint(file));
    this.#seen = next;
    const dirs = new Set([...next.keys()].map((f) => dirname(f)));
    for (const [dir, { watcher }] of this.#watchers)
      if (!dirs.has(dir)) {
        watcher.close();
        this.#watchers.delete(dir);
      }
    for (const dir of dirs) if (!this.#watchers.has(dir)) this.#watchDir(dir);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    clearInterval(this.#rescan);
    for (const { watcher } of this.#watchers.values()) watcher.close();
    this.#watchers.clear();
  }

  #watchDir(dir: string): void {
    try {
      const watcher = watch(dir, { persistent: false }, () => this.#poke());
      // A directory that goes away (an unmounted volume) stops its watcher; the rescan still compares.
      watcher.on('error', () => {
        watcher.close();
        if (this.#watchers.get(dir)?.watcher === watcher) this.#watchers.delete(dir);
      });
      this.#watchers.set(dir, { watcher, identity: identity(dir) });
    } catch {
      // A directory that does not exist yet: the rescan notices its files when they appear.
    }
  }

  /** Any event in a watched directory: compare once things have been quiet for debounceMs. */
  #poke(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#compare(), this.#options.debounceMs);
    this.#timer.unref();
  }

  #compare(): void {
    if (this.#closed) return;
    const changed: string[] = [];
    for (const [file, before] of this.#seen) {
      const now = fingerprint(file);
      if (now !== before) {
        changed.push(file);
        this.#seen.set(file, now);
      }
    }
    // Directories that were missing at the last watch() may exist now, and a directory replaced
    // by a rename (or removed and made again) is a new inode that the old watcher does not see:
    // inotify follows the inode, so its watcher is opened again on what the path names now.
    for (const dir of new Set([...this.#seen.keys()].map((f) => dirname(f)))) {
      const open = this.#watchers.get(dir);
      if (open !== undefined && open.identity !== undefined && open.identity === identity(dir)) continue;
      open?.watcher.close();
      this.#watchers.delete(dir);
      this.#watchDir(dir);
    }
    if (changed.length > 0) this.#options.onChange(changed);
  }
}
