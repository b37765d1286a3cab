import { Writable } from 'node:stream';
import { createApp, type App, type AppOptions } from '../../src/app.js';
import { buildConfig } from '../../src/config/load.js';
import type { Token } from '../../src/tokens/token.js';
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
export async function startProxy(
  doc: Record<string, unknown>,
  options: Omit<AppOptions, 'logger'> = {},
): Promise<RunningProxy> {
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
  const config = buildConfig(
    { listen: '127.0.0.1:0', admin: { listen: '127.0.0.1:0' }, logLevel: 'debug', ...doc },
    { env: {} },
  );
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

/** The next token a source of the proxy obtains: an event, bounded, instead of a sleep. */
export function nextToken(proxy: RunningProxy, source = 'partner'): Promise<Token> {
  const tokens = proxy.app.tokens.get(source);
  if (tokens === undefined) return Promise.reject(new Error(`no token source ${source}`));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no token event within 5 s')), 5_000);
    tokens.once('token', (token: Token) => {
      clearTimeout(timer);
      resolve(token);
    });
  });
}

/** Resolves once the proxy's shared tier (Redis) is up, or down with want=false: an event, bounded. */
export function sharedCacheState(proxy: RunningProxy, want = true): Promise<void> {
  if (proxy.app.sharedCacheUp() === want) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`shared cache not ${want ? 'up' : 'down'} within 5 s`)), 5_000);
    const onChange = (up: boolean) => {
      if (up !== want) return;
      clearTimeout(timer);
      proxy.app.events.off('sharedCache', onChange);
      resolve();
    };
    proxy.app.events.on('sharedCache', onChange);
  });
}
