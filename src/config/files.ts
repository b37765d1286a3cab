import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';

/** The files a configuration load is reading, while one is under way (see recordingReads). */
let readLog: Set<string> | undefined;

/**
 * Runs `load` (a synchronous configuration load) and records, into `files`, every file it read or
 * tried to read: the config file and everything it references. Recorded even when the load
 * throws, so that a file whose absence made a reload fail is watched until it appears. Every
 * configuration file is read through readText, so a new file setting is recorded with no more code.
 */
export function recordingReads<T>(files: Set<string>, load: () => T): T {
  const outer = readLog;
  readLog = files;
  try {
    return load();
  } finally {
    readLog = outer;
  }
}

/** Reads a file named in the config; a failure becomes a problem at `path`, never an exception. */
export function readText(file: string, path: string, problems: string[]): string | undefined {
  readLog?.add(resolve(file));
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    problems.push(`${path}: cannot read ${file} (${code})`);
    return undefined;
  }
}

/**
 * Checks that a file the proxy reads afresh at every use (an actor token the platform rotates in
 * place) can be read now. Recorded only when it cannot: its rotation needs no reload (a reload
 * would only replace the connection pools), but its arrival must reload a configuration that
 * was rejected for its absence.
 */
export function checkReadableSecretFile(file: string, baseDir: string, path: string, problems: string[]): void {
  const before = problems.length;
  const outer = readLog;
  readLog = undefined;
  try {
    readSecretFile(file, baseDir, path, problems);
  } finally {
    readLog = outer;
  }
  if (problems.length > before) readLog?.add(resolve(baseDir, file));
}

/** Reads a secret from a file, dropping the trailing newline mounted secrets usually have. */
export function readSecretFile(file: string, baseDir: string, path: string, problems: string[]): string | undefined {
  const secret = readText(resolve(baseDir, file), path, problems)?.replace(/\r?\n$/, '');
  if (secret === '') problems.push(`${path}: ${file} is empty`);
  return secret;
}

/**
 * Who besides the owner may touch a private key file with `mode`, or undefined when nobody may.
 * A key owned by root may be readable (only readable) by its group: the layout of /etc/ssl/private
 * (group ssl-cert) and of a Kubernetes Secret mounted with an fsGroup, which PostgreSQL accepts
 * for its own key for the same reason.
 */
export function privateKeyModeProblem(mode: number, ownerUid: number): string | undefined {
  const group = (mode & (ownerUid === 0 ? 0o030 : 0o070)) !== 0;
  const others = (mode & 0o007) !== 0;
  if (group && others) return 'its group and others';
  if (group) return 'its group';
  return others ? 'others' : undefined;
}

/**
 * Reads a private key file, refusing one that others than its owner can read or change: the CA
 * key of TLS interception can impersonate any site to the clients that trust it.
 */
export function readPrivateKeyFile(file: string, path: string, problems: string[]): string | undefined {
  if (process.platform !== 'win32') {
    try {
      const { mode, uid } = statSync(file);
      const who = privateKeyModeProblem(mode, uid);
      if (who !== undefined) {
        const octal = `0${(mode & 0o777).toString(8).padStart(3, '0')}`;
        problems.push(`${path}: ${file} is accessible to ${who} (mode ${octal}): chmod 600 ${file}`);
        return undefined;
      }
    } catch {
      // readText reports a missing or unreadable file
    }
  }
  return readText(file, path, problems);
}
