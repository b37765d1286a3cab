// What a CONNECT to a name the interception CA has not seen costs the event loop: a new leaf
// (one CA signature, one TLS context) or a cache hit. `node bench/interception-leaves.mjs [N]`
// after `npm run build`; an older build can be measured against it with OLD=path/to/module.js.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import process from 'node:process';
import { pathToFileURL } from 'node:url';

const N = Number(process.argv[2] ?? 300);
const dir = mkdtempSync(join(tmpdir(), 'tp-leaves-'));
const { CertificateAuthority, createCaFiles } = await import('../dist/mitm/certificate-authority.js');

function rsaCa() {
  execFileSync(
    'openssl',
    [
      ...['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '30'],
      ...['-subj', '/CN=bench rsa CA', '-addext', 'basicConstraints=critical,CA:TRUE'],
    ],
    { cwd: dir, stdio: 'pipe' },
  );
  return { cert: readFileSync(join(dir, 'cert.pem'), 'utf8'), key: readFileSync(join(dir, 'key.pem'), 'utf8') };
}

/** Microseconds per name over N distinct made-up names under partner.example, after a warm-up name. */
function perName(authority) {
  authority.secureContextFor('warm-up.partner.example');
  const names = Array.from({ length: N }, (_, i) => `r${i}x${Math.random().toString(36).slice(2, 8)}.partner.example`);
  const start = performance.now();
  for (const name of names) authority.secureContextFor(name);
  return ((performance.now() - start) * 1000) / N;
}

const rsa = rsaCa();
const ec = await createCaFiles(join(dir, 'ec'));
const ecCa = { cert: readFileSync(ec.certFile, 'utf8'), key: readFileSync(ec.keyFile, 'utf8') };
const rows = [];
if (process.env.OLD) {
  const old = await import(pathToFileURL(process.env.OLD).href);
  rows.push(['previous build, RSA CA, a leaf per name', perName(old.CertificateAuthority.fromPem(rsa.cert, rsa.key))]);
}
rows.push(['RSA CA, ECDSA leaf per name', perName(CertificateAuthority.fromPem(rsa.cert, rsa.key))]);
rows.push(['EC P-256 CA, ECDSA leaf per name', perName(CertificateAuthority.fromPem(ecCa.cert, ecCa.key))]);
const wild = { wildcardSuffixes: ['partner.example'] };
const rsaWild = CertificateAuthority.fromPem(rsa.cert, rsa.key, wild);
rows.push(['RSA CA, *.partner.example wildcard leaf', perName(rsaWild)]);
rows.push([
  'EC P-256 CA, *.partner.example wildcard leaf',
  perName(CertificateAuthority.fromPem(ecCa.cert, ecCa.key, wild)),
]);
rmSync(dir, { recursive: true, force: true });

const lines = [
  `${N} distinct names under *.partner.example, µs per name (event loop blocked):`,
  ...rows.map(([label, us]) => `  ${label.padEnd(46)} ${us.toFixed(1).padStart(9)}`),
  `  leaves signed for ${N + 1} names with the wildcard: ${rsaWild.issued}`,
];
process.stdout.write(`${lines.join('\n')}\n`);
