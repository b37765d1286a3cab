import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { buildConfig } from '../../src/config/load.js';
import { prometheusRule } from '../../scripts/k8s-rules.mjs';

/**
 * The manifests in config/kubernetes, validated against the Kubernetes OpenAPI schemas as the
 * kubernetes-models packages ship them (JSON-schema validators generated from the API server's
 * OpenAPI document, and from the Prometheus Operator's CRDs for ServiceMonitor and
 * PrometheusRule). Those schemas, like the API server, let unknown fields through; TypeScript's
 * excess-property check against the same packages' types catches them (a misspelt probe would
 * otherwise be dropped silently by the API server).
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DIR = join(ROOT, 'config', 'kubernetes');

interface Manifest {
  readonly file: string;
  readonly index: number;
  readonly apiVersion: string;
  readonly kind: string;
  readonly name: string;
  readonly doc: Record<string, unknown>;
}

interface Validatable {
  validate(): void;
}

/** apiVersion/kind -> the model that validates it, and its TypeScript type for the strict check. */
const MODELS: Record<string, { model: new (data: never) => Validatable; type: string; module: string }> = {
  'apps/v1/Deployment': { model: Deployment, type: 'IDeployment', module: 'kubernetes-models/apps/v1/Deployment' },
  'v1/Service': { model: Service, type: 'IService', module: 'kubernetes-models/v1/Service' },
  'v1/ConfigMap': { model: ConfigMap, type: 'IConfigMap', module: 'kubernetes-models/v1/ConfigMap' },
  'v1/Secret': { model: Secret, type: 'ISecret', module: 'kubernetes-models/v1/Secret' },
  'policy/v1/PodDisruptionBudget': {
    model: PodDisruptionBudget,
    type: 'IPodDisruptionBudget',
    module: 'kubernetes-models/policy/v1/PodDisruptionBudget',
  },
  'monitoring.coreos.com/v1/ServiceMonitor': {
    model: ServiceMonitor,
    type: 'IServiceMonitor',
    module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor',
  },
  'monitoring.coreos.com/v1/PrometheusRule': {
    model: PrometheusRule,
    type: 'IPrometheusRule',
    module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule',
  },
};

const files = readdirSync(DIR)
  .filter((f) => /\.ya?ml$/.test(f))
  .sort();

function loadManifests(): { manifests: Manifest[]; kustomization: Record<string, unknown> } {
  const manifests: Manifest[] = [];
  let kustomization: Record<string, unknown> | undefined;
  for (const file of files) {
    const docs = parseAllDocuments(readFileSync(join(DIR, file), 'utf8'), { uniqueKeys: true });
    if (!Array.isArray(docs)) throw new Error(`${file}: no YAML documents`);
    docs.forEach((d, index) => {
      if (d.errors.length > 0) throw new Error(`${file}[${index}]: ${d.errors[0]?.message}`);
      const doc = d.toJS() as Record<string, unknown> | null;
      if (doc === null) return;
      if (doc['kind'] === 'Kustomization') {
        kustomization = doc;
        return;
      }
      const metadata = doc['metadata'] as { name?: string } | undefined;
      manifests.push({
        file,
        index,
        apiVersion: String(doc['apiVersion']),
        kind: String(doc['kind']),
        name: String(metadata?.name),
        doc,
      });
    });
  }
  if (kustomization === undefined) throw new Error('no kustomization.yaml');
  return { manifests, kustomization };
}

const { manifests, kustomization } = loadManifests();

function only(kind: string): Manifest {
  const found = manifests.filter((m) => m.kind === kind);
  expect(
    found.map((m) => m.name),
    `exactly one ${kind}`,
  ).toHaveLength(1);
  return found[0] as Manifest;
}

