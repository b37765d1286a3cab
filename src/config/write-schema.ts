import { writeFileSync } from 'node:fs';
import { configJsonSchema } from './json-schema.js';

// `npm run schema`: regenerates config/token-proxy.schema.json; a test fails when it is stale.
const out = process.argv[2] ?? 'config/token-proxy.schema.json';
writeFileSync(out, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
