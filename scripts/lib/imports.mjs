// What compiled JavaScript imports, read from its text (no bundler, no loader hooks): the bare
// package names that dist/ needs at run time. scripts/verify-image.sh resolves them against the
// image's node_modules; test/ship/shipped-imports.test.ts checks them against package.json's
// production dependencies.
import { readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, resolve } from 'node:path';

// `import x from 'p'`, `import 'p'`, `export * from 'p'` at the start of a statement (tsc writes
// one per line), and `import('p')` with a literal specifier anywhere. TypeScript's `import type`
// is gone from the output (verbatimModuleSyntax), so whatever is left is loaded at run time.
const STATIC_IMPORT = /(?:^|[;\n])\s*(?:import|export)\s*(?:[\w*${}\s,]+?\s*from\s*)?['"]([^'"]+)['"]/g;
const DYNAMIC_IMPORT = /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g;

/** Every literal import specifier in `code`, each marked static or dynamic. */
export function importSpecifiers(code) {
  return [
    ...[...code.matchAll(STATIC_IMPORT)].map((m) => ({ spec: m[1], dynamic: false })),
    ...[...code.matchAll(DYNAMIC_IMPORT)].map((m) => ({ spec: m[1], dynamic: true })),
  ];
}

export function isRelative(spec) {
  return spec.startsWith('.') || spec.startsWith('/');
}

export function isBuiltin(spec) {
  return spec.startsWith('node:') || builtinModules.includes(spec);
}

/** The package a bare specifier names: `@scope/name` or `name`, without a subpath. */
export function packageName(spec) {
  return spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
}

/**
 * The bare imports of every file reachable from `entries` through relative imports, static and
 * dynamic alike: a dynamic import the code "guards" still breaks the command that reaches it.
 * Returns { files, imports: [{ name, spec, file, dynamic }] } with absolute file paths.
 */
export function reachableImports(entries) {
  const files = [];
  const imports = [];
  const seen = new Set();
  const queue = entries.map((entry) => resolve(entry));
  while (queue.length > 0) {
    const file = queue.shift();
    if (seen.has(file)) continue;
    seen.add(file);
    files.push(file);
    for (const { spec, dynamic } of importSpecifiers(readFileSync(file, 'utf8'))) {
      if (isRelative(spec)) queue.push(resolve(dirname(file), spec));
      else if (!isBuiltin(spec)) imports.push({ name: packageName(spec), spec, file, dynamic });
    }
  }
  return { files, imports };
}
