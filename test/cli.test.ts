import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StatusReport } from '../src/admin/status.js';
import type { PartnerApi } from '../src/demo/partner-api.js';
import { startVerifyingPartner } from './helpers/partner.js';
import { testPki } from './helpers/certs.js';
import { eventually } from './helpers/time.js';
import { startTokenServer, type TokenServer } from './helpers/token-server.js';

const run = promisify(execFile);
const CLI = resolve('dist/cli.js');
const SECRET = 'cli-secret-0a9f33';
const pki = testPki();
let tokenServer: TokenServer;
let partner: PartnerApi;
const dir = mkdtempSync(join(tmpdir(), 'tp-cli-'));

async function cli(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await run('node', [CLI, ...args], { env: { PATH: process.env['PATH'] ?? '', ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Starts a long-running CLI command and resolves once its output matches `ready`. */
async function start(args: string[], env: Record<string, string>, ready: RegExp, nodeArgs: string[] = []) {
  const child = spawn('node', [...nodeArgs, CLI, ...args], { env: { PATH: process.env['PATH'] ?? '', ...env } });
  let output = '';
  let stdout = '';
  const matched = new Promise<RegExpExecArray>((resolveMatch, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const m = ready.exec(output);
      if (m) resolveMatch(m);
    };
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => reject(new Error(`exited ${code}: ${output}`)));
  });
  const match = await matched;
  return { child, match, output: () => output, stdout: () => stdout };
}

/** The partner answers /slow with 'finished' after `delayMs`; resolves when such a request has arrived. */
function slowPartnerPath(delayMs: number): Promise<void> {
  return new Promise<void>((arrived) => {
    partner.script = (req) => {
      if (req.path !== '/slow') return undefined;
      arrived();
      return { status: 200, body: 'finished', delayMs };
    };
  });
}

/** `serve` from the environment alone: the test config, ephemeral ports, info logs. */
function serveEnv(): Record<string, string> {
  return {
    TOKEN_PROXY_CONFIG: join(dir, 'proxy.yaml'),
    TOKEN_PROXY_LISTEN: '127.0.0.1:0',
    TOKEN_PROXY_ADMIN_LISTEN: '127.0.0.1:0',
    TOKEN_PROXY_LOG_LEVEL: 'info',
    CLI_SECRET: SECRET,
  };
}

function curl(args: string[]) {
  return run('curl', ['-sS', '--max-time', '10', ...args]);
}

async function exitCode(child: ChildProcessWithoutNullStreams): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const [code] = (await once(child, 'exit')) as [number | null];
  return code;
}

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
  writeFileSync(
    join(dir, 'proxy.yaml'),
    [
      'listen: 127.0.0.1:1', // overridden by TOKEN_PROXY_LISTEN below
      'upstreams:',
      '  - name: partner',
      `    target: ${partner.url}`,
      '    pathPrefix: /partner',
      `    ca: ${pki.caFile}`,
      '    auth:',
      '      type: client_credentials',
      `      tokenUrl: ${tokenServer.tokenUrl}`,
      '      clientId: cli-client',
      '      clientSecret: ${CLI_SECRET}',
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(dir, 'bad.yaml'),
    [
      'upstreams:',
      '  - name: "bad name"',
      '    target: http://example.com',
      '    pathPrefix: /p',
      '    auth:',
      '      type: client_credentials',
      '      tokenUrl: https://a/t',
      '      clientId: c',
      '      clientSecret: ${NOT_SET_ANYWHERE}',
      '',
    ].join('\n'),
  );
});

afterAll(async () => {
  await partner.close();
  await tokenServer.stop();
});

