import { pino, type DestinationStream, type Logger } from 'pino';

/**
 * JSON logs through pino. The code never passes a token, secret or Authorization header to a
 * log call (tokens appear as fingerprints); the redaction list is a second line of defence.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'token-proxy' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: [
          'authorization',
          '*.authorization',
          'headers.authorization',
          'headers["proxy-authorization"]',
          'clientSecret',
          '*.clientSecret',
          'accessToken',
          '*.accessToken',
          'refreshToken',
          '*.refreshToken',
          'password',
          '*.password',
        ],
        censor: '[redacted]',
      },
    },
    destination,
  );
}