/** TypeScript diagnostics of `const m: IKind = <manifest>` for every manifest, by manifest. */
function excessPropertyProblems(list: readonly Manifest[]): string[] {
  const file = join(ROOT, 'test', 'ship', '__kubernetes_manifests__.ts');
  const lines: string[] = [];
  const owner: string[] = [];
  list.forEach((m, i) => {
    const entry = MODELS[`${m.apiVersion}/${m.kind}`];
    if (entry === undefined) return;
    lines.push(`import type { ${entry.type} as T${i} } from '${entry.module}';`);
  });
  const importLines = lines.length;
  list.forEach((m, i) => {
    if (MODELS[`${m.apiVersion}/${m.kind}`] === undefined) return;
    const text = `export const m${i}: T${i} = ${JSON.stringify(m.doc, null, 2)};`;
    for (let n = 0; n < text.split('\n').length; n++) owner.push(`${m.file} (${m.kind} ${m.name})`);
    lines.push(text);
  });
  const source = lines.join('\n');
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  const readFile = host.readFile.bind(host);
  host.getSourceFile = (name, language, ...rest) =>
    name === file ? ts.createSourceFile(name, source, language) : getSourceFile(name, language, ...rest);
  host.fileExists = (name) => name === file || fileExists(name);
  host.readFile = (name) => (name === file ? source : readFile(name));
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program, program.getSourceFile(file)).map((d) => {
    const line =
      d.file !== undefined && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const where = line >= importLines ? owner[line - importLines] : 'imports';
    return `${where}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n').split('\n')[0]}`;
  });
}

type Container = {
  name: string;
  ports: { name: string; containerPort: number }[];
  env: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
  readinessProbe: { httpGet: { path: string; port: string | number } };
  livenessProbe: { httpGet: { path: string; port: string | number } };
  lifecycle: { preStop: { exec?: { command: string[] }; sleep?: { seconds: number } } };
  resources: { requests: Record<string, string>; limits: Record<string, string> };
  securityContext: Record<string, unknown> & { capabilities: { drop: string[] } };
  volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
};
type PodSpec = {
  securityContext: Record<string, unknown>;
  terminationGracePeriodSeconds: number;
  containers: Container[];
  volumes: { name: string; configMap?: { name: string; items?: { key: string; path: string }[] } }[];
};

const deployment = only('Deployment').doc as {
  spec: {
    replicas: number;
    selector: { matchLabels: Record<string, string> };
    template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
  };
};
const pod = deployment.spec.template.spec;
const container = pod.containers[0] as Container;
const configMap = only('ConfigMap').doc as { metadata: { name: string }; data: Record<string, string> };
const secret = only('Secret').doc as { metadata: { name: string }; stringData: Record<string, string> };
const service = only('Service').doc as {
  metadata: { name: string; labels: Record<string, string> };
  spec: { selector: Record<string, string>; ports: { name: string; port: number; targetPort: string | number }[] };
};
const portOf = (name: string | number) =>
  typeof name === 'number' ? name : container.ports.find((p) => p.name === name)?.containerPort;
const envValue = (name: string) => container.env.find((e) => e.name === name)?.value;
const TEST_ENV = { PARTNER_CLIENT_SECRET: 'x', TOKEN_CACHE_KEY: Buffer.alloc(32, 7).toString('base64') };

