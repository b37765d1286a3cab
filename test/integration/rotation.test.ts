import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Writable } from 'node:stream';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp, type App } from '../../src/app.js';
import { recordingReads } from '../../src/config/files.js';
import { loadConfigFile } from '../../src/config/load.js';
import type { PartnerApi } from '../../src/demo/partner-api.js';
import { createLogger } from '../../src/logger.js';
import { ConfigReloader } from '../../src/reload/config-reloader.js';
import { testPki } from '../helpers/certs.js';
import { startVerifyingPartner } from '../helpers/partner.js';
import { eventually } from '../helpers/time.js';
import { startTokenServer, type TokenServer } from '../helpers/token-server.js';

const pki = testPki();
let tokenServer: TokenServer;
let partner: PartnerApi;
const client = new Agent();
const dirs: string[] = [];
const running: { app: App; reloader: ConfigReloader }[] = [];

beforeAll(async () => {
  tokenServer = await startTokenServer();
  partner = await startVerifyingPartner(tokenServer);
});
afterEach(async () => {
  for (const { app, reloader } of running.splice(0)) {
    reloader.close();
    await app.close();
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  partner.script = undefined;
});
afterAll(async () => {
  await client.close();
  await partner.close();
  await tokenServer.stop();
});

/** The kubelet's atomic update of a Secret volume: a new timestamped directory swapped in through `..data`. */
let volumeGeneration = 0;
function writeSecretVolume(dir: string, files: Record<string, string>): void {
  volumeGeneration += 1;
  const data = `..2026_12_08_${volumeGeneration}`;
  mkdirSync(join(dir, data), { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, data, name), text);
  symlinkSync(data, join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  for (const name of Object.keys(files)) {
    try {
      symlinkSync(join('..data', name), join(dir, name));
    } catch {
      // already linked from the first generation
    }
  }
}

/** A CA the partner's certificate does not chain to. */
function strangerCa(dir: string): string {
  const file = join(dir, 'stranger-ca.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=stranger CA',
      '-keyout',
      join(dir, 'stranger-key.pem'),
      '-out',
      file,
    ],
    { stdio: 'pipe' },
  );
  return file;
}

/** A new CA (`name`), and a client certificate it issued for the proxy: what a cert-manager renewal by another issuer gives. */
function issuedByNewCa(dir: string, name: string): { ca: string; cert: string; key: string } {
  const at = (f: string) => join(dir, `${name}-${f}`);
  const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl([
    'req',
    '-x509',
    ...ec,
    '-days',
    '1',
    '-subj',
    `/CN=${name}`,
    '-keyout',
    at('ca-key.pem'),
    '-out',
    at('ca.pem'),
  ]);
  openssl(['req', ...ec, '-subj', '/CN=token-proxy', '-keyout', at('key.pem'), '-out', at('csr.pem')]);
  openssl([
    'x509',
    '-req',
    '-in',
    at('csr.pem'),
    '-CA',
    at('ca.pem'),
    '-CAkey',
    at('ca-key.pem'),
    '-CAcreateserial',
    '-days',
    '1',
    '-out',
    at('cert.pem'),
  ]);
  const read = (f: string) => execFileSync('cat', [at(f)]).toString('utf8');
  return { ca: read('ca.pem'), cert: read('cert.pem'), key: read('key.pem') };
}

function configText(o: { secretFile: string; otherSecret?: string; pinnedCa?: string; watch?: boolean }): string {
  const upstream = (name: string, auth: string[], ca = pki.caFile) => [
    `  - name: ${name}`,
    `    target: ${partner.url}`,
    `    pathPrefix: /${name}`,
    `    ca: ${ca}`,
    '    auth:',
    '      type: client_credentials',
    `      tokenUrl: ${tokenServer.tokenUrl}`,
    `      clientId: ${name}-client`,
    ...auth.map((l) => `      ${l}`),
  ];
  return [
    'listen: 127.0.0.1:0',
    'admin: { listen: 127.0.0.1:0 }',
    'logLevel: info',
    ...(o.watch === undefined ? [] : [`watch: ${o.watch}`]),
    'upstreams:',
    ...upstream('rotating', [`clientSecretFile: ${o.secretFile}`]),
    ...upstream('steady', [`clientSecret: ${o.otherSecret ?? 'steady-secret'}`]),
    ...(o.pinnedCa === undefined ? [] : upstream('pinned', ['clientSecret: pinned-secret'], o.pinnedCa)),
    ...(o.pinnedCa === undefined ? [] : ['    tokenWaitTimeoutSeconds: 0.5']),
    '',
  ].join('\n');
}

/** The proxy as `serve` runs it: loaded from the file, every file read recorded and watched. */
async function serve(file: string, debounceMs = 50) {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(
        ...chunk
          .toString('utf8')
          .split('\n')
          .filter((l) => l !== ''),
      );
      done();
    },
  });
  const files = new Set<string>();
  const config = recordingReads(files, () => loadConfigFile(file));
  const app = createApp(config, { logger: createLogger(config.logLevel, sink), configFile: file });
  const { proxy } = await app.listen();
  const reloader = new ConfigReloader(app, files, config.watch, {
    load: () => loadConfigFile(file),
    debounceMs,
  });
  running.push({ app, reloader });
  const get = async (path: string, body?: Readable) => {
    const res = await request(`http://127.0.0.1:${proxy.port}${path}`, {
      dispatcher: client,
      method: body === undefined ? 'GET' : 'POST',
      body,
    });
    return { status: res.statusCode, text: await res.body.text() };
  };
  const reloads = async (outcome: string) =>
    (await app.metrics.configReloads.get()).values.find((v) => v.labels.outcome === outcome)?.value ?? 0;
  const events = (event: string) =>
    logs.filter((l) => l.includes(`"event":"${event}"`)).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { app, reloader, get, reloads, events, logs, files };
}

