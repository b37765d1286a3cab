import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Test PKI made with openssl: a CA and a server certificate for 127.0.0.1 / localhost. */
export const CERT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '.tmp', 'certs');

export interface TestPki {
  readonly caFile: string;
  readonly ca: string;
  readonly key: string;
  readonly cert: string;
  readonly keyFile: string;
  readonly certFile: string;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { cwd: CERT_DIR, stdio: 'pipe' });
}

export function ensureTestPki(): void {
  if (existsSync(join(CERT_DIR, 'server.pem'))) return;
  mkdirSync(CERT_DIR, { recursive: true });
  openssl([
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca-key.pem',
    '-out',
    'ca.pem',
    '-days',
    '3650',
    '-subj',
    '/CN=token-proxy test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  openssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'server-key.pem',
    '-out',
    'server.csr',
    '-subj',
    '/CN=127.0.0.1',
  ]);
  writeFileSync(
    join(CERT_DIR, 'server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n',
  );
  openssl([
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca-key.pem',
    '-CAcreateserial',
    '-out',
    'server.pem',
    '-days',
    '3650',
    '-extfile',
    'server.ext',
  ]);
}

export function testPki(): TestPki {
  ensureTestPki();
  const file = (name: string) => join(CERT_DIR, name);
  return {
    caFile: file('ca.pem'),
    ca: readFileSync(file('ca.pem'), 'utf8'),
    keyFile: file('server-key.pem'),
    certFile: file('server.pem'),
    key: readFileSync(file('server-key.pem'), 'utf8'),
    cert: readFileSync(file('server.pem'), 'utf8'),
  };
}
