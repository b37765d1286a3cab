export { createApp, type App, type AppOptions } from './app.js';
export { buildConfig, loadConfigFile, type Config, type UpstreamConfig } from './config/load.js';
export { ConfigError, ProxyError, TokenError, type ProxyErrorCode, type TokenFailureReason } from './errors.js';
export { createLogger } from './logger.js';
export type { Token } from './tokens/token.js';
export type { Clock } from './tokens/clock.js';
export type { TokenReader } from './tokens/reader.js';
