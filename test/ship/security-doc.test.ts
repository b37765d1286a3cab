import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * SECURITY.md's "Tests" section names, file by file, the tests that try each control. It is
 * written by hand from the test titles; this keeps it true: every title it lists must be a test
 * of that file as vitest collects it, and each heading's count must match its list.
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

interface ListedFile {
  readonly path: string;
  readonly count: number;
  readonly titles: string[];
}

/** Markdown's escapes and entities in a title, undone. */
const plain = (s: string): string =>
  s
    .replace(/\\([\\`*_{}[\]()#+\-.!|<>])/g, '$1')
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&amp;', '&');

function listedInSecurityDoc(): ListedFile[] {
  const doc = readFileSync(join(ROOT, 'SECURITY.md'), 'utf8');
  const files: ListedFile[] = [];
  let file: ListedFile | undefined;
  let group: string | undefined;
  for (const line of doc.slice(doc.indexOf('\n## Tests')).split('\n')) {
    const heading = /^### `([^`]+)` \((\d+)\)$/.exec(line);
    const groupLine = /^- \*\*(.+)\*\*$/.exec(line);
    const nested = /^ {2}- (.+)$/.exec(line);
    const single = /^- (.+)$/.exec(line);
    if (heading) {
      file = { path: heading[1] as string, count: Number(heading[2]), titles: [] };
      files.push(file);
      group = undefined;
    } else if (groupLine) group = plain(groupLine[1] as string);
    else if (nested && file) file.titles.push(`${group ?? ''} > ${plain(nested[1] as string)}`);
    else if (single && file) file.titles.push(plain(single[1] as string));
  }
  return files;
}

describe('SECURITY.md', () => {
  it('lists only tests that exist, under the file that holds them, with true counts', () => {
    const files = listedInSecurityDoc();
    expect(files.length).toBeGreaterThan(10);
    const dir = mkdtempSync(join(tmpdir(), 'security-doc-'));
    try {
      const out = join(dir, 'list.json');
      const vitest = join(ROOT, 'node_modules', 'vitest', 'vitest.mjs');
      const run = spawnSync(process.execPath, [vitest, 'list', `--json=${out}`, ...files.map((f) => f.path)], {
        cwd: ROOT,
        encoding: 'utf8',
      });
      expect(run.status, run.stderr).toBe(0);
      const collected = JSON.parse(readFileSync(out, 'utf8')) as { name: string; file: string }[];
      const problems: string[] = [];
      for (const f of files) {
        const names = new Set(collected.filter((t) => t.file === join(ROOT, f.path)).map((t) => t.name));
        if (f.titles.length !== f.count) problems.push(`${f.path}: heading says ${f.count}, ${f.titles.length} listed`);
        for (const title of f.titles) if (!names.has(title)) problems.push(`${f.path}: no test "${title}"`);
      }
      expect(problems).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000); // vitest list collects every file it names: slow on a busy 2-core machine
});
