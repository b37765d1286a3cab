import { configJsonSchema } from './json-schema.js';

type Schema = {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, Schema>;
  required?: string[];
  items?: Schema;
  anyOf?: Schema[];
  oneOf?: Schema[];
  additionalProperties?: Schema | boolean;
  pattern?: string;
  minimum?: number;
  exclusiveMinimum?: number;
  maximum?: number;
};

function typeOf(s: Schema): string {
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum !== undefined) return s.enum.map((e) => JSON.stringify(e)).join(' \\| ');
  if (s.type === 'array') return `list of ${s.items === undefined ? 'values' : typeOf(s.items)}`;
  if (s.type === 'object' && s.properties === undefined && typeof s.additionalProperties === 'object')
    return `map of ${typeOf(s.additionalProperties)}`;
  if (Array.isArray(s.type)) return s.type.join(' \\| ');
  return s.type ?? 'value';
}

function limits(s: Schema): string {
  const parts: string[] = [];
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.maximum !== undefined && s.maximum < Number.MAX_SAFE_INTEGER) parts.push(`≤ ${s.maximum}`);
  return parts.join(', ');
}

function row(path: string, s: Schema, required: boolean): string {
  const dflt = s.default === undefined ? '' : `\`${JSON.stringify(s.default)}\``;
  const notes = [s.description ?? '', limits(s)].filter((x) => x !== '').join('; ');
  return `| \`${path}\` | ${typeOf(s)} | ${required ? 'yes' : ''} | ${dflt} | ${notes.replace(/\|/g, '\\|')} |`;
}

function walk(path: string, s: Schema, required: boolean, out: string[]): void {
  const variants = s.oneOf ?? s.anyOf;
  if (variants !== undefined && s.properties === undefined) {
    for (const v of variants) {
      const kind = v.properties?.['type']?.const;
      walk(typeof kind === 'string' ? `${path} (type: ${kind})` : path, v, required, out);
    }
    return;
  }
  if (path !== '') out.push(row(path, s, required));
  if (s.properties !== undefined) {
    for (const [name, child] of Object.entries(s.properties)) {
      walk(path === '' ? name : `${path}.${name}`, child, s.required?.includes(name) ?? false, out);
    }
  } else if (
    s.type === 'array' &&
    s.items !== undefined &&
    (s.items.properties !== undefined || s.items.oneOf !== undefined || s.items.anyOf !== undefined)
  ) {
    walk(`${path}[]`, s.items, false, out);
  } else if (typeof s.additionalProperties === 'object' && s.additionalProperties.properties !== undefined) {
    walk(`${path}.<name>`, s.additionalProperties, false, out);
  }
}

/** The configuration reference in Markdown, generated from the validator's own schema. */
export function configurationReference(): string {
  const rows: string[] = [];
  walk('', configJsonSchema(), false, rows);
  return [
    '# Configuration reference',
    '',
    'Generated from the validator by `npm run schema` (a test fails when this file is stale).',
    'Every key below is checked at start-up; unknown keys are errors. `${VAR}` in any string is',
    'replaced from the environment, and relative paths are resolved against the config file.',
    '',
    '| key | type | required | default | notes |',
    '|---|---|---|---|---|',
    ...rows,
    '',
  ].join('\n');
}
