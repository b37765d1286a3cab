import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { eventually } from './time.js';

export interface TestRedis {
  readonly port: number;
  readonly url: string;
  /** Whether the server process is alive. */
  readonly running: boolean;
  /** SIGKILL: an outage as abrupt as they come. */
  kill(): Promise<void>;
  /** Starts it again on the same port (empty: nothing is saved). */
  start(): Promise<void>;
  stop(): Promise<void>;
  /**
   * SIGSTOP: the server stops answering but keeps its data and its connections, as behind a
   * network partition; `resume()` (SIGCONT) brings it back as it was.
   */
  pause(): void;
  resume(): void;
  /** Resolves when the server logs a line matching `pattern` from now on; rejects after 5 s. */
  nextLog(pattern: RegExp): Promise<void>;
}

async function freePort(): Promise<number> {
  const probe = createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** Spawns redis-server with `args`, resolving once its log shows `ready`. */
function spawnRedis(args: readonly string[], ready: RegExp, loglevel = 'notice'): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const proc = spawn(
      'redis-server',
      [...args, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', loglevel],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        cwd: tmpdir(), // where a replica's sync writes its dump.rdb, unless --dir says otherwise
      },
    );
    let output = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL'); // never leave a half-started server behind
      reject(new Error(`redis-server ${args.join(' ')} did not get ready within 5 s: ${output}`));
    }, 5_000);
    proc.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (ready.test(output)) {
        clearTimeout(timer);
        resolve(proc);
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}: ${output}`));
    });
  });
}

async function killRedis(proc: ChildProcess | undefined): Promise<void> {
  if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGKILL');
  await once(proc, 'exit');
}

/**
 * A private redis-server (Debian's package) on a free loopback port, keeping nothing on disk, so
 * tests are hermetic and can take it away to test outages. With `tls`, it speaks only TLS and
 * logs verbosely, so a refused handshake shows ("Error accepting a client connection").
 */
export async function startRedis(
  options: { tls?: { cert: string; key: string; ca: string } } = {},
): Promise<TestRedis> {
  const port = await freePort();
  const args = options.tls
    ? [
        '--port',
        '0',
        '--tls-port',
        String(port),
        '--tls-cert-file',
        options.tls.cert,
        '--tls-key-file',
        options.tls.key,
        '--tls-ca-cert-file',
        options.tls.ca,
        '--tls-auth-clients',
        'no',
      ]
    : ['--port', String(port)];
  let child: ChildProcess | undefined;
  const start = async () => {
    child = await spawnRedis(args, /Ready to accept connections/, options.tls ? 'verbose' : 'notice');
  };
  const nextLog = (pattern: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const out = child?.stdout;
      if (out === undefined || out === null) return reject(new Error('redis-server is not running'));
      const timer = setTimeout(() => {
        out.off('data', onData);
        reject(new Error(`redis-server logged nothing matching ${pattern} within 5 s`));
      }, 5_000);
      const onData = (chunk: Buffer) => {
        if (!pattern.test(chunk.toString())) return;
        clearTimeout(timer);
        out.off('data', onData);
        resolve();
      };
      out.on('data', onData);
    });
  const kill = () => killRedis(child);
  await start();
  return {
    port,
    url: `${options.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    kill,
    start,
    stop: kill,
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    nextLog,
  };
}

export interface TestRedisCluster {
  /** The nodes' host:port, in slot order (the first holds slots 0-5460). */
  readonly nodes: readonly string[];
  stop(): Promise<void>;
}

/** Three masters forming a Redis Cluster (no replicas), slots split evenly by redis-cli. */
export async function startRedisCluster(): Promise<TestRedisCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'tp-cluster-'));
  const ports = [await freePort(), await freePort(), await freePort()];
  const procs: ChildProcess[] = [];
  const stop = async () => {
    await Promise.all(procs.map(killRedis));
    rmSync(dir, { recursive: true, force: true });
  };
  const nodes = ports.map((p) => `127.0.0.1:${p}`);
  try {
    for (const port of ports) {
      procs.push(
        await spawnRedis(
          [
            '--port',
            String(port),
            '--dir',
            dir,
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            `nodes-${port}.conf`,
            '--cluster-node-timeout',
            '2000',
          ],
          /Ready to accept connections/,
        ),
      );
    }
    await run('redis-cli', ['--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes']);
    // Every node must agree the cluster is whole before clients arrive.
    for (const port of ports)
      await until(async () =>
        (await run('redis-cli', ['-p', String(port), 'cluster', 'info'])).includes('cluster_state:ok'),
      );
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes, stop };
}

export interface TestRedisSentinel {
  readonly masterName: string;
  readonly sentinel: string;
  /** host:port of the server that is master now. */
  master(): Promise<string>;
  /** Makes the Sentinel promote the replica; resolves with its address once the Sentinel names it master. */
  failover(): Promise<string>;
  stop(): Promise<void>;
}

/** A master, its replica and one Sentinel watching them (quorum 1): enough to fail over. */
export async function startRedisSentinel(): Promise<TestRedisSentinel> {
  const dir = mkdtempSync(join(tmpdir(), 'tp-sentinel-'));
  const [masterPort, replicaPort, sentinelPort] = [await freePort(), await freePort(), await freePort()];
  const masterName = 'tp-master';
  const procs: ChildProcess[] = [];
  const stop = async () => {
    await Promise.all(procs.map(killRedis));
    rmSync(dir, { recursive: true, force: true });
  };
  const cli = (...args: string[]) => run('redis-cli', ['-p', String(sentinelPort), ...args]);
  const current = async () =>
    (await cli('sentinel', 'get-master-addr-by-name', masterName)).trim().split('\n').join(':');
  try {
    procs.push(
      await spawnRedis(
        ['--port', String(masterPort), '--dir', dir, '--dbfilename', 'master.rdb', '--repl-diskless-sync-delay', '0'],
        /Ready to accept connections/,
      ),
    );
    procs.push(
      await spawnRedis(
        [
          '--port',
          String(replicaPort),
          '--dir',
          dir,
          '--dbfilename',
          'replica.rdb',
          '--replicaof',
          '127.0.0.1',
          String(masterPort),
        ],
        /MASTER <-> REPLICA sync: (Finished with success|Master accepted a Partial Resynchronization)/,
      ),
    );
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(
      conf,
      [
        `port ${sentinelPort}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `sentinel monitor ${masterName} 127.0.0.1 ${masterPort} 1`,
        `sentinel down-after-milliseconds ${masterName} 2000`,
        `sentinel failover-timeout ${masterName} 10000`,
        '',
      ].join('\n'),
    );
    procs.push(await spawnRedis([conf, '--sentinel'], /\+monitor master/));
    // The Sentinel must know the replica before it can promote it.
    await until(async () => (await cli('sentinel', 'replicas', masterName)).includes(String(replicaPort)));
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    masterName,
    sentinel: `127.0.0.1:${sentinelPort}`,
    master: current,
    failover: async () => {
      const before = await current();
      await cli('sentinel', 'failover', masterName);
      await until(async () => (await current()) !== before);
      return current();
    },
    stop,
  };
}

function run(command: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: 10_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${command} ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout),
    );
  });
}

/** Polls `check` (an external process's state has no event to wait on) for up to 15 s. */
function until(check: () => Promise<boolean>): Promise<void> {
  return eventually(() => check().catch(() => false), {
    timeoutMs: 15_000,
    everyMs: 50,
    what: `condition ${check.toString()}`,
  });
}