describe('config/kubernetes', () => {
  it('holds only kinds with a schema, each valid against it', () => {
    expect(manifests.length).toBeGreaterThanOrEqual(7);
    const problems: string[] = [];
    for (const m of manifests) {
      const entry = MODELS[`${m.apiVersion}/${m.kind}`];
      if (entry === undefined) {
        problems.push(`${m.file}[${m.index}]: no schema for ${m.apiVersion} ${m.kind}`);
        continue;
      }
      try {
        new entry.model(m.doc as never).validate();
      } catch (err) {
        problems.push(`${m.file}[${m.index}] ${m.kind} ${m.name}: ${(err as Error).message}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('rejects what the schemas reject, so the check above can fail', () => {
    const broken = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      ...deployment,
      spec: { ...deployment.spec, replicas: 'two' },
    };
    expect(() => new Deployment(broken as never).validate()).toThrow(/replicas must be integer/);
    expect(() =>
      new ServiceMonitor({
        apiVersion: 'monitoring.coreos.com/v1',
        kind: 'ServiceMonitor',
        metadata: { name: 'x' },
        spec: { endpoints: 'admin' },
      } as never).validate(),
    ).toThrow();
  });

  it('has no field the schemas do not know (strict: TypeScript excess-property check)', { timeout: 60_000 }, () => {
    expect(excessPropertyProblems(manifests)).toEqual([]);
    const typo = { ...manifests.find((m) => m.kind === 'Deployment'), doc: structuredClone(deployment) } as Manifest;
    const c = (typo.doc as typeof deployment).spec.template.spec.containers[0] as unknown as Record<string, unknown>;
    c['readinesProbe'] = c['readinessProbe'];
    expect(excessPropertyProblems([typo]).join('\n')).toMatch(/readinesProbe/);
  });

  it('lists every manifest but the example Secret in kustomization.yaml', () => {
    const resources = kustomization['resources'] as string[];
    const expected = files.filter((f) => f !== 'kustomization.yaml' && f !== 'secret.example.yaml');
    expect([...resources].sort()).toEqual(expected);
  });

  it('runs two replicas or more, as non-root with a read-only root filesystem and no capabilities', () => {
    expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(container.securityContext).toMatchObject({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ['ALL'] },
    });
    // The image's USER is the uid the pod runs as.
    const user = /^USER\s+(\d+)(?::(\d+))?\s*$/m.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
    expect(user?.[1]).toBe(String(pod.securityContext['runAsUser']));
    expect(container.securityContext['runAsUser'] ?? pod.securityContext['runAsUser']).not.toBe(0);
    expect(container.resources.requests).toHaveProperty('cpu');
    expect(container.resources.requests).toHaveProperty('memory');
    expect(container.resources.limits).toHaveProperty('memory');
    const pdb = only('PodDisruptionBudget').doc as {
      spec: { minAvailable: number; selector: { matchLabels: Record<string, string> } };
    };
    expect(pdb.spec.minAvailable).toBe(1);
    expect(pdb.spec.selector.matchLabels).toEqual(deployment.spec.selector.matchLabels);
  });

  it('probes /readyz (readiness) and /healthz (liveness) on the admin port the config listens on', () => {
    const config = buildConfig(parse(configMap.data['config.yaml'] as string), { env: TEST_ENV });
    const adminPort = Number(config.admin.listen.split(':').pop());
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    expect(portOf(container.readinessProbe.httpGet.port)).toBe(adminPort);
    expect(portOf(container.livenessProbe.httpGet.port)).toBe(adminPort);
    expect(envValue('TOKEN_PROXY_ADMIN_LISTEN')).toBe(`0.0.0.0:${adminPort}`);
    expect(envValue('TOKEN_PROXY_LISTEN')).toBe('0.0.0.0:8080');
    expect(portOf('proxy')).toBe(8080);
  });

  it('drains before the kubelet kills: preStop sleep, then shutdownTimeoutSeconds, within the grace period', () => {
    const config = buildConfig(parse(configMap.data['config.yaml'] as string), { env: TEST_ENV });
    const preStop = container.lifecycle.preStop;
    const sleep =
      preStop.sleep?.seconds ?? Number(preStop.exec?.command[0] === 'sleep' ? preStop.exec.command[1] : NaN);
    expect(sleep).toBeGreaterThan(0);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(config.shutdownTimeoutSeconds + sleep);
  });

  it("mounts a ConfigMap whose config passes token-proxy's own validation, secrets from the Secret", () => {
    const text = configMap.data['config.yaml'] as string;
    const config = buildConfig(parse(text), { env: TEST_ENV });
    expect(config.tokenCache.redis?.connection.url).toBe('redis://redis:6379/0');
    expect(config.inbound.allowCidrs?.entries).toEqual(['10.0.0.0/8']);
    const [upstream] = config.upstreams;
    expect(upstream?.hosts?.length).toBeGreaterThan(0);
    expect(upstream?.pathPrefix).toBeDefined();
    // Without the secrets the config is refused, naming the variables.
    expect(() => buildConfig(parse(text), { env: {} })).toThrow(
      /PARTNER_CLIENT_SECRET[\s\S]*TOKEN_CACHE_KEY|TOKEN_CACHE_KEY[\s\S]*PARTNER_CLIENT_SECRET/,
    );

    // The file is mounted where TOKEN_PROXY_CONFIG says.
    const configEnv = envValue('TOKEN_PROXY_CONFIG') as string;
    const mount = container.volumeMounts.find((v) => configEnv.startsWith(`${v.mountPath}/`));
    expect(mount?.readOnly).toBe(true);
    const volume = pod.volumes.find((v) => v.name === mount?.name);
    expect(volume?.configMap?.name).toBe(configMap.metadata.name);
    const item = volume?.configMap?.items?.find((i) => i.key === 'config.yaml');
    expect(`${mount?.mountPath}/${item?.path}`).toBe(configEnv);

    // Every ${VAR} of the config is set by the container, secrets from the Secret's keys.
    const vars = [...text.matchAll(/^[^#\n]*\$\{([A-Za-z_][A-Za-z0-9_]*)\}/gm)].map((m) => m[1]);
    expect(vars.sort()).toEqual(['PARTNER_CLIENT_SECRET', 'TOKEN_CACHE_KEY']);
    for (const name of vars) {
      const ref = container.env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
      expect(ref?.name, name).toBe(secret.metadata.name);
      expect(Object.keys(secret.stringData), name).toContain(ref?.key);
    }
    // The example Secret holds placeholders only, which the proxy refuses as a cache key.
    for (const value of Object.values(secret.stringData)) expect(value).toMatch(/^REPLACE-ME/);
    expect(() =>
      buildConfig(parse(text), {
        env: { PARTNER_CLIENT_SECRET: 'x', TOKEN_CACHE_KEY: secret.stringData['token-cache-key'] },
      }),
    ).toThrow(/32 bytes/);
  });

  it("routes the Service and the ServiceMonitor to the pods' named ports", () => {
    const labels = deployment.spec.template.metadata.labels;
    expect(deployment.spec.selector.matchLabels).toEqual(expect.objectContaining(labels));
    expect(labels).toEqual(expect.objectContaining(service.spec.selector));
    expect(service.spec.ports.map((p) => [p.name, p.port, portOf(p.targetPort)])).toEqual([
      ['proxy', 8080, 8080],
      ['admin', 9464, 9464],
    ]);
    const monitor = only('ServiceMonitor').doc as {
      spec: { selector: { matchLabels: Record<string, string> }; endpoints: { port: string; path: string }[] };
    };
    expect(service.metadata.labels).toEqual(expect.objectContaining(monitor.spec.selector.matchLabels));
    expect(monitor.spec.endpoints).toEqual([expect.objectContaining({ port: 'admin', path: '/metrics' })]);
    // The alert rules select job="token-proxy": the ServiceMonitor's job is the Service's name.
    expect(service.metadata.name).toBe('token-proxy');
  });

  it('has the PrometheusRule that scripts/k8s-rules.mjs makes from config/prometheus/alerts.yaml', () => {
    const alertsText = readFileSync(join(ROOT, 'config', 'prometheus', 'alerts.yaml'), 'utf8');
    const committed = readFileSync(join(DIR, 'prometheusrule.yaml'), 'utf8');
    expect(committed, 'stale: run npm run k8s:rules').toBe(prometheusRule(alertsText));
    const rule = only('PrometheusRule').doc as { spec: { groups: unknown } };
    expect(rule.spec.groups).toEqual((parse(alertsText) as { groups: unknown }).groups);
  });

  it('has PrometheusRule groups that promtool accepts (when promtool is installed, as in CI)', () => {
    const rule = only('PrometheusRule').doc as { spec: { groups: unknown } };
    expect(rule.spec.groups).toBeInstanceOf(Array);
    // .ci/run installs promtool; a developer machine without it checks the structure only.
    if (spawnSync('promtool', ['--version']).error !== undefined) return;
    const dir = mkdtempSync(join(tmpdir(), 'tp-k8s-rules-'));
    try {
      writeFileSync(join(dir, 'rules.yaml'), JSON.stringify({ groups: rule.spec.groups }));
      const result = spawnSync('promtool', ['check', 'rules', join(dir, 'rules.yaml')], { encoding: 'utf8' });
      expect(result.status, result.stdout + result.stderr).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
