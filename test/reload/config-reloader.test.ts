import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfigFile, type Config } from '../../src/config/load.js';
import { createLogger } from '../../src/logger.js';
import { ConfigReloader, type Reloadable } from '../../src/reload/config-reloader.js';

const dir = mkdtempSync(join(tmpdir(), 'tp-reloader-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A config file naming `secret` as its upstream's client secret file (real files, real loads). */
function configNaming(name: string, secret: string): string {
  writeFileSync(join(dir, secret), 'a-secret');
  const file = join(dir, name);
  writeFileSync(
    file,
    [
      'upstreams:',
      '  - name: partner',
      '    target: https://127.0.0.1:8443',
      '    pathPrefix: /partner',
      '    auth:',
      '      type: client_credentials',
      '      tokenUrl: https://127.0.0.1:8444/token',
      '      clientId: c',
      `      clientSecretFile: ${secret}`,
      '',
    ].join('\n'),
  );
  return file;
}

describe('ConfigReloader', () => {
  it('watches the files of the configuration swapped in last, when an earlier reload finishes draining after it', async () => {
    // The app's swap is immediate; its reload() settles only once the old configuration drained.
    const drains: (() => void)[] = [];
    const app: Reloadable = {
      logger: createLogger('silent', new Writable({ write: (_c, _e, done) => done() })),
      reload: () => new Promise<string[]>((resolve) => drains.push(() => resolve([]))),
      reloadRejected: () => undefined,
    };
    let file = configNaming('a.yaml', 'secret-a');
    const reloader = new ConfigReloader(app, new Set([file, join(dir, 'secret-a')]), true, {
      load: (): Config => loadConfigFile(file),
      rescanMs: 60_000,
    });
    try {
      file = configNaming('b.yaml', 'secret-b');
      const first = reloader.reload('SIGHUP'); // swapped in, its predecessor still draining
      file = configNaming('c.yaml', 'secret-c');
      const second = reloader.reload('SIGHUP');
      drains[1]?.(); // the second one's predecessor drains first
      await second;
      drains[0]?.();
      await first;
      file = join(dir, 'not-there.yaml'); // then a rejected reload: the running files stay watched
      await reloader.reload('SIGHUP');
      expect([...reloader.watched].sort()).toEqual([
        join(dir, 'c.yaml'),
        join(dir, 'not-there.yaml'),
        join(dir, 'secret-c'),
      ]);
    } finally {
      reloader.close();
    }
  });
});