/** The client secret each token request of `clientId` presented (client_secret_basic), from request `from` on. */
function secretsSeen(clientId: string, from = 0): string[] {
  return tokenServer.requests
    .slice(from)
    .map((r) => Buffer.from((r.authorization ?? '').replace(/^Basic /, ''), 'base64').toString('utf8'))
    .filter((basic) => basic.startsWith(`${clientId}:`))
    .map((basic) => basic.slice(clientId.length + 1));
}

function workDir(): { dir: string; secrets: string; config: string } {
  const dir = mkdtempSync(join(tmpdir(), 'tp-rotate-'));
  dirs.push(dir);
  const secrets = join(dir, 'secrets');
  mkdirSync(secrets);
  return { dir, secrets, config: join(dir, 'token-proxy.yaml') };
}

describe('rotation without a restart', () => {
  it('a Kubernetes secret swap reloads: new secret for new tokens, the steady upstream keeps its token, a request in flight finishes', async () => {
    const { secrets, config } = workDir();
    writeSecretVolume(secrets, { 'client-secret': 'secret-one\n' });
    writeFileSync(config, configText({ secretFile: join(secrets, 'client-secret') }));
    const p = await serve(config);
    expect(p.reloader.watched).toEqual(expect.arrayContaining([config, join(secrets, 'client-secret'), pki.caFile]));

    expect((await p.get('/rotating/a')).status).toBe(200);
    expect((await p.get('/steady/a')).status).toBe(200);
    expect(secretsSeen('rotating-client')).toEqual(['secret-one']);
    expect(secretsSeen('steady-client')).toEqual(['steady-secret']);

    // A POST whose body is still coming when the secret rotates: it finishes on the old configuration.
    let finishBody: () => void = () => undefined;
    let firstHalfSent: () => void = () => undefined;
    const bodyDone = new Promise<void>((r) => (finishBody = r));
    const sending = new Promise<void>((r) => (firstHalfSent = r));
    const body = Readable.from(
      (async function* () {
        yield Buffer.from('first half;');
        firstHalfSent(); // resumed: the headers and the first half are on their way
        await bodyDone;
        yield Buffer.from('second half');
      })(),
    );
    const inFlight = p.get('/rotating/upload', body);
    await sending;

    writeSecretVolume(secrets, { 'client-secret': 'secret-two\n' });
    await eventually(async () => (await p.reloads('success')) === 1, { timeoutMs: 5_000, what: 'the reload' });
    finishBody();
    expect((await inFlight).status).toBe(200);

    expect((await p.get('/rotating/b')).status).toBe(200);
    expect((await p.get('/steady/b')).status).toBe(200);
    expect(secretsSeen('rotating-client')).toEqual(['secret-one', 'secret-two']);
    expect(secretsSeen('steady-client')).toEqual(['steady-secret']); // its token was kept
    expect(p.events('config_reload_triggered').map((e) => e['trigger'])).toEqual([join(secrets, 'client-secret')]);
    expect(await p.reloads('rejected')).toBe(0);
    // The secret's value appears in no log line.
    expect(p.logs.join('\n')).not.toMatch(/secret-one|secret-two/);
  });

  it('rejects a broken file with every problem logged, keeps serving, and reloads once it is fixed', async () => {
    const { secrets, config } = workDir();
    const secretFile = join(secrets, 'client-secret');
    writeFileSync(secretFile, 'secret-one');
    writeFileSync(config, configText({ secretFile }));
    const p = await serve(config);
    const startedAt = (await p.app.metrics.configLastReloadSuccess.get()).values[0]?.value ?? 0;
    expect(startedAt).toBeGreaterThan(0);
    expect((await p.get('/rotating/a')).status).toBe(200);

    // Invalid YAML: rejected, counted, the running configuration serves on.
    writeFileSync(config, 'upstreams: [\n');
    await eventually(async () => (await p.reloads('rejected')) === 1, { timeoutMs: 5_000, what: 'the rejection' });
    expect(p.events('config_reload_rejected')).toHaveLength(1);
    expect(p.events('config_reload_rejected')[0]?.['problems']).toEqual([expect.stringContaining(config)]);
    expect((await p.get('/rotating/b')).status).toBe(200);

    // A valid file naming a secret file that is not there (yet), and a bad value besides: both reported.
    const missing = join(secrets, 'not-yet');
    writeFileSync(
      config,
      configText({ secretFile: missing }).replace('logLevel: info', 'logLevel: info\nshutdownTimeoutSeconds: -1'),
    );
    await eventually(async () => (await p.reloads('rejected')) === 2, {
      timeoutMs: 5_000,
      what: 'the second rejection',
    });
    const problems = p.events('config_reload_rejected')[1]?.['problems'] as string[];
    expect(problems).toHaveLength(1); // schema problems stop the load before files are read
    expect(problems[0]).toMatch(/^shutdownTimeoutSeconds: /);
    writeFileSync(config, configText({ secretFile: missing }));
    await eventually(async () => (await p.reloads('rejected')) === 3, {
      timeoutMs: 5_000,
      what: 'the third rejection',
    });
    expect(p.events('config_reload_rejected')[2]?.['problems']).toEqual([
      `upstreams[0].auth.clientSecretFile: cannot read ${missing} (ENOENT)`,
    ]);
    expect((await p.get('/rotating/c')).status).toBe(200);
    expect(await p.reloads('success')).toBe(0);
    const successful = async () => (await p.app.metrics.configLastReloadSuccessful.get()).values[0]?.value;
    expect(await successful()).toBe(0); // the newest file is not in force: what the alert waits on

    // The missing file appears: watched since the failed load looked for it, so this reloads.
    writeFileSync(missing, 'secret-two');
    await eventually(async () => (await p.reloads('success')) === 1, { timeoutMs: 5_000, what: 'the reload' });
    expect(p.events('config_reload_triggered').at(-1)?.['trigger']).toBe(missing);
    expect(await successful()).toBe(1);
    // Moved on: at least the debounce passed since the start-up load.
    expect((await p.app.metrics.configLastReloadSuccess.get()).values[0]?.value).toBeGreaterThan(startedAt);
    expect((await p.get('/rotating/d')).status).toBe(200);
    expect(secretsSeen('rotating-client').slice(-1)).toEqual(['secret-two']);
    expect(await p.reloads('rejected')).toBe(3);
  });

  it('uses a rotated CA bundle for new connections', async () => {
    const { dir, secrets, config } = workDir();
    const secretFile = join(secrets, 'client-secret');
    writeFileSync(secretFile, 'secret-one');
    const caFile = join(dir, 'partner-ca.pem');
    writeFileSync(caFile, execFileSync('cat', [strangerCa(dir)]));
    writeFileSync(config, configText({ secretFile, pinnedCa: caFile }));
    const p = await serve(config);
    const before = await p.get('/pinned/a');
    expect(before.status).toBe(502); // the token endpoint's certificate does not chain to the stranger CA
    expect(JSON.parse(before.text)).toMatchObject({ error: 'token_unavailable', upstream: 'pinned' });
    writeFileSync(caFile, pki.ca);
    await eventually(async () => (await p.reloads('success')) === 1, { timeoutMs: 5_000, what: 'the reload' });
    expect(p.events('config_reload_triggered').map((e) => e['trigger'])).toEqual([caFile]);
    expect((await p.get('/pinned/b')).status).toBe(200);
  });

  it('with watch: false reloads on SIGHUP only', async () => {
    const { secrets, config } = workDir();
    const secretFile = join(secrets, 'client-secret');
    writeFileSync(secretFile, 'secret-one');
    writeFileSync(config, configText({ secretFile, watch: false }));
    const p = await serve(config);
    expect(p.reloader.watched).toEqual([]);
    writeFileSync(secretFile, 'secret-two');
    await p.reloader.reload('SIGHUP');
    expect(await p.reloads('success')).toBe(1);
    expect(p.events('config_reload_triggered').map((e) => e['trigger'])).toEqual(['SIGHUP']);
    // Turned on by a reload: from then on a change reloads by itself.
    writeFileSync(config, configText({ secretFile, watch: true }));
    await p.reloader.reload('SIGHUP');
    expect(p.reloader.watched).toContain(secretFile);
    writeFileSync(secretFile, 'secret-three');
    await eventually(async () => (await p.reloads('success')) === 3, { timeoutMs: 5_000, what: 'the watched reload' });
    expect(p.events('config_reload_triggered').map((e) => e['trigger'])).toEqual(['SIGHUP', 'SIGHUP', secretFile]);
  });

  it('a burst of in-place writes to a secret file gives one reload, and the next token uses the last secret', async () => {
    const { secrets, config } = workDir();
    const secretFile = join(secrets, 'client-secret');
    writeFileSync(secretFile, 'secret-one');
    writeFileSync(config, configText({ secretFile }));
    const from = tokenServer.requests.length; // the token server is shared by the file's tests
    const p = await serve(config, 300);
    expect((await p.get('/rotating/a')).status).toBe(200);
    expect((await p.get('/steady/a')).status).toBe(200);

    // Each write in its own turn of the event loop, so the watch sees an event for each one, each
    // well within the debounce (a rotation writes several files, an editor several times).
    for (let i = 2; i <= 6; i += 1) {
      writeFileSync(secretFile, `secret-${i}`);
      await new Promise((r) => setImmediate(r));
    }
    await eventually(async () => (await p.reloads('success')) >= 1, { timeoutMs: 5_000, what: 'the reload' });
    // A later, separate change: by the time it is in force, the burst was counted exactly once.
    writeFileSync(config, `${configText({ secretFile })}# edited\n`);
    const triggers = () => p.events('config_reload_triggered').map((e) => e['trigger']);
    await eventually(async () => triggers().includes(config) && (await p.reloads('success')) === triggers().length, {
      timeoutMs: 5_000,
      what: 'the reload the config edit triggered',
    });
    expect(await p.reloads('success')).toBe(2);
    expect(p.events('config_reloaded')).toHaveLength(2);
    expect(p.events('config_reload_triggered').map((e) => e['trigger'])).toEqual([secretFile, config]);

    expect((await p.get('/rotating/b')).status).toBe(200);
    expect((await p.get('/steady/b')).status).toBe(200);
    expect(secretsSeen('rotating-client', from)).toEqual(['secret-one', 'secret-6']);
    expect(secretsSeen('steady-client', from)).toEqual(['steady-secret']); // two reloads, one token
  });

  it('a secret file that disappears is a rejected reload, and its return reloads', async () => {
    const { secrets, config } = workDir();
    const secretFile = join(secrets, 'client-secret');
    writeFileSync(secretFile, 'secret-one');
    writeFileSync(config, configText({ secretFile }));
    const from = tokenServer.requests.length; // the token server is shared by the file's tests
    const p = await serve(config);
    expect((await p.get('/rotating/a')).status).toBe(200);

    rmSync(secretFile);
    await eventually(async () => (await p.reloads('rejected')) === 1, { timeoutMs: 5_000, what: 'the rejection' });
    expect(p.events('config_reload_rejected')[0]?.['problems']).toEqual([
      `upstreams[0].auth.clientSecretFile: cannot read ${secretFile} (ENOENT)`,
    ]);
    // What the status page is given: the trigger and the problems, as logged.
    expect(p.app.reloadInfo()).toMatchObject({
      lastOutcome: 'rejected',
      lastTrigger: secretFile,
      lastProblems: [`upstreams[0].auth.clientSecretFile: cannot read ${secretFile} (ENOENT)`],
    });
    expect((await p.get('/rotating/b')).status).toBe(200); // the token of the running configuration serves on

    writeFileSync(secretFile, 'secret-two');
    await eventually(async () => (await p.reloads('success')) === 1, { timeoutMs: 5_000, what: 'the reload' });
    expect(p.events('config_reload_triggered').map((e) => e['trigger'])).toEqual([secretFile, secretFile]);
    const info = p.app.reloadInfo();
    expect(info).toMatchObject({ lastOutcome: 'success', lastTrigger: secretFile });
    expect(info.lastProblems).toBeUndefined();
    expect((await p.get('/rotating/c')).status).toBe(200);
    expect(secretsSeen('rotating-client', from)).toEqual(['secret-one', 'secret-two']);
  });

  it('presents a client certificate renewed in its Secret volume on new connections to an mTLS partner', async () => {
    const { dir, secrets, config } = workDir();
    const partnerCa = issuedByNewCa(dir, 'partner-client-ca'); // the only CA the partner accepts clients of
    const mtlsPartner = await startVerifyingPartner(tokenServer, {
      tls: { key: pki.key, cert: pki.cert, clientCa: partnerCa.ca },
    });
    try {
      // The certificate the proxy starts with was issued by the test CA, which the partner does not trust.
      writeSecretVolume(secrets, { 'tls.crt': pki.cert, 'tls.key': pki.key, 'client-secret': 'secret-one' });
      writeFileSync(
        config,
        [
          'listen: 127.0.0.1:0',
          'admin: { listen: 127.0.0.1:0 }',
          'upstreams:',
          '  - name: mtls',
          `    target: ${mtlsPartner.url}`,
          '    pathPrefix: /mtls',
          `    ca: ${pki.caFile}`,
          `    mtls: { cert: ${join(secrets, 'tls.crt')}, key: ${join(secrets, 'tls.key')} }`,
          '    auth:',
          '      type: client_credentials',
          `      tokenUrl: ${tokenServer.tokenUrl}`,
          '      clientId: mtls-client',
          `      clientSecretFile: ${join(secrets, 'client-secret')}`,
          '',
        ].join('\n'),
      );
      const p = await serve(config);
      const refused = await p.get('/mtls/a');
      expect(refused.status).toBe(502); // the partner refuses the handshake
      expect(JSON.parse(refused.text)).toMatchObject({ error: 'upstream_unreachable', upstream: 'mtls' });
      expect(mtlsPartner.seen).toHaveLength(0);

      // cert-manager renews it from the partner's CA: the kubelet swaps the volume.
      writeSecretVolume(secrets, {
        'tls.crt': partnerCa.cert,
        'tls.key': partnerCa.key,
        'client-secret': 'secret-one',
      });
      await eventually(async () => (await p.reloads('success')) === 1, { timeoutMs: 5_000, what: 'the reload' });
      expect(p.events('config_reload_triggered').map((e) => e['trigger'])).toEqual([
        `${join(secrets, 'tls.crt')}, ${join(secrets, 'tls.key')}`,
      ]);
      expect((await p.get('/mtls/b')).status).toBe(200);
      expect(mtlsPartner.seen.map((r) => [r.path, r.status])).toEqual([['/b', 200]]);
    } finally {
      await mtlsPartner.close();
    }
  });
});
