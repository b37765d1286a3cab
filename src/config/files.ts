import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

/** Reads a file named in the config; a failure becomes a problem at `path`, never an exception. */
export function readText(file: string, path: string, problems: string[]): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    problems.push(`${path}: cannot read ${file} (${code})`);
    return undefined;
  }
}

/** Reads a secret from a file, dropping the trailing newline mounted secrets usually have. */
export function readSecretFile(file: string, baseDir: string, path: string, problems: string[]): string | undefined {
  const secret = readText(resolve(baseDir, file), path, problems)?.replace(/\r?\n$/, '');
  if (secret === '') problems.push(`${path}: ${file} is empty`);
  return secret;
}
