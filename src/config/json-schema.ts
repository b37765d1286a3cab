import { z } from 'zod';
import { configSchema } from './schema.js';

/** The JSON Schema of the config file (what a user writes, defaults included), for editors. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }),
    $id: 'https://token-proxy.dev/schema/token-proxy.schema.json',
    title: 'token-proxy configuration',
  };
}
