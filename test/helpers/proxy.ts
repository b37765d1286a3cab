import { Writable } from 'node:stream';
import { createApp, type App, type AppOptions } from '../../src/app.js';
import { buildConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/logger.js';

export interface RunningProxy {
  readonly app: App;
  readonly url: string;
  readonly adminUrl: string;
  /** Every log line the proxy wrote, as text. */
  readonly logs: string[];
  close(): Promise<void>;
}

/** Starts the proxy from a config document on ephemeral loopback ports, capturing its logs. */
export async function startProxy(doc: Record<string, unknown>, options: Omit<AppOptions, 'logger'> = {}): Promise<RunningProxy> {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
      done();
    },
  });
  const config = buildConfig({ listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, logLevel: 'debug', ...doc }, { env: {} });
  const app = createApp(config, { ...options, logger: createLogger(config.logLevel, sink) });
  const { proxy, admin } = await app.listen();
  return {
    app,
    url: `http://127.0.0.1:${proxy.port}`,
    adminUrl: `http://127.0.0.1:${admin.port}`,
    logs,
    close: () => app.close(),
  };
}
