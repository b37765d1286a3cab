import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileWatch } from '../../src/reload/file-watch.js';
import { eventually } from '../helpers/time.js';

/** Real files, real inotify: the watch under test reports changes through `calls`. */
function watching(files: string[], options: { debounceMs?: number; rescanMs?: number } = {}) {
  const calls: string[][] = [];
  const watch = new FileWatch(files, {
    debounceMs: options.debounceMs ?? 30,
    rescanMs: options.rescanMs ?? 60_000,
    onChange: (changed) => calls.push([...changed]),
  });
  opened.push(watch);
  return { calls, watch };
}

const opened: FileWatch[] = [];
const dirs: string[] = [];
function tmp(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tp-watch-'));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const w of opened.splice(0)) w.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const callCount = (calls: unknown[], n: number, what: string) =>
  eventually(() => calls.length >= n, { timeoutMs: 5_000, what });

/**
 * A Kubernetes Secret volume as the kubelet writes it (atomic_writer.go): the visible names are
 * symlinks into `..data`, itself a symlink to a timestamped directory; an update writes a new
 * directory, points `..data_tmp` at it and renames that over `..data`.
 */
function kubernetesVolume(dir: string, files: Record<string, string>, generation: string): void {
  const data = join(dir, `..${generation}`);
  mkdirSync(data);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(data, name), text);
  symlinkSync(`..${generation}`, join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  for (const name of Object.keys(files)) {
    try {
      symlinkSync(join('..data', name), join(dir, name));
    } catch {
      // the visible link exists from the first generation on, as the kubelet leaves it
    }
  }
}

describe('FileWatch', () => {
  it('reports a file written in place, once, naming only that file', async () => {
    const dir = tmp();
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    writeFileSync(a, 'one');
    writeFileSync(b, 'same');
    const { calls } = watching([a, b]);
    writeFileSync(a, 'two');
    await callCount(calls, 1, 'the change of a');
    expect(calls).toEqual([[a]]);
  });

  it('reports a file replaced by a rename, as editors and mv do', async () => {
    const dir = tmp();
    const a = join(dir, 'a');
    writeFileSync(a, 'one');
    const { calls } = watching([a]);
    writeFileSync(join(dir, 'a.swp'), 'two');
    renameSync(join(dir, 'a.swp'), a);
    await callCount(calls, 1, 'the replaced file');
    expect(calls).toEqual([[a]]);
  });

  it('sees a Kubernetes ..data symlink swap, which changes no watched inode', async () => {
    const dir = tmp();
    kubernetesVolume(dir, { 'client-secret': 'old-secret', other: 'kept' }, '2026_12_08_01');
    const secret = join(dir, 'client-secret');
    const { calls } = watching([secret, join(dir, 'other')]);
    kubernetesVolume(dir, { 'client-secret': 'new-secret', other: 'kept' }, '2026_12_08_02');
    await callCount(calls, 1, 'the swapped secret');
    // `other` was swapped too, but holds the same bytes: not a change.
    expect(calls).toEqual([[secret]]);
  });

  it('reports nothing for files it does not watch, and one change for a burst of writes', async () => {
    const dir = tmp();
    const a = join(dir, 'a');
    const marker = join(dir, 'marker');
    writeFileSync(a, 'v0');
    writeFileSync(marker, 'm0');
    const { calls } = watching([a, marker], { debounceMs: 200 });
    writeFileSync(join(dir, '.a.tmp~'), 'editor scratch'); // an event, and no change to report
    for (let i = 1; i <= 5; i += 1) writeFileSync(a, `v${i}`);
    await callCount(calls, 1, 'the burst');
    writeFileSync(marker, 'm1'); // a later, separate change: the burst gave exactly one report before it
    await callCount(calls, 2, 'the marker');
    expect(calls).toEqual([[a], [marker]]);
  });

  it('reports a file that disappears and one that appears', async () => {
    const dir = tmp();
    const gone = join(dir, 'gone');
    const later = join(dir, 'later');
    writeFileSync(gone, 'here');
    const { calls } = watching([gone, later]);
    rmSync(gone);
    await callCount(calls, 1, 'the removal');
    writeFileSync(later, 'arrived');
    await callCount(calls, 2, 'the new file');
    expect(calls).toEqual([[gone], [later]]);
  });

  it('finds a change by rescanning where no event comes: a directory made after the watch began', async () => {
    const dir = tmp();
    const file = join(dir, 'mounted-later', 'ca.pem');
    const { calls } = watching([file], { rescanMs: 50 });
    mkdirSync(join(dir, 'mounted-later'));
    writeFileSync(file, 'pem');
    await callCount(calls, 1, 'the rescan');
    expect(calls).toEqual([[file]]);
  });

  it('keeps watching a directory that was replaced by a rename: later writes in the new one are seen', async () => {
    const dir = tmp();
    const certs = join(dir, 'certs');
    mkdirSync(certs);
    const ca = join(certs, 'ca.pem');
    writeFileSync(ca, 'one');
    const { calls } = watching([ca]); // no rescan within the test: events only
    mkdirSync(join(dir, 'certs.new'));
    writeFileSync(join(dir, 'certs.new', 'ca.pem'), 'two');
    renameSync(certs, join(dir, 'certs.old'));
    renameSync(join(dir, 'certs.new'), certs);
    await callCount(calls, 1, 'the replaced directory');
    writeFileSync(ca, 'three'); // in the new directory, which no watcher was opened on at first
    await callCount(calls, 2, 'a write in the new directory');
    expect(calls).toEqual([[ca], [ca]]);
  });

  it('takes the content at watch() as the new baseline and drops files no longer named', async () => {
    const dir = tmp();
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    writeFileSync(a, 'one');
    writeFileSync(b, 'one');
    const { calls, watch } = watching([a]);
    writeFileSync(a, 'two');
    watch.watch([b]); // as after a reload that read the new a: a is no longer watched
    expect(watch.files).toEqual([b]);
    writeFileSync(a, 'three');
    writeFileSync(b, 'two');
    await callCount(calls, 1, 'the change of b');
    expect(calls).toEqual([[b]]);
  });
});