describe('token-proxy command line', () => {
  it('prints help listing serve, check and demo', async () => {
    const res = await cli(['--help']);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/token-proxy serve/);
    expect(res.stdout).toMatch(/token-proxy check/);
    expect(res.stdout).toMatch(/token-proxy demo/);
  });

  it('check lists every problem with its path and exits 1', async () => {
    const res = await cli(['check', '--config', join(dir, 'bad.yaml')]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('upstreams[0].name: letters, digits');
    expect(res.stderr).toContain('upstreams[0].target: must be an https:// URL');
    expect(res.stderr).toContain('upstreams[0].auth.clientSecret: environment variable NOT_SET_ANYWHERE is not set');
  });

  it('check summarises a good config without printing the secret, reading the file from TOKEN_PROXY_CONFIG', async () => {
    const res = await cli(['check'], { TOKEN_PROXY_CONFIG: join(dir, 'proxy.yaml'), CLI_SECRET: SECRET });
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('upstream partner: /partner -> https://127.0.0.1:');
    expect(res.stdout).toContain('client cli-client (client_secret_basic)');
    expect(res.stdout + res.stderr).not.toContain(SECRET);
  });

  it('serves with settings from the environment, answers curl, and drains an in-flight request on SIGTERM', async () => {
    const proxy = await start(['serve'], serveEnv(), /"proxy":"127\.0\.0\.1:(\d+)","admin":"127\.0\.0\.1:(\d+)"/);
    const [, port, adminPort] = proxy.match;
    const ok = await curl([`http://127.0.0.1:${port}/partner/hello`]);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, client: 'cli-client' });
    expect(JSON.parse((await curl([`http://127.0.0.1:${adminPort}/readyz`])).stdout)).toMatchObject({
      status: 'ready',
      tokens: [{ upstream: 'partner', state: 'valid' }],
    });

    const slowArrived = slowPartnerPath(700);
    const slow = curl([`http://127.0.0.1:${port}/partner/slow`]);
    await slowArrived; // the request is in flight at the partner when the signal comes
    proxy.child.kill('SIGTERM');
    expect((await slow).stdout).toBe('finished');
    expect(await exitCode(proxy.child)).toBe(0);
    partner.script = undefined;
    await expect(curl([`http://127.0.0.1:${port}/partner/hello`])).rejects.toThrow(); // no longer listening
    expect(proxy.output()).not.toContain(SECRET);
    // Started as plain `node dist/cli.js`: without the image's heap floor, which it names.
    const hints = proxy
      .stdout()
      .split('\n')
      .filter((l) => l.includes('"event":"runtime_hint"'));
    expect(hints.map((l) => (JSON.parse(l) as { flag: string }).flag)).toEqual(['--initial-old-space-size=64']);
  });

  it('names its config file on the status page, and a SIGHUP with a broken file as a rejected reload', async () => {
    const file = join(dir, 'reloaded.yaml');
    writeFileSync(file, readFileSync(join(dir, 'proxy.yaml')));
    const proxy = await start(
      ['serve'],
      { ...serveEnv(), TOKEN_PROXY_CONFIG: file },
      /"proxy":"127\.0\.0\.1:(\d+)","admin":"127\.0\.0\.1:(\d+)"/,
    );
    const adminPort = proxy.match[2] as string;
    const status = async () =>
      (JSON.parse((await curl([`http://127.0.0.1:${adminPort}/status`])).stdout) as StatusReport).config;
    const started = await status();
    expect(started).toMatchObject({ file, lastReloadOutcome: 'start' });
    expect(started.lastReloadAt).toBe(started.lastSuccessfulReloadAt);
    writeFileSync(file, 'upstreams: [');
    proxy.child.kill('SIGHUP');
    await eventually(() => proxy.output().includes('"event":"config_reload_rejected"'), {
      timeoutMs: 10_000,
      what: 'the rejected reload log line',
    });
    const rejected = await status();
    expect(rejected).toMatchObject({
      file,
      lastReloadOutcome: 'rejected',
      lastSuccessfulReloadAt: started.lastSuccessfulReloadAt,
    });
    expect(Date.parse(rejected.lastReloadAt ?? '')).toBeGreaterThan(Date.parse(started.lastReloadAt ?? ''));
    proxy.child.kill('SIGTERM');
    expect(await exitCode(proxy.child)).toBe(0);
  });

  it('reloads by itself when its config file changes, and logs the file that triggered it', async () => {
    const file = join(dir, 'watched.yaml');
    writeFileSync(file, readFileSync(join(dir, 'proxy.yaml')));
    const proxy = await start(
      ['serve'],
      { ...serveEnv(), TOKEN_PROXY_CONFIG: file },
      /"proxy":"127\.0\.0\.1:(\d+)","admin":"127\.0\.0\.1:(\d+)"/,
    );
    const [proxyPort, adminPort] = [proxy.match[1] as string, proxy.match[2] as string];
    // A new path prefix: the old one is answered 404 once the new file is in force, with no signal sent.
    writeFileSync(file, readFileSync(join(dir, 'proxy.yaml'), 'utf8').replace('/partner', '/renamed'));
    await eventually(() => proxy.output().includes('"event":"config_reloaded"'), {
      timeoutMs: 10_000,
      what: 'the reload',
    });
    const triggered = proxy
      .stdout()
      .split('\n')
      .filter((l) => l.includes('"event":"config_reload_triggered"'))
      .map((l) => (JSON.parse(l) as { trigger: string }).trigger);
    expect(triggered).toEqual([file]);
    expect((await curl([`http://127.0.0.1:${proxyPort}/renamed/hello`])).stdout).toContain('cli-client');
    const status = JSON.parse((await curl([`http://127.0.0.1:${adminPort}/status`])).stdout) as StatusReport;
    expect(status.config.lastReloadOutcome).toBe('success');
    expect(status.config.lastReloadTrigger).toBe(file); // the status page names what set it off
    const metrics = (await curl([`http://127.0.0.1:${adminPort}/metrics`])).stdout;
    expect(metrics).toContain('token_proxy_config_reloads_total{outcome="success"} 1');
    expect(metrics).toContain('token_proxy_config_reloads_total{outcome="rejected"} 0');
    proxy.child.kill('SIGTERM');
    expect(await exitCode(proxy.child)).toBe(0);
  });

  it('gives no runtime hint when started with the heap floor the image uses', async () => {
    const proxy = await start(['serve'], serveEnv(), /"proxy":"127\.0\.0\.1:(\d+)"/, ['--initial-old-space-size=64']);
    expect((await curl([`http://127.0.0.1:${proxy.match[1]}/partner/hello`])).stdout).toContain('cli-client');
    proxy.child.kill('SIGTERM');
    expect(await exitCode(proxy.child)).toBe(0);
    expect(proxy.stdout()).toContain('"event":"listening"');
    expect(proxy.stdout()).not.toContain('runtime_hint');
  });

  it('writes every access-log line to stdout before exiting on SIGTERM, the drained request too, and no secret', async () => {
    const proxy = await start(['serve'], serveEnv(), /"proxy":"127\.0\.0\.1:(\d+)"/);
    const origin = `http://127.0.0.1:${proxy.match[1]}`;
    // Stdout is buffered up to 4 KiB (about 15 access lines) or a second: a burst leaves its last
    // lines in the buffer when the signal comes, for the flush on shutdown to write.
    const burst = 40;
    for (let i = 0; i < burst; i += 1) {
      const res = await request(`${origin}/partner/hello`, { headers: { 'x-request-id': `burst-${i}` } });
      await res.body.dump();
      expect(res.statusCode).toBe(200);
    }
    const slowArrived = slowPartnerPath(300);
    const slow = request(`${origin}/partner/slow`, { headers: { 'x-request-id': 'drained' } });
    await slowArrived;
    proxy.child.kill('SIGTERM');
    expect(await (await slow).body.text()).toBe('finished');
    expect(await exitCode(proxy.child)).toBe(0);
    partner.script = undefined;

    const lines = proxy
      .stdout()
      .split('\n')
      .filter((l) => l !== '');
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>); // every line whole
    const access = parsed.filter((l) => l['event'] === 'request');
    expect(access.map((l) => l['requestId'])).toEqual([
      ...Array.from({ length: burst }, (_, i) => `burst-${i}`),
      'drained',
    ]);
    for (const line of access) {
      expect(Object.keys(line)).toEqual([
        'level',
        'time',
        'service',
        'event',
        'requestId',
        'method',
        'upstream',
        'status',
        'durationMs',
        'retried',
        'token',
        'msg',
      ]);
      expect(line).toMatchObject({
        method: 'GET',
        upstream: 'partner',
        status: 200,
        retried: false,
        token: expect.stringMatching(/^[A-Za-z0-9_-]{12}$/) as unknown,
      });
      expect(new Date(line['time'] as string).toISOString()).toBe(line['time']);
    }
    expect(proxy.stdout()).not.toContain(SECRET);
    for (const token of tokenServer.issued) expect(proxy.stdout()).not.toContain(token.split('.')[2] as string); // not even a token's signature
  });

  it('token describes a token as the proxy would get it, printing the token itself only with --show-token', async () => {
    const env = { CLI_SECRET: SECRET };
    const hidden = await cli(['token', 'partner', '--config', join(dir, 'proxy.yaml')], env);
    expect(hidden.code).toBe(0);
    const token = tokenServer.issued.at(-1) as string;
    expect(hidden.stdout).toContain('grant client_credentials at');
    expect(hidden.stdout).toMatch(/fingerprint {2}[A-Za-z0-9_-]{12}/);
    expect(hidden.stdout).toMatch(/expires {6}\d{4}-\d\d-\d\dT.*\(in (29\d|300) s\)/);
    expect(hidden.stdout).toContain('"client_id": "cli-client"');
    expect(hidden.stdout).toMatch(/JWT header {3}\{"typ":"JWT","kid":"\w+","alg":"RS256"\}/);
    expect(hidden.stdout + hidden.stderr).not.toContain(token);
    expect(hidden.stdout + hidden.stderr).not.toContain(token.split('.')[2] as string); // never the signature
    expect(hidden.stdout + hidden.stderr).not.toContain(SECRET);
    const shown = await cli(['token', 'partner', '--show-token', '--config', join(dir, 'proxy.yaml')], env);
    expect(shown.stdout).toContain(`token        ${tokenServer.issued.at(-1)}`);
    tokenServer.respondWith((res) => {
      res.statusCode = 400;
      res.body = { error: 'invalid_scope', error_description: 'scope orders.admin is not allowed' };
    });
    const failed = await cli(['token', 'partner', '--config', join(dir, 'proxy.yaml')], env);
    tokenServer.respondWith(undefined);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('FAILED: invalid_scope (HTTP 400)');
    expect(failed.stderr).toContain('partner says: scope orders.admin is not allowed');
    expect((await cli(['token', 'nope', '--config', join(dir, 'proxy.yaml')], env)).stderr).toContain(
      'no upstream named "nope"',
    );
  });

  it('ca init --permit writes name constraints for the given hosts, and refuses a bad one', async () => {
    const out = join(dir, 'ca-permit');
    const made = await cli(['ca', 'init', '--out', out, '--permit', '*.partner.example', '--permit', '10.1.2.3']);
    expect(made.code).toBe(0);
    expect(made.stdout).toContain('name constraints: only *.partner.example, 10.1.2.3');
    const text = await promisify(execFile)('openssl', ['x509', '-in', join(out, 'ca.pem'), '-noout', '-text']);
    expect(text.stdout).toMatch(
      /Name Constraints: critical\s+Permitted:\s+DNS:partner\.example\s+IP:10\.1\.2\.3\/255\.255\.255\.255\s+Excluded:\s+IP:0:0:0:0:0:0:0:0\/0:0:0:0:0:0:0:0\s/,
    );
    const bad = await cli(['ca', 'init', '--out', join(dir, 'ca-bad'), '--permit', 'a b']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('token-proxy: ca init: --permit "a b" is not');
  });

  it('ca init writes a CA usable as mitm (mode 0600), and refuses to overwrite it', async () => {
    const out = join(dir, 'ca');
    const made = await cli(['ca', 'init', '--out', out]);
    expect(made.code).toBe(0);
    expect(made.stdout).toContain(`NODE_EXTRA_CA_CERTS=${join(out, 'ca.pem')}`);
    for (const file of ['ca.pem', 'ca-key.pem']) expect(statSync(join(out, file)).mode & 0o777).toBe(0o600);
    const again = await cli(['ca', 'init', '--out', out]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(join(out, 'ca.pem'));
    writeFileSync(
      join(dir, 'mitm.yaml'),
      `${readFileSync(join(dir, 'proxy.yaml'), 'utf8')}mitm:\n  caCert: ca/ca.pem\n  caKey: ca/ca-key.pem\n`,
    );
    const checked = await cli(['check', '--config', join(dir, 'mitm.yaml')], { CLI_SECRET: SECRET });
    expect(checked.stdout).toContain('TLS interception: on');
    writeFileSync(
      join(dir, 'wrong-key.yaml'),
      `${readFileSync(join(dir, 'proxy.yaml'), 'utf8')}mitm:\n  caCert: ca/ca.pem\n  caKey: ${pki.keyFile}\n`,
    );
    const mismatched = await cli(['check', '--config', join(dir, 'wrong-key.yaml')], { CLI_SECRET: SECRET });
    expect(mismatched.code).toBe(1);
    expect(mismatched.stderr).toContain(`mitm.caKey: ${pki.keyFile} does not belong to ca/ca.pem`);
  });

  it('runs the demo end to end on loopback and stops on SIGTERM', async () => {
    const demo = await start(
      ['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'],
      {},
      /curl -s (http:\/\/127\.0\.0\.1:\d+)\/partner\/hello/,
    );
    const proxyUrl = demo.match[1] as string;
    const res = await curl([`${proxyUrl}/partner/hello`]);
    expect(JSON.parse(res.stdout)).toMatchObject({ ok: true, client: 'demo-client', scope: 'demo.read' });
    const forbidden = await curl(['-i', `${proxyUrl}/partner/status/403`]);
    expect(forbidden.stdout).toMatch(/^HTTP\/1\.1 403/);
    expect(demo.output()).toContain('DEMO');
    demo.child.kill('SIGTERM');
    expect(await exitCode(demo.child)).toBe(0);
  });
});
