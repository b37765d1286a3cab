import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { isExcluded, parseDockerfile, parseDockerignore, plan } from '../../scripts/lib/dockerfile.mjs';

/**
 * The container image, without a Docker engine: the Dockerfile's content is checked here, and
 * scripts/verify-image.sh replays it from a clean checkout of HEAD (see the script's header).
 * The tests below show that the script fails on a missing COPY source, a missing COPY --from
 * path and a runtime import of a devDependency (seconds each; they take this working tree as the
 * build context, VERIFY_IMAGE_CONTEXT, so they need no git checkout). The full replay, which installs
 * the dependencies from the npm registry and serves a request (about a minute, more under the
 * load of the whole suite), runs in .ci/run as `npm run verify:image`, and here only with
 * TOKEN_PROXY_IMAGE_REPLAY=1.
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCRIPT = join(ROOT, 'scripts', 'verify-image.sh');
const DOCKERFILE = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const stages = parseDockerfile(DOCKERFILE);
const runtime = stages[stages.length - 1]!;
const tmp = mkdtempSync(join(tmpdir(), 'tp-image-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function verifyImage(env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', [SCRIPT], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    child.on('close', (code) => resolve({ code, output }));
  });
}

function writeDockerfile(name: string, text: string): string {
  const file = join(tmp, name);
  writeFileSync(file, text);
  return file;
}

describe('Dockerfile', () => {
  it('builds on an official Node.js 24 slim image pinned to a release, in a build and a runtime stage', () => {
    expect(stages.map((s) => s.name)).toEqual(['build', 'runtime']);
    for (const stage of stages) expect(stage.base).toMatch(/^node:24\.\d+\.\d+-[a-z]+-slim$/);
    const runs = (s: (typeof stages)[number]) =>
      s.steps.flatMap((step) => (step.kind === 'run' ? [step.words.join(' ')] : []));
    expect(runs(runtime).join('\n')).toMatch(/npm ci --omit=dev/);
    expect(runs(runtime).join('\n')).not.toMatch(/npm (ci|install)(?![^\n]*--omit=dev)/);
    expect(runtime.steps).toContainEqual(
      expect.objectContaining({ kind: 'copy', from: 'build', sources: ['/app/dist'] }),
    );
  });

  it('runs as a numeric non-root USER, EXPOSEs both listeners, checks /healthz, uses the exec form', () => {
    expect(runtime.user).toMatch(/^[1-9]\d*(:\d+)?$/);
    expect(runtime.expose).toEqual(['8080', '9464']);
    expect(runtime.healthcheck?.exec).toBe(true);
    expect(runtime.healthcheck?.words.join(' ')).toMatch(/\/healthz/);
    expect(runtime.entrypoint).toEqual({ exec: true, words: ['node', '--initial-old-space-size=64', 'dist/cli.js'] });
    expect(runtime.cmd).toEqual({ exec: true, words: ['serve'] });
    expect(runtime.env.get('TOKEN_PROXY_CONFIG')).toBe('/etc/token-proxy/config.yaml');
    expect(runtime.env.get('NODE_ENV')).toBe('production');
  });

  it('sends only what the COPYs need to the build context (.dockerignore is an allow-list)', () => {
    const patterns = parseDockerignore(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
    for (const path of [
      'package.json',
      'package-lock.json',
      'tsconfig.build.json',
      'src/cli.ts',
      'src/config/load.ts',
      'config/token-proxy.example.yaml',
    ]) {
      expect(isExcluded(patterns, path), path).toBe(false);
    }
    for (const path of [
      'node_modules/yaml/package.json',
      'dist/cli.js',
      '.git/config',
      '.env',
      'certs/ca-key.pem',
      'test/cli.test.ts',
      '.tmp/x',
      'config/kubernetes/deployment.yaml',
    ]) {
      expect(isExcluded(patterns, path), path).toBe(true);
    }
  });

  it('is turned into a replay plan; what the replay cannot do faithfully is refused with its line', () => {
    expect(plan(stages)).toMatch(/^'df_copy' '\d+' 'build' '' '' '\/app\/dist' '\/app\/dist'$/m);
    expect(() => parseDockerfile('FROM node:24\nADD https://example.com/x /x\n')).toThrow(
      /line 2: ADD: is not supported/,
    );
    expect(() => parseDockerfile('FROM node:24\nRUN rm -rf /usr/lib\n')).toThrow(/line 2: RUN: uses an absolute path/);
    expect(() => parseDockerfile('FROM node:24\nCOPY --from=nothing /a /b\n')).toThrow(/names no earlier stage/);
  });
});

describe('scripts/verify-image.sh', () => {
  // The full replay (about a minute: production npm ci under Node 24) runs in .ci/run as
  // `npm run verify:image`; here, the ways it must fail.
  it('fails, before any step runs, on a COPY source missing from the build context', { timeout: 60_000 }, async () => {
    const broken = DOCKERFILE.replace('config/token-proxy.example.yaml', 'config/token-proxy.missing.yaml');
    expect(broken).not.toBe(DOCKERFILE);
    const { code, output } = await verifyImage({
      DOCKERFILE: writeDockerfile('Dockerfile.missing', broken),
      VERIFY_IMAGE_CONTEXT: ROOT,
    });
    expect(output).toMatch(
      /Dockerfile\.missing:\d+: COPY source "config\/token-proxy\.missing\.yaml" is not in the build context/,
    );
    expect(output).not.toMatch(/RUN npm/);
    expect(code).not.toBe(0);
  });

  it('fails on a COPY --from path the earlier stage does not have', { timeout: 60_000 }, async () => {
    const file = writeDockerfile(
      'Dockerfile.from',
      [
        'FROM node:24.21.0-bookworm-slim AS build',
        'WORKDIR /app',
        'COPY package.json ./',
        'FROM node:24.21.0-bookworm-slim',
        'WORKDIR /app',
        'COPY --from=build /app/dist ./dist',
        '',
      ].join('\n'),
    );
    const { code, output } = await verifyImage({ DOCKERFILE: file, VERIFY_NODE: 'host', VERIFY_IMAGE_CONTEXT: ROOT });
    expect(output).toMatch(/Dockerfile\.from:6: COPY failed: "\/app\/dist" does not exist in stage build/);
    expect(code).not.toBe(0);
  });

  it(
    'fails when the shipped code imports a package the runtime stage does not install (a devDependency)',
    { timeout: 60_000 },
    async () => {
      const file = writeDockerfile(
        'Dockerfile.devdep',
        [
          'FROM node:24.21.0-bookworm-slim AS build',
          'WORKDIR /app',
          `RUN mkdir dist && echo "import 'vitest';" > dist/index.js`,
          'FROM node:24.21.0-bookworm-slim',
          'WORKDIR /app',
          'COPY package.json package-lock.json ./',
          'COPY --from=build /app/dist ./dist',
          'USER 1000',
          'EXPOSE 8080',
          'HEALTHCHECK CMD ["true"]',
          'ENTRYPOINT ["node", "dist/cli.js"]',
          '',
        ].join('\n'),
      );
      const { code, output } = await verifyImage({ DOCKERFILE: file, VERIFY_NODE: 'host', VERIFY_IMAGE_CONTEXT: ROOT });
      expect(output).toMatch(
        /imports packages that are not installed in the runtime stage \(a devDependency\?\): vitest \(dist\/index\.js\)/,
      );
      expect(code).not.toBe(0);
    },
  );

  it(
    'fails when the shipped code loads a package the runtime stage does not install through import(), guarded or not',
    { timeout: 60_000 },
    async () => {
      // The shape of finding 12 (issue 19): dist/demo/demo.js loaded oauth2-mock-server with a
      // guarded import(), so `token-proxy demo` could only fail in the image.
      const file = writeDockerfile(
        'Dockerfile.dynamic',
        [
          'FROM node:24.21.0-bookworm-slim AS build',
          'WORKDIR /app',
          `RUN mkdir -p dist/demo && echo "export const load = () => import('oauth2-mock-server').catch(() => undefined);" > dist/demo/demo.js`,
          'FROM node:24.21.0-bookworm-slim',
          'WORKDIR /app',
          'COPY package.json package-lock.json ./',
          'COPY --from=build /app/dist ./dist',
          'USER 1000',
          'EXPOSE 8080',
          'HEALTHCHECK CMD ["true"]',
          'ENTRYPOINT ["node", "dist/cli.js"]',
          '',
        ].join('\n'),
      );
      const { code, output } = await verifyImage({ DOCKERFILE: file, VERIFY_NODE: 'host', VERIFY_IMAGE_CONTEXT: ROOT });
      expect(output).toMatch(
        /imports packages that are not installed in the runtime stage \(a devDependency\?\): oauth2-mock-server \(dist\/demo\/demo\.js, import\(\)\)/,
      );
      expect(code).not.toBe(0);
    },
  );
});
