#!/usr/bin/env node
import { resolve } from 'node:path';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { createApp, type App } from './app.js';
import { loadConfigFile, type Config, type ConfigOverrides } from './config/load.js';
import { DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, LOG_LEVELS } from './config/defaults.js';
import { DEMO_TOKEN_SECONDS, startDemo, type Demo } from './demo/demo.js';
import { createCaFiles } from './mitm/certificate-authority.js';
import { runTokenCommand } from './token-command.js';
import { ConfigError } from './errors.js';
import { recordingReads } from './config/files.js';
import { ConfigReloader } from './reload/config-reloader.js';
import { flushLogs } from './logger.js';
import { summary } from './config/summary.js';
import { configWarnings } from './config/warnings.js';

interface CommonArgs {
  config?: string;
  listen?: string;
  adminListen?: string;
  logLevel?: string;
}

function overridesFrom(args: CommonArgs): ConfigOverrides {
  return { listen: args.listen, adminListen: args.adminListen, logLevel: args.logLevel };
}

function loadOrExit(args: CommonArgs): Config {
  if (args.config === undefined) {
    console.error('token-proxy: --config FILE (or TOKEN_PROXY_CONFIG) is required');
    process.exit(1);
  }
  try {
    return loadConfigFile(args.config, { overrides: overridesFrom(args) });
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`token-proxy: ${args.config}: ${err.message}`);
      process.exit(1);
    }
    throw err;
  }
}

/**
 * The V8 heap floor the image starts Node with: after an idle spell V8 otherwise shrinks its
 * old-generation limit so far that request bodies' ArrayBuffers set off a mark-compact every few
 * requests (BENCHMARKS.md). A running process cannot set it, so `serve` says when it is missing.
 */
const HEAP_FLOOR = '--initial-old-space-size=64';

function hasHeapFloor(execArgv: readonly string[]): boolean {
  return execArgv.some((arg) => arg.replaceAll('_', '-').startsWith('--initial-old-space-size'));
}

/**
 * SIGHUP, and a change to the config file or any file it names (unless `watch: false`): re-read
 * the config file. A bad new config is rejected with every problem logged and the running one
 * stays; a good one is swapped in without dropping requests.
 */
function onReload(app: App, args: CommonArgs, config: Config, files: ReadonlySet<string>): ConfigReloader {
  const reloader = new ConfigReloader(app, files, config.watch, {
    load: () => loadConfigFile(args.config ?? '', { overrides: overridesFrom(args) }),
  });
  process.on('SIGHUP', () => void reloader.reload('SIGHUP'));
  return reloader;
}

/** SIGTERM/SIGINT: stop accepting, drain (bounded), exit 0. A second signal exits at once. */
function onShutdown(close: () => Promise<void>): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    console.error(`token-proxy: ${signal} received, draining`);
    // Nothing is left to handle: close()'s failure is caught, and the process exits whether or not
    // the flush succeeds.
    void close()
      .then(
        () => 0,
        (err: unknown) => {
          console.error(`token-proxy: shutdown failed: ${(err as Error).message}`);
          return 1;
        },
      )
      // Logs go to stdout through a buffer: write out the last lines (the drained requests' access
      // lines among them) before exiting.
      .then((code) => flushLogs().finally(() => process.exit(code)));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

function withServeOptions<T>(y: Argv<T>) {
  return y
    .option('config', { type: 'string', describe: 'YAML or JSON config file (env TOKEN_PROXY_CONFIG)' })
    .option('listen', { type: 'string', describe: 'proxy listener host:port (env TOKEN_PROXY_LISTEN)' })
    .option('admin-listen', { type: 'string', describe: 'admin listener host:port (env TOKEN_PROXY_ADMIN_LISTEN)' })
    .option('log-level', { type: 'string', choices: LOG_LEVELS, describe: 'log level (env TOKEN_PROXY_LOG_LEVEL)' });
}

