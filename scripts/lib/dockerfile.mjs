#!/usr/bin/env node
// Helpers for scripts/verify-image.sh, which replays the Dockerfile without a Docker engine.
//
//   plan DOCKERFILE             print the Dockerfile as a bash "plan": one df_* call per instruction
//                               (the functions are defined by verify-image.sh), stage state included
//   context SRC DST [IGNORE]    copy the build context SRC to DST, leaving out what .dockerignore excludes
//   preflight DOCKERFILE CTX    check that every COPY source taken from the build context exists
//   copy ...                    one COPY instruction, with Docker's semantics (see copyStep)
//   imports DIR                 list the packages dist/**/*.js imports that do not resolve from DIR
//
// Only what this repository's Dockerfile needs, and a little more, is understood; anything else
// (ADD, SHELL, ONBUILD, heredocs, RUN --mount other than a cache) is refused with its line number,
// so the replay never silently differs from a real build.
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  statSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join, posix, relative, sep } from 'node:path';
import process from 'node:process';
import { pathToFileURL } from 'node:url';
import { importSpecifiers, isBuiltin, isRelative, packageName } from './imports.mjs';

class DockerfileError extends Error {}

function fail(message) {
  process.stderr.write(`verify-image: FAIL: ${message}\n`);
  process.exit(1);
}

// ---------------------------------------------------------------------------------------------
// Dockerfile parsing
// ---------------------------------------------------------------------------------------------

/** Logical lines: continuations joined, comments and blank lines dropped, with their first line number. */
export function logicalLines(text) {
  const lines = text.split(/\r?\n/);
  const out = [];
  let current = null;
  let start = 0;
  lines.forEach((raw, i) => {
    const trimmed = raw.trim();
    if (
      /^#\s*escape\s*=/i.test(trimmed) &&
      out.length === 0 &&
      current === null &&
      !/^#\s*escape\s*=\s*\\\s*$/i.test(trimmed)
    ) {
      throw new DockerfileError(`line ${i + 1}: only the default escape character "\\" is supported`);
    }
    // Comment lines are removed even inside a continuation; so are empty lines.
    if (trimmed.startsWith('#') || trimmed === '') return;
    const continued = /\\\s*$/.test(raw);
    const content = continued ? raw.replace(/\\\s*$/, '') : raw;
    if (current === null) {
      current = content;
      start = i + 1;
    } else {
      current += content;
    }
    if (!continued) {
      out.push({ line: start, text: current.trim() });
      current = null;
    }
  });
  if (current !== null) out.push({ line: start, text: current.trim() });
  return out;
}

/** The JSON (exec) form of an instruction's arguments, or undefined for the shell form. */
function execForm(args) {
  if (!args.startsWith('[')) return undefined;
  try {
    const parsed = JSON.parse(args);
    if (Array.isArray(parsed) && parsed.every((a) => typeof a === 'string')) return parsed;
  } catch {
    // not JSON: shell form
  }
  return undefined;
}

/** Splits like Docker does for COPY/ENV/...: white space separates words; quotes and backslashes escape. */
export function shellWords(text) {
  const words = [];
  let word = '';
  let inWord = false;
  let quote = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote !== null) {
      if (c === quote) quote = null;
      else if (c === '\\' && quote === '"' && i + 1 < text.length) word += text[++i];
      else word += c;
      continue;
    }
    if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (c === '\\' && i + 1 < text.length) {
      word += text[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (quote !== null) throw new DockerfileError(`unterminated ${quote} quote`);
  if (inWord) words.push(word);
  return words;
}

/** $VAR, ${VAR}, ${VAR:-default} and ${VAR:+alternative}, from ARG and ENV values; \$ is a literal $. */
export function substitute(text, vars) {
  return text.replace(
    /\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (whole, name, op, word, bare) => {
      if (whole === '\\$') return '$';
      const value = vars.get(name ?? bare);
      if (op === '-') return value === undefined || value === '' ? word : value;
      if (op === '+') return value === undefined || value === '' ? '' : word;
      return value ?? '';
    },
  );
}

function flagsAndRest(args) {
  const flags = new Map();
  let rest = args;
  for (;;) {
    const m = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest);
    if (!m) break;
    flags.set(m[1], m[2] ?? 'true');
    rest = rest.slice(m[0].length);
  }
  return { flags, rest };
}

