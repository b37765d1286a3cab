import type { SharedEntry } from './shared-store.js';

/**
 * What one replica knows of its key's entry in the shared tier: which version it last adopted or
 * wrote, the highest it has seen, and whether it renewed on its own since (while the tier was away,
 * or after its write was refused).
 */
export class SharedView {
  /** The version of the entry this replica last adopted or wrote (0: none yet). */
  #version = 0;
  /** The highest version seen for the key: an entry older than it is stale. */
  #highest = 0;
  /**
   * This replica renewed after the entry of `#version`: that entry's refresh token is spent and its
   * access token older than this replica's, so neither is taken from it.
   */
  #renewedAlone = false;

  get renewedAlone(): boolean {
    return this.#renewedAlone;
  }

  /**
   * Whether `entry` may be used: not older than one already seen (AES-GCM proves who sealed an
   * entry, not when: anyone who can write Redis could put back an old one and make this replica
   * spend an already-rotated refresh token), and not the state from before this replica's own
   * renewal.
   */
  admits(entry: SharedEntry): boolean {
    if (entry.version < this.#highest) return false;
    return !(this.#renewedAlone && entry.version <= this.#version);
  }

  /** Note an entry read from the store (whether used or not). */
  saw(entry: SharedEntry | undefined): void {
    if (entry !== undefined && entry.version > this.#highest) this.#highest = entry.version;
  }

  /** The version to write after `entry`: above everything seen, so no replica takes the new entry for a replay. */
  nextVersion(entry: SharedEntry | undefined): number {
    return Math.max(entry?.version ?? 0, this.#highest) + 1;
  }

  /** The replica now holds the entry of `version` (adopted, or written by it). */
  holds(version: number): void {
    this.#version = version;
    if (version > this.#highest) this.#highest = version;
    this.#renewedAlone = false;
  }

  /** The replica renewed without the shared tier knowing (away, or the write was refused after `entry`). */
  renewedWithout(entry?: SharedEntry): void {
    if (entry !== undefined) this.#version = Math.max(this.#version, entry.version);
    this.#renewedAlone = true;
  }

  /** The version waiters compare against: nothing at or below it is news. */
  get seen(): number {
    return this.#highest;
  }
}