await yargs(hideBin(process.argv))
  .scriptName('token-proxy')
  .env('TOKEN_PROXY')
  .command(
    ['serve', '$0'],
    'run the proxy',
    (y) => withServeOptions(y),
    async (args) => {
      // Every file the configuration is read from, watched for changes (rotation without a restart).
      const files = new Set<string>();
      const config = recordingReads(files, () => loadOrExit(args));
      const app = createApp(config, { configFile: resolve(args.config ?? '') });
      if (!hasHeapFloor(process.execArgv)) {
        app.logger.info(
          { event: 'runtime_hint', flag: HEAP_FLOOR },
          `started without ${HEAP_FLOOR} (the image's ENTRYPOINT has it): large request bodies after an idle spell can set off a full garbage collection every few requests`,
        );
      }
      const reloader = onReload(app, args, config, files);
      onShutdown(() => {
        reloader.close();
        return app.close();
      });
      await app.listen();
    },
  )
  .command(
    'check',
    'validate a config file and print what it configures (never a secret)',
    (y) => withServeOptions(y),
    (args) => {
      const config = loadOrExit(args);
      console.log(`${args.config}: OK\n${summary(config)}`);
      for (const warning of configWarnings(config)) console.log(`warning: ${warning}`);
    },
  )
  .command(
    'token <upstream>',
    'obtain a token as the proxy would and describe it (expiry, scopes, JWT claims); the raw token only with --show-token',
    (y) =>
      withServeOptions(y)
        .positional('upstream', { type: 'string', demandOption: true, describe: 'upstream name' })
        .option('tenant', { type: 'string', describe: 'tenant, for upstreams with tenants' })
        .option('show-token', { type: 'boolean', default: false, describe: 'also print the token itself' }),
    async (args) => {
      const config = loadOrExit(args);
      const { text, code } = await runTokenCommand(config, {
        upstream: args.upstream,
        tenant: args.tenant,
        showToken: args.showToken,
      });
      (code === 0 ? console.log : console.error)(text);
      process.exit(code);
    },
  )
  .command(
    'ca init',
    'create a CA for TLS interception (writes DIR/ca.pem and DIR/ca-key.pem, mode 0600)',
    (y) =>
      y.option('out', { type: 'string', demandOption: true, describe: 'directory to write into' }).option('permit', {
        type: 'string',
        array: true,
        describe:
          "add X.509 name constraints: clients accept its certificates only for these hosts (repeat it for each of your upstreams' hosts: *.partner.example, api.example)",
      }),
    async (args) => {
      try {
        const permit = args.permit?.map(String);
        const { certFile, keyFile } = await createCaFiles(args.out, { permit });
        console.log(
          [
            `wrote ${certFile} and ${keyFile}`,
            permit === undefined
              ? 'name constraints: none (add --permit HOST for each upstream host to limit what the CA can vouch for)'
              : `name constraints: only ${permit.join(', ')} (and the names below them)`,
            'configure:  mitm: { caCert: ' + certFile + ', caKey: ' + keyFile + ' }',
            `trust it:   curl --cacert ${certFile} | NODE_EXTRA_CA_CERTS=${certFile} | REQUESTS_CA_BUNDLE=${certFile} (Python requests) | SSL_CERT_FILE=${certFile} (Python urllib)`,
            `            keytool -importcert -alias token-proxy -file ${certFile} -keystore <truststore> (Java)`,
          ].join('\n'),
        );
      } catch (err) {
        console.error(`token-proxy: ca init: ${(err as Error).message}`);
        process.exit(1);
      }
    },
  )
  .command(
    'demo',
    'DEMO: run the proxy with a local OAuth2 token server and partner API on loopback',
    (y) =>
      y
        .option('listen', { type: 'string', default: DEFAULT_LISTEN })
        .option('admin-listen', { type: 'string', default: DEFAULT_ADMIN_LISTEN })
        .option('log-level', { type: 'string', choices: LOG_LEVELS, default: 'info' })
        // The image sets TOKEN_PROXY_CONFIG, which .env() turns into --config: accepted and unused
        // (the demo configures itself), so that `docker run IMAGE demo` is not refused by .strict().
        .option('config', { type: 'string', hidden: true }),
    async (args) => {
      let demo: Demo;
      try {
        demo = await startDemo({ proxy: args.listen, admin: args.adminListen }, args.logLevel);
      } catch (err) {
        console.error(`token-proxy: demo: ${(err as Error).message}`);
        process.exit(1);
      }
      onShutdown(() => demo.close());
      console.log(
        [
          '',
          '=== token-proxy DEMO (throwaway keys and secret, made up at start) ===',
          `An OAuth2 token server (client credentials, RS256 JWTs) and a partner API that verifies`,
          `every token against its JWKS are running on loopback. The proxy injects a token into`,
          `every call under ${demo.proxyUrl}/partner.`,
          '',
          'Try:',
          `  curl -s ${demo.proxyUrl}/partner/hello                # 200: the partner saw a verified token`,
          `  curl -si ${demo.proxyUrl}/partner/status/403          # a partner 403 passes through untouched`,
          `  curl -s -X POST --data-binary @package.json ${demo.proxyUrl}/partner/upload`,
          `  curl -s ${demo.adminUrl}/metrics | grep token_proxy_   # cache hits, refreshes, expiry`,
          '',
          `Tokens live ${DEMO_TOKEN_SECONDS} s here; watch the log for the background refresh. Ctrl-C stops the demo.`,
          '',
        ].join('\n'),
      );
    },
  )
  .strict()
  .demandCommand(0)
  .help()
  .fail((msg, err, y) => {
    if (err) throw err;
    console.error(`token-proxy: ${msg}\n`);
    console.error(y.help());
    process.exit(1);
  })
  .parseAsync();
