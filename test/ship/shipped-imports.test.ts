import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { reachableImports } from '../../scripts/lib/imports.mjs';

/**
 * The image installs `dependencies` only (`npm ci --omit=dev`), so every package the shipped
 * entry points can load, statically or through `import()`, must be one of them: a devDependency
 * reachable from dist/cli.js breaks that command in the image (issue 19, finding 12: the demo
 * loaded oauth2-mock-server). scripts/verify-image.sh checks the same against the image's
 * node_modules; this needs no image. Reads the build (`npm test` builds first).
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  main: string;
  bin: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const tmp = mkdtempSync(join(tmpdir(), 'tp-imports-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const rel = (file: string) => relative(ROOT, file).split('\\').join('/');

describe('shipped imports', () => {
  it('loads, from all that dist/cli.js and dist/index.js reach, only production dependencies and node: builtins', () => {
    const entries = [pkg.main, ...Object.values(pkg.bin)].map((f) => join(ROOT, f));
    const { files, imports } = reachableImports(entries);
    // The walk reaches the commands' code, the demo's among them (`npm start` and `token-proxy demo`).
    expect(files.map(rel)).toEqual(
      expect.arrayContaining(['dist/cli.js', 'dist/index.js', 'dist/app.js', 'dist/demo/demo.js']),
    );
    expect(new Set(imports.map((i) => i.name))).toContain('undici');
    const notShipped = imports
      .filter((i) => !Object.hasOwn(pkg.dependencies, i.name))
      .map((i) => `${i.spec} (${rel(i.file)}${i.dynamic ? ', import()' : ''})`);
    expect(notShipped).toEqual([]);
  });

  it('follows relative imports, static and dynamic, and reports bare ones of each kind', () => {
    const dir = join(tmp, 'walk');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    writeFileSync(
      join(dir, 'entry.js'),
      "import { a } from './sub/a.js';\nimport 'node:fs';\nexport * from \"@scope/pkg/deep\";\nconst b = await import('./b.js');\n",
    );
    writeFileSync(join(dir, 'sub', 'a.js'), "import x from 'yaml';\nimport fs from 'fs';\nexport const a = 1;\n");
    writeFileSync(
      join(dir, 'b.js'),
      "export async function f() { return (await import('oauth2-mock-server')).OAuth2Server; }\n",
    );
    writeFileSync(join(dir, 'unreached.js'), "import 'vitest';\n");
    const { files, imports } = reachableImports([join(dir, 'entry.js')]);
    expect(files.map((f) => relative(dir, f)).sort()).toEqual(['b.js', 'entry.js', join('sub', 'a.js')]);
    expect(imports.map((i) => [i.name, i.spec, relative(dir, i.file), i.dynamic]).sort()).toEqual([
      ['@scope/pkg', '@scope/pkg/deep', 'entry.js', false],
      ['oauth2-mock-server', 'oauth2-mock-server', 'b.js', true],
      ['yaml', 'yaml', join('sub', 'a.js'), false],
    ]);
  });
});
