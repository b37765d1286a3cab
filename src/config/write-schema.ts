import { writeFileSync } from 'node:fs';
import { configJsonSchema } from './json-schema.js';
import { configurationReference } from './reference.js';

// `npm run schema`: regenerates the JSON Schema and the configuration reference; tests fail when
// either is stale.
const out = process.argv[2] ?? 'config/token-proxy.schema.json';
writeFileSync(out, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
writeFileSync(process.argv[3] ?? 'docs/configuration.md', configurationReference());