function newStage(index, name, base, parent) {
  return {
    index,
    name,
    base,
    parent: parent?.name,
    workdir: parent?.workdir ?? '/',
    env: new Map(parent?.env ?? []),
    args: new Map(),
    user: parent?.user ?? '',
    entrypoint: parent?.entrypoint,
    cmd: parent?.cmd,
    healthcheck: parent?.healthcheck,
    expose: [...(parent?.expose ?? [])],
    // What a stage built FROM an earlier stage starts with.
    inherited: parent === undefined ? undefined : { workdir: parent.workdir, env: new Map(parent.env) },
    steps: [],
  };
}

/**
 * The Dockerfile as stages of steps. Each step keeps its line number. ENV, WORKDIR and USER are
 * resolved statically (a stage built FROM another stage inherits them, as in Docker).
 */
export function parseDockerfile(text) {
  const globalArgs = new Map();
  const stages = [];
  let stage = null;
  for (const { line, text: instruction } of logicalLines(text)) {
    const m = /^(\S+)\s*([\s\S]*)$/.exec(instruction);
    const keyword = m[1].toUpperCase();
    const args = m[2].trim();
    const at = (message) => new DockerfileError(`line ${line}: ${keyword}: ${message}`);
    if (/<<-?["']?[A-Za-z_]/.test(args) && (keyword === 'RUN' || keyword === 'COPY'))
      throw at('heredocs are not supported by the replay');
    if (keyword === 'ARG' && stage === null) {
      for (const word of shellWords(args)) {
        const [name, ...value] = word.split('=');
        globalArgs.set(name, value.length > 0 ? value.join('=') : undefined);
      }
      continue;
    }
    if (keyword === 'FROM') {
      const { rest } = flagsAndRest(args);
      const words = shellWords(substitute(rest, globalArgs));
      if (words.length !== 1 && !(words.length === 3 && words[1].toUpperCase() === 'AS'))
        throw at(`expected "FROM image [AS name]", got "${args}"`);
      const base = words[0];
      const parent = stages.find((s) => s.name === base);
      stage = newStage(stages.length, words[2] ?? String(stages.length), base, parent);
      stages.push(stage);
      continue;
    }
    if (stage === null) throw at('comes before the first FROM');
    const vars = new Map([...globalArgs, ...stage.args, ...stage.env].filter(([, v]) => v !== undefined));
    switch (keyword) {
      case 'ARG':
        for (const word of shellWords(args)) {
          const [name, ...value] = word.split('=');
          stage.args.set(name, value.length > 0 ? substitute(value.join('='), vars) : globalArgs.get(name));
        }
        break;
      case 'ENV': {
        const words = shellWords(args);
        if (words.length > 0 && !words[0].includes('=')) {
          // Legacy form: ENV key value with spaces
          const [, key, value] = /^(\S+)\s+([\s\S]*)$/.exec(args) ?? [];
          if (key === undefined) throw at(`expected "ENV key=value", got "${args}"`);
          stage.env.set(key, substitute(value, vars));
        } else {
          for (const word of words) {
            const eq = word.indexOf('=');
            if (eq <= 0) throw at(`expected key=value, got "${word}"`);
            stage.env.set(word.slice(0, eq), substitute(word.slice(eq + 1), vars));
          }
        }
        stage.steps.push({ kind: 'env', line, env: new Map(stage.env) });
        break;
      }
      case 'WORKDIR': {
        const path = substitute(args, vars);
        stage.workdir = posix.resolve(stage.workdir, path);
        stage.steps.push({ kind: 'workdir', line, path: stage.workdir });
        break;
      }
      case 'USER':
        stage.user = substitute(args, vars);
        break;
      case 'COPY': {
        const { flags, rest } = flagsAndRest(args);
        for (const flag of flags.keys()) {
          if (!['from', 'chown', 'chmod', 'link'].includes(flag)) throw at(`--${flag} is not supported by the replay`);
        }
        const words = (execForm(rest) ?? shellWords(rest)).map((w) => substitute(w, vars));
        if (words.length < 2) throw at('needs at least one source and a destination');
        const dest = words[words.length - 1];
        const from = flags.get('from');
        if (from !== undefined && !stages.some((s) => s.name === from && s !== stage)) {
          throw at(`--from=${from} names no earlier stage (images are not supported by the replay)`);
        }
        stage.steps.push({
          kind: 'copy',
          line,
          from: from ?? '',
          chown: flags.get('chown') ?? '',
          chmod: flags.get('chmod') ?? '',
          // A relative destination is relative to WORKDIR; the trailing "/" (a directory) is kept.
          dest: posix.resolve(stage.workdir, dest) + (dest.endsWith('/') && dest !== '/' ? '/' : ''),
          sources: words.slice(0, -1),
        });
        break;
      }
      case 'RUN': {
        const { flags, rest } = flagsAndRest(args);
        for (const [flag, value] of flags) {
          if (!(flag === 'mount' && /(^|,)type=cache(,|$)/.test(value)))
            throw at(`--${flag}=${value} is not supported by the replay`);
        }
        const exec = execForm(rest);
        const words = exec ?? [rest];
        // A RUN step is replayed on this machine inside the stage's directory: an absolute path
        // would reach this machine's own files instead of the image's.
        const absolute = words.find((w) => /(^|[\s;&|=('"`])\/(?!dev\/null\b)/.test(w));
        if (absolute !== undefined)
          throw at(`uses an absolute path ("${absolute}"): the replay runs RUN steps on this machine and refuses that`);
        stage.steps.push({ kind: 'run', line, user: stage.user, exec: exec !== undefined, words });
        break;
      }
      case 'EXPOSE':
        stage.expose.push(...shellWords(substitute(args, vars)));
        break;
      case 'ENTRYPOINT':
      case 'CMD': {
        const exec = execForm(args);
        const value = exec === undefined ? { exec: false, words: [args] } : { exec: true, words: exec };
        if (keyword === 'ENTRYPOINT') {
          stage.entrypoint = value;
          stage.cmd = undefined; // Docker: ENTRYPOINT resets a CMD inherited from the base
        } else {
          stage.cmd = value;
        }
        break;
      }
      case 'HEALTHCHECK': {
        const { flags, rest } = flagsAndRest(args);
        if (/^NONE$/i.test(rest)) {
          stage.healthcheck = undefined;
          break;
        }
        const cm = /^CMD\s+([\s\S]*)$/i.exec(rest);
        if (!cm) throw at('expected "HEALTHCHECK [options] CMD command" or "HEALTHCHECK NONE"');
        const exec = execForm(cm[1]);
        stage.healthcheck = { options: Object.fromEntries(flags), exec: exec !== undefined, words: exec ?? [cm[1]] };
        break;
      }
      case 'LABEL':
      case 'STOPSIGNAL':
      case 'VOLUME':
      case 'MAINTAINER':
        break;
      default:
        throw at('is not supported by the replay');
    }
  }
  if (stages.length === 0) throw new DockerfileError('no FROM instruction');
  return stages;
}

/** Single-quotes a word for bash. */
export function shQuote(word) {
  return `'${String(word).replace(/'/g, `'\\''`)}'`;
}

/** The plan verify-image.sh sources: df_stage, df_workdir, df_env, df_copy, df_run, then the final stage's settings. */
export function plan(stages) {
  const out = [];
  const call = (...words) => out.push(words.map(shQuote).join(' '));
  for (const stage of stages) {
    call('df_stage', stage.index, stage.name, stage.base, stage.parent ?? '');
    if (stage.inherited !== undefined) {
      call('df_workdir', 0, stage.inherited.workdir);
      call('df_env', 0, ...[...stage.inherited.env].map(([k, v]) => `${k}=${v}`));
    }
    for (const step of stage.steps) {
      if (step.kind === 'workdir') call('df_workdir', step.line, step.path);
      else if (step.kind === 'env') call('df_env', step.line, ...[...step.env].map(([k, v]) => `${k}=${v}`));
      else if (step.kind === 'copy')
        call('df_copy', step.line, step.from, step.chown, step.chmod, step.dest, ...step.sources);
      else if (step.kind === 'run') call('df_run', step.line, step.user, step.exec ? 'exec' : 'shell', ...step.words);
    }
  }
  const last = stages[stages.length - 1];
  // The final stage's runtime settings.
  call('df_final_workdir', last.workdir);
  call('df_final_env', ...[...last.env].map(([k, v]) => `${k}=${v}`));
  call('df_final_user', last.user);
  call('df_final_expose', ...last.expose);
  const form = (v) => (v === undefined ? ['none'] : [v.exec ? 'exec' : 'shell', ...v.words]);
  call('df_final_entrypoint', ...form(last.entrypoint));
  call('df_final_cmd', ...form(last.cmd));
  call('df_final_healthcheck', ...form(last.healthcheck));
  return `${out.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// .dockerignore and the build context
// ---------------------------------------------------------------------------------------------

/** Go's filepath.Match plus Docker's "**", as a regular expression over a slash-separated path. */
function patternRegExp(pattern) {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*' && pattern[i + 1] === '*') {
      i++;
      if (pattern[i + 1] === '/') {
        i++;
        re += '(?:.*/)?';
      } else {
        re += '.*';
      }
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) {
        re += '\\[';
      } else {
        re += `[${pattern
          .slice(i + 1, end)
          .replace(/^\^|^!/, '^')
          .replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else if (c === '\\' && i + 1 < pattern.length) re += `\\${pattern[++i]}`;
    else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export function parseDockerignore(text) {
  const patterns = [];
  for (const raw of text.split(/\r?\n/)) {
    let line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const negate = line.startsWith('!');
    if (negate) line = line.slice(1).trim();
    line = posix.normalize(line.replace(/^\/+/, '')).replace(/\/+$/, '');
    if (line === '.' || line === '') continue;
    const wild = line.search(/[*?[\\]/);
    patterns.push({ negate, regexp: patternRegExp(line), literalPrefix: wild < 0 ? line : line.slice(0, wild) });
  }
  return patterns;
}

/** Docker's rule: the last pattern that matches the path or one of its parent directories decides. */
export function isExcluded(patterns, relPath) {
  const parts = relPath.split('/');
  let excluded = false;
  for (const p of patterns) {
    let matched = false;
    for (let n = parts.length; n > 0 && !matched; n--) matched = p.regexp.test(parts.slice(0, n).join('/'));
    if (matched) excluded = !p.negate;
  }
  return excluded;
}

/** An excluded directory is still walked when an exception ("!pattern") could re-include something in it. */
function mayHoldExceptions(patterns, relDir) {
  const dir = `${relDir}/`;
  return patterns.some((p) => p.negate && (dir.startsWith(p.literalPrefix) || p.literalPrefix.startsWith(dir)));
}

export function copyContext(src, dst, patterns) {
  mkdirSync(dst, { recursive: true });
  const walk = (rel) => {
    for (const entry of readdirSync(join(src, rel), { withFileTypes: true })) {
      const relPath = rel === '' ? entry.name : `${rel}/${entry.name}`;
      const excluded = isExcluded(patterns, relPath);
      if (entry.isDirectory()) {
        if (excluded && !mayHoldExceptions(patterns, relPath)) continue;
        if (!excluded) {
          mkdirSync(join(dst, relPath), { recursive: true });
          chmodSync(join(dst, relPath), statSync(join(src, relPath)).mode & 0o7777);
        }
        walk(relPath);
      } else if (!excluded) {
        mkdirSync(dirname(join(dst, relPath)), { recursive: true });
        cpSync(join(src, relPath), join(dst, relPath), { verbatimSymlinks: true, preserveTimestamps: true });
      }
    }
  };
  walk('');
}

// ---------------------------------------------------------------------------------------------
// COPY
// ---------------------------------------------------------------------------------------------

const hasWildcard = (p) => /[*?[]/.test(p);

/** The files a COPY source names inside `root`: itself, or a wildcard's matches (Go filepath.Match). */
function expandSource(root, source) {
  const rel = posix.normalize(source.replace(/^\/+/, '')).replace(/\/+$/, '') || '.';
  if (!hasWildcard(rel)) return existsSync(join(root, rel)) || isSymlink(join(root, rel)) ? [rel] : [];
  const parts = rel.split('/');
  let matches = ['.'];
  for (const part of parts) {
    const next = [];
    for (const dir of matches) {
      if (!hasWildcard(part)) {
        const candidate = dir === '.' ? part : `${dir}/${part}`;
        if (existsSync(join(root, candidate))) next.push(candidate);
        continue;
      }
      if (!existsSync(join(root, dir)) || !statSync(join(root, dir)).isDirectory()) continue;
      const re = patternRegExp(part);
      for (const name of readdirSync(join(root, dir)).sort())
        if (re.test(name)) next.push(dir === '.' ? name : `${dir}/${name}`);
    }
    matches = next;
  }
  return matches;
}

function isSymlink(path) {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

/**
 * One COPY, as Docker does it: a directory source copies its contents; several sources, a wildcard
 * or a destination ending in "/" make the destination a directory; missing sources are an error.
 */
export function copyStep({ sourceRoot, sourceLabel, stageRoot, dest, sources, chmod, chown }) {
  const problems = [];
  const expanded = sources.map((s) => {
    const found = expandSource(sourceRoot, s);
    if (found.length === 0) problems.push(`"${s}" ${sourceLabel}`);
    return found;
  });
  if (problems.length > 0) throw new DockerfileError(problems.join('; '));
  const all = expanded.flat();
  const destPath = join(stageRoot, dest);
  const destIsDir =
    dest.endsWith('/') ||
    all.length > 1 ||
    sources.some(hasWildcard) ||
    (existsSync(destPath) && statSync(destPath).isDirectory());
  const written = [];
  for (const rel of all) {
    const from = join(sourceRoot, rel);
    if (statSync(from).isDirectory()) {
      mkdirSync(destPath, { recursive: true });
      cpSync(from, destPath, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true, force: true });
      written.push(destPath);
    } else {
      const target = destIsDir ? join(destPath, basename(rel)) : destPath;
      mkdirSync(dirname(target), { recursive: true });
      cpSync(from, target, { verbatimSymlinks: true, preserveTimestamps: true, force: true });
      written.push(target);
    }
  }
  const walkAll = (path, fn) => {
    fn(path);
    if (lstatSync(path).isDirectory()) for (const e of readdirSync(path)) walkAll(join(path, e), fn);
  };
  if (chmod !== '') {
    if (!/^[0-7]{3,4}$/.test(chmod))
      throw new DockerfileError(`--chmod=${chmod}: only octal modes are supported by the replay`);
    for (const w of written) walkAll(w, (p) => chmodSync(p, Number.parseInt(chmod, 8)));
  }
  if (chown !== '' && process.getuid?.() === 0) {
    const [u, g = u] = chown.split(':');
    if (!/^\d+$/.test(u) || !/^\d+$/.test(g))
      throw new DockerfileError(`--chown=${chown}: only numeric ids are supported by the replay`);
    for (const w of written) walkAll(w, (p) => chownSync(p, Number(u), Number(g)));
  }
}

// ---------------------------------------------------------------------------------------------
// Imports of the shipped code
// ---------------------------------------------------------------------------------------------

function jsFiles(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...jsFiles(path));
    else if (/\.(m?js|cjs)$/.test(entry.name)) out.push(path);
  }
  return out;
}

/**
 * Bare package specifiers imported by the JavaScript under `appDir/dist` that do not resolve from
 * where the file is, static imports and literal `import()`s alike: a "guarded" dynamic import of a
 * package the image lacks still breaks the command that reaches it (issue 19, finding 12).
 */
export function unresolvedImports(appDir) {
  const missing = [];
  for (const file of jsFiles(join(appDir, 'dist'))) {
    const require = createRequire(file);
    for (const { spec, dynamic } of importSpecifiers(readFileSync(file, 'utf8'))) {
      if (isRelative(spec) || isBuiltin(spec)) continue;
      const name = packageName(spec);
      try {
        require.resolve(`${name}/package.json`);
      } catch {
        try {
          require.resolve(name);
        } catch {
          missing.push(`${name} (${relative(appDir, file).split(sep).join('/')}${dynamic ? ', import()' : ''})`);
        }
      }
    }
  }
  return [...new Set(missing)];
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

function main(argv) {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'plan':
        process.stdout.write(plan(parseDockerfile(readFileSync(rest[0], 'utf8'))));
        break;
      case 'context': {
        const [src, dst, ignoreFile] = rest;
        const patterns =
          ignoreFile !== undefined && existsSync(ignoreFile) ? parseDockerignore(readFileSync(ignoreFile, 'utf8')) : [];
        copyContext(src, dst, patterns);
        break;
      }
      case 'preflight': {
        // Every COPY from the build context, checked before any step runs: a missing file fails in seconds.
        const [dockerfile, context] = rest;
        const problems = [];
        for (const stage of parseDockerfile(readFileSync(dockerfile, 'utf8'))) {
          for (const step of stage.steps) {
            if (step.kind !== 'copy' || step.from !== '') continue;
            for (const source of step.sources) {
              if (expandSource(context, source).length === 0) {
                problems.push(
                  `${basename(dockerfile)}:${step.line}: COPY source "${source}" is not in the build context (missing from the checkout, or excluded by .dockerignore)`,
                );
              }
            }
          }
        }
        if (problems.length > 0) fail(problems.join('\n'));
        break;
      }
      case 'copy': {
        // copy LINE DOCKERFILE-NAME SOURCE-ROOT SOURCE-LABEL STAGE-ROOT CHOWN CHMOD DEST SOURCE...
        const [line, name, sourceRoot, sourceLabel, stageRoot, chown, chmod, dest, ...sources] = rest;
        try {
          copyStep({ sourceRoot, sourceLabel, stageRoot, dest, sources, chmod, chown });
        } catch (err) {
          if (err instanceof DockerfileError) fail(`${name}:${line}: COPY failed: ${err.message}`);
          throw err;
        }
        break;
      }
      case 'imports': {
        for (const m of unresolvedImports(rest[0])) process.stdout.write(`${m}\n`);
        break;
      }
      default:
        fail(`dockerfile.mjs: unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof DockerfileError)
      fail(`${command === 'plan' || command === 'preflight' ? basename(rest[0]) : 'Dockerfile'}: ${err.message}`);
    throw err;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main(process.argv.slice(2));
