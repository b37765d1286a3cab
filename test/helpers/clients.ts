import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface ClientResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a real client program (curl, python3) with only the environment given: no stray proxy settings. */
export async function runClient(cmd: string, args: string[], env: Record<string, string> = {}): Promise<ClientResult> {
  try {
    const { stdout, stderr } = await run(cmd, args, {
      env: { PATH: process.env['PATH'] ?? '', ...env },
      timeout: 15_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** curl -sS with a bounded time; `-w` appends the status code on its own last line. */
export async function curl(
  args: string[],
  env: Record<string, string> = {},
): Promise<ClientResult & { status: number; body: string }> {
  const res = await runClient('curl', ['-sS', '--max-time', '10', '-w', '\n%{http_code}', ...args], env);
  const cut = res.stdout.lastIndexOf('\n');
  return { ...res, status: Number(res.stdout.slice(cut + 1)), body: res.stdout.slice(0, cut) };
}

/** Python's standard urllib, which honours http_proxy / https_proxy and SSL_CERT_FILE. */
export async function pythonGet(
  url: string,
  env: Record<string, string>,
): Promise<ClientResult & { status: number; body: string }> {
  const script = [
    'import sys, urllib.request, urllib.error',
    'try:',
    '    r = urllib.request.urlopen(sys.argv[1], timeout=10)',
    '    print(r.status); sys.stdout.write(r.read().decode())',
    'except urllib.error.HTTPError as e:',
    '    print(e.code); sys.stdout.write(e.read().decode())',
  ].join('\n');
  const res = await runClient('python3', ['-c', script, url], env);
  const nl = res.stdout.indexOf('\n');
  return { ...res, status: Number(res.stdout.slice(0, nl)), body: res.stdout.slice(nl + 1) };
}
